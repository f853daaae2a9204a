"""Discovery against real simulated nodes: DISCOVER over UDP with and without keys, DISCOVER on a
pty, the USB id filter, `servomesh nodes` without a config, and a real broadcast inside a
network namespace the test makes for itself."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import serial

from servomesh.firmware import VERSION
from servomesh.firmware import config as node_config
from servomesh.host import cli_fleet, discovery
from servomesh.host.discovery import DiscoveryKey, Status
from servomesh.host.sim import DEFAULT_MAIN, BoardState, Simulator, write_fleet_config

SERVOMESH = str(Path(sys.executable).with_name("servomesh"))
TESTS = Path(__file__).resolve().parent
FAST_S = 0.4  # a discovery window: loopback answers take well under 10 ms
# A node from the future: the real firmware, told it speaks protocol 2.
PROTOCOL_2_MAIN = "from servomesh.protocol import messages\nmessages.PROTOCOL_VERSION = 2\n"
PROTOCOL_2_MAIN += DEFAULT_MAIN
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def servomesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SERVOMESH, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Simulator, Path]]:
    """sim-1: serial and UDP, keyed; sim-2: the same, speaking protocol 2; sim-3: UDP only,
    unsigned. Key files in fleet.keys/ beside the fleet config."""
    folder = tmp_path_factory.mktemp("discovery")
    with Simulator(
        nodes=3,
        serial=2,
        folder=folder / "boards",
        configs=[None, None, {"key": None, "allow_unsigned": True}],
        main=[DEFAULT_MAIN, PROTOCOL_2_MAIN, DEFAULT_MAIN],
    ) as sim:
        wait_answering(sim, "127.0.0.1")
        yield sim, write_fleet_config(sim, folder / "fleet.toml")


def wait_answering(sim: Simulator, address: str) -> None:
    """Until every board answers DISCOVER at `address`: a board runs main.py a moment before
    its UDP socket is bound."""
    sim.wait_all_running(10)
    keys = [DiscoveryKey(b.node_id, b.key) for b in sim.boards if b.key is not None]
    targets = [(address, board.udp_port) for board in sim.boards]
    ready = run(discovery.discover_udp([], targets=targets, keys=keys, timeout_s=10))
    assert len(ready.found) == len(sim.boards), ready


def key_of(sim: Simulator, index: int) -> DiscoveryKey:
    board = sim.boards[index]
    assert board.key is not None
    return DiscoveryKey(board.node_id, board.key)


def target(sim: Simulator, index: int) -> tuple[str, int]:
    return ("127.0.0.1", sim.boards[index].udp_port)


def pty(sim: Simulator, index: int) -> str:
    relay = sim.boards[index].relay
    assert relay is not None
    return relay.user_path


def auth_failed(sim: Simulator) -> int:
    """sim-1's auth_failed counter, from the INFO of a correctly keyed DISCOVER (and no
    unsigned one, which would count)."""
    ask = discovery.discover_udp(
        [], targets=[target(sim, 0)], keys=[key_of(sim, 0)], unsigned=False
    )
    found = run(ask)
    assert len(found.found) == 1, found
    return int(found.found[0].info["counters"]["auth_failed"])


def test_the_default_port_is_the_nodes() -> None:
    assert node_config.DEFAULTS["udp_port"] == discovery.DEFAULT_PORT


def test_a_key_never_shows() -> None:
    assert repr(DiscoveryKey("arm.key", bytes(32))) == "DiscoveryKey(name='arm.key', key_id=1)"


def test_udp_targets_with_the_right_keys_find_every_node(
    boards: tuple[Simulator, Path],
) -> None:
    sim, _ = boards
    found = run(
        discovery.discover_udp(
            [],
            targets=[target(sim, i) for i in range(3)],
            keys=[key_of(sim, 0), key_of(sim, 1)],
            timeout_s=FAST_S,
        )
    )
    assert found.notes == []
    by_id = {node.node_id: node for node in found.found}
    assert sorted(by_id) == ["sim-1", "sim-2", "sim-3"]  # each once, though asked three times
    one, two, three = by_id["sim-1"], by_id["sim-2"], by_id["sim-3"]
    assert (one.link, one.key, one.status) == (
        "udp://127.0.0.1:%d" % target(sim, 0)[1],
        "sim-1",
        Status.OK,
    )
    assert (one.firmware, one.protocol_version, one.board, one.channels) == (VERSION, 1, "sim", 6)
    assert (three.key, three.status, three.firmware) == (None, Status.OK, VERSION)
    # A node with another protocol is found, and says so.
    assert (two.key, two.status, two.protocol_version) == ("sim-2", Status.NEWER, 2)
    assert "protocol 2" in two.why


def test_a_keyed_node_ignores_a_wrong_key_and_no_key_and_counts_them(
    boards: tuple[Simulator, Path],
) -> None:
    sim, _ = boards
    before = auth_failed(sim)
    wrong = DiscoveryKey("wrong", bytes(range(32)))
    found = run(
        discovery.discover_udp([], targets=[target(sim, 0)], keys=[wrong], timeout_s=FAST_S)
    )
    assert found.found == []
    assert found.notes == [
        "udp://127.0.0.1:%d: no answer (no node there, or it has a key this host was not given)"
        % target(sim, 0)[1]
    ]
    # Each round: one DISCOVER with the wrong key, one unsigned.
    assert auth_failed(sim) == before + 2 * len(discovery.ROUNDS)
    # An unsigned node does not answer a signed DISCOVER either (it has no key to check it).
    keyed_only = discovery.discover_udp(
        [], targets=[target(sim, 2)], keys=[key_of(sim, 0)], unsigned=False, timeout_s=FAST_S
    )
    assert run(keyed_only).found == []


def test_serial_probe_finds_the_node_on_its_pty(boards: tuple[Simulator, Path]) -> None:
    sim, _ = boards
    on_udp = run(discovery.discover_udp([], targets=[target(sim, 0)], keys=[key_of(sim, 0)]))
    found = run(discovery.probe_serial_ports([pty(sim, 0), pty(sim, 1)], FAST_S))
    assert found.notes == []
    one, two = found.found
    assert (one.link, one.node_id, one.firmware, one.key) == (
        "serial://" + pty(sim, 0),
        "sim-1",
        VERSION,
        None,
    )
    assert one.boot_id == on_udp.found[0].boot_id  # the same node, the same boot
    # A node of protocol 2 answers with its INFO: reported as newer, not dropped.
    assert (two.status, two.protocol_version, two.node_id) == (Status.NEWER, 2, "sim-2")


def test_serial_probe_says_why_a_port_is_not_a_node(
    boards: tuple[Simulator, Path], tmp_path: Path
) -> None:
    sim, _ = boards
    with serial.Serial(pty(sim, 0), exclusive=True):  # another program holds the port
        busy = run(discovery.probe_serial(pty(sim, 0), FAST_S))
    assert isinstance(busy, str)
    assert "busy" in busy
    missing = run(discovery.probe_serial(str(tmp_path / "ttyUSB9"), FAST_S))
    assert missing == "serial://%s: cannot open: No such file or directory" % (tmp_path / "ttyUSB9")
    master, slave = os.openpty()  # a port nothing answers on
    try:
        silent = run(discovery.probe_serial(os.ttyname(slave), 0.2))
    finally:
        os.close(master)
        os.close(slave)
    assert isinstance(silent, str)
    assert "no answer to DISCOVER within 0.2 s" in silent


@pytest.fixture
def bare_repl(tmp_path: Path) -> Iterator[Simulator]:
    """A board whose main.py does nothing, so it sits at its friendly REPL."""
    with Simulator(nodes=1, serial=1, folder=tmp_path / "boards", main="") as sim:
        sim.boards[0].wait_until(lambda b: b.state is BoardState.REPL, 10)
        yield sim


def test_a_bare_micropython_repl_is_named_and_left_as_it_was(bare_repl: Simulator) -> None:
    board = bare_repl.boards[0]
    pid = board.pid
    note = run(discovery.probe_serial(pty(bare_repl, 0), FAST_S))
    assert note == "serial://%s: a MicroPython REPL without the servomesh node running" % (
        pty(bare_repl, 0)
    )
    assert (board.pid, board.state) == (pid, BoardState.REPL)  # never soft-reset
    # Back at the friendly REPL with an empty line, which evaluates a line at Enter (the raw
    # REPL would not).
    with serial.Serial(pty(bare_repl, 0), timeout=5) as port:
        port.reset_input_buffer()
        port.write(b"6*7\r")
        seen = port.read_until(b"42")
    assert b"6*7\r\n42" in seen, seen  # echoed and evaluated: the raw REPL does neither


def test_a_serial_discover_is_only_typing_to_a_repl(bare_repl: Simulator) -> None:
    # The seq and CRC are random: drawn as a probe draws them, 40 frames of 40 different seqs
    # go to the real interpreter's REPL. Any byte it acted on (Enter, Ctrl-A, Ctrl-D, ...)
    # would run the line, change the REPL's mode, or soft-reset the board.
    board = bare_repl.boards[0]
    with serial.Serial(pty(bare_repl, 0), timeout=5) as port:
        port.write(b"\x03")  # past the banner the REPL may still be printing
        assert port.read_until(b"\r\n>>> ").endswith(b"\r\n>>> ")
        pid = board.pid
        for _ in range(40):
            _, frame, echo = discovery._typeable_discover()
            port.write(frame)
            seen = port.read_until(echo)
            assert seen == echo, (frame.hex(), seen)  # its printable bytes typed, nothing else
            port.write(b"\x03")
            seen = port.read_until(b">>> ")
            assert seen == b"\r\n>>> ", (frame.hex(), seen)  # the line cleared, no output
        port.write(b"6*7\r")
        assert b"6*7\r\n42" in port.read_until(b"42")
    assert (board.pid, board.state) == (pid, BoardState.REPL)


def test_the_usb_filter_picks_the_boards_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    def port(device: str, vid: int | None = None, pid: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(device=device, vid=vid, pid=pid)

    ports = [
        port("/dev/ttyACM1", 0x303A, 0x1001),  # ESP32-S3 USB-Serial/JTAG
        port("/dev/ttyUSB0", 0x10C4, 0xEA60),  # CP2102
        port("/dev/ttyUSB1", 0x1A86, 0x7523),  # CH340
        port("/dev/ttyUSB2", 0x1A86, 0x55D4),  # CH9102
        port("/dev/ttyUSB3", 0x0403, 0x6001),  # FT232R
        port("/dev/ttyUSB4", 0x0403, 0x6015),  # FT231X
        port("/dev/ttyACM0", 0x2E8A, 0x0005),  # RP2040 MicroPython
        port("/dev/ttyUSB5", 0x0403, 0x6010),  # FT2232: a JTAG adapter, not a board
        port("/dev/ttyACM2", 0x2E8A, 0x000C),  # RP2040 debug probe
        port("/dev/ttyACM3", 0x1234, 0x5678),  # a modem
        port("/dev/ttyS0"),  # a built-in UART: no USB ids
    ]
    expected = ["/dev/ttyACM0", "/dev/ttyACM1", *("/dev/ttyUSB%d" % i for i in range(5))]
    assert discovery.usb_candidates(ports) == expected
    monkeypatch.setattr(discovery.list_ports, "comports", lambda: ports)
    assert discovery.scan_usb_serial() == expected


def test_nodes_without_a_config_lists_what_answers(boards: tuple[Simulator, Path]) -> None:
    sim, config = boards
    keys = config.with_name("fleet.keys")
    targets = [arg for i in range(3) for arg in ("--target", "127.0.0.1:%d" % target(sim, i)[1])]
    args = [*targets, "--key-file", str(keys / "sim-1.key"), "--timeout", str(FAST_S)]
    result = servomesh("nodes", *args, "--key-file", str(keys / "sim-2.key"), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["node_id"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == ["sim-1", "sim-2", "sim-3"]
    assert (rows["sim-1"]["key"], rows["sim-1"]["status"]) == (str(keys / "sim-1.key"), "ok")
    assert (rows["sim-2"]["status"], rows["sim-3"]["key"]) == ("newer", None)
    assert all(row["firmware"] == VERSION for row in rows.values())
    for board in sim.boards[:2]:  # keys are never printed
        assert board.key is not None
        assert board.key.hex() not in result.stdout + result.stderr

    table = servomesh("nodes", *args, "--serial", pty(sim, 0))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert tuple(lines[0].split()) == cli_fleet._FOUND_COLUMNS
    assert any(line.startswith("serial://" + pty(sim, 0)) for line in lines)
    assert "udp://127.0.0.1:%d: no answer" % target(sim, 1)[1] in table.stderr  # sim-2: no key


def test_nodes_says_when_nothing_answers(boards: tuple[Simulator, Path]) -> None:
    sim, _ = boards
    result = servomesh("nodes", "--target", "127.0.0.1:%d" % target(sim, 0)[1], "--timeout", "0.2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "servomesh nodes: no node answered "
        "(a node with a key answers only DISCOVER signed with it: --key-file)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key-file", "/nonexistent.key"], "key file /nonexistent.key: No such file"),
        (["--target", "10.0.0.7"], "'10.0.0.7': write HOST:PORT"),
        (["--broadcast", "10.0.0"], "'10.0.0' is not an IPv4 address"),
        (["--timeout", "0"], "'0': seconds above 0, at most 60"),
    ],
)
def test_nodes_refuses_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = servomesh("nodes", "--target", "127.0.0.1:9", *args)  # never a broadcast
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def sim1_as_it_runs(sim: Simulator, key_file: Path) -> str:
    """A fleet config of sim-1 alone that matches the config it runs (its six channels at
    500 .. 2500 us), so the session's config push changes nothing and it does not reboot."""
    lines = ["[nodes.sim-1]", 'link = "%s"' % sim.boards[0].udp_url, 'key_file = "%s"' % key_file]
    for channel in range(6):
        lines += ["[joints.c%d]" % channel, 'node = "sim-1"', "channel = %d" % channel]
        lines += ["min_deg = -90", "max_deg = 90", "min_pulse_us = 500", "max_pulse_us = 2500"]
    return "\n".join(lines) + "\n"


def test_nodes_with_a_config_lists_the_others_that_answer(
    boards: tuple[Simulator, Path], tmp_path: Path
) -> None:
    sim, config = boards
    keys = config.with_name("fleet.keys")
    only_sim1 = tmp_path / "one.toml"
    only_sim1.write_text(sim1_as_it_runs(sim, keys / "sim-1.key"))
    targets = [arg for i in range(3) for arg in ("--target", "127.0.0.1:%d" % target(sim, i)[1])]
    refused = servomesh("nodes", "--config", str(only_sim1), *targets)
    assert refused.returncode == 2
    assert refused.stderr == "servomesh nodes: --target needs --discover when --config is given\n"
    result = servomesh(
        "nodes", "--config", str(only_sim1), "--discover", *targets, "--timeout", str(FAST_S)
    )
    assert result.returncode == 0, result.stderr
    assert "answering, not in %s:" % only_sim1 in result.stdout
    listed = servomesh(
        "nodes", "--config", str(only_sim1), "--discover", *targets, "--json", "--timeout", "0.2"
    )
    document = json.loads(listed.stdout)
    assert [row["name"] for row in document["nodes"]] == ["sim-1"]
    # sim-1 answers too, with the config's key, but is in the config; sim-2 has no key here.
    assert [row["node_id"] for row in document["discovered"]] == ["sim-3"]
    assert sim.boards[0].restarts == 0  # the config matched: nothing pushed, no reboot


# -- a real broadcast ----------------------------------------------------------------------

NETNS_SETUP = (
    ("ip", "link", "set", "lo", "up"),
    ("ip", "link", "add", "sm0", "type", "veth", "peer", "name", "sm1"),
    ("ip", "addr", "add", "10.77.0.1/24", "dev", "sm0"),
    ("ip", "link", "set", "sm0", "up"),
    ("ip", "link", "set", "sm1", "up"),
    ("ip", "route", "add", "default", "dev", "sm0"),  # 255.255.255.255 needs a route
)
SETUP_FAILED = 77


def netns_main(folder: str) -> None:
    """Runs inside a new network namespace: an interface with an address and a default route,
    two boards listening on every address (sim-1 keyed on the default port 5683, sim-2
    unsigned on 5684), and `servomesh nodes` broadcasting. Prints the results as JSON."""
    for command in NETNS_SETUP:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        if done.returncode:
            print("%s: %s" % (" ".join(command), done.stderr.strip()), file=sys.stderr)
            sys.exit(SETUP_FAILED)
    everywhere = "0.0.0.0"  # noqa: S104 (the namespace's own interfaces, nothing else)
    configs = [
        {"udp_host": everywhere},
        {"udp_host": everywhere, "key": None, "allow_unsigned": True},
    ]
    with Simulator(nodes=2, folder=Path(folder) / "boards", base_port=5683, configs=configs) as sim:
        wait_answering(sim, "10.77.0.1")
        config = write_fleet_config(sim, Path(folder) / "fleet.toml")
        ask = ["nodes", "--broadcast", "255.255.255.255", "--json", "--timeout", "1"]
        ask += ["--key-file", str(config.with_name("fleet.keys") / "sim-1.key")]
        results = {}
        for name, ports in (
            ("default port", []),
            ("both ports", ["--port", "5683", "--port", "5684"]),
        ):
            done = servomesh(*ask, *ports)
            results[name] = {
                "status": done.returncode,
                "stdout": done.stdout,
                "stderr": done.stderr,
            }
    print(json.dumps(results))


def test_a_broadcast_reaches_every_node_in_a_network_namespace(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("needs unshare and ip: `make test` installs util-linux and iproute2")
    # Root makes a network namespace directly; anyone else inside a user namespace, if allowed.
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "-rn"]
    child = "import test_discovery; test_discovery.netns_main(%r)" % str(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS / "shared")])}
    done = subprocess.run(
        [*unshare, sys.executable, "-c", child], capture_output=True, text=True, timeout=60, env=env
    )
    if done.returncode == SETUP_FAILED or done.stderr.startswith("unshare:"):
        # The one skip: a kernel or container that forbids network namespaces to this user
        # (no root, no user namespaces) cannot run it, whatever is installed.
        pytest.skip("cannot make a network namespace here: %s" % done.stderr.strip())
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    default, both = results["default port"], results["both ports"]
    assert default["status"] == 0, default["stderr"]
    rows = json.loads(default["stdout"])
    assert [(row["node_id"], row["link"]) for row in rows] == [("sim-1", "udp://10.77.0.1:5683")]
    assert both["status"] == 0, both["stderr"]
    rows = sorted(json.loads(both["stdout"]), key=lambda row: row["node_id"])
    assert [(row["node_id"], row["key"] is None) for row in rows] == [
        ("sim-1", False),
        ("sim-2", True),
    ]
