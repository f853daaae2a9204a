"""Fleet config: the example, calibration, node configs the firmware accepts, clear errors."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from servomesh.firmware import config as firmware_config  # the node's own validator, on CPython
from servomesh.host import fleet_config, sim
from servomesh.host.fleet_config import (
    FleetConfigError,
    Joint,
    Link,
    load,
    loads,
    parse_link,
    sim_fleet_toml,
)
from servomesh.protocol import messages

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "arm.toml"
# CONFIG_SET without a key keeps the node's own: validate what the node would.
NODE_KEY = "00112233445566778899aabbccddeeff"

BASE = """\
[nodes.arm1]
link = "udp://127.0.0.1:5683"

[nodes.head]
link = "serial:///dev/ttyUSB0"

[joints.elbow]
node = "arm1"
channel = 0
min_deg = -90
max_deg = 90
min_pulse_us = 1000
max_pulse_us = 2000
"""

WRIST = """
[joints.wrist]
node = "arm1"
channel = 1
min_deg = 0
max_deg = 90
min_pulse_us = 1000
max_pulse_us = 2000
"""


def edited(old: str, new: str, text: str = BASE) -> str:
    assert old in text
    return text.replace(old, new, 1)


def calibrated(min_pulse_us: int, max_pulse_us: int, extra: str = "") -> Joint:
    pulses = "min_pulse_us = %d\nmax_pulse_us = %d\n" % (min_pulse_us, max_pulse_us)
    return loads(edited("min_pulse_us = 1000\nmax_pulse_us = 2000\n", pulses) + extra).joints[
        "elbow"
    ]


def node_accepts(config: dict[str, Any]) -> dict[str, Any]:
    """What the node's CONFIG_SET validates: absent or hidden secrets keep its own."""
    assert config.get("key") in (None, firmware_config.HIDDEN)  # no secrets leave the host
    checked: dict[str, Any] = firmware_config.validate({**config, "key": NODE_KEY})
    return checked


def only_problem(text: str) -> str:
    with pytest.raises(FleetConfigError) as caught:
        loads(text, "fleet.toml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- the example ---------------------------------------------------------------------------------


def test_example_loads() -> None:
    fleet = load(EXAMPLE)
    assert list(fleet.nodes) == ["arm-base", "arm-wrist", "head"]
    assert len(fleet.joints) == 8
    assert fleet.groups["all"] == (*fleet.groups["arm"], *fleet.groups["head"])
    assert {"home", "rest", "wave"} <= set(fleet.poses)
    assert set(fleet.sequences) == {"wave", "scan"}
    assert fleet.sequences["scan"].loop
    assert fleet.nodes["arm-wrist"].link == Link("serial", path="/dev/ttyACM0")
    assert fleet.nodes["arm-base"].key_file == EXAMPLE.parent / "keys" / "arm-base.key"
    assert fleet.nodes["arm-wrist"].key_file is None
    assert fleet.host.data_dir == EXAMPLE.parent / ".servomesh"
    assert fleet.joints["elbow"].name == "elbow"
    assert fleet.nodes["head"].name == "head"


@pytest.mark.parametrize("name", ["arm-base", "arm-wrist", "head"])
def test_example_node_configs_pass_the_firmware_validator(name: str) -> None:
    fleet = load(EXAMPLE)
    config = fleet.node_config(name)
    checked = node_accepts(config)
    assert checked["channels"] == config["channels"]
    assert checked["node_id"] == fleet.nodes[name].node_id == name
    for joint in fleet.joints.values():
        if joint.node == name:
            channel = config["channels"][joint.channel]
            assert (channel["pin"], channel["home_us"]) == (joint.pin, joint.home_us)


def test_example_reversed_elbow() -> None:
    elbow = load(EXAMPLE).joints["elbow"]
    assert (elbow.min_us, elbow.max_us) == (700, 2300)
    assert elbow.deg_to_pulse_us(-30) == 2300
    assert elbow.deg_to_pulse_us(120) == 700
    assert elbow.home_us == 1020


# --- calibration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_pulse_us", "max_pulse_us", "deg", "pulse_us"),
    [
        (1000, 2000, -90, 1000),
        (1000, 2000, 90, 2000),
        (1000, 2000, 0, 1500),
        (1000, 2000, 45, 1750),
        (1000, 2000, 0.09, 1501),  # 1500.5 rounds up
        (2000, 1000, -90, 2000),  # a reversed servo
        (2000, 1000, 90, 1000),
        (2000, 1000, 45, 1250),
        (400, 2600, 0, 1500),
    ],
)
def test_degrees_to_pulse_and_back(
    min_pulse_us: int, max_pulse_us: int, deg: float, pulse_us: int
) -> None:
    joint = calibrated(min_pulse_us, max_pulse_us)
    assert joint.deg_to_pulse_us(deg) == pulse_us
    assert joint.pulse_us_to_deg(pulse_us) == pytest.approx(deg, abs=0.1)


@pytest.mark.parametrize("deg", [-90.001, 90.5, 1000, math.nan, math.inf])
def test_a_target_outside_the_limits_is_refused_not_clamped(deg: float) -> None:
    joint = loads(BASE).joints["elbow"]
    with pytest.raises(ValueError, match=r"^joint elbow: .* outside its limits -90 \.\. 90 deg$"):
        joint.deg_to_pulse_us(deg)


@pytest.mark.parametrize("pulse_us", [0, 999, 2001])
def test_a_pulse_outside_the_calibration_has_no_angle(pulse_us: int) -> None:
    joint = loads(BASE).joints["elbow"]
    with pytest.raises(ValueError, match=r"^joint elbow: .* outside its pulses 1000 \.\. 2000 us$"):
        joint.pulse_us_to_deg(pulse_us)


@pytest.mark.parametrize(
    ("pulses_us", "extra", "speed_us_per_s", "accel_us_per_s2"),
    [
        ((1000, 2000), "", 0, 0),  # unset: the node's "no limit"
        ((1000, 2000), "speed_deg_per_s = 90\naccel_deg_per_s2 = 180", 500, 1000),  # not 501
        ((1000, 2000), "speed_deg_per_s = 60", 334, 0),  # 333.3 rounds up
        ((1000, 2000), "speed_deg_per_s = 0.001\naccel_deg_per_s2 = 0.001", 1, 1),  # never 0
        ((2000, 1000), "speed_deg_per_s = 90", 500, 0),  # a reversed servo
    ],
)
def test_rates_in_pulse_terms(
    pulses_us: tuple[int, int], extra: str, speed_us_per_s: int, accel_us_per_s2: int
) -> None:
    joint = calibrated(*pulses_us, extra)
    assert (joint.speed_us_per_s, joint.accel_us_per_s2) == (speed_us_per_s, accel_us_per_s2)


def test_defaults() -> None:
    fleet = loads(BASE)
    node, joint = fleet.nodes["arm1"], fleet.joints["elbow"]
    assert (node.node_id, node.sender_id, node.board, node.key_id) == ("arm1", 1, "sim", 1)
    assert (node.control_hz, node.link_timeout_ms, node.telemetry_ms) == (100, 1000, 0)
    assert fleet.nodes["head"].sender_id == 2
    assert (joint.pin, joint.home_deg, joint.failsafe) == (0, 0.0, "hold")
    assert fleet.host.discovery_broadcast == "255.255.255.255"
    assert fleet.host.discovery_port == 5683
    assert fleet.host.data_dir == Path.cwd() / ".servomesh"


# --- node configs ---------------------------------------------------------------------------------


def test_channels_without_a_joint_get_a_placeholder() -> None:
    fleet = loads(edited("channel = 0", "channel = 3\npin = 10"))
    channels = node_accepts(fleet.node_config("arm1"))["channels"]
    assert [channel["pin"] for channel in channels] == [0, 1, 2, 10]
    assert channels[1] == {
        "pin": 1,
        "min_us": 1000,
        "max_us": 2000,
        "home_us": 1500,
        "speed_us_per_s": 0,
        "accel_us_per_s2": 0,
        "failsafe": "hold",
    }
    assert node_accepts(fleet.node_config("head"))["channels"] == [channels[0]]  # no joints


def test_the_push_never_moves_a_node_to_another_port() -> None:
    # The link's port is where the host reaches the node, through NAT or a proxy maybe: the
    # node keeps its own udp_port.
    fleet = loads(edited("127.0.0.1:5683", "127.0.0.1:40001"))
    assert "udp_port" not in fleet.node_config("arm1")
    assert fleet.node_config("arm1", {"udp_port": 5683})["udp_port"] == 5683


def test_node_config_keeps_what_the_fleet_does_not_decide() -> None:
    current = {  # a CONFIG answer: secrets hidden, channels as arrays
        "node_id": "old",
        "sender_id": 9,
        "board": "pca9685",
        "i2c": {"bus": 0, "sda": 21, "scl": 22, "address": 64, "freq_hz": 400000},
        "key": "<hidden>",
        "allow_unsigned": False,
        "udp_host": "127.0.0.1",
        "udp_port": 41000,
        "serial": False,
        "wifi": {"ssid": "workshop", "password": "<hidden>"},
        "sim_slew_us_per_s": 5000,
        "channels": [[0, 500, 2500, 1500, 0, 0, 0]],
    }
    kept = ("key", "allow_unsigned", "udp_host", "udp_port", "serial", "wifi", "sim_slew_us_per_s")
    fleet = loads(BASE)
    pushed = fleet.node_config("head", current)
    assert pushed == {**fleet.node_config("head"), **{key: current[key] for key in kept}}
    assert "i2c" not in pushed  # the board is no longer a pca9685
    esp32 = loads(edited('link = "udp://127.0.0.1:5683"', 'link = "udp://h:1"\nboard = "esp32"'))
    assert "sim_slew_us_per_s" not in esp32.node_config("arm1", current)


# --- errors ---------------------------------------------------------------------------------------

JOINT_ON_CHANNEL_0 = WRIST.replace("channel = 1", "channel = 0\npin = 5")

BAD = {
    "missing joint node": (
        edited('node = "arm1"', 'node = "arm2"'),
        'joints.elbow.node: no node named "arm2" (nodes: arm1, head)',
    ),
    "limits inverted": (
        edited("max_deg = 90", "max_deg = -90"),
        "joints.elbow: min_deg must be below max_deg (limits inverted: -90 >= -90)",
    ),
    "unknown key": (
        BASE + "sped_deg_per_s = 30\n",
        "joints.elbow.sped_deg_per_s: unknown key (did you mean speed_deg_per_s?)",
    ),
    "unknown table": (
        BASE + "[joint.wrist]\nnode = 1\n",
        "joint: unknown key (did you mean joints?)",
    ),
    "unknown node key": (
        edited("[nodes.head]", "[nodes.head]\ncolour = 1"),
        "nodes.head.colour: unknown key (keys: link, key_file, key_id, node_id, sender_id, board, "
        "i2c, control_hz, link_timeout_ms, telemetry_ms)",
    ),
    "bad url": (
        edited("127.0.0.1:5683", "127.0.0.1"),
        'nodes.arm1.link: "udp://127.0.0.1": missing port (udp://HOST:PORT)',
    ),
    "url not a string": (
        edited('"udp://127.0.0.1:5683"', "5683"),
        "nodes.arm1.link: must be a string such as udp://HOST:PORT or serial:///dev/ttyUSB0",
    ),
    "duplicate channel": (
        BASE + JOINT_ON_CHANNEL_0,
        'joints.wrist.channel: channel 0 of node "arm1" is already used by joints.elbow',
    ),
    "duplicate pin": (
        BASE + WRIST.replace("channel = 1", "channel = 1\npin = 0"),
        'joints.wrist.pin: pin 0 of node "arm1" is already used by joints.elbow',
    ),
    "placeholder pin taken": (
        edited("channel = 0", "channel = 0\npin = 1") + WRIST.replace("channel = 1", "channel = 2"),
        "nodes.arm1: channel 1 has no joint, so it takes pin 1, which is joints.elbow's: "
        "give channel 1 a joint, or number the channels without gaps",
    ),
    "bad pose joint": (
        BASE + "[poses.wave]\nelbw = 10\n",
        'poses.wave.elbw: no joint named "elbw" (joints: elbow)',
    ),
    "pose outside limits": (
        BASE + "[poses.wave]\nelbow = 95\n",
        "poses.wave.elbow: 95 deg is outside the limits of joints.elbow, -90 .. 90 deg",
    ),
    "empty pose": (BASE + "[poses.wave]\n", "poses.wave: must give at least one joint"),
    "sequence faster than a joint may go": (
        BASE
        + "speed_deg_per_s = 60\n[sequences.nod]\nkeyframes = [{at_ms = 0, joints = {elbow = 0}},"
        " {at_ms = 500, joints = {elbow = 45}}]\n",
        "sequences.nod.keyframes[1].joints.elbow: elbow moves 45 deg in 500 ms, 90 deg/s: "
        "over its speed_deg_per_s 60",
    ),
    "keyframes not increasing": (
        BASE + "[sequences.nod]\nkeyframes = [{at_ms = 0, joints = {elbow = 0}},"
        " {at_ms = 0, joints = {elbow = 10}}]\n",
        "sequences.nod.keyframes[1].at_ms: 0 must be greater than the previous keyframe's 0",
    ),
    "keyframe with pose and joints": (
        BASE + '[poses.up]\nelbow = 0\n[sequences.nod]\nkeyframes = [{at_ms = 0, pose = "up",'
        " joints = {elbow = 1}}]\n",
        "sequences.nod.keyframes[0]: needs exactly one of pose or joints",
    ),
    "keyframe with neither": (
        BASE + "[sequences.nod]\nkeyframes = [{at_ms = 0}]\n",
        "sequences.nod.keyframes[0]: needs exactly one of pose or joints",
    ),
    "keyframe unknown pose": (
        BASE + '[sequences.nod]\nkeyframes = [{at_ms = 0, pose = "up"}]\n',
        'sequences.nod.keyframes[0].pose: no pose named "up" (poses: none)',
    ),
    "keyframe joint outside limits": (
        BASE + "[sequences.nod]\nkeyframes = [{at_ms = 0, joints = {elbow = -91}}]\n",
        "sequences.nod.keyframes[0].joints.elbow: -91 deg is outside the limits of joints.elbow,"
        " -90 .. 90 deg",
    ),
    "keyframe at_ms negative": (
        BASE + "[sequences.nod]\nkeyframes = [{at_ms = -1, joints = {elbow = 0}}]\n",
        "sequences.nod.keyframes[0].at_ms: must be an integer from 0 to 86400000",
    ),
    "no keyframes": (
        BASE + "[sequences.nod]\nkeyframes = []\n",
        "sequences.nod.keyframes: must hold at least one keyframe",
    ),
    "group member unknown": (
        BASE + '[groups]\narm = ["elbow", "wrist"]\n',
        'groups.arm[1]: no joint named "wrist" (joints: elbow)',
    ),
    "group empty": (BASE + "[groups]\narm = []\n", "groups.arm: must list at least one joint"),
    "group twice": (
        BASE + '[groups]\narm = ["elbow", "elbow"]\n',
        'groups.arm[1]: "elbow" is listed twice',
    ),
    "home outside limits": (
        BASE + "home_deg = 91\n",
        "joints.elbow.home_deg: 91 is outside the limits -90 .. 90 deg",
    ),
    "pulse out of range": (
        edited("max_pulse_us = 2000", "max_pulse_us = 2601"),
        "joints.elbow.max_pulse_us: must be an integer from 400 to 2600",
    ),
    "pulses equal": (
        edited("max_pulse_us = 2000", "max_pulse_us = 1000"),
        "joints.elbow: min_pulse_us and max_pulse_us must differ",
    ),
    "speed beyond the node": (
        BASE + "speed_deg_per_s = 20000\n",
        "joints.elbow.speed_deg_per_s: 20000 deg/s is 111112 us/s with this calibration;"
        " a node takes at most 100000",
    ),
    "speed zero": (
        BASE + "speed_deg_per_s = 0\n",
        "joints.elbow.speed_deg_per_s: must be a number above 0",
    ),
    "degrees not a number": (
        edited("max_deg = 90", 'max_deg = "90"'),
        "joints.elbow.max_deg: must be a number",
    ),
    "degrees nan": (
        edited("max_deg = 90", "max_deg = nan"),
        "joints.elbow.max_deg: must be a number",
    ),
    "channel a float": (
        edited("channel = 0", "channel = 0.0"),
        "joints.elbow.channel: must be an integer from 0 to 15",
    ),
    "channel missing": (edited("channel = 0\n", ""), "joints.elbow.channel: required"),
    "failsafe": (
        BASE + 'failsafe = "limp"\n',
        "joints.elbow.failsafe: must be one of 'hold', 'home' or 'release'",
    ),
    "board": (
        edited("[nodes.head]", '[nodes.head]\nboard = "uno"'),
        "nodes.head.board: must be one of 'esp32', 'rp2040', 'pca9685' or 'sim'",
    ),
    "pca9685 without i2c": (
        edited("[nodes.head]", '[nodes.head]\nboard = "pca9685"'),
        'nodes.head.i2c: required for board "pca9685"',
    ),
    "i2c on an esp32": (
        edited("[nodes.head]", '[nodes.head]\nboard = "esp32"\ni2c = { sda = 21, scl = 22 }'),
        'nodes.head.i2c: only for board "pca9685"',
    ),
    "name not a node_id": (
        edited("[nodes.head]", "[nodes.Head]"),
        'nodes.Head.node_id: "Head" must be 1 to 32 of a-z 0-9 - _'
        " (node_id defaults to the node's name)",
    ),
    "node_id twice": (
        edited("[nodes.head]", '[nodes.head]\nnode_id = "arm1"'),
        'nodes.head.node_id: "arm1" is also the node_id of nodes.arm1',
    ),
    "sender_id twice": (
        edited("[nodes.head]", "[nodes.head]\nsender_id = 1"),
        "nodes.head.sender_id: 1 is also the sender_id of nodes.arm1"
        " (sender_id defaults to the node's place in the file, from 1)",
    ),
    "link twice": (
        edited("serial:///dev/ttyUSB0", "udp://127.0.0.1:5683"),
        'nodes.head.link: "udp://127.0.0.1:5683" is also the link of nodes.arm1',
    ),
    "telemetry": (
        edited("[nodes.head]", "[nodes.head]\ntelemetry_ms = 9"),
        "nodes.head.telemetry_ms: must be 0 (off) or an integer from 10 to 60000",
    ),
    "quoted name": (
        edited("[joints.elbow]", '[joints."el bow"]'),
        'joints."el bow": a name is 1 to 64 of A-Z a-z 0-9 - _',
    ),
    "discovery address": (
        BASE + '[host]\ndiscovery_broadcast = "255.255.255"\n',
        "host.discovery_broadcast: must be an IPv4 address such as 255.255.255.255",
    ),
    "host key": (
        BASE + "[host]\ndiscovery_prot = 1\n",
        "host.discovery_prot: unknown key (did you mean discovery_port?)",
    ),
    "no nodes": ("[host]\n", "nodes: required"),
    "empty nodes": ("[nodes]\n", "nodes: must name at least one node"),
    "not a table": (BASE + "[sequences]\nnod = 3\n", "sequences.nod: must be a table"),
    "toml syntax": (edited("channel = 0", "channel = "), "line 9, column 11: Invalid value"),
    "toml duplicate key": (
        edited("channel = 0", "channel = 0\nchannel = 1"),
        "line 10, column 12: Cannot overwrite a value",
    ),
    "toml at the end": (
        BASE + "[poses\n",
        "line 14, column 7: Expected ']' at the end of a table declaration",
    ),
}


@pytest.mark.parametrize(("text", "line"), BAD.values(), ids=BAD.keys())
def test_each_mistake_gets_one_line_naming_its_key(text: str, line: str) -> None:
    assert only_problem(text) == "fleet.toml: " + line


def test_several_mistakes_get_a_line_each() -> None:
    text = edited('node = "arm1"', 'node = "arm2"', edited("max_deg = 90", "max_deg = -90"))
    with pytest.raises(FleetConfigError) as caught:
        loads(text + WRIST.replace('"arm1"', '"arm3"'), "fleet.toml")
    assert [path for path, _ in caught.value.problems] == [
        "joints.elbow.node",
        "joints.elbow",
        "joints.wrist.node",
    ]
    assert str(caught.value).splitlines()[0].startswith("fleet.toml: joints.elbow.node: no node")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        ("channel = 0", "channel = 15", True),
        ("channel = 0", "channel = -1", False),
        ("min_pulse_us = 1000", "min_pulse_us = 400", True),
        ("min_pulse_us = 1000", "min_pulse_us = 399", False),
        ("max_pulse_us = 2000", "max_pulse_us = 2600", True),
        ("[nodes.head]", "[nodes.head]\nkey_id = 255", True),
        ("[nodes.head]", "[nodes.head]\nkey_id = 256", False),
        ("[nodes.head]", "[nodes.head]\nkey_id = 0", False),
        ("[nodes.head]", "[nodes.head]\ncontrol_hz = 10", True),
        ("[nodes.head]", "[nodes.head]\ncontrol_hz = 501", False),
        ("[nodes.head]", "[nodes.head]\nlink_timeout_ms = 50", True),
        ("[nodes.head]", "[nodes.head]\nlink_timeout_ms = 60001", False),
        ("[nodes.head]", "[nodes.head]\ntelemetry_ms = 10", True),
        ("[nodes.head]", "[nodes.head]\nsender_id = 65535", True),
        ("[nodes.head]", "[nodes.head]\nsender_id = 65536", False),
        ("max_deg = 90", "max_deg = 90\nhome_deg = 90", True),
        ("max_deg = 90", "max_deg = 90\nhome_deg = 90.001", False),
        ("[nodes.head]", "[nodes.head]\nboard = true", False),
        ("channel = 0", "channel = true", False),
    ],
)
def test_bounds(old: str, new: str, ok: bool) -> None:
    text = edited(old, new)
    if ok:
        node_accepts(loads(text).node_config("arm1"))
    else:
        only_problem(text)


def test_load_resolves_paths_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cell"
    folder.mkdir()
    text = edited("[nodes.head]", '[nodes.head]\nkey_file = "keys/head.key"')
    (folder / "fleet.toml").write_text(text + '[host]\ndata_dir = "state"\n', encoding="utf-8")
    fleet = load(folder / "fleet.toml")
    assert fleet.nodes["head"].key_file == folder / "keys" / "head.key"  # need not exist yet
    assert fleet.host.data_dir == folder / "state"
    assert loads(text, base_dir=tmp_path).nodes["head"].key_file == tmp_path / "keys" / "head.key"


def test_load_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(FleetConfigError, match=r"^.*nowhere\.toml: cannot read: No such file"):
        load(tmp_path / "nowhere.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(FleetConfigError, match=r"binary\.toml: cannot read: not UTF-8 text$"):
        load(tmp_path / "binary.toml")


# --- links ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("udp://127.0.0.1:5683", Link("udp", host="127.0.0.1", port=5683)),
        ("udp://arm-node.local:1", Link("udp", host="arm-node.local", port=1)),
        ("udp://[::1]:65535", Link("udp", host="::1", port=65535)),
        ("serial:///dev/ttyUSB0", Link("serial", path="/dev/ttyUSB0", baud=115200)),
        ("serial:///dev/pts/3?baud=9600", Link("serial", path="/dev/pts/3", baud=9600)),
        ("serial:///dev/ttyACM0?baud=300", Link("serial", path="/dev/ttyACM0", baud=300)),
    ],
)
def test_parse_link(url: str, link: Link) -> None:
    assert parse_link(url) == link
    assert parse_link(str(link)) == link


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("tcp://h:1", "unknown scheme"),
        ("h:1", "unknown scheme"),
        ("udp://h", "missing port"),
        ("udp://:5683", "missing host"),
        ("udp://h:0", "port 0 is out of range 1 .. 65535"),
        ("udp://h:65536", "port 65536 is out of range 1 .. 65535"),
        ("udp://h:x", 'port "x" is not a number'),
        ("udp://h:5683/x", "nothing may follow the port"),
        ("udp://h:5683?baud=9600", "nothing may follow the port"),
        ("udp://[::1", "Invalid IPv6 URL"),
        ("serial://dev/ttyUSB0", "not a host: three slashes"),
        ("serial:", "missing device path"),
        ("serial:///dev/ttyUSB0?baud=fast", "baud must be an integer from 300 to 4000000"),
        ("serial:///dev/ttyUSB0?baud=299", "baud must be an integer from 300 to 4000000"),
        ("serial:///dev/ttyUSB0?parity=N", 'unknown parameter "parity" (only baud)'),
        ("serial:///dev/ttyUSB0?baud=9600&baud=9600", "baud is given twice"),
    ],
)
def test_parse_link_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:  # noqa: PT011 (checked below)
        parse_link(url)
    assert str(caught.value).startswith(json.dumps(url) + ": ")
    assert why in str(caught.value)


# --- simulated boards -----------------------------------------------------------------------------


@pytest.mark.parametrize(("boards", "channels"), [(1, 1), (3, 6), (2, 16)])
def test_sim_fleet_round_trips_and_matches_the_simulator(boards: int, channels: int) -> None:
    links = ["udp://127.0.0.1:%d" % (40000 + n) for n in range(boards)]
    fleet = loads(sim_fleet_toml(links, channels))
    assert list(fleet.nodes) == ["sim-%d" % n for n in range(1, boards + 1)]
    assert (
        len(fleet.groups["all"])
        == len(fleet.joints)
        == len(fleet.poses["home"])
        == boards * channels
    )
    for number, name in enumerate(fleet.nodes, 1):
        board = sim.default_config(number, 40000 + number - 1, serial=False)
        pushed = node_accepts(fleet.node_config(name, {**board, "key": firmware_config.HIDDEN}))
        for key in ("node_id", "sender_id", "board", "udp_port", "udp_host", "serial"):
            assert pushed[key] == board[key], key
        assert [channel["pin"] for channel in pushed["channels"]] == list(range(channels))
        assert fleet.groups["sim%d" % number] == tuple(
            "sim%d_c%d" % (number, c) for c in range(channels)
        )
    joint = fleet.joints["sim1_c0"]
    assert (joint.deg_to_pulse_us(-90), joint.deg_to_pulse_us(90)) == (1000, 2000)


def test_sim_fleet_key_files_and_serial_links(tmp_path: Path) -> None:
    text = sim_fleet_toml(["serial:///dev/pts/4", "udp://127.0.0.1:5000"], 2, ["k1.json", None])
    fleet = loads(text, base_dir=tmp_path)
    assert fleet.nodes["sim-1"].key_file == tmp_path / "k1.json"
    assert fleet.nodes["sim-2"].key_file is None
    assert fleet.nodes["sim-1"].link.path == "/dev/pts/4"


@pytest.mark.parametrize(
    ("links", "channels", "key_files"),
    [
        ([], 6, None),
        (["udp://h:1"], 0, None),
        (["udp://h:1"], 17, None),
        (["udp://h"], 6, None),
        (["udp://h:1"], 6, []),
    ],
)
def test_sim_fleet_refuses(
    links: list[str], channels: int, key_files: list[str | None] | None
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        sim_fleet_toml(links, channels, key_files)


# --- the node's rules, copied because host code does not import firmware --------------------------


def test_copied_limits_match_the_firmware() -> None:
    assert fleet_config.FAILSAFES == messages.FAILSAFES == firmware_config.FAILSAFES
    assert fleet_config.BOARDS == firmware_config.BOARDS
    assert fleet_config.PULSE_MIN_US == firmware_config.PULSE_MIN_US
    assert fleet_config.PULSE_MAX_US == firmware_config.PULSE_MAX_US
    assert fleet_config.MAX_CHANNELS == firmware_config.MAX_CHANNELS
    assert fleet_config.SPEED_MAX_US_PER_S == firmware_config.SPEED_MAX_US_PER_S
    assert fleet_config.ACCEL_MAX_US_PER_S2 == firmware_config.ACCEL_MAX_US_PER_S2
    for key in ("min_us", "max_us", "failsafe"):
        assert fleet_config.UNUSED_CHANNEL[key] == firmware_config.CHANNEL_DEFAULTS[key]
