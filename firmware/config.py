"""Node configuration: defaults, validation, and `servomesh.json` on the node's flash.

The file lives in the current folder: the flash root on a board, the flash folder of a
simulated node. `validate` turns a raw map (from the file or a CONFIG_SET) into a complete
`Config` or raises `ConfigError` whose message starts with the first bad key's path, e.g.
`channels[2].pin: GPIO 48 does not exist on esp32`.

Secrets (`key`, `wifi.password`) stay plain strings inside a `Config`, but its repr and str hide
them, and `public()` is the copy to send or print. Quirks of a dict subclass on MicroPython:
`dict(config)` and `d.update(config)` raise ValueError and `json.dumps(config)` writes the
hidden repr (use `public()` or `save()`); `config == d` compares items, `d == config` is False.
"""

import binascii
import json
import os

from servomesh.protocol import messages
from servomesh.protocol.compat import const

CONFIG_FILE = "servomesh.json"
HIDDEN = "<hidden>"
BOARDS = ("esp32", "rp2040", "pca9685", "sim")
FAILSAFES = messages.FAILSAFES
MAX_CHANNELS = const(16)
PULSE_MIN_US = const(400)
PULSE_MAX_US = const(2600)
SPEED_MAX_US_PER_S = const(100000)
ACCEL_MAX_US_PER_S2 = const(4000000)  # the motion engine caps at 2**22
# 0.15 s per 60 degrees, with 60 degrees taken as 666 us of pulse.
SIM_SLEW_US_PER_S = const(4444)
SIM_SLEW_MAX_US_PER_S = const(100000)  # keeps the simulation's integer model within 2**30
_MAX_FILE_BYTES = const(8192)  # 16 channels take about 2 KiB; a bigger file is not ours

DEFAULTS = {
    "udp_host": "0.0.0.0",  # noqa: S104 (a board serves the LAN; the simulator binds 127.0.0.1)
    "control_hz": 100,
    "link_timeout_ms": 1000,
    "telemetry_ms": 0,
    "udp_port": 5683,
    "serial": True,
    "key_id": 1,
    "allow_unsigned": False,
}
# home_us defaults to midway between min_us and max_us.
CHANNEL_DEFAULTS = {
    "min_us": 1000,
    "max_us": 2000,
    "speed_us_per_s": 0,
    "accel_us_per_s2": 0,
    "failsafe": "hold",
}
I2C_DEFAULTS = {"bus": 0, "address": 0x40, "freq_hz": 400000}

_TOP_KEYS = ("node_id", "sender_id", "board", "i2c", "channels", "control_hz", "link_timeout_ms")
_TOP_KEYS += ("telemetry_ms", "udp_port", "serial", "wifi", "key_id", "key", "allow_unsigned")
_TOP_KEYS += ("sim_slew_us_per_s", "udp_host")
_TOP_INTS = (
    ("sender_id", 1, 65535),
    ("control_hz", 10, 500),
    ("link_timeout_ms", 50, 60000),
    ("telemetry_ms", 0, 60000),
    ("udp_port", 1, 65535),
    ("key_id", 1, 255),
)
_CHANNEL_KEYS = ("pin", "min_us", "max_us", "home_us", "speed_us_per_s", "accel_us_per_s2")
_CHANNEL_KEYS += ("failsafe",)
_I2C_KEYS = ("bus", "sda", "scl", "address", "freq_hz")
_WIFI_KEYS = ("ssid", "password")
_SECRETS = ("key", "password")
_NODE_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"
_ESP32_MISSING = (20, 24, 28, 29, 30, 31)
_PIN_NAMES = {"esp32": "GPIO", "rp2040": "GPIO", "pca9685": "output", "sim": "pin"}
_REQUIRED = object()


class ConfigError(ValueError):
    """The config is invalid; the message starts with the bad key's path."""


class Config(dict):
    """A validated config: a dict whose repr and str hide `key` and `wifi.password`."""

    def __repr__(self):
        return repr(_plain(self, True))

    __str__ = __repr__


def unsupported_board(board):
    """The ConfigError for a board name servomesh does not drive."""
    return ConfigError("board %r is not supported: choose esp32, rp2040, pca9685 or sim" % (board,))


def _fail(path, text):
    raise ConfigError(path + ": " + text)


def _known(raw, prefix, keys):
    if not isinstance(raw, dict):
        _fail(prefix[:-1] or "config", "must be a map")
    for key in raw:
        if type(key) is not str:
            _fail(prefix[:-1] or "config", "keys must be strings")
    # Sorted, so every port names the same first unknown key whatever its dict order.
    for key in sorted(raw):
        if key not in keys:
            _fail(prefix + key, "unknown key")


def _get(raw, prefix, key, default):
    value = raw.get(key)
    if value is None:  # JSON null counts as absent
        if default is _REQUIRED:
            _fail(prefix + key, "required")
        return default
    return value


def _int(raw, prefix, key, low, high, default=_REQUIRED):
    value = _get(raw, prefix, key, default)
    # type() rather than isinstance(): True and False are not numbers here.
    if type(value) is not int or value < low or value > high:
        _fail(prefix + key, "must be an integer from %d to %d" % (low, high))
    return value


def _bool(raw, key, default):
    value = _get(raw, "", key, default)
    if type(value) is not bool:
        _fail(key, "must be true or false")
    return value


def _pin_error(board, pin, serial):
    if board == "esp32":
        if serial and (pin == 1 or pin == 3):
            return (
                "GPIO %d is UART0, the serial link, on esp32: pick another or serial: false" % pin
            )
        if 6 <= pin <= 11:
            return "GPIO %d is a flash pin on esp32" % pin
        if 34 <= pin <= 39:
            return "GPIO %d is input-only on esp32" % pin
        if pin < 0 or pin > 33 or pin in _ESP32_MISSING:
            return "GPIO %d does not exist on esp32" % pin
    elif board == "rp2040":
        if pin < 0 or pin > 29:
            return "GPIO %d does not exist on rp2040" % pin
    elif board == "pca9685":
        if pin < 0 or pin > 15:
            return "output %d does not exist on pca9685 (0 to 15)" % pin
    elif pin < 0 or pin > 63:
        return "pin %d does not exist on sim (0 to 63)" % pin
    return None


def check_pins(board, channels, serial=False):
    """Raise ConfigError for the first channel pin `board` cannot drive or already drives.
    With `serial` (the serial link on), GPIO 1 and 3 belong to the link on esp32."""
    if board not in BOARDS:
        raise unsupported_board(board)
    owner = {}  # hardware output -> index of the channel that has it
    for index in range(len(channels)):
        pin = channels[index]["pin"]
        path = "channels[%d].pin" % index
        if type(pin) is not int:
            _fail(path, "must be an integer")
        error = _pin_error(board, pin, serial)
        if error:
            _fail(path, error)
        output = pin
        if board == "rp2040":
            # GPIO n and n+16 are the same PWM slice channel: they would always pulse alike.
            output = (pin // 2 % 8) * 2 + pin % 2
        if output in owner:
            other = owner[output]
            other_pin = channels[other]["pin"]
            if other_pin != pin:
                text = "GPIO %d drives the same PWM output as GPIO %d of channels[%d]"
                _fail(path, text % (pin, other_pin, other))
            _fail(path, "%s %d is already used by channels[%d]" % (_PIN_NAMES[board], pin, other))
        owner[output] = index


def _channel(raw, prefix):
    _known(raw, prefix, _CHANNEL_KEYS)
    pin = _get(raw, prefix, "pin", _REQUIRED)
    if type(pin) is not int:
        _fail(prefix + "pin", "must be an integer")
    min_us = _int(raw, prefix, "min_us", PULSE_MIN_US, PULSE_MAX_US, CHANNEL_DEFAULTS["min_us"])
    max_us = _int(raw, prefix, "max_us", PULSE_MIN_US, PULSE_MAX_US, CHANNEL_DEFAULTS["max_us"])
    if max_us <= min_us:
        _fail(prefix + "max_us", "must be greater than min_us (%d)" % min_us)
    home_us = _int(raw, prefix, "home_us", min_us, max_us, (min_us + max_us) // 2)
    speed = _int(raw, prefix, "speed_us_per_s", 0, SPEED_MAX_US_PER_S, 0)
    accel = _int(raw, prefix, "accel_us_per_s2", 0, ACCEL_MAX_US_PER_S2, 0)
    failsafe = _get(raw, prefix, "failsafe", CHANNEL_DEFAULTS["failsafe"])
    if type(failsafe) is not str or failsafe not in FAILSAFES:
        _fail(prefix + "failsafe", "must be one of hold, home, release")
    return {
        "pin": pin,
        "min_us": min_us,
        "max_us": max_us,
        "home_us": home_us,
        "speed_us_per_s": speed,
        "accel_us_per_s2": accel,
        "failsafe": failsafe,
    }


def _channels(raw, board, serial):
    if type(raw) is not list or not 1 <= len(raw) <= MAX_CHANNELS:
        _fail("channels", "must be a list of 1 to %d channels" % MAX_CHANNELS)
    channels = [_channel(raw[index], "channels[%d]." % index) for index in range(len(raw))]
    check_pins(board, channels, serial)
    return channels


def _i2c(raw):
    _known(raw, "i2c.", _I2C_KEYS)
    return {
        "bus": _int(raw, "i2c.", "bus", 0, 7, I2C_DEFAULTS["bus"]),
        "sda": _int(raw, "i2c.", "sda", 0, 63),
        "scl": _int(raw, "i2c.", "scl", 0, 63),
        "address": _int(raw, "i2c.", "address", 0x40, 0x7F, I2C_DEFAULTS["address"]),
        "freq_hz": _int(raw, "i2c.", "freq_hz", 10000, 1000000, I2C_DEFAULTS["freq_hz"]),
    }


def _ipv4(host):
    parts = host.split(".") if type(host) is str else ()
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        _fail("udp_host", "must be an IPv4 address such as 0.0.0.0")
    return host


def _wifi(raw):
    _known(raw, "wifi.", _WIFI_KEYS)
    ssid = _get(raw, "wifi.", "ssid", _REQUIRED)
    if type(ssid) is not str or not 1 <= len(ssid.encode()) <= 32:
        _fail("wifi.ssid", "must be a string of 1 to 32 bytes")
    password = _get(raw, "wifi.", "password", "")
    # Never echo the value: this message may be logged or sent to the host.
    if type(password) is not str or not (password == "" or 8 <= len(password) <= 64):
        _fail("wifi.password", "must be empty (an open network) or 8 to 64 characters")
    if password == HIDDEN:
        _fail("wifi.password", "is the %s placeholder, not a password" % HIDDEN)
    return Config({"ssid": ssid, "password": password})


def _key(raw):
    key = raw.get("key")
    if key == HIDDEN:
        _fail("key", "is the %s placeholder, not a key" % HIDDEN)
    if key is not None:
        try:
            ok = type(key) is str and 32 <= len(key) <= 128 and binascii.unhexlify(key)
        except ValueError:  # an odd length or a character that is not a hex digit
            ok = False
        if not ok:  # never echo the value
            _fail("key", "must be 32 to 128 hex digits (16 to 64 bytes)")
    return key


def validate(raw):
    """Return a complete Config (defaults filled) for `raw`, or raise ConfigError."""
    _known(raw, "", _TOP_KEYS)
    config = Config()
    node_id = _get(raw, "", "node_id", _REQUIRED)
    if type(node_id) is not str or not 1 <= len(node_id) <= 32 or node_id.strip(_NODE_ID_CHARS):
        _fail("node_id", "must be 1 to 32 characters of a-z, 0-9, - and _")
    config["node_id"] = node_id
    board = _get(raw, "", "board", _REQUIRED)
    if type(board) is not str or board not in BOARDS:
        raise unsupported_board(board)
    config["board"] = board
    if board == "pca9685":
        config["i2c"] = _i2c(_get(raw, "", "i2c", _REQUIRED))
    elif raw.get("i2c") is not None:
        _fail("i2c", "only for board 'pca9685'")
    serial = _bool(raw, "serial", DEFAULTS["serial"])
    config["channels"] = _channels(_get(raw, "", "channels", _REQUIRED), board, serial)
    for key, low, high in _TOP_INTS:
        config[key] = _int(raw, "", key, low, high, DEFAULTS.get(key, _REQUIRED))
    if 0 < config["telemetry_ms"] < 10:
        _fail("telemetry_ms", "must be 0 (off) or an integer from 10 to 60000")
    config["serial"] = serial
    config["udp_host"] = _ipv4(_get(raw, "", "udp_host", DEFAULTS["udp_host"]))
    if raw.get("wifi") is not None:
        config["wifi"] = _wifi(raw["wifi"])
    key = _key(raw)
    allow_unsigned = _bool(raw, "allow_unsigned", DEFAULTS["allow_unsigned"])
    if key is None and not allow_unsigned:
        _fail("key", "required unless allow_unsigned is true")
    if key is not None:
        if allow_unsigned:
            # The receiver ignores the flag once it has a key; a config must not say otherwise.
            _fail("allow_unsigned", "must be false when a key is set")
        config["key"] = key
    config["allow_unsigned"] = allow_unsigned
    if board == "sim":
        slew = _int(raw, "", "sim_slew_us_per_s", 1, SIM_SLEW_MAX_US_PER_S, SIM_SLEW_US_PER_S)
        config["sim_slew_us_per_s"] = slew
    elif raw.get("sim_slew_us_per_s") is not None:
        _fail("sim_slew_us_per_s", "only for board 'sim'")
    return config


def _plain(value, hide):
    # A copy made of plain dicts and lists: MicroPython's dict() and json cannot copy a Config.
    if isinstance(value, dict):
        copy = {}
        for key in value:
            item = value[key]
            if hide and key in _SECRETS:
                item = HIDDEN if item else None
            copy[key] = _plain(item, hide)
        return copy
    if isinstance(value, list):
        return [_plain(item, hide) for item in value]
    return value


def public(config):
    """A plain copy safe to send or print: secrets are "<hidden>" when set, else None."""
    shown = _plain(config, True)
    if "key" not in shown:
        shown["key"] = None
    return shown


def to_wire(config):
    """The public config as CONFIG carries it: channels as arrays of CONFIG_CHANNEL_FIELDS."""
    shown = public(config)
    shown["channels"] = [
        [
            FAILSAFES.index(ch[f]) if f == "failsafe" else ch[f]
            for f in messages.CONFIG_CHANNEL_FIELDS
        ]
        for ch in shown["channels"]
    ]
    return shown


def from_wire(raw):
    """The config map of a CONFIG_SET with its channel arrays turned back into maps; the result
    still needs `validate`. Raises ConfigError for a malformed channel array."""
    if not isinstance(raw, dict):
        _fail("config", "must be a map")
    channels = raw.get("channels")
    if not isinstance(channels, list):
        return raw
    fields = messages.CONFIG_CHANNEL_FIELDS
    converted = []
    for index in range(len(channels)):
        item = channels[index]
        if isinstance(item, dict):  # the file's form is accepted too
            converted.append(item)
            continue
        if type(item) is not list or len(item) != len(fields):
            _fail("channels[%d]" % index, "must be a map or an array of %d fields" % len(fields))
        channel = {}
        for i in range(len(fields)):
            channel[fields[i]] = item[i]
        failsafe = channel["failsafe"]
        if type(failsafe) is not int or not 0 <= failsafe < len(FAILSAFES):
            _fail("channels[%d].failsafe" % index, "must be 0 (hold), 1 (home) or 2 (release)")
        channel["failsafe"] = FAILSAFES[failsafe]
        converted.append(channel)
    copy = {}
    for key in raw:
        copy[key] = raw[key]
    copy["channels"] = converted
    return copy


def key_bytes(config):
    """The datagram key as bytes, or None when the node has no key."""
    key = config.get("key")
    return binascii.unhexlify(key) if key else None


def load(path=CONFIG_FILE):
    """Return (config, None), or (None, why) when the file is missing or invalid; never raises."""
    try:
        size = os.stat(path)[6]
    except OSError:
        return None, "no config file " + path
    # Anything can go wrong on a board (flash errors, MemoryError on a small heap): the node
    # must still boot unconfigured and say why, so every error becomes a message.
    try:
        if size > _MAX_FILE_BYTES:
            return None, "%s: %d bytes, more than a config can be" % (path, size)
        with open(path) as f:
            raw = json.load(f)  # parses from the stream: no copy of the text on the heap
    except ValueError:
        return None, path + ": not valid JSON"
    except Exception as error:
        return None, "%s: cannot read: %s %s" % (path, type(error).__name__, error)
    try:
        return validate(raw), None
    except ConfigError as error:
        return None, "%s: %s" % (path, error)
    except Exception as error:
        return None, "%s: cannot validate: %s" % (path, type(error).__name__)


def save(config, path=CONFIG_FILE):
    """Validate `config` and write it atomically; return the validated Config.

    Raises ConfigError for an invalid config (the file is untouched) and OSError when the flash
    write fails (the old file stays, the temporary one is removed).
    """
    config = validate(config)
    text = json.dumps(_plain(config, False))
    temporary = path + ".tmp"
    try:
        with open(temporary, "w") as f:
            f.write(text)
        # rename replaces the old file in one step (littlefs, POSIX): a power cut leaves the
        # old file or the new one, never half of either.
        os.rename(temporary, path)
    except OSError:
        _remove(temporary)
        raise
    return config


def _remove(path):
    try:  # MicroPython has no contextlib.suppress built in
        os.remove(path)
    except OSError:
        pass  # it may not exist; the caller's error is the one to report
