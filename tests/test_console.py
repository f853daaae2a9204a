"""`servomesh console` against a simulated board: LOG records and console text, timestamped."""

import argparse
import io
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import serial

from servomesh.host import console
from servomesh.host.sim import Simulator
from servomesh.protocol import messages

START_S = 10.0
STAMP = r"\d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(nodes=1, serial=1) as simulator:
        simulator.wait_all_running(START_S)
        yield simulator


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    console.add_arguments(parser.add_subparsers(dest="command"))
    return parser.parse_args(["console", *argv])


def test_serial_console_shows_boot_records_and_console_text_across_a_reset(
    sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    board = sim.boards[0]
    assert board.serial_url is not None

    def reset_later() -> None:
        time.sleep(1.0)
        board.reset()

    resetter = threading.Thread(target=reset_later)
    resetter.start()
    try:
        assert console.run(options(board.serial_url, "--for", "3")) == 0
    finally:
        resetter.join()
    out = capsys.readouterr().out
    # The console's HELLO is the node's first host contact: LOG boot (power_on, boot 1). After
    # the reset the banner comes as console text, and the next PING brings the new boot record.
    assert re.search(r"^%s INFO +\S+ boot \[0, 1\]$" % STAMP, out, re.MULTILINE), out
    assert re.search(r"^%s NOTE +sim-1 answered HELLO: firmware 0\.1\.0" % STAMP, out, re.M), out
    banner = r"^%s CONSOLE +sim-1 \| servomesh node sim-1: udp port \d+, reset cause hard$"
    assert re.search(banner % STAMP, out, re.MULTILINE), out
    hard = messages.RESET_CAUSES.index("hard")
    assert re.search(r"^%s INFO +sim-1 boot \[%d, 2\]$" % (STAMP, hard), out, re.MULTILINE), out


def test_udp_console_signs_with_the_key_and_shows_records(sim: Simulator) -> None:
    board = sim.boards[0]
    assert board.key is not None
    out = io.StringIO()
    console.follow(board.udp_url, board.key, 1.5, out)
    text = out.getvalue()
    assert re.search(r"^%s INFO +udp://127\.0\.0\.1:\d+ boot \[0, 1\]$" % STAMP, text, re.M), text
    assert "sim-1 answered HELLO" in text


def test_udp_console_with_another_key_says_nobody_answers(sim: Simulator) -> None:
    out = io.StringIO()
    console.follow(sim.boards[0].udp_url, bytes(32), 3.5, out)
    assert "no answer to HELLO yet" in out.getvalue()
    assert "boot" not in out.getvalue()


def test_a_missing_port_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert console.run(options("/dev/does-not-exist")) == 2
    assert "servomesh console: serial:///dev/does-not-exist: cannot open" in capsys.readouterr().err


def test_ctrl_c_ends_the_console_cleanly_and_frees_the_port(sim: Simulator) -> None:
    url = sim.boards[0].serial_url
    assert url is not None
    interrupt = threading.Timer(0.8, signal.raise_signal, (signal.SIGINT,))
    interrupt.start()
    try:
        assert console.run(options(url)) == 0  # no --for: only Ctrl-C ends it
    finally:
        interrupt.cancel()
    with serial.Serial(url.removeprefix("serial://"), exclusive=True):
        pass  # the console let go of the port
