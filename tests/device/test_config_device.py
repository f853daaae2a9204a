"""Node config validation, load and save, run inside the MicroPython unix port."""

import json
import os

from expect import raises

from servomesh.firmware import config
from servomesh.firmware.config import ConfigError, key_bytes, load, public, save, validate

KEY = "00112233445566778899aabbccddeeff" * 2  # 32 bytes
PASSWORD = "correct-horse-battery"  # noqa: S105 (a test value)


def _raw(**changes):
    raw = {
        "node_id": "arm-1",
        "sender_id": 7,
        "board": "esp32",
        "channels": [{"pin": 13}, {"pin": 14, "min_us": 600, "max_us": 2400}],
        "key": KEY,
    }
    raw.update(changes)
    return raw


def _error(raw):
    return str(raises(ConfigError, validate, raw))


def _channel(**changes):
    channel = {"pin": 13}
    channel.update(changes)
    return _raw(channels=[channel])


def _folder():
    path = "/tmp/servomesh-test-config-" + "".join("%02x" % b for b in os.urandom(6))
    os.mkdir(path)
    return path


def _remove_tree(path):
    for name in os.listdir(path):
        child = path + "/" + name
        if os.stat(child)[0] & 0x4000:
            _remove_tree(child)
        else:
            os.remove(child)
    os.rmdir(path)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _read(path):
    with open(path) as f:
        return f.read()


# --- validate -------------------------------------------------------------------------------


def test_defaults_fill_a_minimal_config():
    loaded = validate(_raw())
    for key in config.DEFAULTS:
        assert loaded[key] == config.DEFAULTS[key], key
    assert loaded["channels"][0] == {
        "pin": 13,
        "min_us": 1000,
        "max_us": 2000,
        "home_us": 1500,
        "speed_us_per_s": 0,
        "accel_us_per_s2": 0,
        "failsafe": "hold",
    }
    assert loaded["channels"][1]["home_us"] == 1500  # midway between 600 and 2400
    assert "wifi" not in loaded and "i2c" not in loaded and "sim_slew_us_per_s" not in loaded
    assert loaded["key"] == KEY and key_bytes(loaded) == bytes(range(0, 256, 17)) * 2


def test_board_specific_defaults():
    sim = validate(_raw(board="sim"))
    assert sim["sim_slew_us_per_s"] == config.SIM_SLEW_US_PER_S == 4444
    pca = validate(_raw(board="pca9685", i2c={"sda": 21, "scl": 22}))
    assert pca["i2c"] == {"bus": 0, "sda": 21, "scl": 22, "address": 0x40, "freq_hz": 400000}


def test_required_keys():
    for key in ("node_id", "sender_id", "board", "channels"):
        raw = _raw()
        del raw[key]
        assert _error(raw).startswith(key + ": required") or key == "board", key
    raw = _raw()
    del raw["key"]
    assert _error(raw) == "key: required unless allow_unsigned is true"
    assert _error(_raw(channels=[{"min_us": 900}])) == "channels[0].pin: required"
    assert _error(_raw(board="pca9685")) == "i2c: required"
    assert _error(_raw(board="pca9685", i2c={"sda": 1})) == "i2c.scl: required"
    assert _error(_raw(wifi={"password": PASSWORD})) == "wifi.ssid: required"


def test_every_error_names_its_key():
    cases = (
        (_raw(node_id="Arm 1"), "node_id: "),
        (_raw(node_id=""), "node_id: "),
        (_raw(node_id="a" * 33), "node_id: "),
        (_raw(sender_id="7"), "sender_id: "),
        (_raw(board="esp8266"), "board 'esp8266' is not supported: choose esp32, rp2040, "),
        (_raw(i2c={"sda": 1, "scl": 2}), "i2c: only for board 'pca9685'"),
        (_raw(channels=[]), "channels: must be a list of 1 to 16 channels"),
        (_raw(channels={"pin": 1}), "channels: "),
        (_raw(channels=[{"pin": 13}, 5]), "channels[1]: must be a map"),
        (_channel(pin="13"), "channels[0].pin: must be an integer"),
        (_channel(pin=48), "channels[0].pin: GPIO 48 does not exist on esp32"),
        (_channel(pin=1), "channels[0].pin: GPIO 1 is UART0, the serial link, on esp32"),
        (_channel(min_us=2000, max_us=2000), "channels[0].max_us: must be greater than min_us"),
        (_channel(home_us=999), "channels[0].home_us: must be an integer from 1000 to 2000"),
        (_channel(speed_us_per_s=-1), "channels[0].speed_us_per_s: "),
        (_channel(accel_us_per_s2=1.5), "channels[0].accel_us_per_s2: "),
        (_channel(failsafe="limp"), "channels[0].failsafe: must be one of hold, home, release"),
        (_raw(control_hz=True), "control_hz: "),
        (_raw(telemetry_ms=5), "telemetry_ms: must be 0 (off) or "),
        (_raw(serial=1), "serial: must be true or false"),
        (_raw(wifi="home"), "wifi: must be a map"),
        (_raw(wifi={"ssid": "", "password": PASSWORD}), "wifi.ssid: "),
        (_raw(wifi={"ssid": "home", "password": "short"}), "wifi.password: must be empty "),
        (_raw(wifi={"ssid": "home", "password": "<hidden>"}), "wifi.password: is the <hidden>"),
        (_raw(key_id=0), "key_id: must be an integer from 1 to 255"),
        (_raw(key="zz" * 16), "key: must be 32 to 128 hex digits"),
        (_raw(key=KEY[:-1]), "key: must be 32 to 128 hex digits"),
        (_raw(key="<hidden>"), "key: is the <hidden> placeholder, not a key"),
        (_raw(key=5), "key: must be"),
        (_raw(allow_unsigned=True), "allow_unsigned: must be false when a key is set"),
        (_raw(allow_unsigned="yes"), "allow_unsigned: must be true or false"),
        (_raw(sim_slew_us_per_s=100), "sim_slew_us_per_s: only for board 'sim'"),
        (_raw(board="sim", sim_slew_us_per_s=0), "sim_slew_us_per_s: must be an integer"),
        (_raw(board="pca9685", i2c={"sda": 1, "scl": 2, "address": 0x3F}), "i2c.address: "),
        (_raw(board="pca9685", i2c={"sda": 1, "scl": 2}, channels=[{"pin": 16}]), "channels[0]"),
        ([1, 2], "config: must be a map"),
        ({1: 2}, "config: keys must be strings"),
    )
    for raw, start in cases:
        text = _error(raw)
        assert text.startswith(start), "%r does not start with %r" % (text, start)


def test_bounds_at_the_bounds():
    bounds = (
        ("sender_id", 1, 65535),
        ("control_hz", 10, 500),
        ("link_timeout_ms", 50, 60000),
        ("telemetry_ms", 10, 60000),
        ("udp_port", 1, 65535),
        ("key_id", 1, 255),
    )
    for key, low, high in bounds:
        assert validate(_raw(**{key: low}))[key] == low
        assert validate(_raw(**{key: high}))[key] == high
        assert _error(_raw(**{key: low - 1})).startswith(key + ": "), key
        assert _error(_raw(**{key: high + 1})).startswith(key + ": "), key
    assert validate(_raw(telemetry_ms=0))["telemetry_ms"] == 0
    channel_bounds = (
        ("min_us", 400, 2599),  # with max_us 2600
        ("max_us", 401, 2600),  # with min_us 400
        ("home_us", 400, 2600),
        ("speed_us_per_s", 0, 100000),
        ("accel_us_per_s2", 0, 4000000),
    )
    for key, low, high in channel_bounds:
        for value in (low, high, low - 1, high + 1):
            channel = {"pin": 13, "min_us": 400, "max_us": 2600}
            channel[key] = value
            if low <= value <= high:
                assert validate(_raw(channels=[channel]))["channels"][0][key] == value
            else:
                # min_us 2600 is within its range, but not below max_us
                named = "max_us" if key == "min_us" and value == 2600 else key
                text = _error(_raw(channels=[channel]))
                assert text.startswith("channels[0].%s: " % named), text
    sixteen = [{"pin": pin} for pin in range(16)]
    assert len(validate(_raw(board="sim", channels=sixteen))["channels"]) == 16
    assert _error(_raw(board="sim", channels=sixteen + [{"pin": 16}])).startswith("channels: ")
    assert validate(_raw(key="ab" * 16)) and validate(_raw(key="AB" * 64))
    assert _error(_raw(key="ab" * 15)).startswith("key: ")
    assert _error(_raw(key="ab" * 65)).startswith("key: ")
    wifi = {"ssid": "s" * 32, "password": "p" * 8}
    assert validate(_raw(wifi=wifi))["wifi"]["password"] == "p" * 8
    assert validate(_raw(wifi={"ssid": "open"}))["wifi"]["password"] == ""
    assert _error(_raw(wifi={"ssid": "s" * 33})).startswith("wifi.ssid: ")
    assert _error(_raw(wifi={"ssid": "s", "password": "p" * 65})).startswith("wifi.password: ")


def test_unknown_keys_are_refused():
    assert _error(_raw(contol_hz=100)) == "contol_hz: unknown key"
    assert _error(_channel(min=500)) == "channels[0].min: unknown key"
    assert _error(_raw(wifi={"ssid": "a", "pass": PASSWORD})) == "wifi.pass: unknown key"
    raw = _raw(board="pca9685", i2c={"sda": 1, "scl": 2, "adress": 0x41})
    assert _error(raw) == "i2c.adress: unknown key"
    assert _error(_raw(zeta=1, alpha=2)) == "alpha: unknown key"  # the same on every port


def test_null_counts_as_absent_and_input_is_not_changed():
    raw = _raw(wifi=None, key_id=None, allow_unsigned=None)
    before = json.dumps(raw)
    loaded = validate(raw)
    assert json.dumps(raw) == before
    assert "wifi" not in loaded and loaded["key_id"] == 1
    assert validate(loaded) == loaded  # a Config validates to itself


def test_unsigned_node_without_a_key():
    raw = _raw(allow_unsigned=True)
    del raw["key"]
    loaded = validate(raw)
    assert "key" not in loaded and key_bytes(loaded) is None
    assert public(loaded)["key"] is None


# --- secrets --------------------------------------------------------------------------------


def test_public_hides_secrets():
    loaded = validate(_raw(wifi={"ssid": "home", "password": PASSWORD}))
    shown = public(loaded)
    assert shown["key"] == "<hidden>" and shown["wifi"] == {"ssid": "home", "password": "<hidden>"}
    assert loaded["key"] == KEY and loaded["wifi"]["password"] == PASSWORD  # still usable
    text = json.dumps(shown)
    assert KEY not in text and PASSWORD not in text and "arm-1" in text
    assert public(validate(_raw(wifi={"ssid": "cafe"})))["wifi"]["password"] is None


def test_str_and_repr_of_a_config_hide_secrets():
    loaded = validate(_raw(wifi={"ssid": "home", "password": PASSWORD}))
    for text in (
        str(loaded),
        repr(loaded),
        "%s %r" % (loaded, loaded),
        str([loaded]),
        str({"config": loaded}),
        str(loaded["wifi"]),
        json.dumps(loaded),  # not JSON, but not the secrets either: use public()
    ):
        assert KEY not in text and PASSWORD not in text, text
        assert "arm-1" in text or "home" in text
    assert "<hidden>" in str(loaded)


def test_errors_never_echo_a_secret():
    secret = "secret-" + KEY[:20]
    for raw in (
        _raw(key=secret),
        _raw(key=secret + "x"),
        _raw(wifi={"ssid": "a", "password": secret * 4}),
        _raw(wifi={"ssid": "a", "password": 12345678}),
    ):
        text = _error(raw)
        assert secret not in text and "12345678" not in text, text


# --- load and save --------------------------------------------------------------------------


def test_load_never_raises():
    folder = _folder()
    try:
        path = folder + "/servomesh.json"
        assert load(path) == (None, "no config file " + path)
        _write(path, "{not json")
        assert load(path) == (None, path + ": not valid JSON")
        _write(path, json.dumps(_channel(pin=48)))
        assert load(path) == (None, path + ": channels[0].pin: GPIO 48 does not exist on esp32")
        _write(path, "[1, 2]")
        assert load(path) == (None, path + ": config: must be a map")
        _write(path, " " * 9000)
        assert load(path)[0] is None and "more than a config can be" in load(path)[1]
        os.remove(path)
        os.mkdir(path)
        loaded, error = load(path)
        assert loaded is None and error.startswith(path + ": cannot read: "), error
    finally:
        _remove_tree(folder)


def test_load_default_path_is_the_current_folder():
    assert config.CONFIG_FILE == "servomesh.json"
    folder = _folder()
    here = os.getcwd()
    try:
        os.chdir(folder)
        assert load() == (None, "no config file servomesh.json")
        save(_raw())
        assert os.listdir(".") == ["servomesh.json"]
        assert load()[1] is None
    finally:
        os.chdir(here)
        _remove_tree(folder)


def test_save_round_trips_and_leaves_no_temporary_file():
    folder = _folder()
    try:
        path = folder + "/servomesh.json"
        written = save(_raw(wifi={"ssid": "home", "password": PASSWORD}), path)
        loaded, error = load(path)
        assert error is None and os.listdir(folder) == ["servomesh.json"]
        assert loaded == written and loaded["wifi"]["password"] == PASSWORD
        assert json.loads(_read(path))["key"] == KEY  # the file is plain JSON
        assert KEY not in str(loaded) and PASSWORD not in str(loaded)
        save(_raw(node_id="arm-2"), path)  # replaces the old file
        assert load(path)[0]["node_id"] == "arm-2"
    finally:
        _remove_tree(folder)


def test_save_refuses_an_invalid_config_and_keeps_the_old_file():
    folder = _folder()
    try:
        path = folder + "/servomesh.json"
        save(_raw(), path)
        before = _read(path)
        assert str(raises(ConfigError, save, _raw(control_hz=1), path)).startswith("control_hz")
        assert _read(path) == before and os.listdir(folder) == ["servomesh.json"]
    finally:
        _remove_tree(folder)


def test_save_that_cannot_write_keeps_the_old_file():
    folder = _folder()
    try:
        path = folder + "/servomesh.json"
        save(_raw(), path)
        before = _read(path)
        os.mkdir(path + ".tmp")  # the temporary file cannot be opened for writing
        raises(OSError, save, _raw(node_id="arm-2"), path)
        assert _read(path) == before
        os.rmdir(path + ".tmp")
        _write(path + ".tmp", "half a file from a power cut")
        save(_raw(node_id="arm-3"), path)  # a stale temporary file is simply replaced
        assert load(path)[0]["node_id"] == "arm-3" and os.listdir(folder) == ["servomesh.json"]
    finally:
        _remove_tree(folder)


def test_public_of_a_full_config_is_plain_data():
    full = validate(
        _raw(
            board="sim",
            channels=[{"pin": pin, "failsafe": "home"} for pin in range(16)],
            wifi={"ssid": "home", "password": PASSWORD},
        )
    )
    shown = public(full)
    assert type(shown) is dict and type(shown["wifi"]) is dict
    assert json.loads(json.dumps(shown)) == shown
