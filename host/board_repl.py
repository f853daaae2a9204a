"""A raw-REPL session with a board on its serial port, through mpremote's transport.

What `servomesh deploy` does on the board: ask a running node what it runs (DISCOVER); break in
(a node may be running), survey it in one exec (versions, flash root, config, a hash per
deployed file), write and delete files, reset it and wait for its node's HELLO. Every byte
written to the port is counted (`sent`).

Files travel through one exec'd receiver reading the board's stdin, not as `repr` literals in
exec'd code (mpremote's `fs_writefile` sends about three bytes per byte of `.mpy`): the bytes
go as they are, except 0x03, which would interrupt the receiver (Ctrl-C), and the escape byte.
Secrets in a file (the config's key) travel the same way, so they are never part of code a
board could echo in a traceback.
"""

import ast
import contextlib
import errno
import io
import json
import logging
import select
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import serial
from mpremote.transport import (  # type: ignore[import-untyped]
    TransportError,
    TransportExecError,
)
from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]

from servomesh.host import codec
from servomesh.protocol import messages, stream
from servomesh.protocol.cbor import DecodeError

_log = logging.getLogger(__name__)

BAUD: Final = 115200
IO_TIMEOUT_S: Final = 5.0  # one read or exec answer from the board
BREAK_IN_ATTEMPTS_S: Final = (1.0, 2.0, 3.0, 4.0)  # the node may eat the first Ctrl-A as it dies
BREAK_IN_POLL_S: Final = 0.05
HELLO_RESEND_S: Final = 0.3
BLIND_HELLO_S: Final = 3.0  # no boot banner seen by then (a USB port that re-enumerated): HELLO
REOPEN_POLL_S: Final = 0.1
# Bytes per acknowledged write: with its length byte it fits the 260-byte stdin ring buffer of
# the esp32 and rp2 ports, so a board busy writing flash never loses input.
CHUNK_BYTES: Final = 255
CONFIG: Final = "servomesh.json"
# A node that does not read its serial port leaves the DISCOVER frame to the REPL that Ctrl-C
# starts: with this seq the frame holds no byte a REPL acts on (Ctrl-A to Ctrl-E, Tab, Enter,
# Esc), only Ctrl-L and Ctrl-T, which it ignores.
DISCOVER_SEQ: Final = 20
# sys.implementation._mpy >> 10 (MicroPython's docs, "MicroPython .mpy files").
ARCHS: Final = (
    None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
    "xtensa", "xtensawin", "rv32imc", "rv64imc",
)  # fmt: skip

_ESC: Final = b"\xdb"
_CTRL_C: Final = b"\x03"
_ACK: Final = b"."
_BANNERS: Final = (b"servomesh node ", b"servomesh: unconfigured")
_CRASHED: Final = (b"Traceback (most recent call last)", b">>> ")
_RAW_REPL: Final = b"raw REPL; CTRL-B to exit"
_CTRL_B: Final = b"\x02"
_CONSOLE_KEPT_BYTES: Final = 4096  # of what the board prints while it boots

# Runs on the board in the raw REPL: versions, cwd (the flash root), the config text and a hash
# per file in the folders and files asked for, as one Python literal.
_SURVEY = """\
import sys,os,hashlib,binascii
def h(p):
 d=hashlib.sha256()
 with open(p,'rb') as f:
  while 1:
   b=f.read(512)
   if not b:break
   d.update(b)
 return binascii.hexlify(d.digest()).decode()
r={}
def w(d):
 try:l=list(os.ilistdir(d))
 except OSError:return
 for e in l:
  p=d+'/'+e[0]
  if e[1]&0x4000:w(p)
  else:r[p]=h(p)
for d in %r:w(d)
for p in %r:
 try:r[p]=h(p)
 except OSError:pass
try:
 with open('servomesh.json') as f:c=f.read()
except OSError:c=None
i=sys.implementation
print(repr((tuple(i.version),getattr(i,'_mpy',0),sys.platform,os.getcwd(),c,r)))
"""

# Runs on the board: reads operations from stdin until a zero length. Each is a length byte and
# a path: "-path" removes, "path/" makes a folder, a plain path is followed by chunks (length
# byte, escaped bytes) up to a zero length. "." acknowledges each chunk and each operation.
_RECEIVER = """\
import sys,os
i=sys.stdin.buffer
a=sys.stdout.write
def r(n):
 b=bytearray(n)
 m=memoryview(b)
 k=0
 while k<n:k+=i.readinto(m[k:])
 return bytes(b)
while 1:
 n=r(1)[0]
 if not n:break
 p=r(n).decode()
 if p[0]=='-':os.remove(p[1:])
 elif p[-1]=='/':
  try:os.mkdir(p[:-1])
  except OSError:pass
 else:
  with open(p,'wb') as f:
   while 1:
    n=r(1)[0]
    if not n:break
    f.write(r(n).replace(b'\\xdb\\x23',b'\\x03').replace(b'\\xdb\\xfb',b'\\xdb'))
    a('.')
 a('.')
"""

_RESET = "from servomesh.firmware import watchdog\nwatchdog.reset()\n"


class BoardError(RuntimeError):
    """The board cannot be reached or refused a step; the message says which and why."""


@dataclass(frozen=True)
class BoardSurvey:
    """What one exec tells about a board before anything is written."""

    version: str  # MicroPython's, e.g. "1.29.0-preview"
    mpy: tuple[int, int] | None  # bytecode version and sub-version; None if not reported
    arch: str | None  # native-code architecture, the mpy-cross -march
    platform: str  # sys.platform: esp32, rp2, linux (the unix port: a simulated board)
    root: str  # the flash root (the REPL's current folder)
    hashes: dict[str, str]  # deployed path -> SHA-256 hex
    config: dict[str, Any] | None = field(repr=False)  # holds secrets: never in a repr


class BoardRepl:
    """The raw REPL of the board on `port`. Use as a context manager, or close()."""

    def __init__(self, port: str) -> None:
        self.path = port
        self.sent = 0  # bytes written to the port
        try:
            with _quiet():  # mpremote prints as it waits
                self.transport = SerialTransport(port, BAUD, timeout=IO_TIMEOUT_S)
        except TransportError:
            raise BoardError(_open_failure(port)) from None
        self._count_writes()

    def __enter__(self) -> "BoardRepl":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError, TransportError):
            self.transport.close()

    @property
    def port(self) -> serial.Serial:
        port: serial.Serial = self.transport.serial
        return port

    def _count_writes(self) -> None:
        write = self.port.write

        def counted(data: Any) -> int | None:
            self.sent += len(data)
            return write(data)

        self.port.write = counted  # type: ignore[method-assign]

    def discover(self, timeout_s: float) -> dict[str, Any] | None:
        """The INFO of a node already running on the port, asked with DISCOVER (a scan: it
        neither arms the node's failsafe nor takes its telemetry); None when no node answers
        within `timeout_s` (a bare REPL, a node without its serial link, a board booting)."""
        port = self.port
        port.write(stream.encode_frame(codec.encode(messages.DISCOVER, DISCOVER_SEQ)))
        decoder = stream.FrameDecoder()
        console = bytearray()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([port.fileno()], [], [], min(left, BREAK_IN_POLL_S))
            data = port.read(port.in_waiting or 1) if ready else b""
            for is_frame, payload in decoder.feed(data):
                if is_frame:
                    info = _info(payload, {DISCOVER_SEQ})
                    if info is not None:
                        return info
                else:
                    console += payload
            if _RAW_REPL in console or b">>> " in console:
                return None  # a REPL read the frame as keystrokes: no node is running
        return None

    def break_in(self) -> None:
        """Ctrl-C, then the raw REPL (no soft reset: it would start main.py again)."""
        # On a pty mpremote reads byte by byte, each read waiting up to the port's timeout:
        # poll here, so an attempt's own bound holds.
        self.port.timeout = BREAK_IN_POLL_S
        try:
            for timeout_s in BREAK_IN_ATTEMPTS_S:
                try:
                    with _quiet():
                        self.transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout_s)
                    return
                except TransportError:
                    _log.debug("%s: no raw REPL within %.1f s: Ctrl-C again", self.path, timeout_s)
        finally:
            self.port.timeout = IO_TIMEOUT_S
        total = sum(BREAK_IN_ATTEMPTS_S)
        raise BoardError(
            "%s: no MicroPython raw REPL after %.0f s of Ctrl-C and Ctrl-A" % (self.path, total)
        )

    def survey(self, folders: Sequence[str], files: Sequence[str]) -> BoardSurvey:
        """Versions, flash root, config, and the hash of every file in `folders` (recursively)
        and of `files`, paths relative to the flash root."""
        output = self._exec(_SURVEY % (tuple(folders), tuple(files)))
        try:
            version, mpy_word, platform, root, text, hashes = ast.literal_eval(output.decode())
        except (ValueError, SyntaxError, UnicodeDecodeError):
            # Not echoed: it holds the board's config, key included.
            raise BoardError(
                "%s: the board's answer made no sense (%d bytes)" % (self.path, len(output))
            ) from None
        name = ".".join(str(p) for p in version[:3]) + "".join("-%s" % p for p in version[3:])
        arch_index = mpy_word >> 10
        return BoardSurvey(
            version=name,
            mpy=(mpy_word & 0xFF, mpy_word >> 8 & 3) if mpy_word else None,
            arch=ARCHS[arch_index] if arch_index < len(ARCHS) else None,
            platform=str(platform),
            root=str(root),
            hashes=dict(hashes),
            config=_parse_config(text),
        )

    def _exec(self, code: str) -> bytes:
        try:
            output: bytes = self.transport.exec(code)
        except TransportExecError as error:  # our code raised: its last line says why
            last = str(error.error_output).strip().splitlines()[-1:]
            raise BoardError("%s: the board failed: %s" % (self.path, "".join(last))) from None
        except TransportError as error:
            raise BoardError("%s: the board stopped answering: %s" % (self.path, error)) from None
        return output

    def transfer(
        self,
        writes: dict[str, bytes],
        deletes: Sequence[str],
        on_file: Callable[[int, int, str], None],
    ) -> None:
        """Delete `deletes`, make the folders `writes` needs, write `writes` (path -> bytes)."""
        if not writes and not deletes:
            return
        folders = {
            "/".join(parts[:depth])
            for parts in (path.split("/") for path in writes)
            for depth in range(1, len(parts))
        }
        try:
            self.transport.exec_raw_no_follow(_RECEIVER)
            for path in deletes:
                self._op("-" + path)
            for folder in sorted(folders, key=lambda f: f.count("/")):  # parents first
                self._op(folder + "/")
            for done, (path, data) in enumerate(writes.items(), 1):
                self._op(path, data)
                on_file(done, len(writes), path)
            self.port.write(b"\x00")  # the end of the session
            self.transport.follow(IO_TIMEOUT_S)
        except TransportError as error:
            raise BoardError("%s: the board stopped answering: %s" % (self.path, error)) from None

    def _op(self, path: str, data: bytes | None = None) -> None:
        name = path.encode()
        if len(name) == 3 or len(name) > 255:  # a length byte of 3 would be a Ctrl-C
            raise BoardError("cannot send a path of %d bytes: %s" % (len(name), path))
        port = self.port
        port.write(bytes([len(name)]) + name)
        if data is not None:
            escaped = data.replace(_ESC, _ESC + b"\xfb").replace(_CTRL_C, _ESC + b"\x23")
            for chunk in _chunks(escaped):
                port.write(bytes([len(chunk)]) + chunk)
                self._ack(path)
            port.write(b"\x00")
        self._ack(path)

    def _ack(self, path: str) -> None:
        answer = self.port.read(1)
        if answer == _ACK:
            return
        if answer == b"\x04":  # the receiver ended: its error output follows, up to a 0x04
            error = self.transport.read_until(1, b"\x04", timeout=IO_TIMEOUT_S)
            last = error.decode(errors="replace").strip("\x04\r\n ").splitlines()[-1:]
            raise BoardError("the board failed on %s: %s" % (path, "".join(last) or "no reason"))
        raise BoardError("the board did not acknowledge %s (got %r)" % (path, answer))

    def reset(self) -> None:
        """Reset the board the firmware's way (machine.reset, or exit 75 on a simulated one)."""
        try:
            self.transport.exec_raw_no_follow(_RESET)
        except TransportError as error:
            raise BoardError("%s: the board stopped answering: %s" % (self.path, error)) from None

    def wait_hello(self, timeout_s: float, ask: bool = True) -> dict[str, Any]:
        """After a reset: HELLO once the node prints its boot banner (or after BLIND_HELLO_S),
        and its INFO map. With `ask` False (the node's serial link is off) the banner alone
        ends the wait, with {"configured": ...}."""
        deadline = time.monotonic() + timeout_s
        reset_at = time.monotonic()
        port: serial.Serial | None = self.port
        decoder = stream.FrameDecoder()
        console = bytearray()
        asked: set[int] = set()
        next_hello = float("inf")
        while time.monotonic() < deadline:
            if port is None:  # a USB board re-enumerates after a reset: reopen its port
                port = self._reopen()
                if port is None:
                    time.sleep(REOPEN_POLL_S)
                    continue
                next_hello = time.monotonic()
            now = time.monotonic()
            if ask and now >= next_hello:
                seq = len(asked) + 1
                asked.add(seq)
                hello = codec.encode(messages.HELLO, seq, messages.PROTOCOL_VERSION)
                port.write(stream.encode_frame(hello))
                next_hello = now + HELLO_RESEND_S
            try:
                ready, _, _ = select.select([port.fileno()], [], [], 0.05)
                data = port.read(port.in_waiting or 1) if ready else b""
            except (serial.SerialException, OSError):
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()  # hot-unplug on purpose: the reset dropped the USB device
                port = None
                continue
            for is_frame, payload in decoder.feed(data):
                if not is_frame:
                    console += payload
                    del console[:-_CONSOLE_KEPT_BYTES]
                    continue
                info = _info(payload, asked)
                if info is not None:
                    return info
            booted = any(banner in console for banner in _BANNERS)
            if not ask and booted:
                return {"configured": _BANNERS[1] not in console}
            if next_hello == float("inf") and (booted or now - reset_at > BLIND_HELLO_S):
                next_hello = now
            if all(mark in console for mark in _CRASHED):
                tail = console.decode(errors="replace").strip().splitlines()[-4:]
                raise BoardError("the node did not start: %s" % " | ".join(tail))
        if port is not None and _RAW_REPL in console:
            port.write(_CTRL_B)  # a HELLO's 0x01 put a REPL into raw mode: leave it as it was
        what = "HELLO" if ask else "the node's boot banner (its serial link is off)"
        raise BoardError("no answer to %s within %.0f s of the reset" % (what, timeout_s))

    def _reopen(self) -> serial.Serial | None:
        try:
            port = serial.Serial(self.path, BAUD, timeout=IO_TIMEOUT_S, exclusive=True)
        except serial.SerialException:
            return None
        self.transport.serial = port
        self._count_writes()
        return port


def _parse_config(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        loaded = None  # its text stays unsaid: it may hold a key
    if not isinstance(loaded, dict):
        _log.warning("the board's %s is not a JSON object: it will be replaced", CONFIG)
        return None
    return loaded


def _open_failure(port: str) -> str:
    """Why mpremote could not open `port` (it only says that it could not)."""
    try:
        serial.Serial(port, BAUD, exclusive=True).close()
    except serial.SerialException as error:
        code = error.errno
        if code == errno.ENOENT:
            return "%s: no such port (is the board plugged in?)" % port
        if code in (errno.EAGAIN, errno.EBUSY):  # EAGAIN: another program's exclusive lock
            return "%s: busy: another program has it open" % port
        if code == errno.EACCES:
            return "%s: permission denied (a group such as dialout grants access)" % port
        return "%s: cannot open: %s" % (port, error)
    return "%s: cannot open" % port


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """mpremote prints what it received when a step fails; our errors say it instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _chunks(escaped: bytes) -> Iterator[bytes]:
    """Pieces of 1 .. CHUNK_BYTES bytes, never 3 long (a length byte of 3 is a Ctrl-C), never
    ending inside an escape pair (the board unescapes each piece on its own). A piece can always
    be cut: an escape pair's second byte is never the escape byte."""
    start = 0
    while start < len(escaped):
        end = min(start + CHUNK_BYTES, len(escaped))
        while escaped[end - 1 : end] == _ESC or end - start == 3:
            end -= 1
        yield escaped[start:end]
        start = end


def _info(body: bytes, asked: set[int]) -> dict[str, Any] | None:
    try:
        message = codec.decode(body)
    except DecodeError:
        return None
    if message.kind != messages.INFO or message.seq not in asked:
        return None
    info: dict[str, Any] = message.fields[0]
    return info
