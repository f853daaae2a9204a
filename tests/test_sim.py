"""The board simulator: real unix-port processes running stand-in main.py scripts over loopback
UDP and real ptys (the node firmware is not needed here)."""

import json
import logging
import os
import random
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from unittest.mock import Mock

import pytest
import serial

from servomesh.host import sim as sim_module
from servomesh.host.sim import Simulator
from servomesh.host.sim_board import BoardState

SERVOMESH = str(Path(sys.executable).with_name("servomesh"))
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
START_S = 10.0

UDP_ECHO = """\
import json, socket
config = json.load(open("servomesh.json"))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(socket.getaddrinfo("127.0.0.1", config["udp_port"])[0][-1])
print("echo", config["node_id"], open("reset_cause").read().strip())
while True:
    data, peer = sock.recvfrom(1500)
    sock.sendto(data, peer)
"""

# Echoes stdin in 16-byte blocks (readinto blocks until the whole block is there).
SERIAL_ECHO = """\
import sys
block = bytearray(16)
while True:
    sys.stdin.buffer.readinto(block)
    sys.stdout.buffer.write(block)
"""

IDLE = "import time\nwhile True:\n    time.sleep_ms(50)\n"

# Boots four times: exits for a soft reset, then as the watchdog, then crashes; runs on the 4th.
RESETS = """\
import sys, time
with open("causes.log", "a") as log:
    log.write(open("reset_cause").read())
boots = len(open("causes.log").read().split())
if boots < 4:
    sys.exit((75, 76, 3)[boots - 1])
while True:
    time.sleep_ms(50)
"""

# Prints a line every 20 ms from power-on: what nobody reads is dropped, as on a USB CDC port.
TICKER = """\
import time
n = 0
while True:
    print("tick", n)
    n += 1
    time.sleep_ms(20)
"""

# Feeds the emulated watchdog (200 ms) for 0.5 s after power-on, then starves it.
WATCHDOG = """\
import time
cause = open("reset_cause").read()
with open("causes.log", "a") as log:
    log.write(cause)
if cause.strip() == "power_on":
    for _ in range(5):
        with open("wdt", "w") as f:
            f.write("200\\n")
        time.sleep_ms(100)
while True:
    time.sleep_ms(50)
"""


def udp_ask(port: int, payload: bytes, timeout_s: float = START_S) -> bytes:
    """Send until the board answers (it may still be starting)."""
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        while time.monotonic() < deadline:
            sock.sendto(payload, ("127.0.0.1", port))
            try:
                return sock.recv(2048)
            except TimeoutError:
                continue
    raise TimeoutError("no answer from udp port %d" % port)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path("/proc/%d/stat" % pid).read_text().split(")")[-1].split()[0] == "Z"


def children(pid: int) -> set[int]:
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.add(int(stat_file.parent.name))
    return found


def mpremote(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MPREMOTE, "connect", path, "resume", *args], capture_output=True, text=True, timeout=20
    )


def test_udp_boards_answer_with_their_flash_folder_and_config() -> None:
    configs = [{"node_id": "left-arm", "sender_id": 7}, None]
    with Simulator(nodes=2, main=UDP_ECHO, configs=configs) as sim:
        first, second = sim.boards
        assert udp_ask(first.udp_port, b"ping") == b"ping"
        assert udp_ask(second.udp_port, b"pong") == b"pong"
        assert first.node_id == "left-arm"
        assert first.config["sender_id"] == 7
        assert second.config["node_id"] == "sim-2"
        assert first.udp_url == "udp://127.0.0.1:%d" % first.udp_port
        assert first.serial_url is None
        assert first.url == first.udp_url
        config_file = second.flash / "servomesh.json"
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
        config = json.loads(config_file.read_text())
        assert config == second.config
        assert bytes.fromhex(config["key"]) == second.key
        assert len(second.key or b"") == 32
        assert config["serial"] is False
        assert [channel["pin"] for channel in config["channels"]] == list(range(6))
        assert config["channels"][0]["home_us"] == 1500
        assert (second.flash / "lib").is_dir()
        assert (second.flash / "reset_cause").read_text() == "power_on\n"
        assert "echo sim-2 power_on" in (second.flash / "console.log").read_text()
        root = sim.root
        assert root is not None
    assert not root.exists()  # a temporary folder goes with the simulator


def test_kept_folder_keeps_main_and_config_and_writes_defaults(tmp_path: Path) -> None:
    (tmp_path / "sim-1").mkdir()
    (tmp_path / "sim-1" / "main.py").write_text(UDP_ECHO)
    with Simulator(nodes=1, folder=tmp_path) as sim:
        port, key = sim.boards[0].udp_port, sim.boards[0].key
        assert udp_ask(port, b"x") == b"x"
    with Simulator(nodes=1, folder=tmp_path) as sim:  # same config, same port and key
        assert (sim.boards[0].udp_port, sim.boards[0].key) == (port, key)
        assert udp_ask(port, b"y") == b"y"
    assert (tmp_path / "sim-1" / "main.py").read_text() == UDP_ECHO


def test_a_fresh_flash_folder_gets_the_node_firmware_main(tmp_path: Path) -> None:
    with Simulator(nodes=1, folder=tmp_path, configs=[{"udp_port": 9}]) as sim:
        assert sim.boards[0].udp_port == 9
    assert (tmp_path / "sim-1" / "main.py").read_text() == (
        "from servomesh.firmware import node\nnode.main()\n"
    )


def test_resets_restart_the_board_and_record_their_cause(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with Simulator(nodes=1, main=RESETS) as sim:
        board = sim.boards[0]

        def causes() -> list[str]:
            return (board.flash / "causes.log").read_text().split()

        board.wait_until(lambda b: b.state is BoardState.DOWN, START_S)
        assert causes() == ["power_on", "soft", "watchdog"]
        assert (board.restarts, board.reset_cause, board.exit_status) == (2, "watchdog", 3)
        assert board.pid is None
        crashes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(crashes) == 1
        assert "sim-1" in crashes[0]
        assert "status 3" in crashes[0]
        assert "the board is down" in crashes[0]
        board.start()  # power on again: the 4th boot keeps running
        board.wait_running(START_S)
        assert (board.restarts, board.reset_cause) == (3, "power_on")
        for press, cause in ((board.reset, "hard"), (board.power_cycle, "power_on")):
            assert wait_for(lambda: len(causes()) == board.restarts + 1, START_S)
            pid = board.pid
            assert pid is not None
            press()
            assert (board.state, board.reset_cause) == (BoardState.RUNNING, cause)
            assert gone(pid)
        assert board.restarts == 5
        assert wait_for(lambda: len(causes()) == 6, START_S)
        assert causes()[3:] == ["power_on", "hard", "power_on"]
        pid = board.pid
        assert pid is not None
        board.kill()  # a crash the host must survive: no restart, no report
        assert (board.state, board.pid) == (BoardState.OFF, None)
        assert gone(pid)
        time.sleep(0.1)
        assert board.state is BoardState.OFF
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_a_starved_watchdog_resets_the_board(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with Simulator(nodes=1, main=WATCHDOG) as sim:
        board = sim.boards[0]
        started = time.monotonic()
        board.wait_until(lambda b: b.restarts == 1 and b.state is BoardState.RUNNING, START_S)
        bitten_s = time.monotonic() - started
        assert 0.6 < bitten_s < 2.0  # fed for 0.5 s, then 200 ms of starvation
        assert board.reset_cause == "watchdog"
        assert any("watchdog not fed" in record.getMessage() for record in caplog.records)
        time.sleep(0.4)  # a reset disarms the watchdog: the second boot, never fed, keeps running
        assert board.restarts == 1
        assert (board.flash / "causes.log").read_text().split() == ["power_on", "watchdog"]


def test_twenty_boards_answer_and_leave_no_process() -> None:
    started = time.monotonic()
    with Simulator(nodes=20, main=UDP_ECHO) as sim:
        sim.wait_all_running(START_S)
        for board in sim.boards:
            assert udp_ask(board.udp_port, board.node_id.encode()) == board.node_id.encode()
        answered_s = time.monotonic() - started
        pids = [board.pid for board in sim.boards]
        assert None not in pids
        assert len({board.udp_port for board in sim.boards}) == 20
    assert all(gone(pid) for pid in pids if pid is not None)
    assert answered_s < START_S
    assert not [thread for thread in threading.enumerate() if thread.name == "servomesh-sim"]
    sim.close()  # idempotent


def test_serial_board_relays_bytes_unchanged_and_survives_restarts_and_reopens() -> None:
    # Every byte value but 0x03 (Ctrl-C): 0x1a and 0x1c must not raise signals, \n stays \n.
    # 256 bytes in all: the echo answers in 16-byte blocks.
    values = bytes(value for value in range(256) if value != 3) + b"\x1c"
    with Simulator(nodes=2, serial=1, main=[SERIAL_ECHO, UDP_ECHO]) as sim:
        board = sim.boards[0]
        assert board.serial_url is not None
        assert board.url == board.serial_url
        assert sim.boards[1].serial_url is None
        path = board.serial_url.removeprefix("serial://")
        assert path.startswith("/dev/pts/")
        with serial.Serial(path, timeout=START_S) as port:
            port.write(values)
            assert port.read(len(values)) == values
        # The relay sees the close (and undoes what pyserial left) when its loop next runs.
        relay = board.relay
        assert relay is not None
        assert wait_for(lambda: not relay.attached, START_S)
        board.reset()  # the interpreter restarts; the path stays the same
        board.wait_running(START_S)
        # pyserial's close left VMIN=0 behind; a blocking read must still block, not see EOF.
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"0123456789abcdef")
            assert os.read(fd, 64) == b"0123456789abcdef"
        finally:
            os.close(fd)
        rng = random.Random(7)
        bulk = bytes(rng.choice(values) for _ in range(1 << 16))
        with serial.Serial(path, timeout=START_S) as port:
            port.write(bulk)
            assert port.read(len(bulk)) == bulk
        assert udp_ask(sim.boards[1].udp_port, b"udp") == b"udp"


def selector_wait(fd: int, timeout_s: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(timeout_s))


@pytest.mark.parametrize("inotify", [True, False])
def test_a_peer_that_opens_the_port_gets_fresh_output_at_once(
    monkeypatch: pytest.MonkeyPatch, inotify: bool
) -> None:
    if not inotify:
        monkeypatch.setattr(sim_module, "Inotify", Mock(side_effect=OSError("no inotify")))
    with Simulator(nodes=1, serial=1, main=TICKER) as sim:
        board = sim.boards[0]
        assert board.serial_url is not None
        time.sleep(0.3)  # ~15 lines go by with nobody attached
        fd = os.open(board.serial_url.removeprefix("serial://"), os.O_RDONLY | os.O_NOCTTY)
        try:
            opened = time.monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(fd, selectors.EVENT_READ)
                assert selector.select(1.0), "no output within 1 s of opening the port"
            waited_s = time.monotonic() - opened
            # Output from before the open is dropped byte by byte, as a board's USB CDC drops
            # it: the first line may have lost its start. A line that starts with "tick " is
            # whole.
            output = b""
            while output.count(b"\n") < 2 and selector_wait(fd, 1.0):
                output += os.read(fd, 4096)
            whole = [line for line in output.split(b"\n") if line.startswith(b"tick ")]
        finally:
            os.close(fd)
        assert whole, output
        assert int(whole[0].split()[1]) >= 10  # not a backlog from power-on
        assert waited_s < 0.2
        assert board.relay is not None
        assert board.relay.dropped_bytes > 0


def test_mpremote_breaks_in_with_ctrl_c_and_the_board_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Simulator(nodes=1, serial=1, main=IDLE) as sim:
        board = sim.boards[0]
        board.wait_running(START_S)
        assert board.serial_url is not None
        path = board.serial_url.removeprefix("serial://")
        result = mpremote(path, "exec", "print(6*7)")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "42"
        board.wait_until(lambda b: b.state is BoardState.REPL, START_S)
        assert any("Ctrl-C" in record.getMessage() for record in caplog.records)
        # machine.reset() as the firmware emulates it: the REPL exits with status 75.
        result = mpremote(path, "exec", "--no-follow", "import sys; sys.exit(75)")
        assert result.returncode == 0, result.stderr
        board.wait_until(lambda b: b.state is BoardState.RUNNING and b.restarts == 1, START_S)
        assert board.reset_cause == "soft"
        result = mpremote(path, "exec", "import os; print(os.getcwd())")
        assert result.stdout.strip() == str(board.flash)


def test_a_ctrl_c_at_any_moment_leaves_the_board_at_its_repl() -> None:
    # The state says REPL once the interpreter is spawned: a Ctrl-C sent at once reaches
    # CPython's start-up. A board's REPL would just print a prompt.
    with Simulator(nodes=1, serial=1, main="") as sim:
        board = sim.boards[0]
        board.wait_until(lambda b: b.state is BoardState.REPL, START_S)
        assert board.serial_url is not None
        with serial.Serial(board.serial_url.removeprefix("serial://"), timeout=START_S) as port:
            port.write(b"\x03")
            assert port.read_until(b">>> ").endswith(b">>> ")
            # Once it has run a line, the unix port leaves SIGINT to its default until the next
            # one runs: a Ctrl-C landing there ends the process, as this signal does.
            port.write(b"6*7\r")
            assert port.read_until(b">>> ").endswith(b"6*7\r\n42\n>>> ")  # the line has run
            pid = board.pid
            assert pid is not None
            os.kill(pid, signal.SIGINT)
            board.wait_until(lambda b: b.pid != pid and b.state is BoardState.REPL, START_S)
            port.write(b"\x03")  # the banner is dropped while the REPL restarts: ask for a prompt
            assert port.read_until(b">>> ").endswith(b">>> ")
            port.write(b"6*7\r")
            assert b"6*7\r\n42" in port.read_until(b"42")
        assert (board.state, board.restarts) == (BoardState.REPL, 0)  # no reset either


def read_lines(process: subprocess.Popen[bytes], count: int, timeout_s: float) -> list[str]:
    """The first `count` lines of the process's stdout, raw from the pipe (no buffer to outwait)."""
    assert process.stdout is not None
    fd, deadline, output = process.stdout.fileno(), time.monotonic() + timeout_s, b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while output.count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError("got %r" % output)
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError("servomesh sim exited: got %r" % output)
            output += chunk
    return output.decode().splitlines()[:count]


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_sim_command_prints_urls_and_leaves_no_process(
    tmp_path: Path, stop: signal.Signals
) -> None:
    for i in (1, 2, 3):
        (tmp_path / ("sim-%d" % i)).mkdir()
        (tmp_path / ("sim-%d" % i) / "main.py").write_text(UDP_ECHO if i > 1 else IDLE)
    command = [SERVOMESH, "sim", "--nodes", "3", "--serial", "1", "--folder", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = read_lines(process, 3, START_S)
        for node in ("sim-2", "sim-3"):
            config = json.loads((tmp_path / node / "servomesh.json").read_text())
            assert udp_ask(config["udp_port"], b"hi") == b"hi"
        assert wait_for(lambda: len(children(process.pid)) == 3, START_S)
        boards = children(process.pid)
        process.send_signal(stop)
        status = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    node, serial_url, udp_url = lines[0].split()
    assert node == "sim-1"
    assert serial_url.startswith("serial:///dev/pts/")
    assert udp_url.startswith("udp://127.0.0.1:")
    for i, line in enumerate(lines[1:], start=2):
        node, url = line.split()
        config = json.loads((tmp_path / node / "servomesh.json").read_text())
        assert (node, url) == ("sim-%d" % i, "udp://127.0.0.1:%d" % config["udp_port"])
    assert status == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    assert wait_for(lambda: all(gone(pid) for pid in boards), 5.0)  # PR_SET_PDEATHSIG
    assert process.stderr is not None
    assert b"Traceback" not in process.stderr.read()
    process.stderr.close()
    assert process.stdout is not None
    process.stdout.close()
