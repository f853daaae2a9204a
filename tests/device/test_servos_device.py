"""The hardware layer with fake machine classes, run inside the MicroPython unix port."""

from expect import raises
from fakes import FakeI2C, FakeMachine, FakePin, FakePWM, PwmOnly
from heap_checks import locked

from servomesh.firmware import config, servos
from servomesh.firmware.config import ConfigError, validate
from servomesh.firmware.servos import Pca9685Servos, PwmServos, SimServos, make_servos

ESP32_OUTPUTS = list(range(6)) + list(range(12, 20)) + [21, 22, 23, 25, 26, 27, 32, 33]
TICK_US = 10000  # a 100 Hz control loop


def _channels(*pins):
    return [{"pin": pin, "min_us": 500, "max_us": 2500, "home_us": 1500} for pin in pins]


def _pwm(board, *pins):
    fake = FakeMachine()
    return PwmServos(_channels(*pins), board, fake.PWM, fake.Pin), fake.pwms


def _pca(*pins):
    i2c = FakeI2C()
    return Pca9685Servos(_channels(*pins), i2c), i2c


def _message(error_type, function, *args):
    return str(raises(error_type, function, *args))


# --- PwmServos ------------------------------------------------------------------------------


def test_esp32_duty_ns_for_1000_1500_2000_us():
    drive, pwms = _pwm("esp32", 13)
    for pulse_us in (1000, 1500, 2000):
        drive.write_us(0, pulse_us)
        assert pwms[0].duty_ns_value == pulse_us * 1000
        assert drive.position_us(0) == pulse_us
    assert pwms[0].duty_ns_value == 2000000


def test_pwm_claims_pins_at_50_hz_released():
    drive, pwms = _pwm("esp32", 13, 14)
    assert [pwm.gpio for pwm in pwms] == [13, 14]
    assert [pwm.freq_hz for pwm in pwms] == [50, 50]
    assert [pwm.duty_ns_value for pwm in pwms] == [0, 0]  # no pulse until the first write
    assert drive.released(0) and drive.released(1)
    assert drive.position_us(0) == 0 and drive.channel_count == 2


def test_esp32_refuses_flash_input_only_and_missing_pins():
    for gpios, text in (
        (range(6, 12), "GPIO %d is a flash pin on esp32"),
        (range(34, 40), "GPIO %d is input-only on esp32"),
        ((-1, 20, 24, 28, 29, 30, 31, 40, 48), "GPIO %d does not exist on esp32"),
    ):
        for gpio in gpios:
            error = _message(ConfigError, _pwm, "esp32", 13, gpio)
            assert error == "channels[1].pin: " + text % gpio, error


def test_esp32_accepts_every_output_gpio():
    _, pwms = _pwm("esp32", *ESP32_OUTPUTS[:16])
    assert len(pwms) == 16
    _, pwms = _pwm("esp32", *ESP32_OUTPUTS[16:])
    assert [pwm.gpio for pwm in pwms] == ESP32_OUTPUTS[16:]


def test_rp2040_pin_range():
    _, pwms = _pwm("rp2040", 0, 1, 28, 29)
    assert [pwm.gpio for pwm in pwms] == [0, 1, 28, 29]
    for gpio in (-1, 30):
        text = _message(ConfigError, _pwm, "rp2040", gpio)
        assert text == "channels[0].pin: GPIO %d does not exist on rp2040" % gpio, text


def test_rp2040_shares_a_slice_but_not_an_output():
    _pwm("rp2040", 0, 1)  # slice 0 A and B: both at 50 Hz, fine
    text = _message(ConfigError, _pwm, "rp2040", 0, 1, 16)  # 16 is slice 0 A again
    assert text == "channels[2].pin: GPIO 16 drives the same PWM output as GPIO 0 of channels[0]"


def test_same_pin_twice_or_another_board_is_refused():
    text = _message(ConfigError, _pwm, "esp32", 13, 14, 13)
    assert text == "channels[2].pin: GPIO 13 is already used by channels[0]", text
    assert "already used" in _message(ConfigError, _pwm, "rp2040", 5, 5)
    assert "esp32 or rp2040" in _message(ConfigError, _pwm, "pca9685", 1)


def test_pwm_release_and_reattach():
    drive, pwms = _pwm("rp2040", 2, 3)
    drive.write_us(0, 1500)
    drive.write_us(1, 1600)
    drive.release(0)
    assert drive.released(0) and drive.position_us(0) == 0 and pwms[0].duty_ns_value == 0
    assert not drive.released(1) and pwms[1].duty_ns_value == 1600000
    drive.write_us(0, 1200)  # attaching again is just a write
    assert not drive.released(0) and pwms[0].duty_ns_value == 1200000
    drive.release_all()
    assert [pwm.duty_ns_value for pwm in pwms] == [0, 0]
    assert drive.released(0) and drive.released(1)
    drive.write_us(0, 1500)
    drive.deinit()  # frees the pins for a new config
    assert pwms[0].deinited and pwms[0].duty_ns_value == 0 and drive.released(0)


def test_write_us_clamps_to_the_limits_and_refuses_bad_channels():
    drive, pwms = _pwm("esp32", 13, 14)
    drive.write_us(0, 100)
    assert drive.position_us(0) == 500 and pwms[0].duty_ns_value == 500000
    drive.write_us(0, 9000)
    assert drive.position_us(0) == 2500 and pwms[0].duty_ns_value == 2500000
    raises(IndexError, drive.write_us, -1, 1500)
    raises(IndexError, drive.write_us, 2, 1500)
    raises(IndexError, drive.release, -1)
    assert pwms[1].writes == 0


def test_pwm_that_cannot_be_claimed_frees_the_others():
    made = []

    def pwm(pin, freq, duty_ns):
        if pin.gpio == 14:
            raise ValueError("out of PWM channels")
        made.append(FakePWM(pin, freq, duty_ns))
        return made[-1]

    text = _message(ConfigError, PwmServos, _channels(13, 14), "esp32", pwm, FakePin)
    assert text == "channels[1].pin: GPIO 14: out of PWM channels", text
    assert made[0].deinited


# --- Pca9685Servos --------------------------------------------------------------------------


def test_pca9685_setup_sequence():
    assert servos.PCA9685_PRESCALE == round(25e6 / (4096 * 50)) - 1 == 121
    drive, i2c = _pca(0)
    assert i2c.writes == [
        (0x40, 0xFD, b"\x10"),  # ALL_LED_OFF_H full off: released before anything else
        (0x40, 0x01, b"\x04"),  # MODE2 totem pole
        (0x40, 0x00, b"\x10"),  # MODE1 sleep
        (0x40, 0xFE, bytes([121])),  # prescale, only writable asleep
        (0x40, 0x00, b"\x20"),  # awake, auto-increment
    ]
    assert drive.released(0)


def test_pca9685_channel_register_writes():
    drive, i2c = _pca(0, 3, 15)
    i2c.writes = []
    for pulse_us, counts in ((1000, 205), (1500, 307), (2000, 410)):
        drive.write_us(1, pulse_us)  # channel 1 is output 3: LED3 at 0x06 + 4 * 3
        assert i2c.writes[-1] == (0x40, 0x12, bytes([0, 0, counts & 0xFF, counts >> 8]))
        assert drive.position_us(1) == pulse_us
    drive.write_us(2, 2500)  # 512 counts: the high byte matters
    assert i2c.writes[-1] == (0x40, 0x42, b"\x00\x00\x00\x02")
    assert len(i2c.writes) == 4


def test_pca9685_release_and_release_all_in_one_write():
    drive, i2c = _pca(0, 1, 2)
    for channel in range(3):
        drive.write_us(channel, 1500)
    i2c.writes = []
    drive.release(1)
    assert i2c.writes == [(0x40, 0x0A, b"\x00\x00\x00\x10")]
    assert drive.released(1) and drive.position_us(1) == 0 and not drive.released(0)
    i2c.writes = []
    drive.release_all()
    assert i2c.writes == [(0x40, 0xFA, b"\x00\x00\x00\x10")]
    assert [drive.released(channel) for channel in range(3)] == [True, True, True]


def test_pca9685_missing_device():
    channels = _channels(0)
    text = _message(ConfigError, Pca9685Servos, channels, FakeI2C(addresses=()))
    assert text == "no PCA9685 at I2C address 0x40", text
    text = _message(ConfigError, Pca9685Servos, channels, FakeI2C(), 0x41)
    assert text == "no PCA9685 at I2C address 0x41", text


def test_pca9685_outputs_are_0_to_15():
    _pca(0, 15)
    text = _message(ConfigError, _pca, 16)
    assert text == "channels[0].pin: output 16 does not exist on pca9685 (0 to 15)", text
    assert "already used" in _message(ConfigError, _pca, 4, 4)


# --- SimServos ------------------------------------------------------------------------------


def _sim(*pins, slew_us_per_s=4444):
    return SimServos(_channels(*pins), slew_us_per_s)


def _ticks(drive, start_us, count, step_us=TICK_US):
    for i in range(1, count + 1):
        drive.tick((start_us + i * step_us) & 0x3FFFFFFF)
    return (start_us + count * step_us) & 0x3FFFFFFF


def test_sim_slews_666_us_in_150_ms():
    drive = _sim(0)
    drive.tick(1000)
    drive.write_us(0, 1500)  # a servo that was never driven lies at home_us
    assert drive.position_us(0) == 1500
    drive.write_us(0, 2166)
    now = _ticks(drive, 1000, 14)
    assert drive.position_us(0) == 1500 + 4444 * 140 // 1000, drive.position_us(0)
    _ticks(drive, now, 1)
    assert drive.position_us(0) == 2166


def test_sim_never_overshoots():
    drive = _sim(0, 1)
    drive.tick(0)
    drive.write_us(0, 1530)
    drive.write_us(1, 1470)
    now = 0
    for _ in range(20):
        now = _ticks(drive, now, 1, 7000)
        assert 1500 <= drive.position_us(0) <= 1530
        assert 1470 <= drive.position_us(1) <= 1500
    assert drive.position_us(0) == 1530 and drive.position_us(1) == 1470


def test_sim_released_holds_no_position_and_resumes_where_it_went_limp():
    drive = _sim(0)
    drive.tick(0)
    drive.write_us(0, 1500)
    drive.write_us(0, 1000)
    now = _ticks(drive, 0, 5)
    limp_us = drive.position_us(0)
    assert 1000 < limp_us < 1500
    drive.release(0)
    assert drive.released(0) and drive.position_us(0) == 0
    now = _ticks(drive, now, 50)
    assert drive.position_us(0) == 0
    drive.write_us(0, 1000)
    assert drive.position_us(0) == limp_us  # from where it lay, not where it was going


def test_sim_slew_is_configurable_and_survives_the_tick_wrap():
    drive = _sim(0, slew_us_per_s=1000)
    start = 0x3FFFFFFF - 25000  # ticks wrap to 0 during the move
    drive.tick(start)
    drive.write_us(0, 1500)
    drive.write_us(0, 2000)
    _ticks(drive, start, 10)  # 100 ms at 1000 us/s
    assert drive.position_us(0) == 1600, drive.position_us(0)


def test_sim_fractions_carry_over_and_long_gaps_arrive():
    drive = _sim(0, slew_us_per_s=100)  # 1 us per 10 ms tick, 0.1 us per 1 ms
    drive.tick(0)
    drive.write_us(0, 1500)
    drive.write_us(0, 2500)
    now = _ticks(drive, 0, 100, 1000)  # 100 ticks of 1 ms: no single tick moves 1 us
    assert drive.position_us(0) == 1510, drive.position_us(0)
    drive.tick(now - 5000)  # the clock stepped back: nothing moves
    assert drive.position_us(0) == 1510
    drive.tick(now + 400000000)  # a 400 s stall counts as 10 s (1000 us at 100 us/s)
    assert drive.position_us(0) == 2500
    for slew in (0, 100001, True):
        assert "sim_slew_us_per_s" in _message(ConfigError, SimServos, _channels(0), slew)


# --- nothing allocates in the hot path ------------------------------------------------------


def test_write_us_release_and_tick_allocate_nothing():
    fake = FakeMachine()
    pwm = PwmServos(_channels(13, 14), "esp32", fake.PWM, fake.Pin)
    pca, i2c = _pca(0, 1)
    i2c.writes = None
    sim = _sim(0, 1)
    clock = [0]

    def sim_tick():
        clock[0] = (clock[0] + TICK_US) & 0x3FFFFFFF
        sim.tick(clock[0])

    calls = (
        ("pwm write_us", lambda: pwm.write_us(1, 1733)),
        ("pwm release", lambda: pwm.release(1)),
        ("pca9685 write_us", lambda: pca.write_us(1, 1733)),
        ("pca9685 release", lambda: pca.release(1)),
        ("pca9685 release_all", pca.release_all),
        ("sim write_us", lambda: sim.write_us(1, 2100)),
        ("sim tick", sim_tick),
        ("sim position_us", lambda: sim.position_us(1)),
        ("sim release", lambda: sim.release(1)),
    )
    sim_tick()
    sim.write_us(1, 1000)
    for name, call in calls:
        call()  # warm up outside the lock
        if name == "sim release":
            sim.write_us(1, 2100)
        assert locked(call) is None, name
    assert pwm.released(1) and pca.released(1) and sim.released(1)
    assert fake.pwms[1].duty_ns_value == 0 and i2c.registers[0xFD] == 0x10


# --- make_servos ----------------------------------------------------------------------------


def _config(board, *pins, **extra):
    raw = {"node_id": "n1", "sender_id": 1, "board": board, "allow_unsigned": True}
    raw["channels"] = [{"pin": pin} for pin in pins]
    if board == "pca9685":
        raw["i2c"] = {"sda": 21, "scl": 22}
    raw.update(extra)
    return validate(raw)


def test_make_servos_sim_and_pwm_boards():
    drive = make_servos(_config("sim", 0, 1, sim_slew_us_per_s=2000))
    assert isinstance(drive, SimServos) and drive.slew_us_per_s == 2000
    assert make_servos(_config("sim", 0)).slew_us_per_s == config.SIM_SLEW_US_PER_S
    for board in ("esp32", "rp2040"):
        fake = FakeMachine()
        drive = make_servos(_config(board, 4, 5), fake)
        assert isinstance(drive, PwmServos)
        assert [pwm.gpio for pwm in fake.pwms] == [4, 5]
        drive.write_us(1, 1250)
        assert fake.pwms[1].duty_ns_value == 1250000


def test_make_servos_pca9685():
    fake = FakeMachine()
    drive = make_servos(_config("pca9685", 0, 7), fake)
    assert isinstance(drive, Pca9685Servos)
    i2c = fake.i2cs[0]
    assert (i2c.bus, i2c.sda.gpio, i2c.scl.gpio, i2c.freq) == (0, 21, 22, 400000)
    assert "0x40" in _message(ConfigError, make_servos, _config("pca9685", 0), FakeMachine(()))


def test_make_servos_unknown_board_and_bad_pins():
    text = _message(ConfigError, make_servos, {"board": "esp8266", "channels": []})
    assert text == "board 'esp8266' is not supported: choose esp32, rp2040, pca9685 or sim"
    fake = FakeMachine()
    config = {"board": "esp32", "channels": _channels(13, 48)}  # not validated: still refused
    text = _message(ConfigError, make_servos, config, fake)
    assert text == "channels[1].pin: GPIO 48 does not exist on esp32", text
    assert fake.pwms == []  # refused before any pin was claimed


def test_make_servos_needs_the_ports_hardware():
    # The unix port's own machine module has no PWM: a board config there fails clearly.
    text = _message(ConfigError, make_servos, _config("esp32", 13))
    assert text == "board 'esp32' needs machine.PWM, which this port does not have: use board 'sim'"
    text = _message(ConfigError, make_servos, _config("pca9685", 0), PwmOnly())
    assert "machine.I2C" in text
