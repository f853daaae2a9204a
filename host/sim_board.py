"""One simulated board: a flash folder and the unix-port interpreter process that plays it.

The board restarts its interpreter when the firmware asks for a reset (exit status 75, or 76
for the watchdog) and records why in `reset_cause` in the flash folder. Any other exit leaves
the board down, as a board that crashed to its REPL: a serial board then runs a bare REPL on its
port, so mpremote still reaches it.

The watchdog is outside the CPU, as on a board: once the firmware writes the file `wdt` (its
timeout in ms) in the flash folder, the board resets with cause "watchdog" when that file has
not been rewritten within the timeout. A reset disarms it (the file is removed).
"""

import contextlib
import ctypes
import enum
import fcntl
import logging
import os
import selectors
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Final

from servomesh.host import upy
from servomesh.host.sim_loop import EventLoop
from servomesh.host.sim_pty import Relay, set_board_mode

_log = logging.getLogger(__name__)

SOFT_RESET_EXIT: Final = 75  # the firmware's emulated machine.reset() / REBOOT request
WATCHDOG_EXIT: Final = 76  # the firmware's emulated machine.WDT expiring
_RESET_CAUSES: Final = {SOFT_RESET_EXIT: "soft", WATCHDOG_EXIT: "watchdog"}
_KEYBOARD_INTERRUPT_EXIT: Final = 130  # the unix port's status after an uncaught Ctrl-C
_REAP_TIMEOUT_S: Final = 5.0
WATCHDOG_FILE: Final = "wdt"
_WATCHDOG_RETRY_S: Final = 0.005
_PR_SET_PDEATHSIG: Final = 1


class BoardState(enum.StrEnum):
    OFF = "off"  # never started, or stopped or killed by the simulator's user
    RUNNING = "running"  # main.py runs
    REPL = "repl"  # serial board whose main.py ended: a bare REPL serves its port
    DOWN = "down"  # crashed: no process until start(), reset() or power_cycle()


@cache
def _prctl() -> Callable[..., int]:
    # Resolved before any fork: the child only calls it (no dlopen between fork and exec).
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def _child_setup(parent_pid: int, serial: bool) -> Callable[[], None]:
    prctl = _prctl()

    def setup() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os._exit(1)
        if serial:  # after setsid (start_new_session): the pty becomes the controlling tty
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # The interpreter is CPython embedding MicroPython: a Ctrl-C during CPython's
            # start-up would end the process with a KeyboardInterrupt. Ignored until MicroPython
            # sets its own SIGINT handler to run code, as a board takes Ctrl-C only then.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return setup


class Board:
    """A simulated board. Public methods may be called from any thread; each has a timeout."""

    def __init__(
        self,
        index: int,
        flash: Path,
        config: dict[str, Any],
        serial: bool,
        heap: str | None,
        device_lib: Path,
        loop: EventLoop,
        changed: threading.Condition,
    ) -> None:
        self.index = index
        self.flash = flash
        self.config = config
        self.node_id = str(config["node_id"])
        self.key = bytes.fromhex(config["key"]) if config.get("key") else None
        self.udp_port = int(config["udp_port"])
        self.udp_url = "udp://127.0.0.1:%d" % self.udp_port
        self.heap = heap
        self.state = BoardState.OFF
        self.pid: int | None = None
        self.restarts = 0  # interpreter starts after the first one, whatever the cause
        self.reset_cause: str | None = None
        self.exit_status: int | None = None  # of the last exit that left the board down
        self._loop = loop
        self._changed = changed
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._stop_requested = False
        self._started_once = False
        self._watchdog_mtime_ns: int | None = None
        self._watchdog_timeout_ms: int | None = None
        self._env = upy.environment()
        self._env.pop("MICROPYINSPECT", None)  # it would turn every exit into a REPL
        self._env["MICROPYPATH"] = ".frozen:%s:%s" % (flash / "lib", device_lib)
        self._relay_interest: dict[int, tuple[bool, bool]] | None = None
        self.relay = Relay(self.node_id) if serial else None
        self.serial_url = "serial://" + self.relay.user_path if self.relay else None
        if self.relay is not None:
            loop.call(self._watch_relay)

    @property
    def url(self) -> str:
        """The URL a user connects to first: the serial port if the board has one."""
        return self.serial_url or self.udp_url

    def __repr__(self) -> str:
        return "<Board %s %s pid=%s %s>" % (self.node_id, self.state, self.pid, self.url)

    # -- public API (any thread) --------------------------------------------------------------

    def start(self) -> None:
        """Power the board on if it is off or down; a running board is left alone."""
        self._loop.call(self._power_on)

    def kill(self) -> None:
        """SIGKILL the interpreter and leave the board off (a crash the host must survive)."""
        self._loop.call(self._kill_now)

    def power_cycle(self) -> None:
        """Cut power and power on again: reset cause "power_on"."""
        self._loop.call(lambda: self._restart("power_on"))

    def reset(self) -> None:
        """Press the reset button: reset cause "hard"."""
        self._loop.call(lambda: self._restart("hard"))

    def unplug(self) -> None:
        """Pull the serial cable: the host's open port hangs up and the path does not open
        until `replug`; the board runs on (a self-powered board on a USB cable)."""
        relay = self._serial_relay()

        def unplug() -> None:
            relay.unplug()
            self._watch_relay()

        self._loop.call(unplug)

    def replug(self) -> None:
        """Plug the serial cable back in: the same path opens again."""
        relay = self._serial_relay()
        self._loop.call(relay.replug)

    def terminate(self) -> None:
        """Ask the interpreter to stop (SIGTERM); `wait_until` tells when it is off."""
        self._loop.call(lambda: self._signal(signal.SIGTERM))

    def wait_until(self, predicate: Callable[["Board"], bool], timeout_s: float) -> None:
        """Block until predicate(board) holds; raise TimeoutError after timeout_s."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout_s):
                raise TimeoutError("%r: condition not met within %.1f s" % (self, timeout_s))

    def wait_running(self, timeout_s: float) -> None:
        self.wait_until(lambda board: board.state is BoardState.RUNNING, timeout_s)

    def close(self) -> None:
        """Release the ptys, once the process and the event loop have stopped."""
        if self.relay is not None:
            self.relay.close()

    def _serial_relay(self) -> Relay:
        if self.relay is None:
            raise ValueError("%s has no serial link" % self.node_id)
        return self.relay

    # -- loop thread --------------------------------------------------------------------------

    def _power_on(self) -> None:
        if self._process is None:
            self._spawn_main("power_on")

    def _restart(self, cause: str) -> None:
        self._kill_now()
        self._spawn_main(cause)

    def _spawn_main(self, cause: str) -> None:
        (self.flash / WATCHDOG_FILE).unlink(missing_ok=True)
        self._watchdog_mtime_ns = self._watchdog_timeout_ms = None
        (self.flash / "reset_cause").write_text(cause + "\n")
        self.reset_cause = cause
        if self._started_once:
            self.restarts += 1
        self._started_once = True
        if self.relay is not None:
            self.relay.drop_board_input()  # a rebooting board never reads what was in flight
        self._spawn(["main.py"], BoardState.RUNNING)

    def _spawn(self, args: list[str], state: BoardState) -> None:
        argv = upy.command(*args, heap=self.heap)
        setup = _child_setup(os.getpid(), serial=self.relay is not None)
        if self.relay is not None:
            set_board_mode(self.relay.board_slave)  # a killed REPL leaves its raw mode behind
            stdin = stdout = self.relay.board_slave
            self._process = self._popen(argv, setup, stdin, stdout)
        else:
            console = os.open(self.flash / "console.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                self._process = self._popen(argv, setup, subprocess.DEVNULL, console)
            finally:
                os.close(console)
        self.pid = self._process.pid
        self._pidfd = os.pidfd_open(self._process.pid)
        self._loop.watch(self._pidfd, True, False, self._on_exit)
        if self.relay is not None:
            self.relay.board_alive = True
            self._watch_relay()
        self._set_state(state)

    def _popen(
        self, argv: list[str], setup: Callable[[], None], stdin: int, stdout: int
    ) -> "subprocess.Popen[bytes]":
        return subprocess.Popen(  # noqa: S603 - the interpreter from upy, the board's own script
            argv,
            cwd=self.flash,
            env=self._env,
            stdin=stdin,
            stdout=stdout,
            stderr=stdout,
            start_new_session=True,
            preexec_fn=setup,  # noqa: PLW1509 - forks only on the loop thread; setup only calls C
        )

    def _on_exit(self, fd: int, _mask: int) -> None:
        if fd != self._pidfd or self._process is None or self._process.poll() is None:
            return  # a stale event for a process reaped already
        role_main = self.state is BoardState.RUNNING
        status = self._reap()
        if self._stop_requested:
            self._stop_requested = False
            self._set_state(BoardState.OFF)
            return
        cause = _RESET_CAUSES.get(status)
        if cause is None and not role_main and status == 0:
            cause = "soft"  # Ctrl-D at a board's REPL soft-resets it
        try:
            if cause is not None:
                self._spawn_main(cause)
            elif not role_main and status == -signal.SIGINT and self.relay is not None:
                # The unix port's REPL reads Ctrl-C as a key, but leaves SIGINT to its default
                # between lines: a Ctrl-C that lands there ends the process. A board's REPL
                # takes Ctrl-C at any time, so this one stays at its REPL.
                self._spawn([], BoardState.REPL)
            elif role_main and self.relay is not None:
                self._report(status, "the board is at its REPL")
                self._spawn([], BoardState.REPL)
            else:
                self._report(status, "the board is down")
                self._set_state(BoardState.DOWN)
        except (OSError, subprocess.SubprocessError):
            _log.exception("%s: cannot restart the interpreter", self.node_id)
            self._set_state(BoardState.DOWN)

    def _report(self, status: int, what: str) -> None:
        self.exit_status = status
        if status < 0:
            how = "was killed by signal %d" % -status
        elif status == _KEYBOARD_INTERRUPT_EXIT:
            how = "stopped on Ctrl-C (KeyboardInterrupt)"
        else:
            how = "exited with status %d" % status
        _log.warning("%s: the interpreter %s; %s%s", self.node_id, how, what, self._last_words())

    def _last_words(self) -> str:
        if self.relay is not None:
            return ""
        try:
            with open(self.flash / "console.log", "rb") as console:
                console.seek(max(0, console.seek(0, os.SEEK_END) - 1024))
                lines = console.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " (console.log: %s)" % lines[-1] if lines else ""

    def _signal(self, signum: int) -> None:
        if self._process is not None:
            self._stop_requested = True
            with contextlib.suppress(ProcessLookupError):  # exited already: _on_exit reaps it
                os.killpg(self._process.pid, signum)

    def _kill_now(self) -> None:
        if self._process is not None:
            self._signal(signal.SIGKILL)
            self._reap()
            self._stop_requested = False
            self._set_state(BoardState.OFF)

    def _reap(self) -> int:
        process, pidfd = self._process, self._pidfd
        if process is None or pidfd is None:
            raise RuntimeError("%s: no interpreter to reap" % self.node_id)
        self._loop.watch(pidfd, False, False, self._on_exit)
        os.close(pidfd)
        status = process.wait(_REAP_TIMEOUT_S)
        self._process = self._pidfd = self.pid = None
        if self.relay is not None:
            self.relay.board_alive = False
        return status

    def _set_state(self, state: BoardState) -> None:
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def _watch_relay(self) -> None:
        if self.relay is None:
            return
        interest = self.relay.interest()
        if interest != self._relay_interest:  # the common case on a busy link: nothing to change
            self._relay_interest = interest
            for fd, (read, write) in interest.items():
                self._loop.watch(fd, read, write, self._on_relay)

    def _on_relay(self, fd: int, mask: int) -> None:
        relay = self.relay
        if relay is None:
            return
        if mask & selectors.EVENT_READ:
            relay.on_read(fd)
        if mask & selectors.EVENT_WRITE:
            relay.on_write(fd)
        self._watch_relay()

    def check_watchdog(self) -> float | None:
        """Loop thread: reset the board if its firmware armed the watchdog and starved it.

        Returns how soon (seconds) to look again, or None while the watchdog is not armed.
        """
        if self.state is not BoardState.RUNNING:
            return None  # a REPL feeds nothing: the emulated watchdog only guards main.py
        path = self.flash / WATCHDOG_FILE
        try:
            fed_ns = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if fed_ns != self._watchdog_mtime_ns:
            try:
                self._watchdog_timeout_ms = int(path.read_text())
            except (OSError, ValueError):
                return _WATCHDOG_RETRY_S  # caught between truncate and write
            self._watchdog_mtime_ns = fed_ns
        if self._watchdog_timeout_ms is None:
            return None
        left_ns = fed_ns + self._watchdog_timeout_ms * 1_000_000 - time.time_ns()
        if left_ns >= 0:
            return left_ns / 1e9 + _WATCHDOG_RETRY_S
        starved_ms = self._watchdog_timeout_ms - left_ns // 1_000_000
        _log.info("%s: watchdog not fed for %d ms: reset", self.node_id, starved_ms)
        self._restart("watchdog")
        return None

    def poll_attached(self) -> bool:
        """Loop thread: notice a peer opening the serial path; True if still waiting for one."""
        if self.relay is None or self.relay.attached:
            return False
        if self.relay.check_attached():
            self._watch_relay()
            return False
        return True
