"""The fleet config: one TOML file naming the nodes, joints, groups, poses and sequences.

    fleet = load("arm.toml")
    fleet.joints["elbow"].deg_to_pulse_us(45.0)
    fleet.node_config("arm-base")  # the map CONFIG_SET pushes to that node

Strict pydantic models refuse unknown keys and wrong types; cross-checks between the tables
follow. Every problem is one line naming its key path, all of them in one FleetConfigError.
docs/fleet.md is the reference for the file.
"""

import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, get_args
from urllib.parse import SplitResult, parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

# The node's own limits (firmware/config.py, which host code does not import).
PULSE_MIN_US: Final = 400
PULSE_MAX_US: Final = 2600
MAX_CHANNELS: Final = 16
SPEED_MAX_US_PER_S: Final = 100_000
ACCEL_MAX_US_PER_S2: Final = 4_000_000
DEFAULT_BAUD: Final = 115_200
BAUD_MIN: Final = 300
BAUD_MAX: Final = 4_000_000
SEQUENCE_MAX_MS: Final = 86_400_000  # a day: anything longer is a typo
# A channel below a node's highest joint that no joint uses: the node's own channel defaults,
# and it sends no pulses until written.
UNUSED_CHANNEL: Final = {"min_us": 1000, "max_us": 2000, "home_us": 1500, "failsafe": "hold"}

Board = Literal["esp32", "rp2040", "pca9685", "sim"]
Failsafe = Literal["hold", "home", "release"]
BOARDS: Final = get_args(Board)
FAILSAFES: Final = get_args(Failsafe)

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a TOML bare key: names never need quotes
_NODE_ID = re.compile(r"[a-z0-9_-]{1,32}")  # the node's own rule

Problem = tuple[str, str]  # (key path, what is wrong with it)


class FleetConfigError(ValueError):
    """The fleet config is invalid: one line per problem, each naming its key path."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [": ".join(part for part in (source, *problem) if part) for problem in problems]
        super().__init__("\n".join(lines))


# --- links -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """Where a node is reached. udp: `host` and `port`; serial: `path` and `baud`."""

    scheme: Literal["udp", "serial"]
    host: str = ""
    port: int = 0
    path: str = ""
    baud: int = DEFAULT_BAUD

    def __str__(self) -> str:
        if self.scheme == "udp":
            host = "[%s]" % self.host if ":" in self.host else self.host
            return "udp://%s:%d" % (host, self.port)
        return "serial://%s?baud=%d" % (self.path, self.baud)


def parse_link(url: str) -> Link:
    """Parse `udp://HOST:PORT` or `serial:///dev/NAME[?baud=N]`; ValueError says what is wrong."""
    shown = json.dumps(url)
    try:
        parts = urlsplit(url)
    except ValueError as error:  # an unclosed [ of an IPv6 address
        raise ValueError("%s: %s" % (shown, error)) from None
    if parts.scheme == "udp":
        return _udp_link(shown, parts)
    if parts.scheme == "serial":
        return _serial_link(shown, parts)
    raise ValueError("%s: unknown scheme: use udp://HOST:PORT or serial:///dev/ttyUSB0" % shown)


def _udp_link(shown: str, parts: SplitResult) -> Link:
    def fail(text: str) -> ValueError:
        return ValueError("%s: %s (udp://HOST:PORT)" % (shown, text))

    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise fail("nothing may follow the port")
    after_host = parts.netloc.rpartition("]")[2]  # an IPv6 address has colons of its own
    if ":" not in after_host:
        raise fail("missing port")
    port_text = after_host.rpartition(":")[2]
    if not parts.hostname:
        raise fail("missing host")
    if not (port_text.isascii() and port_text.isdigit()):
        raise fail("port %s is not a number" % json.dumps(port_text))
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise fail("port %d is out of range 1 .. 65535" % port)
    return Link("udp", host=parts.hostname, port=port)


def _serial_link(shown: str, parts: SplitResult) -> Link:
    def fail(text: str) -> ValueError:
        return ValueError("%s: %s (serial:///dev/ttyUSB0?baud=115200)" % (shown, text))

    if parts.netloc:
        raise fail("a serial link has a device path, not a host: three slashes")
    if not parts.path.startswith("/") or parts.path == "/":
        raise fail("missing device path")
    if parts.fragment:
        raise fail("nothing may follow the query")
    query = parse_qsl(parts.query, keep_blank_values=True)
    for name, _ in query:
        if name != "baud":
            raise fail("unknown parameter %s (only baud)" % json.dumps(name))
    if len(query) > 1:
        raise fail("baud is given twice")
    baud = query[0][1] if query else str(DEFAULT_BAUD)
    if not (baud.isascii() and baud.isdigit() and BAUD_MIN <= int(baud) <= BAUD_MAX):
        raise fail("baud must be an integer from %d to %d" % (BAUD_MIN, BAUD_MAX))
    return Link("serial", path=parts.path, baud=int(baud))


# --- values: plain validators, so one message covers the type and the range -------------------


def _int_in(low: int, high: int) -> PlainValidator:
    def check(value: object) -> int:
        # type() rather than isinstance(): true and false are not numbers here
        if type(value) is not int or not low <= value <= high:
            raise ValueError("must be an integer from %d to %d" % (low, high))
        return value

    return PlainValidator(check)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("must be a number")
    return float(value)


def _rate(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("must be a number above 0")
    return number


def _telemetry(value: object) -> int:
    if type(value) is not int or not (value == 0 or 10 <= value <= 60_000):
        raise ValueError("must be 0 (off) or an integer from 10 to 60000")
    return value


def _node_id(value: object) -> str:
    if type(value) is not str or not _NODE_ID.fullmatch(value):
        text = "%s must be 1 to 32 of a-z 0-9 - _ (node_id defaults to the node's name)"
        raise ValueError(text % json.dumps(value))
    return value


def _link(value: object) -> Link:
    if type(value) is not str:
        raise ValueError("must be a string such as udp://HOST:PORT or serial:///dev/ttyUSB0")
    return parse_link(value)


def _resolved_path(value: object, info: ValidationInfo) -> Path:
    if type(value) is not str or not value:
        raise ValueError("must be a path (a string)")
    base = info.context["base_dir"] if info.context else Path.cwd()
    return (Path(base) / Path(value).expanduser()).resolve()


def _ipv4(value: object) -> str:
    try:
        return str(IPv4Address(value if type(value) is str else ""))
    except AddressValueError:
        raise ValueError("must be an IPv4 address such as 255.255.255.255") from None


Deg = Annotated[float, PlainValidator(_number)]
PulseUs = Annotated[int, _int_in(PULSE_MIN_US, PULSE_MAX_US)]
Rate = Annotated[float | None, PlainValidator(_rate)]


# --- the models --------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class I2c(_Model):
    """The I2C bus a PCA9685 hangs on: the node config's `i2c` map."""

    bus: Annotated[int, _int_in(0, 7)] = 0
    sda: Annotated[int, _int_in(0, 63)]
    scl: Annotated[int, _int_in(0, 63)]
    address: Annotated[int, _int_in(0x40, 0x7F)] = 0x40
    freq_hz: Annotated[int, _int_in(10_000, 1_000_000)] = 400_000


class Node(_Model):
    """One microcontroller: `[nodes.NAME]`."""

    link: Annotated[Link, PlainValidator(_link)]
    key_file: Annotated[Path | None, PlainValidator(_resolved_path)] = None
    key_id: Annotated[int, _int_in(1, 255)] = 1
    node_id: Annotated[str, PlainValidator(_node_id)]
    sender_id: Annotated[int, _int_in(1, 65535)]
    board: Board = "sim"
    i2c: I2c | None = None
    control_hz: Annotated[int, _int_in(10, 500)] = 100
    link_timeout_ms: Annotated[int, _int_in(50, 60_000)] = 1000
    telemetry_ms: Annotated[int, PlainValidator(_telemetry)] = 0
    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        return self._name


class Joint(_Model):
    """One servo: `[joints.NAME]`. Its calibration is a straight line from degrees to pulse."""

    node: str
    channel: Annotated[int, _int_in(0, MAX_CHANNELS - 1)]
    pin: Annotated[int, _int_in(0, 63)]
    min_deg: Deg
    max_deg: Deg
    min_pulse_us: PulseUs
    max_pulse_us: PulseUs
    home_deg: Deg
    speed_deg_per_s: Rate = None
    accel_deg_per_s2: Rate = None
    failsafe: Failsafe = "hold"
    _name: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # When channel or a limit is itself wrong the placeholders keep the report to that key.
        channel: Any = data.get("channel")
        low: Any = data.get("min_deg")
        high: Any = data.get("max_deg")
        numbers = all(type(v) in (int, float) and math.isfinite(v) for v in (low, high))
        pin = channel if type(channel) is int and 0 <= channel <= 63 else 0
        return {"pin": pin, "home_deg": (low + high) / 2 if numbers else 0.0, **data}

    @property
    def name(self) -> str:
        return self._name

    @property
    def min_us(self) -> int:
        return min(self.min_pulse_us, self.max_pulse_us)

    @property
    def max_us(self) -> int:
        return max(self.min_pulse_us, self.max_pulse_us)

    @property
    def home_us(self) -> int:
        return self.deg_to_pulse_us(self.home_deg)

    @property
    def speed_us_per_s(self) -> int:
        """The speed limit as the node takes it; 0 (the node's "no limit") when unset."""
        return _pulse_rate(self.speed_deg_per_s, self._us_per_deg)

    @property
    def accel_us_per_s2(self) -> int:
        """The acceleration limit as the node takes it; 0 (the node's "no limit") when unset."""
        return _pulse_rate(self.accel_deg_per_s2, self._us_per_deg)

    def rate_us_per_s(self, deg_per_s: float) -> int:
        """A speed in degrees per second as the pulse rate a node takes (at least 1)."""
        return _pulse_rate(deg_per_s, self._us_per_deg)

    @property
    def _us_per_deg(self) -> float:
        return (self.max_us - self.min_us) / (self.max_deg - self.min_deg)

    def deg_to_pulse_us(self, deg: float) -> int:
        """The pulse for `deg`; ValueError outside [min_deg, max_deg]: a target is never clamped."""
        if not self.min_deg <= deg <= self.max_deg:  # NaN fails this too
            text = "joint %s: %g deg is outside its limits %g .. %g deg"
            raise ValueError(text % (self.name, deg, self.min_deg, self.max_deg))
        fraction = (deg - self.min_deg) / (self.max_deg - self.min_deg)
        return math.floor(self.min_pulse_us + fraction * self._pulse_span + 0.5)

    def pulse_us_to_deg(self, pulse_us: float) -> float:
        """The angle of a pulse; ValueError outside the calibrated pulses (0: a released output)."""
        if not self.min_us <= pulse_us <= self.max_us:
            text = "joint %s: %g us is outside its pulses %d .. %d us"
            raise ValueError(text % (self.name, pulse_us, self.min_us, self.max_us))
        fraction = (pulse_us - self.min_pulse_us) / self._pulse_span
        return self.min_deg + fraction * (self.max_deg - self.min_deg)

    @property
    def _pulse_span(self) -> int:
        return self.max_pulse_us - self.min_pulse_us  # negative for a reversed servo


def _pulse_rate(rate: float | None, us_per_deg: float) -> int:
    if rate is None:
        return 0
    # Up, so a slow joint never becomes "no limit"; round() first drops float noise
    # (90 deg/s at 1000/180 us per deg is 500, not 501).
    return max(1, math.ceil(round(rate * us_per_deg, 6)))


class Keyframe(_Model):
    """One step of a sequence: at `at_ms`, a pose by name or a table of joint angles."""

    at_ms: Annotated[int, _int_in(0, SEQUENCE_MAX_MS)]
    pose: str | None = None
    joints: dict[str, Deg] | None = None


class Sequence(_Model):
    """Timed keyframes: `[sequences.NAME]`."""

    keyframes: Annotated[tuple[Keyframe, ...], Field(strict=False)]  # TOML gives a list
    loop: bool = False


class Host(_Model):
    """The orchestrator's own settings: `[host]`."""

    data_dir: Annotated[Path, PlainValidator(_resolved_path)]
    discovery_broadcast: Annotated[str, PlainValidator(_ipv4)] = "255.255.255.255"
    discovery_port: Annotated[int, _int_in(1, 65535)] = 5683


class Fleet(_Model):
    """A whole fleet config. `load` and `loads` build it and also run the cross-checks."""

    nodes: dict[str, Node]
    joints: dict[str, Joint] = Field(default_factory=dict)
    groups: dict[str, Annotated[tuple[str, ...], Field(strict=False)]] = Field(default_factory=dict)
    poses: dict[str, dict[str, Deg]] = Field(default_factory=dict)
    sequences: dict[str, Sequence] = Field(default_factory=dict)
    host: Host

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        nodes = data.get("nodes")
        if isinstance(nodes, dict):
            data["nodes"] = {
                name: {"node_id": name, "sender_id": index, **table}
                if isinstance(table, dict)
                else table
                for index, (name, table) in enumerate(nodes.items(), 1)
            }
        host = data.setdefault("host", {})
        if isinstance(host, dict):
            data["host"] = {"data_dir": ".servomesh", **host}
        return data

    @model_validator(mode="after")
    def _names(self) -> Self:
        # A table's name is its key in the file, so it is no field (and no key users could set).
        for table in (self.nodes, self.joints):
            for name, item in table.items():
                item._name = name
        return self

    def node_config(self, name: str, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The node config CONFIG_SET pushes to node `name`, in firmware/config.py's format.

        It holds no secrets: the node keeps its own key. CONFIG_SET replaces the whole config,
        so pass the node's CONFIG (its answer to CONFIG_GET) as `current` to keep the keys this
        file does not decide (wifi, udp_host, serial, ...); its secrets read "<hidden>", which
        the node takes as "keep mine".
        """
        node = self.nodes[name]
        joints = {joint.channel: joint for joint in self.joints.values() if joint.node == name}
        own: dict[str, Any] = {
            "node_id": node.node_id,
            "sender_id": node.sender_id,
            "board": node.board,
            "control_hz": node.control_hz,
            "link_timeout_ms": node.link_timeout_ms,
            "telemetry_ms": node.telemetry_ms,
            "key_id": node.key_id,
            "channels": [_channel(joints.get(i), i) for i in range(max(joints, default=0) + 1)],
        }
        if node.i2c is not None:
            own["i2c"] = node.i2c.model_dump()
        kept = {key: value for key, value in (current or {}).items() if key != "i2c"}
        if node.board != "sim":
            kept.pop("sim_slew_us_per_s", None)  # the node refuses it for a real board
        return {**kept, **own}


def _channel(joint: Joint | None, index: int) -> dict[str, Any]:
    if joint is None:
        return {"pin": index, **UNUSED_CHANNEL, "speed_us_per_s": 0, "accel_us_per_s2": 0}
    return {
        "pin": joint.pin,
        "min_us": joint.min_us,
        "max_us": joint.max_us,
        "home_us": joint.home_us,
        "speed_us_per_s": joint.speed_us_per_s,
        "accel_us_per_s2": joint.accel_us_per_s2,
        "failsafe": joint.failsafe,
    }


# --- loading -----------------------------------------------------------------------------------


def load(path: str | Path) -> Fleet:
    """Read and check a fleet config file; paths in it are relative to its folder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise FleetConfigError(str(path), [("", "cannot read: %s" % error.strerror)]) from None
    except UnicodeDecodeError:
        raise FleetConfigError(str(path), [("", "cannot read: not UTF-8 text")]) from None
    return loads(text, str(path), Path(path).resolve().parent)


def loads(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> Fleet:
    """Check a fleet config given as text; paths in it are relative to `base_dir` (default: the
    current folder). Raises FleetConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FleetConfigError(source, [_syntax_problem(str(error), text)]) from None
    base = Path.cwd() if base_dir is None else Path(base_dir).resolve()
    try:
        fleet = Fleet.model_validate(data, context={"base_dir": base})
    except ValidationError as error:
        problems = [_pydantic_problem(item) for item in error.errors(include_url=False)]
        raise FleetConfigError(source, problems) from None
    problems = _Checker(fleet).run()
    if problems:
        raise FleetConfigError(source, problems)
    return fleet


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = " (at end of document)"


def _syntax_problem(message: str, text: str) -> Problem:
    found = _AT.search(message)
    if found:
        return "line %s, column %s" % found.groups(), message[: found.start()]
    if message.endswith(_AT_END):  # tomllib gives no line there: it stopped at the last one
        return "line %d (the end)" % (text.count("\n") + 1), message[: -len(_AT_END)]
    return "", message


def _path(*parts: str | int) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += "[%d]" % part
        else:
            key = part if _NAME.fullmatch(part) else json.dumps(part)
            out += "." + key if out else key
    return out


_TYPE_TEXT: Final = {
    "missing": "required",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "tuple_type": "must be an array",
}


def _pydantic_problem(error: Any) -> Problem:
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    if kind == "value_error":
        text = str(ctx["error"])
    elif kind == "extra_forbidden":
        text = "unknown key" + _known_keys_hint(loc)
    elif kind == "literal_error":
        text = "must be one of %s" % ctx["expected"]
    else:
        text = _TYPE_TEXT.get(kind, str(error["msg"]))
    return _path(*loc), text


# The model of each table, by key path with names and list indexes as "*".
_TABLES: Final[dict[tuple[str, ...], type[BaseModel]]] = {
    (): Fleet,
    ("host",): Host,
    ("nodes", "*"): Node,
    ("nodes", "*", "i2c"): I2c,
    ("joints", "*"): Joint,
    ("sequences", "*"): Sequence,
    ("sequences", "*", "keyframes", "*"): Keyframe,
}


def _known_keys_hint(loc: tuple[str | int, ...]) -> str:
    shape = tuple("*" if i == 1 or isinstance(p, int) else p for i, p in enumerate(loc[:-1]))
    model = _TABLES.get(shape)
    if model is None:
        return ""
    keys = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return " (did you mean %s?)" % close[0] if close else " (keys: %s)" % ", ".join(keys)


# --- cross-checks ------------------------------------------------------------------------------


class _Checker:
    """The rules between tables, and within a table beyond one key's type and range."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.problems: list[Problem] = []

    def add(self, at: tuple[str | int, ...], text: str) -> None:
        self.problems.append((_path(*at), text))

    def run(self) -> list[Problem]:
        fleet = self.fleet
        for table in ("nodes", "joints", "groups", "poses", "sequences"):
            for name in getattr(fleet, table):
                if not _NAME.fullmatch(name):
                    self.add((table, name), "a name is 1 to 64 of A-Z a-z 0-9 - _")
        self.nodes()
        self.joints()
        for name, members in fleet.groups.items():
            if not members:
                self.add(("groups", name), "must list at least one joint")
            for index, joint in enumerate(members):
                if joint not in fleet.joints:
                    self.add(("groups", name, index), _unknown("joint", joint, fleet.joints))
                elif joint in members[:index]:
                    self.add(("groups", name, index), "%s is listed twice" % json.dumps(joint))
        for name, pose in fleet.poses.items():
            if not pose:
                self.add(("poses", name), "must give at least one joint")
            self.angles(pose, ("poses", name))
        for name, sequence in fleet.sequences.items():
            self.sequence(sequence, ("sequences", name))
        return self.problems

    def nodes(self) -> None:
        if not self.fleet.nodes:
            self.add(("nodes",), "must name at least one node")
        for key in ("node_id", "sender_id", "link"):
            owners: dict[str, str] = {}
            for name, node in self.fleet.nodes.items():
                value = str(getattr(node, key))
                if value in owners:
                    shown = value if key == "sender_id" else json.dumps(value)
                    text = "%s is also the %s of nodes.%s" % (shown, key, owners[value])
                    if key == "sender_id":
                        text += " (sender_id defaults to the node's place in the file, from 1)"
                    self.add(("nodes", name, key), text)
                owners.setdefault(value, name)
        for name, node in self.fleet.nodes.items():
            if (node.board == "pca9685") != (node.i2c is not None):
                need = "required" if node.i2c is None else "only"
                self.add(("nodes", name, "i2c"), '%s for board "pca9685"' % need)

    def joints(self) -> None:
        fleet = self.fleet
        channels: dict[tuple[str, int], str] = {}  # (node, channel) -> joint
        pins: dict[tuple[str, int], str] = {}  # (node, pin) -> joint
        for name, joint in fleet.joints.items():
            at = ("joints", name)
            if joint.node not in fleet.nodes:
                self.add((*at, "node"), _unknown("node", joint.node, fleet.nodes))
            else:
                self.unique(at, "channel", joint.channel, channels)
                self.unique(at, "pin", joint.pin, pins)
            if joint.min_deg >= joint.max_deg:
                text = "min_deg must be below max_deg (limits inverted: %g >= %g)"
                self.add(at, text % (joint.min_deg, joint.max_deg))
            elif joint.min_pulse_us == joint.max_pulse_us:
                self.add(at, "min_pulse_us and max_pulse_us must differ")
            else:  # the checks below divide by both spans
                self.joint_motion(joint, at)
        # A channel below a node's highest that no joint uses gets pin = its index (node_config).
        for node, gap in sorted(pins.keys() - channels.keys()):
            if any(owner == node and channel > gap for owner, channel in channels):
                text = "channel %d has no joint, so it takes pin %d, which is joints.%s's: "
                text += "give channel %d a joint, or number the channels without gaps"
                self.add(("nodes", node), text % (gap, gap, pins[node, gap], gap))

    def unique(
        self, at: tuple[str, str], key: str, number: int, owners: dict[tuple[str, int], str]
    ) -> None:
        node = self.fleet.joints[at[1]].node
        other = owners.setdefault((node, number), at[1])
        if other != at[1]:
            text = "%s %d of node %s is already used by joints.%s"
            self.add((*at, key), text % (key, number, json.dumps(node), other))

    def joint_motion(self, joint: Joint, at: tuple[str, str]) -> None:
        if not joint.min_deg <= joint.home_deg <= joint.max_deg:
            text = "%g is outside the limits %g .. %g deg"
            self.add((*at, "home_deg"), text % (joint.home_deg, joint.min_deg, joint.max_deg))
        limits = {"speed_deg_per_s": SPEED_MAX_US_PER_S, "accel_deg_per_s2": ACCEL_MAX_US_PER_S2}
        for key, high in limits.items():
            value = getattr(joint, key.replace("deg", "us"))  # speed_us_per_s, accel_us_per_s2
            if value > high:
                unit = key.rpartition("_per_")[2]
                text = "%g deg/%s is %d us/%s with this calibration; a node takes at most %d"
                self.add((*at, key), text % (getattr(joint, key), unit, value, unit, high))

    def angles(self, angles: Mapping[str, float], at: tuple[str | int, ...]) -> None:
        for name, deg in angles.items():
            joint = self.fleet.joints.get(name)
            if joint is None:
                self.add((*at, name), _unknown("joint", name, self.fleet.joints))
            elif not joint.min_deg <= deg <= joint.max_deg:
                text = "%g deg is outside the limits of joints.%s, %g .. %g deg"
                self.add((*at, name), text % (deg, name, joint.min_deg, joint.max_deg))

    def sequence(self, sequence: Sequence, at: tuple[str, str]) -> None:
        if not sequence.keyframes:
            self.add((*at, "keyframes"), "must hold at least one keyframe")
        for index, frame in enumerate(sequence.keyframes):
            here = (*at, "keyframes", index)
            previous = sequence.keyframes[index - 1].at_ms if index else -1
            if frame.at_ms <= previous:
                text = "%d must be greater than the previous keyframe's %d"
                self.add((*here, "at_ms"), text % (frame.at_ms, previous))
            if (frame.pose is None) == (frame.joints is None):
                self.add(here, "needs exactly one of pose or joints")
            elif frame.pose is not None and frame.pose not in self.fleet.poses:
                self.add((*here, "pose"), _unknown("pose", frame.pose, self.fleet.poses))
            elif frame.joints is not None:
                if not frame.joints:
                    self.add((*here, "joints"), "must give at least one joint")
                self.angles(frame.joints, (*here, "joints"))
        self.sequence_speeds(sequence, at)

    def sequence_speeds(self, sequence: Sequence, at: tuple[str, str]) -> None:
        """Each keyframe's joints move during the segment that ends at it, from where the
        sequence last put them: the nodes refuse a segment faster than a joint's speed limit,
        so say so here, before anything moves. (The first keyframe is reached by a lead-in
        that the host times itself.)"""
        last: dict[str, float] = {}
        for index, frame in enumerate(sequence.keyframes):
            targets = self.fleet.poses.get(frame.pose, {}) if frame.pose else frame.joints or {}
            span_ms = frame.at_ms - sequence.keyframes[index - 1].at_ms if index else 0
            for name, deg in targets.items():
                joint = self.fleet.joints.get(name)
                if joint is None or not math.isfinite(deg):
                    continue  # reported by angles()
                if index and span_ms > 0 and name in last and joint.speed_deg_per_s:
                    speed = abs(deg - last[name]) * 1000 / span_ms
                    if speed > joint.speed_deg_per_s:
                        where = (*at, "keyframes", index, "pose" if frame.pose else "joints")
                        text = "%s moves %g deg in %d ms, %.0f deg/s: over its speed_deg_per_s %g"
                        self.add(
                            (*where, name) if not frame.pose else where,
                            text
                            % (
                                name,
                                abs(deg - last[name]),
                                span_ms,
                                speed,
                                joint.speed_deg_per_s,
                            ),
                        )
                last[name] = deg


def _unknown(kind: str, name: str, known: Mapping[str, object]) -> str:
    return "no %s named %s (%ss: %s)" % (kind, json.dumps(name), kind, ", ".join(known) or "none")


# --- simulated boards --------------------------------------------------------------------------

_SIM_NODE: Final = '[nodes.sim-%d]\nlink = %s\nboard = "sim"\nsender_id = %d\n'
_SIM_JOINT: Final = """[joints.%s]
node = "sim-%d"
channel = %d
min_deg = -90
max_deg = 90
min_pulse_us = 1000
max_pulse_us = 2000
"""


def sim_fleet_toml(
    links: list[str], channels: int = 6, key_files: list[str | None] | None = None
) -> str:
    """A fleet config for the simulated boards sim-1 .. sim-N (`servomesh sim`): `links[i]` and
    `key_files[i]` (optional) reach board i+1; one joint per channel, `sim1_c0` ..., each
    -90 .. 90 deg over 1000 .. 2000 us. ValueError for a bad link or count."""
    if not links or not 1 <= channels <= MAX_CHANNELS:
        raise ValueError("need at least one link and 1 to %d channels" % MAX_CHANNELS)
    if key_files is not None and len(key_files) != len(links):
        raise ValueError("key_files must hold one entry (or None) per link")
    nodes: list[str] = []
    joints: list[str] = []
    groups: list[str] = []
    every: list[str] = []
    for board, link in enumerate(links, 1):
        parse_link(link)
        # node_id defaults to the name, sim-N, as on the board; sender_id must match it too
        nodes.append(_SIM_NODE % (board, json.dumps(link), board))
        if key_files is not None and key_files[board - 1] is not None:
            nodes[-1] += "key_file = %s\n" % json.dumps(key_files[board - 1])
        names = ["sim%d_c%d" % (board, channel) for channel in range(channels)]
        joints += [_SIM_JOINT % (name, board, channel) for channel, name in enumerate(names)]
        groups.append("sim%d = %s" % (board, json.dumps(names)))
        every += names
    groups.append("all = %s\n" % json.dumps(every))
    home = ["%s = 0" % name for name in every]
    header = "# Simulated boards (servomesh sim). Reference: docs/fleet.md\n"
    return "\n".join([header, *nodes, *joints, "[groups]", *groups, "[poses.home]", *home, ""])
