"""`servomesh deploy`: put the node firmware and its config on a board over its serial port.

    servomesh deploy --port /dev/ttyACM0 --node-id arm-1 --board esp32 --key-file arm-1.key

Steps, one progress line each on stderr (board_repl.py does the board's side):

1. Ask the node, if one runs, with DISCOVER. When it runs the very build this deploy would put
   there (the build's digest, which each deploy writes last) and the options given match its
   INFO, it is left running and nothing is sent.
2. Otherwise break in with Ctrl-C (a node may be running) and enter the raw REPL through
   mpremote; one exec reads the board's MicroPython and bytecode versions, its config and a
   SHA-256 of every deployed file.
3. Compile `protocol/` and `firmware/` with mpy-cross for the board's architecture when its
   bytecode version is mpy-cross's (else copy `.py`, with a warning); send only the files whose
   hash differs, delete stale ones, write the config when it changed.
4. Reset the board; its node must answer HELLO on the same port.

`--verify` skips step 1: every file on the board is hashed (after hand edits on it, or a suspect
flash). Secrets (the key, the Wi-Fi password) are never printed or logged: the progress lines
say only where they came from.
"""

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from servomesh.host import mpy, upy
from servomesh.host.board_repl import CONFIG, BoardError, BoardRepl, BoardSurvey
from servomesh.host.fleet import FleetError, read_key
from servomesh.protocol import hmac_sha256, messages

_log = logging.getLogger(__name__)

HELLO_TIMEOUT_S: Final = 20.0  # reset, boot and the first INFO
LIB: Final = "lib/servomesh"  # below the flash root; a board's sys.path has /lib
MAIN: Final = "main.py"
DEPLOYED: Final = "servomesh.deployed"  # firmware/node.py DEPLOYED_FILE, reported in INFO
PROBE_S: Final = 0.5  # a running node answers DISCOVER within milliseconds
MANAGED: Final = tuple("%s/%s" % (LIB, name) for name in upy.DEVICE_PACKAGES)
BOARDS_BY_PLATFORM: Final = {"esp32": "esp32", "rp2": "rp2040", "linux": "sim"}
DEFAULT_PINS: Final = {"esp32": (13, 14, 25, 26, 27, 32), "rp2040": tuple(range(6))}
DEFAULT_PINS_SIM: Final = tuple(range(6))

__all__ = ["CONFIG", "DeployError", "DeployResult", "Progress", "add_arguments", "deploy", "run"]


class DeployError(RuntimeError):
    """The deploy cannot go on; the message says which step and why."""


@dataclass(frozen=True)
class DeployResult:
    node_id: str | None  # None: the node booted unconfigured (config_error says why)
    firmware: str | None  # None, as boot_id: the config turns the serial link off (no HELLO)
    board: str | None
    boot_id: int | None
    compiled: bool | None  # .mpy files (False: .py sources; None: nothing built, none sent)
    copied: tuple[str, ...]  # files written, the config included (the DEPLOYED record not)
    deleted: tuple[str, ...]
    unchanged: int
    payload_bytes: int  # size of the files written
    bytes_sent: int  # everything written to the port, protocol and HELLO included
    seconds: float
    configured: bool
    config_error: str | None


class Progress:
    """Step lines and a file counter on a text stream (stderr), a bar on a terminal; None for
    no output."""

    def __init__(self, out: TextIO | None, prefix: str = "servomesh deploy: ") -> None:
        self.out, self.prefix = out, prefix
        self.bar = out is not None and out.isatty()

    def step(self, text: str) -> None:
        if self.out is not None:
            self.out.write(self.prefix + text + "\n")
            self.out.flush()

    def file(self, done: int, total: int, path: str) -> None:
        if self.out is None:
            return
        if not self.bar:
            self.out.write("  [%d/%d] %s\n" % (done, total, path))
        else:
            filled = 24 * done // max(total, 1)
            bar = "#" * filled + "-" * (24 - filled)
            end = "\n" if done == total else ""
            self.out.write("\r\x1b[K  [%s] %d/%d %s%s" % (bar, done, total, path, end))
        self.out.flush()


# -- the command ------------------------------------------------------------------------------


def add_arguments(commands: Any) -> None:
    parser = commands.add_parser(
        "deploy",
        help="copy the node firmware and its config to a board over USB serial, reset it",
        description="Break into the board (a running node is stopped with Ctrl-C), compile "
        "protocol/ and firmware/ for it with mpy-cross, copy the files whose hash changed, "
        "write servomesh.json, reset the board and wait for its node to answer HELLO. Options "
        "not given keep what the board's servomesh.json says. Secrets are never printed.",
    )
    parser.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyACM0")
    parser.add_argument("--node-id", metavar="ID", help="the node's id")
    parser.add_argument(
        "--board", choices=("esp32", "rp2040", "pca9685", "sim"), help="hardware kind"
    )
    parser.add_argument("--sender-id", type=int, metavar="N", help="the node's sender id (1)")
    parser.add_argument("--key-file", type=Path, metavar="FILE", help="the key, 64 hex digits")
    parser.add_argument("--wifi-ssid", metavar="SSID", help="Wi-Fi network the board joins")
    parser.add_argument(
        "--wifi-pass-file", type=Path, metavar="FILE", help="the Wi-Fi password, in a file"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash every file on the board, even when its node says it runs this build",
    )


def run(options: argparse.Namespace) -> int:
    """Exit status: 0 deployed and answering, 1 the node booted unconfigured, 2 failed."""
    try:
        key = read_key(options.key_file) if options.key_file else None
        wifi = _wifi(options.wifi_ssid, options.wifi_pass_file)
        result = deploy(
            options.port.removeprefix("serial://"),
            node_id=options.node_id,
            board=options.board,
            sender_id=options.sender_id,
            key=key,
            wifi=wifi,
            verify=options.verify,
            progress=Progress(sys.stderr),
        )
    except (DeployError, FleetError) as error:
        print("servomesh deploy: %s" % error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("servomesh deploy: interrupted; deploy again to finish", file=sys.stderr)
        return 130
    print(
        "%s: firmware %s, board %s, boot id %s; %d files copied, %d deleted, %d unchanged; "
        "%d bytes sent in %.2f s"
        % (
            result.node_id or "(unconfigured)",
            result.firmware or "unknown",
            result.board or "unknown",
            "unknown" if result.boot_id is None else result.boot_id,
            len(result.copied),
            len(result.deleted),
            result.unchanged,
            result.bytes_sent,
            result.seconds,
        )
    )
    if not result.configured:
        print(
            "servomesh deploy: the node is unconfigured: %s" % result.config_error, file=sys.stderr
        )
        return 1
    return 0


def _wifi(ssid: str | None, pass_file: Path | None) -> tuple[str, str] | None:
    if ssid is None:
        if pass_file is not None:
            raise DeployError("--wifi-pass-file needs --wifi-ssid")
        return None
    if pass_file is None:
        return (ssid, "")  # an open network
    try:
        return (ssid, pass_file.read_text().rstrip("\r\n"))
    except OSError as error:
        raise DeployError("wifi pass file %s: %s" % (pass_file, error.strerror)) from None


# -- the deploy -------------------------------------------------------------------------------


def deploy(
    port: str,
    *,
    node_id: str | None = None,
    board: str | None = None,
    sender_id: int | None = None,
    key: bytes | None = None,
    wifi: tuple[str, str] | None = None,
    build_dir: Path | None = None,
    packages: Mapping[str, Path] | None = None,
    verify: bool = False,
    progress: Progress | None = None,
    hello_timeout_s: float = HELLO_TIMEOUT_S,
) -> DeployResult:
    """Deploy to the board on `port`; `packages` (name -> source folder) and `build_dir` (the
    compile cache) default to the installed firmware and a per-user temporary folder."""
    started = time.monotonic()
    say = progress or Progress(None)
    sources = dict(packages or {name: upy.package_dir(name) for name in upy.DEVICE_PACKAGES})
    build_root = build_dir or Path(tempfile.gettempdir()) / ("servomesh-deploy-%d" % os.getuid())
    emits = mpy_cross_version(build_root / "mpy-cross.version")
    try:
        digest = _digest(sources, emits)
        with BoardRepl(port) as repl:
            # A new Wi-Fi password cannot be checked against INFO: such a deploy goes through.
            info = None if verify or wifi is not None else repl.discover(PROBE_S)
            if info is not None and _runs(info, digest, node_id, board, sender_id, key):
                say.step(
                    "%s: node %s runs this build (%s) and config already: left running"
                    % (port, info["node_id"], digest[:12])
                )
                return DeployResult(
                    node_id=info["node_id"],
                    firmware=info.get("firmware"),
                    board=info.get("board"),
                    boot_id=info.get("boot_id"),
                    compiled=None,
                    copied=(),
                    deleted=(),
                    unchanged=len(_modules_of(sources)) + 1,
                    payload_bytes=0,
                    bytes_sent=repl.sent,
                    seconds=time.monotonic() - started,
                    configured=True,
                    config_error=None,
                )
            repl.break_in()
            say.step("%s: node stopped, raw REPL" % port)
            survey = repl.survey(MANAGED, (MAIN, DEPLOYED))
            say.step(_describe_board(survey))
            files, compiled = _build(survey, sources, build_root, emits, say)
            config = _config(survey, node_id, board, sender_id, key, wifi)
            say.step(_describe_config(config, key is not None, wifi))
            writes, deletes, unchanged = _plan(survey, files, config, digest)
            copied = tuple(path for path in writes if path != DEPLOYED)  # the record aside
            deleted = tuple(path for path in deletes if path != DEPLOYED)
            size = sum(len(writes[path]) for path in copied)
            say.step(
                "%d files to copy (%d bytes), %d to delete, %d unchanged"
                % (len(copied), size, len(deleted), unchanged)
            )
            repl.transfer(writes, deletes, say.file)
            say.step("resetting the board")
            repl.reset()
            info = repl.wait_hello(hello_timeout_s, ask=bool(config.get("serial", True)))
    except BoardError as error:
        raise DeployError(str(error)) from None
    except OSError as error:  # the port vanished mid-way, or a source file went missing
        raise DeployError("%s: %s" % (port, error)) from None
    if "firmware" in info:
        say.step("the node answered HELLO: firmware %s" % info["firmware"])
    else:
        say.step("the node booted; its serial link is off, so no HELLO here")
        info.update(node_id=config["node_id"], board=config["board"])
    return DeployResult(
        node_id=info.get("node_id"),
        firmware=info.get("firmware"),
        board=info.get("board"),
        boot_id=info.get("boot_id"),
        compiled=compiled,
        copied=copied,
        deleted=deleted,
        unchanged=unchanged,
        payload_bytes=size,
        bytes_sent=repl.sent,
        seconds=time.monotonic() - started,
        configured=bool(info.get("configured")),
        config_error=info.get("config_error"),
    )


def _describe_board(survey: BoardSurvey) -> str:
    return "MicroPython %s, mpy %s, %s (%s); flash root %s" % (
        survey.version,
        "v%d.%d" % survey.mpy if survey.mpy else "unknown",
        survey.arch or "no native code",
        survey.platform,
        survey.root,
    )


def mpy_cross_version(cache: Path | None = None) -> tuple[int, int]:
    """The bytecode version mpy-cross emits, e.g. (6, 3). Asking it costs a Python start-up
    (it is a wrapper script), a fifth of a no-change deploy: `cache` keeps the answer per
    binary and modification time."""
    compiler = Path(mpy.mpy_cross())
    stat = compiler.stat()
    stamp = "%s %d %d" % (compiler, stat.st_mtime_ns, stat.st_size)
    if cache is not None:
        with contextlib.suppress(OSError, ValueError):
            kept_stamp, kept = cache.read_text().rsplit("\n", 1)
            if kept_stamp == stamp:
                major, minor = kept.split(".")
                return int(major), int(minor)
    result = subprocess.run(  # noqa: S603 (the compiler installed with servomesh)
        [str(compiler), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.search(r"mpy v(\d+)\.(\d+)", result.stdout)
    if found is None:
        raise DeployError("mpy-cross --version said %r" % result.stdout.strip())
    version = int(found.group(1)), int(found.group(2))
    if cache is not None:
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text("%s\n%d.%d" % (stamp, *version))
    return version


def _build(
    survey: BoardSurvey,
    sources: Mapping[str, Path],
    build_root: Path,
    emits: tuple[int, int],
    say: Progress,
) -> tuple[dict[str, bytes], bool]:
    """Device path -> bytes of every file to deploy, and whether they are compiled."""
    files = {MAIN: (sources["firmware"] / MAIN).read_bytes()}
    if survey.mpy == emits:
        build = build_root / ("%s-mpy%d.%d" % (survey.arch or "bytecode", *emits))
        try:
            rebuilt = 0
            for name, source in sources.items():
                rebuilt += len(mpy.compile_tree(source, build / name, survey.arch))
                for path in _modules(source):
                    target = (build / name / path).with_suffix(".mpy")
                    files["%s/%s/%s" % (LIB, name, path.with_suffix(".mpy").as_posix())] = (
                        target.read_bytes()
                    )
            say.step(
                "compiled for %s, mpy v%d.%d: %d modules (%d rebuilt, the rest cached in %s)"
                % (survey.arch or "bytecode only", *emits, len(files) - 1, rebuilt, build)
            )
            return files, True
        except mpy.CompileError as error:
            _log.warning("%s: copying .py sources instead", error)
    else:
        _log.warning(
            "the board runs mpy %s, mpy-cross emits v%d.%d: copying .py sources (they need "
            "more RAM to load; a matching mpy-cross compiles them)",
            "v%d.%d" % survey.mpy if survey.mpy else "(unknown)",
            *emits,
        )
    files = {MAIN: files[MAIN]}
    for name, source in sources.items():
        for path in _modules(source):
            files["%s/%s/%s" % (LIB, name, path.as_posix())] = (source / path).read_bytes()
    return files, False


def _modules_of(sources: Mapping[str, Path]) -> list[Path]:
    """Every module of every package, as source paths."""
    return [source / path for source in sources.values() for path in _modules(source)]


def _digest(sources: Mapping[str, Path], emits: tuple[int, int]) -> str:
    """What a build is made of: every source file, main.py included, and the bytecode version
    mpy-cross emits. Equal digests, equal files on the board (for the same board)."""
    digest = hashlib.sha256(b"mpy %d.%d\n" % emits)
    for name, source in sorted(sources.items()):
        for path in [Path(MAIN), *_modules(source)] if name == "firmware" else _modules(source):
            digest.update(b"%s/%s\n" % (name.encode(), path.as_posix().encode()))
            digest.update(hashlib.sha256((source / path).read_bytes()).digest())
    return digest.hexdigest()


def _runs(
    info: Mapping[str, Any],
    digest: str,
    node_id: str | None,
    board: str | None,
    sender_id: int | None,
    key: bytes | None,
) -> bool:
    """Whether the node whose INFO this is runs `digest`'s build configured as the options
    given would leave it: the deploy would then change nothing."""
    given = {"node_id": node_id, "board": board, "sender_id": sender_id}
    return (
        info.get("configured") is True
        and info.get("deployed") == digest
        and info.get("protocol_version") == messages.PROTOCOL_VERSION
        and all(value is None or info.get(name) == value for name, value in given.items())
        and (key is None or info.get("key_fingerprint") == hmac_sha256.fingerprint(key))
    )


def _modules(source: Path) -> list[Path]:
    """The package's modules relative to `source`; main.py goes to the flash root instead."""
    return sorted(
        path.relative_to(source)
        for path in source.rglob("*.py")
        if "__pycache__" not in path.parts and path.relative_to(source) != Path(MAIN)
    )


def _config(
    survey: BoardSurvey,
    node_id: str | None,
    board: str | None,
    sender_id: int | None,
    key: bytes | None,
    wifi: tuple[str, str] | None,
) -> dict[str, Any]:
    """The board's config with the options given applied; the node validates it at boot."""
    config = dict(survey.config or {})
    board = board or config.get("board") or BOARDS_BY_PLATFORM.get(survey.platform)
    node_id = node_id or config.get("node_id")
    if board is None:
        raise DeployError("which board is it? give --board (sys.platform: %s)" % survey.platform)
    if node_id is None:
        raise DeployError("the board has no %s yet: give --node-id" % CONFIG)
    config.update(node_id=node_id, board=board)
    if sender_id is not None or "sender_id" not in config:
        config["sender_id"] = sender_id or 1
    if key is not None:
        config["key"] = key.hex()
        config.pop("allow_unsigned", None)
    elif not config.get("key") and not config.get("allow_unsigned"):
        raise DeployError("the board has no key: give --key-file")
    if wifi is not None:
        config["wifi"] = {"ssid": wifi[0], "password": wifi[1]}
    if not config.get("channels"):
        if board == "pca9685":
            raise DeployError("a pca9685 board needs its i2c and channels in %s first" % CONFIG)
        pins = DEFAULT_PINS.get(board, DEFAULT_PINS_SIM)
        config["channels"] = [{"pin": pin} for pin in pins]
    return config


def _describe_config(config: Mapping[str, Any], key_given: bool, wifi: Any) -> str:
    """The config in one line, secrets only as where they come from."""
    wifi_text = "wifi %s" % config["wifi"]["ssid"] if config.get("wifi") else "no wifi"
    return "config: node_id %s, board %s, %d channels, key %s, %s%s" % (
        config["node_id"],
        config["board"],
        len(config["channels"]),
        "from the key file" if key_given else "kept",
        wifi_text,
        " (password from the file)" if wifi is not None and wifi[1] else "",
    )


def _plan(
    survey: BoardSurvey, files: dict[str, bytes], config: dict[str, Any], digest: str
) -> tuple[dict[str, bytes], list[str], int]:
    """Files to write (hash differs or missing), stale files to delete, unchanged count.

    The build's digest (DEPLOYED) is deleted first and written last: a deploy cut short leaves
    none, so the next one cannot take the board for up to date."""
    writes = {
        path: data
        for path, data in files.items()
        if survey.hashes.get(path) != hashlib.sha256(data).hexdigest()
    }
    deletes = sorted(path for path in survey.hashes if path not in files and path != DEPLOYED)
    unchanged = len(files) - len(writes)
    if config != survey.config:
        writes[CONFIG] = (json.dumps(config, indent=1) + "\n").encode()
    marker = digest.encode()
    if writes or deletes:
        if DEPLOYED in survey.hashes:
            deletes.insert(0, DEPLOYED)
        writes[DEPLOYED] = marker
    elif survey.hashes.get(DEPLOYED) != hashlib.sha256(marker).hexdigest():
        writes[DEPLOYED] = marker
    return writes, deletes, unchanged
