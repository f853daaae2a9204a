"""Links to nodes: signed UDP datagrams through one shared socket, and framed serial.

A transport moves message bodies: `send(body, kind)` and a `receive` callback with each body
that arrives, plus `lost` when the link itself goes away (a serial port unplugged). What the
bodies mean is the session's business (session.py).

UDP: one socket on the event loop (`UdpHub`) serves every UDP node; datagrams are routed to the
node's transport by source address and authenticated with that node's key. Serial:
pyserial opened non-blocking, read through the event loop's reader callbacks, so a slow port
never blocks the loop.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import serial

from servomesh.protocol import datagram, messages, stream
from servomesh.protocol.hmac_sha256 import HmacKey

log = logging.getLogger(__name__)

HOST_SENDER_ID = 1
KEY_ID = 1
RECV_DRAIN = 64  # datagrams taken from the socket per turn of the event loop, at most
RECV_BATCH = 32  # STATE datagrams handled per turn: a reply waits at most ~1.5 ms behind them
STATE_BACKLOG = 4096  # STATE datagrams held while the host catches up (~0.2 s of 20,000/s)
_STATE_KIND = bytes([0x18, messages.STATE])  # CBOR's encoding of the kind, an int 24-255
Receive = Callable[[bytes], None]
Lost = Callable[[str], None]


class LinkError(ConnectionError):
    """A link cannot be opened or has gone away; the message says which and why."""


def host_counter() -> int:
    """A datagram counter that keeps increasing across host restarts: the clock in 10 µs."""
    return time.time_ns() // 10_000


class Transport(Protocol):
    name: str
    bound: bool  # whether requests that change state must be BOUND to the node's boot

    async def open(self, receive: Receive, lost: Lost) -> None: ...
    def send(self, body: bytes, bound_to: int | None) -> None: ...
    def close(self) -> None: ...
    def rejected(self) -> dict[str, int]: ...


class PadStateKey(HmacKey):
    """HmacKey with its inner and outer pads hashed once, each digest continuing copies of the
    two states: half the cost of hashing the pads every time (CPython's hashes copy,
    MicroPython's do not), on the path of every datagram. Tags are compared in C."""

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self._inner_state = hashlib.sha256(self._inner)
        self._outer_state = hashlib.sha256(self._outer)

    def digest(self, *parts: bytes | bytearray | memoryview) -> bytes:
        inner = self._inner_state.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer_state.copy()
        outer.update(inner.digest())
        return outer.digest()

    def verify(self, packet: bytes, end: int, boot: bytes | None = None) -> bool:
        signed = memoryview(packet)[:end]
        tag = self.digest(signed) if boot is None else self.digest(boot, signed)
        return hmac.compare_digest(tag[: len(packet) - end], memoryview(packet)[end:])


_HEADER = struct.Struct(">2sBBHBHI")  # magic, version, flags, sender, key id, counter hi, lo


class HostReceiver(datagram.Receiver):
    """datagram.Receiver with its common case read in one struct call: a signed datagram whose
    counter is the next of its sender's window. Every other datagram takes the shared code, and
    gets its accept or its reason from it; a test holds the two to the same answers. A fifth
    less of the receiver's time per STATE; the node keeps the shared code, as MicroPython runs
    it."""

    def accept(self, datagram_: bytes) -> int:
        size = len(datagram_)
        if datagram.HEADER_BYTES + datagram.TAG_BYTES < size <= datagram.MAX_DATAGRAM:
            magic, version, flags, sender_id, key_id, high, low = _HEADER.unpack_from(datagram_)
            key = self._keys.get(key_id)
            if (
                key is not None
                and flags == datagram.FLAG_SIGNED
                and version == datagram.HEADER_VERSION
                and magic == datagram.MAGIC
            ):
                end: int = size - datagram.TAG_BYTES
                if not key.verify(datagram_, end):
                    raise self._rejection("bad_tag")
                peer = sender_id << 8 | key_id
                window = self._windows.get(peer)
                if window is not None and high == window[0] and low == window[1] + 1:
                    datagram._mark(window[2], low)  # what _check_window does one ahead
                    window[1] = low
                else:
                    self._check_window(peer, datagram_)
                self.accepted += 1
                self.bound = False
                self.sender_id = sender_id
                return end
        return int(super().accept(datagram_))


def is_state(body: bytes) -> bool:
    """Whether a message body starts as a STATE's: [kind, ...] with 2-23 or 24-255 items."""
    return body.startswith(_STATE_KIND, 1) or body.startswith(_STATE_KIND, 2)


class UdpHub:
    """One UDP socket for every UDP node; `on_unknown` gets datagrams from other addresses.

    Replies never wait behind telemetry. Each turn of the event loop takes what the socket
    holds (up to RECV_DRAIN datagrams) and authenticates it in arrival order, as the replay
    windows need; it hands on replies and logs at once and queues STATE bodies, then hands on
    up to RECV_BATCH queued STATE, and comes back on the next turn if more are left. Handled
    in arrival order, a command's ACK waited behind every STATE a burst had queued in the
    kernel: tens of ms with 400 nodes streaming. When the host cannot keep up at all, the
    oldest queued STATE is dropped and counted in `shed`: a newer one from its node follows.
    """

    def __init__(
        self,
        bind: tuple[str, int] = ("0.0.0.0", 0),  # noqa: S104
        state_backlog: int = STATE_BACKLOG,
    ) -> None:
        self.bind = bind
        self.state_backlog = state_backlog
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsent: deque[tuple[bytes, tuple[str, int]]] = deque()  # sends the kernel refused
        self._routes: dict[tuple[str, int], UdpTransport] = {}
        self.on_unknown: Callable[[bytes, tuple[str, int]], None] | None = None
        self.unrouted = 0
        self._telemetry: deque[tuple[UdpTransport, bytes]] = deque()  # STATE bodies, authentic
        self._turn_scheduled = False
        self.shed = 0  # STATE datagrams dropped unhandled: `state_backlog` were waiting

    async def start(self) -> None:
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            sock.bind(self.bind)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._readable)
        except OSError:
            sock.close()
            raise
        self._sock, self._loop = sock, loop

    def address(self) -> tuple[str, int]:
        if self._sock is None:
            raise LinkError("the UDP hub is not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    def route(self, address: tuple[str, int], transport: "UdpTransport | None") -> None:
        if transport is None:
            self._routes.pop(address, None)
        else:
            self._routes[address] = transport

    def sendto(self, packet: bytes, address: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None or self._loop is None:
            raise LinkError("the UDP hub is closed")
        if not self._unsent:
            try:
                sock.sendto(packet, address)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(sock.fileno(), self._writable)
            except OSError as error:
                self._error(error)
                return
        self._unsent.append((packet, address))  # in order, once the socket takes more

    def _writable(self) -> None:
        sock = self._sock
        while sock is not None and self._unsent:
            packet, address = self._unsent[0]
            try:
                sock.sendto(packet, address)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._error(error)
            self._unsent.popleft()
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())

    def _readable(self) -> None:
        """The reader callback: replies and logs now, STATE on the next turn."""
        self._drain()
        self._schedule_turn()

    def _turn(self) -> None:
        self._turn_scheduled = False
        self._drain()  # replies that arrived meanwhile go first
        telemetry = self._telemetry
        for _ in range(RECV_BATCH):
            if not telemetry:
                break  # all handled, or the hub closed by a listener
            transport, body = telemetry.popleft()
            transport.receive(body)
        self._schedule_turn()

    def _schedule_turn(self) -> None:
        if self._telemetry and not self._turn_scheduled and self._loop is not None:
            self._turn_scheduled = True
            self._loop.call_soon(self._turn)

    def _drain(self) -> None:
        telemetry = self._telemetry
        routes = self._routes
        for _ in range(RECV_DRAIN):
            sock = self._sock
            if sock is None:
                return  # closed by a callback of the previous datagram
            try:
                # One byte more than a datagram may have: a longer one arrives cut, and the
                # receiver still rejects it for its size.
                data, address = sock.recvfrom(datagram.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._error(error)
                return
            transport = routes.get(address)  # (host, port): the socket is AF_INET
            if transport is None:
                self._unknown(data, address)
                continue
            body = transport.authenticate(data)
            if body is None:
                continue
            if is_state(body):
                if len(telemetry) >= self.state_backlog:
                    telemetry.popleft()
                    self.shed += 1
                telemetry.append((transport, body))
            else:
                transport.receive(body)

    def _error(self, error: OSError) -> None:
        # ICMP port unreachable and the like: the node is not there (yet); timeouts say so.
        log.debug("udp: %s", error)

    def _unknown(self, data: bytes, address: tuple[str, int]) -> None:
        if self.on_unknown is not None:
            self.on_unknown(data, address)
        else:
            self.unrouted += 1

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._unsent.clear()
        self._telemetry.clear()
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
        sock.close()


class UdpTransport:
    """A node at `host:port`, signed with `key` (None: unsigned, for nodes that allow it)."""

    bound = True

    def __init__(self, hub: UdpHub, host: str, port: int, key: bytes | None) -> None:
        self.hub = hub
        self.name = "udp://%s:%d" % (host, port)
        self._host, self._port = host, port
        self.address: tuple[str, int] = (host, port)
        self.sender = datagram.Sender(
            HOST_SENDER_ID, key, KEY_ID, counter=host_counter(), key_type=PadStateKey
        )
        self.receiver = HostReceiver(
            {KEY_ID: key} if key is not None else None,
            allow_unsigned=key is None,
            key_type=PadStateKey,
        )
        self._receive: Receive | None = None

    async def open(self, receive: Receive, lost: Lost) -> None:
        await self.hub.start()
        # Resolved once, so replies (from the address as the kernel reports it) route back.
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
        except OSError as error:
            raise LinkError("%s: cannot resolve: %s" % (self.name, error)) from None
        self.address = (str(infos[0][4][0]), int(infos[0][4][1]))
        self._receive = receive
        self.hub.route(self.address, self)

    def authenticate(self, data: bytes) -> bytes | None:
        """The body of a datagram from this node, or None when it is refused (and counted)."""
        try:
            end = self.receiver.accept(data)  # open() without its tuple: hot path
        except datagram.DatagramError:
            return None  # counted in receiver.rejected by reason
        return data[datagram.HEADER_BYTES : end]

    def receive(self, body: bytes) -> None:
        if self._receive is not None:  # None once closed, with STATE still queued in the hub
            self._receive(body)

    def send(self, body: bytes, bound_to: int | None) -> None:
        self.hub.sendto(self.sender.seal(body, bound_to=bound_to), self.address)

    def rejected(self) -> dict[str, int]:
        """Datagrams from the node's address this host refused, by reason (forged, replayed,
        malformed: protocol/datagram.py REASONS)."""
        return {reason: n for reason, n in self.receiver.rejected.items() if n}

    def close(self) -> None:
        self.hub.route(self.address, None)
        self._receive = None


class SerialTransport:
    """A node on a serial port (USB CDC or a UART; a pty for simulated boards)."""

    bound = False  # a cable is its own proof of presence: nothing to replay

    def __init__(self, path: str, baud: int = 115200) -> None:
        self.name = "serial://%s" % path
        self.path, self.baud = path, baud
        self._port: serial.Serial | None = None
        self._decoder = stream.FrameDecoder()
        self._dropped: dict[str, int] = {}  # by earlier decoders: one per opening
        self._receive: Receive | None = None
        self._lost: Lost | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, receive: Receive, lost: Lost) -> None:
        try:
            port = serial.Serial(self.path, self.baud, timeout=0, write_timeout=1.0)
        except (serial.SerialException, OSError) as error:
            raise LinkError("%s: cannot open: %s" % (self.name, error)) from None
        self._port, self._receive, self._lost = port, receive, lost
        self._dropped = self.rejected()
        self._decoder = stream.FrameDecoder()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.fileno(), self._readable)

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(4096)
            if not data and not port.in_waiting:
                # readable with nothing to read: the other end hung up (a pty closes this way)
                raise serial.SerialException("hung up")
        except (serial.SerialException, OSError) as error:
            self._fail("%s: %s" % (self.name, error))
            return
        for is_frame, body in self._decoder.feed(data):
            if is_frame and self._receive is not None:
                self._receive(bytes(body))

    def _fail(self, why: str) -> None:
        lost = self._lost
        self.close()
        if lost is not None:
            lost(why)

    def send(self, body: bytes, bound_to: int | None) -> None:
        if self._port is None:
            raise LinkError("%s: not open" % self.name)
        try:
            self._port.write(stream.encode_frame(body))
        except (serial.SerialException, OSError) as error:
            self._fail("%s: %s" % (self.name, error))
            raise LinkError("%s: write failed: %s" % (self.name, error)) from None

    def rejected(self) -> dict[str, int]:
        """Frames from the port this host dropped, by reason (bad CRC, escape or length:
        protocol/stream.py REASONS), over every opening of the port."""
        total = dict(self._dropped)
        for reason, n in self._decoder.errors.items():
            if n:
                total[reason] = total.get(reason, 0) + n
        return total

    def close(self) -> None:
        port, self._port = self._port, None
        self._receive = self._lost = None
        if port is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(ValueError, OSError):  # the fd may be gone already
                    self._loop.remove_reader(port.fileno())
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
