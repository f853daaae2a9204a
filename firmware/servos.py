"""Hardware layer: one small servo interface over ESP32/RP2040 PWM, a PCA9685 board, or a
simulation, so everything above it is the same code on a board and on the unix port.

Per channel index 0..n-1:

    write_us(channel, pulse_us)  set the pulse, attaching a released output; allocates nothing
    release(channel)             no more pulses: the servo goes limp
    release_all()                every output off
    position_us(channel)         what the output does: the last pulse written on a board, the
                                 modelled position in simulation; 0 when released
    released(channel)            True when released
    tick(now_us)                 once per control tick, now_us = ticks_us() mod 2**30
    deinit()                     release everything and free the hardware (before a re-config)

Every driver starts with all outputs released. `write_us` clamps the pulse to the channel's
min_us..max_us: the motion engine and the dispatcher check limits (the protocol never clamps a
request); this clamp is the last line of defence against a bug above this layer. A negative
or too large channel raises IndexError.

Drivers take their `machine` classes or objects as arguments: the unix port's built-in
`machine` has no PWM or I2C, and tests pass fakes. `make_servos(config)` builds the right one.
"""

import time

from servomesh.protocol.compat import const

SERVO_FREQ_HZ = const(50)
SERVO_PERIOD_US = const(20000)
_TICKS_MASK = const(0x3FFFFFFF)  # messages.TICKS_PERIOD - 1
_TICKS_HALF = const(0x20000000)
_SIM_MAX_ELAPSED_US = const(10000000)  # longer gaps count as 10 s: the model has arrived anyway

# PCA9685 registers and bits (NXP PCA9685 datasheet, section 7.3)
_MODE1 = const(0x00)
_MODE2 = const(0x01)
_LED0_ON_L = const(0x06)
_ALL_LED_OFF_H = const(0xFD)
_PRE_SCALE = const(0xFE)
_MODE1_SLEEP = const(0x10)
_MODE1_AUTO_INCREMENT = const(0x20)
_MODE2_OUTDRV = const(0x04)  # totem-pole outputs, what servo signal lines want
_FULL_OFF = const(0x10)  # bit 4 of LEDn_OFF_H: output held low
PCA9685_PRESCALE = const(121)  # round(25 MHz / (4096 * 50 Hz)) - 1
_PCA9685_COUNTS = const(4096)
_PCA9685_WAKE_US = const(500)  # the oscillator's start-up time after SLEEP is cleared
# Register address, then ON at count 0 and OFF with the full-off bit: one write releases a
# channel (the register byte is patched in a copy per channel) or, at ALL_LED, every output.
_ALL_OFF = b"\xfa\x00\x00\x00\x10"


class _Servos:
    """Bookkeeping shared by the drivers: limits, and the pulse each channel is at."""

    def __init__(self, channels):
        self.channel_count = len(channels)
        self._min_us = [channel["min_us"] for channel in channels]
        self._max_us = [channel["max_us"] for channel in channels]
        self._pulse_us = [0] * len(channels)  # 0: released

    def _limited(self, channel, pulse_us):
        if channel < 0:  # a negative index would silently drive another channel
            raise IndexError("channel")
        low = self._min_us[channel]
        if pulse_us < low:
            return low
        high = self._max_us[channel]
        if pulse_us > high:
            return high
        return pulse_us

    def position_us(self, channel):
        return self._pulse_us[channel]

    def released(self, channel):
        return self._pulse_us[channel] == 0

    def release_all(self):
        for channel in range(self.channel_count):
            self.release(channel)

    def tick(self, now_us):
        pass  # a real output needs no clock

    def deinit(self):
        self.release_all()


class PwmServos(_Servos):
    """Servos on ESP32 or RP2040 `machine.PWM` outputs at 50 Hz, one GPIO per channel.

    `pwm` and `pin` are `machine.PWM` and `machine.Pin` (or fakes). Every pin is claimed here,
    with no pulses until the first write_us. Raises ConfigError for a pin the board cannot drive.
    """

    def __init__(self, channels, board, pwm, pin):
        from servomesh.firmware import config

        if board != "esp32" and board != "rp2040":
            raise config.ConfigError("PwmServos drives esp32 or rp2040, not %r" % (board,))
        config.check_pins(board, channels)
        super().__init__(channels)
        self._pwms = []
        for index in range(len(channels)):
            gpio = channels[index]["pin"]
            try:
                # duty_ns=0 from the start: no glitch pulse of a default duty while claiming.
                self._pwms.append(pwm(pin(gpio), freq=SERVO_FREQ_HZ, duty_ns=0))
            # ValueError: no PWM channel left; TypeError: a firmware whose PWM() takes no
            # duty_ns (MicroPython before about 1.20 on rp2)
            except (ValueError, TypeError, OSError) as error:
                self.deinit()
                raise config.ConfigError(
                    "channels[%d].pin: GPIO %d: %s" % (index, gpio, error)
                ) from None

    def write_us(self, channel, pulse_us):
        pulse_us = self._limited(channel, pulse_us)
        self._pwms[channel].duty_ns(pulse_us * 1000)
        self._pulse_us[channel] = pulse_us

    def release(self, channel):
        if channel < 0:
            raise IndexError("channel")
        # A constant low line: most servos go limp (some digital ones hold their last pulse).
        self._pwms[channel].duty_ns(0)
        self._pulse_us[channel] = 0

    def deinit(self):
        for pwm in self._pwms:
            pwm.duty_ns(0)
            pwm.deinit()
        self._pwms = []
        self._pulse_us = [0] * self.channel_count


class Pca9685Servos(_Servos):
    """Servos on a PCA9685 16-channel I2C board; a channel's `pin` is its output, 0..15.

    `i2c` is a `machine.I2C` (or a fake). Raises ConfigError when no PCA9685 answers at
    `address`. Every write is one I2C transfer that raises OSError if the bus fails.
    """

    def __init__(self, channels, i2c, address=0x40):
        from servomesh.firmware import config

        config.check_pins("pca9685", channels)
        super().__init__(channels)
        self._i2c = i2c
        self._address = address
        # Each write is `writeto` of [register, ON_L, ON_H, OFF_L, OFF_H] from a buffer made
        # here. Not writeto_mem: it hands the port two buffers, and ports that send one (rp2
        # among them) copy both into a new heap buffer on every call.
        self._buf = bytearray(5)
        self._off = []  # per channel: its release write
        for channel in channels:
            off = bytearray(_ALL_OFF)
            off[0] = _LED0_ON_L + 4 * channel["pin"]
            self._off.append(off)
        try:
            i2c.readfrom_mem(address, _MODE1, 1)
        except OSError:
            raise config.ConfigError("no PCA9685 at I2C address 0x%02x" % address) from None
        try:
            for register, value in (
                (_ALL_LED_OFF_H, _FULL_OFF),  # released first: it may still pulse from before
                (_MODE2, _MODE2_OUTDRV),
                (_MODE1, _MODE1_SLEEP),  # the prescaler can be written only while asleep
                (_PRE_SCALE, PCA9685_PRESCALE),
                (_MODE1, _MODE1_AUTO_INCREMENT),  # awake; a 4-byte write fills ON_L..OFF_H
            ):
                i2c.writeto(address, bytes((register, value)))
        except OSError as error:
            raise config.ConfigError(
                "PCA9685 at I2C address 0x%02x failed during setup: %s" % (address, error)
            ) from None
        time.sleep_us(_PCA9685_WAKE_US)

    def write_us(self, channel, pulse_us):
        pulse_us = self._limited(channel, pulse_us)
        # counts = pulse_us * 4096 / 20000 us, rounded; every product stays a small int
        counts = (pulse_us * _PCA9685_COUNTS + SERVO_PERIOD_US // 2) // SERVO_PERIOD_US
        buf = self._buf
        buf[0] = self._off[channel][0]  # the channel's LEDn_ON_L; ON stays at count 0
        buf[3] = counts & 0xFF
        buf[4] = counts >> 8
        self._i2c.writeto(self._address, buf)
        self._pulse_us[channel] = pulse_us

    def release(self, channel):
        if channel < 0:
            raise IndexError("channel")
        self._i2c.writeto(self._address, self._off[channel])
        self._pulse_us[channel] = 0

    def release_all(self):
        # One write to the ALL_LED registers, so every output stops in the same instant.
        self._i2c.writeto(self._address, _ALL_OFF)
        for channel in range(self.channel_count):
            self._pulse_us[channel] = 0


class SimServos(_Servos):
    """Simulated servos for the unix port: each moves toward its pulse at a finite slew rate.

    position_us() is the modelled position (0 when released). A released servo stays where it
    went limp and starts from there when written again; before its first write it lies at its
    home_us. Integer arithmetic only; write_us and tick allocate nothing.
    """

    def __init__(self, channels, slew_us_per_s=None):
        from servomesh.firmware import config

        config.check_pins("sim", channels)
        if slew_us_per_s is None:
            slew_us_per_s = config.SIM_SLEW_US_PER_S
        high = config.SIM_SLEW_MAX_US_PER_S
        if type(slew_us_per_s) is not int or not 1 <= slew_us_per_s <= high:
            raise config.ConfigError("sim_slew_us_per_s: must be an integer from 1 to %d" % high)
        super().__init__(channels)
        self.slew_us_per_s = slew_us_per_s
        self._target_us = [0] * self.channel_count
        self._rest_us = [channel["home_us"] for channel in channels]
        self._last_us = -1  # no tick yet
        self._carry = 0  # the part of a step below 1 us, in millionths of a microsecond

    def write_us(self, channel, pulse_us):
        pulse_us = self._limited(channel, pulse_us)
        if self._pulse_us[channel] == 0:
            self._pulse_us[channel] = self._rest_us[channel]
        self._target_us[channel] = pulse_us

    def release(self, channel):
        if channel < 0:
            raise IndexError("channel")
        if self._pulse_us[channel]:
            self._rest_us[channel] = self._pulse_us[channel]
        self._pulse_us[channel] = 0

    def tick(self, now_us):
        last_us = self._last_us
        self._last_us = now_us
        if last_us < 0:
            return
        elapsed_us = (now_us - last_us) & _TICKS_MASK
        if elapsed_us >= _TICKS_HALF:
            return  # the clock stepped back: nothing moves
        if elapsed_us > _SIM_MAX_ELAPSED_US:
            elapsed_us = _SIM_MAX_ELAPSED_US
        # step = slew * elapsed / 1e6, split at milliseconds so every product stays below 2**30
        # (slew <= 1e5 us/s, elapsed <= 1e7 us); the remainder carries over to the next tick.
        slew = self.slew_us_per_s
        whole = slew * (elapsed_us // 1000)
        part = slew * (elapsed_us % 1000) + (whole % 1000) * 1000 + self._carry
        step_us = whole // 1000 + part // 1000000
        self._carry = part % 1000000
        if step_us == 0:
            return
        for channel in range(self.channel_count):
            position = self._pulse_us[channel]
            if position:
                target = self._target_us[channel]
                if position < target:
                    position += step_us
                    if position > target:
                        position = target
                elif position > target:
                    position -= step_us
                    if position < target:
                        position = target
                self._pulse_us[channel] = position


def make_servos(settings, machine=None):
    """The driver for a validated config's board.

    `machine` is the machine module, imported here only for a real board; tests pass a fake.
    Raises ConfigError for an unsupported board, a bad pin, a port without the board's
    hardware classes, or an I2C bus or PCA9685 that does not answer.
    """
    from servomesh.firmware import config

    board = settings["board"]
    channels = settings["channels"]
    if board == "sim":
        return SimServos(channels, settings.get("sim_slew_us_per_s"))
    if board not in ("esp32", "rp2040", "pca9685"):
        raise config.unsupported_board(board)
    config.check_pins(board, channels)  # before any hardware is touched
    if machine is None:
        import machine
    name = "I2C" if board == "pca9685" else "PWM"
    if not hasattr(machine, name):
        raise config.ConfigError(
            "board %r needs machine.%s, which this port does not have: use board 'sim'"
            % (board, name)
        )
    if board != "pca9685":
        return PwmServos(channels, board, machine.PWM, machine.Pin)
    bus = settings["i2c"]
    try:
        i2c = machine.I2C(
            bus["bus"],
            sda=machine.Pin(bus["sda"]),
            scl=machine.Pin(bus["scl"]),
            freq=bus["freq_hz"],
        )
    except (ValueError, OSError) as error:  # e.g. pins the bus cannot use
        raise config.ConfigError("i2c: %s" % error) from None
    return Pca9685Servos(channels, i2c, bus["address"])
