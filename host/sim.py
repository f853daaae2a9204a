"""Simulated boards, and the `servomesh sim` command.

    with Simulator(nodes=4, serial=1) as sim:
        sim.boards[0].serial_url, sim.boards[0].udp_url, sim.boards[0].key

Each board is one MicroPython unix-port process with its own flash folder (main.py,
servomesh.json, lib/), restarted like a board on reset; see sim_board. Serial boards are reached
through a pty path (`serial:///dev/pts/N`) that mpremote and pyserial open; see sim_pty.
"""

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final

from servomesh.host import fleet_config, ports, upy
from servomesh.host.sim_board import (
    SOFT_RESET_EXIT,
    WATCHDOG_EXIT,
    WATCHDOG_FILE,
    Board,
    BoardState,
)
from servomesh.host.sim_loop import EventLoop
from servomesh.host.sim_notify import IN_CREATE, IN_OPEN, Inotify

__all__ = ["SOFT_RESET_EXIT", "WATCHDOG_EXIT", "Board", "BoardState", "Simulator"]

_log = logging.getLogger(__name__)

DEFAULT_MAIN: Final = "from servomesh.firmware import node\nnode.main()\n"
CHANNELS: Final = 6
STOP_GRACE_S: Final = 1.0  # SIGTERM, then SIGKILL after this long
# Without inotify the simulator polls: output flows this soon after a peer opens a serial path,
# and an emulated watchdog bites at most this late.
_ATTACH_POLL_S: Final = 0.02
_WATCHDOG_POLL_S: Final = 0.05
_IDLE_CHECK_S: Final = 1.0  # look anyway now and then, in case a notification went missing


def default_config(index: int, udp_port: int, serial: bool) -> dict[str, Any]:
    """The node config a fresh simulated board gets (servomesh.json)."""
    channel = {"min_us": 500, "max_us": 2500, "home_us": 1500}
    motion = {"speed_us_per_s": 0, "accel_us_per_s2": 0, "failsafe": "hold"}
    return {
        "node_id": "sim-%d" % index,
        "sender_id": index,
        "board": "sim",
        "udp_host": "127.0.0.1",  # simulated boards serve loopback only
        "udp_port": udp_port,
        "serial": serial,
        "key_id": 1,
        "key": secrets.token_hex(32),
        "channels": [{"pin": pin, **channel, **motion} for pin in range(CHANNELS)],
    }


def write_config(path: Path, config: Mapping[str, Any]) -> None:
    """Write servomesh.json readable by its owner only: it holds the node's key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that exists already
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)
        file.write("\n")


def prepare_flash(
    flash: Path,
    index: int,
    udp_port: int,
    serial: bool,
    config: Mapping[str, Any] | None = None,
    main: str | None = None,
) -> dict[str, Any]:
    """Lay out a board's flash root; return its config. Given files replace, defaults only fill."""
    (flash / "lib").mkdir(parents=True, exist_ok=True)
    main_py = flash / "main.py"
    if main is not None:
        main_py.write_text(main, encoding="utf-8")
    elif not main_py.exists():  # `servomesh deploy` may have put its own there
        main_py.write_text(DEFAULT_MAIN, encoding="utf-8")
    config_path = flash / "servomesh.json"
    if config is not None:
        merged = {**default_config(index, udp_port, serial), **config}
        write_config(config_path, merged)
        return merged
    if config_path.exists():
        kept: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        if kept.get("serial", serial) != serial:
            _log.warning("%s: servomesh.json says serial=%s", flash, kept.get("serial"))
        return kept
    fresh = default_config(index, udp_port, serial)
    write_config(config_path, fresh)
    return fresh


class Simulator:
    """N simulated boards; the first `serial` of them also have a serial port (a pty path).

    `configs[i]` (keys merged over the defaults) and `main` (one text, or one per board) replace
    what the flash folders hold; otherwise a kept `folder` keeps its files. `close()` stops every
    interpreter, closes the ptys and removes a temporary folder; it is idempotent.
    """

    def __init__(
        self,
        nodes: int = 1,
        serial: int = 0,
        heap: str | None = None,
        folder: str | os.PathLike[str] | None = None,
        configs: Sequence[Mapping[str, Any] | None] | None = None,
        main: str | Sequence[str] | None = None,
        base_port: int | None = None,
    ) -> None:
        if nodes < 1 or not 0 <= serial <= nodes:
            raise ValueError("need nodes >= 1 and 0 <= serial <= nodes")
        if configs is not None and len(configs) != nodes:
            raise ValueError("configs must hold one entry (or None) per board")
        if main is not None and not isinstance(main, str) and len(main) != nodes:
            raise ValueError("main must be one text or one text per board")
        self.nodes, self.serial, self.heap = nodes, serial, heap
        self.folder = Path(folder) if folder is not None else None
        self._configs, self._main, self._base_port = configs, main, base_port
        self.boards: list[Board] = []
        self.root: Path | None = None
        self._loop: EventLoop | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._notify: Inotify | None = None
        self._watches: dict[int, Board] = {}
        self._next_check = 0.0

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> "Simulator":
        """Lay out the flash folders and power every board on."""
        if self._loop is not None or self._closed:
            raise RuntimeError("a Simulator starts once")
        device_lib = upy.device_lib()
        upy.interpreter()  # fail here, with its helpful message, rather than in the loop thread
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.root = self.folder
        else:
            self.root = Path(tempfile.mkdtemp(prefix="servomesh-sim-"))
        self._loop = EventLoop("servomesh-sim")
        self._loop.tick = self._tick
        try:
            udp_ports = self._ports()
            for i in range(1, self.nodes + 1):
                main = self._main
                if main is not None and not isinstance(main, str):
                    main = main[i - 1]
                config = self._configs[i - 1] if self._configs is not None else None
                serial = i <= self.serial
                flash = self.root / ("sim-%d" % i)
                config = prepare_flash(flash, i, udp_ports[i - 1], serial, config, main)
                board = Board(
                    i, flash, dict(config), serial, self.heap, device_lib, self._loop, self._changed
                )
                self.boards.append(board)
            self._start_notify(self._loop)
            for board in self.boards:
                board.start()
        except BaseException:
            self.close()
            raise
        return self

    def wait_all_running(self, timeout_s: float) -> None:
        """Block until every board runs main.py; TimeoutError names the ones that do not."""
        with self._changed:
            if self._changed.wait_for(self._all_running, timeout_s):
                return
        late = [board for board in self.boards if board.state is not BoardState.RUNNING]
        raise TimeoutError("not running after %.1f s: %r" % (timeout_s, late))

    def close(self) -> None:
        """Stop every board (SIGTERM, then SIGKILL), close the ptys, remove a temp folder."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_boards()
        finally:
            if self._loop is not None:
                self._loop.stop()  # its exit also SIGKILLs any straggler (PR_SET_PDEATHSIG)
            if self._notify is not None:
                self._notify.close()
            for board in self.boards:
                board.close()
            if self.folder is None and self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)

    def _stop_boards(self) -> None:
        running = [board for board in self.boards if board.pid is not None]
        for board in running:
            board.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for board in running:
            try:
                board.wait_until(lambda b: b.pid is None, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                board.kill()  # waits for the kernel to reap it

    def _all_running(self) -> bool:
        return all(board.state is BoardState.RUNNING for board in self.boards)

    def _ports(self) -> list[int]:
        if self._base_port is not None:
            return [self._base_port + i for i in range(self.nodes)]
        # The unix port cannot report the port it bound: each board is told one, outside the
        # ephemeral range (see ports.py).
        return ports.free_ports(self.nodes)

    def _start_notify(self, loop: EventLoop) -> None:
        try:
            notify = Inotify()
        except OSError as error:
            _log.debug("no inotify (%s): polling instead", error)
            return
        try:
            for board in self.boards:
                self._watches[notify.add_watch(board.flash, IN_CREATE)] = board
                if board.relay is not None:
                    self._watches[notify.add_watch(board.relay.user_path, IN_OPEN)] = board
        except OSError as error:  # e.g. fs.inotify.max_user_watches reached
            _log.debug("inotify: %s: polling instead", error)
            notify.close()
            return
        self._notify = notify
        loop.call(lambda: loop.watch(notify.fd, True, False, self._on_notify))

    def _on_notify(self, _fd: int, _mask: int) -> None:
        if self._notify is None:
            return
        for wd, mask, name in self._notify.read():
            board = self._watches.get(wd)
            if board is None:
                continue
            if mask & IN_OPEN:
                board.poll_attached()
            elif name == WATCHDOG_FILE:  # armed: look once its first feed has landed
                self._next_check = min(self._next_check, time.monotonic() + _WATCHDOG_POLL_S)

    def _tick(self) -> float:
        # Runs on every loop iteration, relay traffic included: cheap unless a check is due.
        now = time.monotonic()
        if now < self._next_check:
            return self._next_check - now
        waits = [_IDLE_CHECK_S]
        for board in self.boards:
            wait = board.check_watchdog()
            if wait is not None:
                waits.append(wait)
        waiting = [board.poll_attached() for board in self.boards[: self.serial]]
        if self._notify is None:
            waits.append(_ATTACH_POLL_S if any(waiting) else _WATCHDOG_POLL_S)
        wait = min(waits)
        self._next_check = now + wait
        return wait


def write_key_file(path: Path, key: bytes) -> Path:
    """A key file as the fleet config reads it (64 hex digits), readable by its owner only
    from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return path


def write_fleet_config(sim: Simulator, path: str | os.PathLike[str]) -> Path:
    """Write a fleet config (docs/fleet.md) for the simulator's boards: one joint per channel,
    each board on its first link (serial when it has one), keys in `<name>.keys/` beside it,
    readable by the owner only. Returns the config's path."""
    config = Path(path)
    keys = config.with_name(config.stem + ".keys")
    keys.mkdir(mode=0o700, exist_ok=True)
    key_files: list[str | None] = []
    for board in sim.boards:
        if board.key is None:
            key_files.append(None)
            continue
        key_file = write_key_file(keys / (board.node_id + ".key"), board.key)
        key_files.append(str(key_file.relative_to(config.parent)))
    links = [board.url for board in sim.boards]
    config.write_text(fleet_config.sim_fleet_toml(links, CHANNELS, key_files))
    return config


# -- `servomesh sim` ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="number of boards (default 1)")
    parser.add_argument(
        "--serial", type=int, default=0, metavar="K", help="the first K boards get a serial port"
    )
    parser.add_argument(
        "--heap",
        help='interpreter heap size, e.g. "256k", like a small board (the whole firmware needs '
        "144k on this 64-bit port, and only when loaded as .mpy from the flash folder's lib/)",
    )
    parser.add_argument(
        "--folder", help="keep the boards' flash folders here (default: a temporary folder)"
    )
    parser.add_argument(
        "--base-port", type=int, help="UDP port of the first board (default: free ports)"
    )
    parser.add_argument(
        "--config-out",
        metavar="FILE",
        help="write a fleet config for these boards (one joint per channel) and their key files",
    )


def run(options: argparse.Namespace) -> int:
    """Start the boards, print `<node_id> <url> [<udp url>]` per board, run until SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with Simulator(
            nodes=options.nodes,
            serial=options.serial,
            heap=options.heap,
            folder=options.folder,
            base_port=options.base_port,
        ) as sim:
            for board in sim.boards:
                urls = [board.url] + ([board.udp_url] if board.serial_url else [])
                print(board.node_id, *urls, flush=True)
            if options.config_out:
                _log.info("fleet config in %s", write_fleet_config(sim, options.config_out))
            _log.info("flash folders in %s; Ctrl-C or SIGTERM stops the boards", sim.root)
            while not stop.wait(0.5):
                pass
    except (ValueError, OSError, RuntimeError) as error:  # bad options, no interpreter, no folder
        print("servomesh sim: %s" % error, file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
