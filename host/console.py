"""`servomesh console PORT|URL`: follow a node's LOG records and console text, timestamped.

    servomesh console /dev/ttyACM0
    servomesh console udp://192.168.1.40:5683 --key-file arm-1.key --for 30

A node sends its LOG records (and STATE) over the link of the last request it took, so the
console says HELLO and then PINGs every PING_EVERY_S to keep them coming here. That is host
traffic: it feeds the node's link-loss timer, and while the console runs, records stop reaching
another host that talks to the node over another link. On a serial link the text the node prints
between frames is shown too (boot banners, tracebacks, a REPL).
"""

import argparse
import contextlib
import datetime
import logging
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any, Final, Protocol, TextIO
from urllib.parse import urlsplit

import serial

from servomesh.host import codec
from servomesh.host.fleet import FleetError, read_key
from servomesh.host.transport import host_counter
from servomesh.protocol import catalogue, datagram, messages, stream
from servomesh.protocol.cbor import DecodeError

_log = logging.getLogger(__name__)

BAUD: Final = 115200
PING_EVERY_S: Final = 1.0
HELLO_EVERY_S: Final = 1.0  # until a node answers (it may be booting)
HELLO_TRIES: Final = 3  # then a serial console only shows text: no node runs there
# Not the sessions' nor discovery's sender id: a node keeps one replay window per sender id.
CONSOLE_SENDER_ID: Final = 0xFFFE
KEY_ID: Final = 1
LEVELS: Final = {
    messages.LOG_DEBUG: "DEBUG",
    messages.LOG_INFO: "INFO",
    messages.LOG_WARNING: "WARNING",
    messages.LOG_ERROR: "ERROR",
}
_RAW_REPL: Final = b"raw REPL; CTRL-B to exit"
_CTRL_B: Final = b"\x02"


class ConsoleError(RuntimeError):
    """The link cannot be opened or used; the message says which and why."""


class Link(Protocol):
    name: str

    def fileno(self) -> int: ...
    def send(self, body: bytes) -> None: ...
    def receive(self) -> list[tuple[bool, bytes]]: ...
    def close(self) -> None: ...


class SerialLink:
    """Frames and the console text between them, on a serial port."""

    def __init__(self, path: str) -> None:
        self.name = "serial://" + path
        try:
            self.port = serial.Serial(path, BAUD, timeout=0, exclusive=True)
        except serial.SerialException as error:
            raise ConsoleError("%s: cannot open: %s" % (self.name, error)) from None
        self.decoder = stream.FrameDecoder()

    def fileno(self) -> int:
        return self.port.fileno()

    def send(self, body: bytes) -> None:
        self.port.write(stream.encode_frame(body))

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def receive(self) -> list[tuple[bool, bytes]]:
        data = self.port.read(4096)
        if not data and not self.port.in_waiting:
            raise ConsoleError("%s: hung up" % self.name)  # a pty whose other end closed
        return [(bool(is_frame), bytes(payload)) for is_frame, payload in self.decoder.feed(data)]

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()


class UdpLink:
    """Signed datagrams (unsigned without a key, for nodes that allow it)."""

    def __init__(self, host: str, port: int, key: bytes | None) -> None:
        self.name = "udp://%s:%d" % (host, port)
        self.sender = datagram.Sender(CONSOLE_SENDER_ID, key, KEY_ID, counter=host_counter())
        keys = {KEY_ID: key} if key is not None else None
        self.receiver = datagram.Receiver(keys, allow_unsigned=key is None)
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect((host, port))  # only the node's datagrams arrive
        except OSError as error:
            raise ConsoleError("%s: %s" % (self.name, error)) from None
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, body: bytes) -> None:
        with contextlib.suppress(OSError):  # nobody there yet (ICMP refused): keep trying
            self.sock.send(self.sender.seal(body))

    def receive(self) -> list[tuple[bool, bytes]]:
        bodies: list[tuple[bool, bytes]] = []
        while True:
            try:
                packet = self.sock.recv(datagram.MAX_DATAGRAM)
            except (BlockingIOError, ConnectionRefusedError):
                return bodies
            try:
                bodies.append((True, bytes(self.receiver.open(packet)[1])))
            except datagram.DatagramError as error:
                _log.debug("%s: datagram refused: %s", self.name, error)

    def close(self) -> None:
        self.sock.close()


def open_link(target: str, key: bytes | None) -> Link:
    """`serial:///dev/X`, a plain device path, or `udp://host:port`."""
    if target.startswith("udp://"):
        parts = urlsplit(target)
        if not parts.hostname or not parts.port:
            raise ConsoleError("%s: write udp://HOST:PORT" % target)
        return UdpLink(parts.hostname, parts.port, key)
    return SerialLink(target.removeprefix("serial://"))


class Console:
    """Prints what a node sends; `poll` does one round of reading and keep-alive."""

    def __init__(self, link: Link, out: TextIO) -> None:
        self.link, self.out = link, out
        self.node = link.name
        self.seq = 0
        self.hello_seqs: set[int] = set()
        self.answered = False
        self.quiet = False  # a serial port where no node answers: only read its text
        self.next_send = 0.0
        self.log_seq: int | None = None
        self.text = bytearray()  # a line still without its end
        self.recent = bytearray()  # the last console bytes, to recognise a REPL

    def poll(self, timeout_s: float) -> None:
        now = time.monotonic()
        if not self.quiet and now >= self.next_send:
            self._keep_alive(now)
        wait = max(0.0, min(timeout_s, self.next_send - now)) if not self.quiet else timeout_s
        ready, _, _ = select.select([self.link.fileno()], [], [], wait)
        if ready:
            for is_frame, payload in self.link.receive():
                if is_frame:
                    self._message(payload)
                else:
                    self._console(payload)

    def _keep_alive(self, now: float) -> None:
        self.seq += 1
        if self.answered:
            self.link.send(codec.encode(messages.PING, self.seq))
            self.next_send = now + PING_EVERY_S
            return
        if len(self.hello_seqs) == HELLO_TRIES:
            if isinstance(self.link, SerialLink):
                self.quiet = True
                if _RAW_REPL in self.recent:  # our HELLO's 0x01 put a REPL in raw mode: undo it
                    self.link.send_raw(_CTRL_B)
                self.note("no node answers HELLO here: showing its console text only")
                return
            self.note("no answer to HELLO yet (node down, or another key?): still asking")
        self.hello_seqs.add(self.seq)
        self.link.send(codec.encode(messages.HELLO, self.seq, messages.PROTOCOL_VERSION))
        self.next_send = now + HELLO_EVERY_S

    def _message(self, body: bytes) -> None:
        try:
            message = codec.decode(body)
        except DecodeError as error:
            _log.debug("%s: undecodable body: %s", self.node, error)
            return
        if message.kind == messages.INFO and message.seq in self.hello_seqs:
            info: dict[str, Any] = message.fields[0]
            self.node = str(info.get("node_id") or self.link.name)
            self.answered = True
            fields = ("firmware", "board", "boot_id", "reset_cause")
            self.note("answered HELLO: " + ", ".join("%s %s" % (f, info.get(f)) for f in fields))
        elif message.kind == messages.LOG:
            self._log_record(message)

    def _log_record(self, message: codec.Message) -> None:
        level, code, *args = message.fields
        if self.log_seq is not None and message.seq > self.log_seq + 1:
            self.note("%d log records missed" % (message.seq - self.log_seq - 1))
        self.log_seq = message.seq
        name = catalogue.LOG_NAMES.get(code, "code %d" % code)
        self.emit(LEVELS.get(level, "LEVEL%d" % level), "%s %s" % (name, args) if args else name)

    def _console(self, payload: bytes) -> None:
        self.recent += payload
        del self.recent[:-256]
        self.text += payload
        *lines, rest = bytes(self.text).split(b"\n")
        self.text = bytearray(rest[-4096:])  # a line without an end is not kept for ever
        for line in lines:
            self.emit("CONSOLE", "| " + line.decode(errors="replace").rstrip("\r"))

    def flush(self) -> None:
        if self.text.strip():
            self.emit("CONSOLE", "| " + self.text.decode(errors="replace").rstrip("\r"))
        self.text.clear()

    def emit(self, level: str, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        self.out.write("%s %-8s %s %s\n" % (stamp, level, self.node, text))
        self.out.flush()

    def note(self, text: str) -> None:
        self.emit("NOTE", text)


def follow(target: str, key: bytes | None, seconds: float | None, out: TextIO) -> None:
    """Print what the node at `target` sends until `seconds` pass (None: until Ctrl-C)."""
    link = open_link(target, key)
    console = Console(link, out)
    deadline = time.monotonic() + seconds if seconds is not None else None
    try:
        while deadline is None or time.monotonic() < deadline:
            left = 0.5 if deadline is None else deadline - time.monotonic()
            console.poll(max(0.0, min(0.5, left)))
    except (serial.SerialException, OSError) as error:  # unplugged: expected, said plainly
        raise ConsoleError("%s: %s" % (link.name, error)) from None
    finally:
        console.flush()
        link.close()


# -- the command ------------------------------------------------------------------------------


def add_arguments(commands: Any) -> None:
    parser = commands.add_parser(
        "console",
        help="follow a node's log records and console text",
        description="Prints the node's LOG records (level, code, args) and, on a serial "
        "link, the text it prints, each with the host's time. Says HELLO, then PINGs every "
        "second so the node sends its records here: that feeds its link-loss timer.",
    )
    parser.add_argument("target", metavar="PORT|URL", help="/dev/ttyACM0, serial://..., udp://")
    parser.add_argument(
        "--key-file", type=Path, metavar="FILE", help="the node's key, for udp:// (64 hex)"
    )
    parser.add_argument(
        "--for", dest="seconds", type=float, metavar="SECONDS", help="stop after this long"
    )


def run(options: argparse.Namespace) -> int:
    try:
        key = read_key(options.key_file) if options.key_file else None
        follow(options.target, key, options.seconds, sys.stdout)
    except (ConsoleError, FleetError) as error:
        print("servomesh console: %s" % error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is how a user ends it
        return 0
    return 0
