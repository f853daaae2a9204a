"""TEST DOUBLES for machine.Pin, machine.PWM and machine.I2C: never uploaded to a board.

The unix port's built-in `machine` has neither PWM nor I2C (and a machine.py on the path cannot
shadow it), so the drivers take these classes by injection. Each fake records what a test needs
to check; a FakeMachine keeps its own records, so tests share no state.
"""

_ENODEV = 19
_PERIOD_NS = 20000000  # 50 Hz, the only frequency the drivers use


class FakePin:
    def __init__(self, gpio):
        self.gpio = gpio


class FakePWM:
    """machine.PWM: remembers its frequency and duty; duty_ns() allocates nothing."""

    def __init__(self, pin, freq=None, duty_ns=None):
        self.gpio = pin.gpio
        self.freq_hz = freq
        self.duty_ns_value = duty_ns
        self.writes = 0
        self.deinited = False

    def duty_ns(self, value=None):
        if value is None:
            return self.duty_ns_value
        if self.deinited or not 0 <= value <= _PERIOD_NS:
            raise ValueError("bad duty_ns")
        self.duty_ns_value = value
        self.writes += 1
        return None

    def deinit(self):
        self.deinited = True


class FakeI2C:
    """machine.I2C with register-pointer devices (like a PCA9685) at `addresses`.

    `registers` is one 256-byte register file; `writes` logs each `writeto` as
    (address, first register, data bytes). Set `writes = None` before a heap-locked check:
    logging is what allocates.
    """

    def __init__(self, addresses=(0x40,), bus=0, sda=None, scl=None, freq=None):
        self.addresses = addresses
        self.bus = bus
        self.sda = sda
        self.scl = scl
        self.freq = freq
        self.registers = bytearray(256)
        self.writes = []

    def _check(self, address):
        if address not in self.addresses:
            raise OSError(_ENODEV)

    def readfrom_mem(self, address, register, count):
        self._check(address)
        return bytes(self.registers[register : register + count])

    def writeto(self, address, buf, stop=True):
        self._check(address)
        register = buf[0]
        for i in range(1, len(buf)):  # as with MODE1 auto-increment on
            self.registers[(register + i - 1) & 0xFF] = buf[i]
        if self.writes is not None:
            self.writes.append((address, register, bytes(buf[1:])))
        return len(buf)


class FakeMachine:
    """The parts of the machine module that make_servos uses; keeps what it made."""

    def __init__(self, i2c_addresses=(0x40,)):
        self.i2c_addresses = i2c_addresses
        self.pwms = []
        self.i2cs = []

    def Pin(self, gpio):
        return FakePin(gpio)

    def PWM(self, pin, freq=None, duty_ns=None):
        pwm = FakePWM(pin, freq, duty_ns)
        self.pwms.append(pwm)
        return pwm

    def I2C(self, bus, sda=None, scl=None, freq=None):
        i2c = FakeI2C(self.i2c_addresses, bus, sda, scl, freq)
        self.i2cs.append(i2c)
        return i2c


class PwmOnly:
    """A machine module with Pin and PWM but no I2C (like a port built without it)."""

    def __init__(self):
        fake = FakeMachine()
        self.Pin = fake.Pin
        self.PWM = fake.PWM
