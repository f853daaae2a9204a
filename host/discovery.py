"""Finding nodes: DISCOVER over UDP (broadcast or unicast) and on serial ports.

UDP: DISCOVER once per key the host holds plus once unsigned, to each broadcast address and
target, in a few rounds within the timeout (Wi-Fi does not retry a lost broadcast). A node with
a key answers only the DISCOVER signed with its key and signs its INFO with that key, so each
answer says which key reaches the node; a key is reported by its name, never its bytes.

Serial: the ports whose USB vendor and product ids belong to the boards servomesh runs on
(`USB_IDS`), or paths given explicitly (a pty has no USB ids), each opened exclusively and asked
DISCOVER; a cable needs no key.

DISCOVER, never HELLO: a node takes it as a scan, not as its host, so a scan neither arms the
node's link-loss failsafe (which could move idle servos home) nor takes its telemetry.

A node that answers with another protocol version is found and marked `old` or `newer`, not
dropped: the user has to learn that its firmware needs updating.
"""

import asyncio
import contextlib
import enum
import errno
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import serial
from serial.tools import list_ports

from servomesh.host import codec
from servomesh.host.fleet_config import DEFAULT_BAUD
from servomesh.host.transport import host_counter
from servomesh.protocol import catalogue, datagram, messages, stream
from servomesh.protocol.cbor import DecodeError

DEFAULT_BROADCAST: Final = "255.255.255.255"
# A node's default udp_port, from firmware/config.py (which the host never imports).
DEFAULT_PORT: Final = 5683
DEFAULT_TIMEOUT_S: Final = 1.0
# Requests go out at these fractions of the timeout: a lost broadcast is not retried by Wi-Fi,
# and a board that is still booting misses the first request. Repeats are harmless: DISCOVER
# only reads, and answers are deduplicated.
ROUNDS: Final = (0.0, 0.25, 0.5)
# Not the sessions' sender id (transport.HOST_SENDER_ID): a node keeps one replay window per
# sender, and discovery's counters (the clock, now) would leave a running orchestrator's
# counters (its clock at start, plus one per datagram) too old to be accepted.
DISCOVERY_SENDER_ID: Final = 0xFFFF
# Bounds on what one run keeps, whatever a network sends back: answers, and the addresses
# whose datagrams are checked (each has its own replay windows).
MAX_ANSWERS: Final = 1024
MAX_ADDRESSES: Final = 4096
_CONSOLE_KEPT_BYTES: Final = 256  # the last console text of a serial port, to recognise a REPL
_RAW_REPL_BANNER: Final = b"raw REPL; CTRL-B to exit"
_REPL_PROMPT: Final = b"\n>>> "
_CTRL_C: Final = b"\x03"  # clears a REPL's line (friendly) or its buffer (raw)
_SEQ_MAX: Final = 0x3FFFFFFF
# Bytes a MicroPython REPL acts on rather than takes as typing: Ctrl-A..F (raw REPL, banner,
# Ctrl-C, soft reset, paste mode; cursor keys mid-line), backspace, tab (completion), Enter,
# Ctrl-K/N/P/U/W (line editing, history) and escape sequences. A DISCOVER frame sent to a serial
# port holds none of them, so a board at its REPL only types it: nothing runs, resets or
# changes mode, whatever the random seq and the CRC would have made of it.
_REPL_KEYS: Final = frozenset(b"\x01\x02\x03\x04\x05\x06\x08\t\n\x0b\r\x0e\x10\x15\x17\x1b\x7f")
# The frame's printable ASCII, which a friendly REPL echoes: enough of it to recognise the echo.
_ECHO_MIN_BYTES: Final = 3


class DiscoveryError(ValueError):
    """Discovery cannot start (a bad address or target); the message says which."""


class Status(enum.StrEnum):
    OK = "ok"
    OLD = "old"  # the node speaks an older protocol: update its firmware
    NEWER = "newer"  # the node speaks a newer protocol: update the host
    INCOMPATIBLE = "incompatible"  # it answered, but not in a way this host can read


@dataclass(frozen=True)
class DiscoveryKey:
    """A key to sign DISCOVER with; `name` (its file, say) is what reports show."""

    name: str
    key: bytes = field(repr=False)
    key_id: int = 1


@dataclass(frozen=True)
class FoundNode:
    """Something that answered as a node. `key`: the name of the key whose DISCOVER it
    answered; None for an unsigned answer and on serial."""

    link: str
    node_id: str | None
    firmware: str | None
    protocol_version: int | None
    board: str | None
    channels: int | None
    boot_id: int | None
    key: str | None
    status: Status
    why: str = ""
    info: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def compatible(self) -> bool:
        return self.status is Status.OK

    def row(self) -> dict[str, Any]:
        """For tables and JSON; INFO never holds a secret."""
        return {
            "link": self.link,
            "node_id": self.node_id,
            "firmware": self.firmware,
            "protocol_version": self.protocol_version,
            "board": self.board,
            "channels": self.channels,
            "boot_id": self.boot_id,
            "key": self.key,
            "status": str(self.status),
            "why": self.why,
            "info": self.info,
        }


@dataclass
class Discovery:
    """What answered, and one line per place that could not be asked or did not answer."""

    found: list[FoundNode] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: "Discovery") -> None:
        self.found.extend(other.found)
        self.notes.extend(other.notes)


# -- answers --------------------------------------------------------------------------------


def _version_status(version: int | None) -> tuple[Status, str]:
    host = messages.PROTOCOL_VERSION
    if version == host:
        return Status.OK, ""
    if version is None:
        return Status.INCOMPATIBLE, "no protocol version in its INFO"
    if version < host:
        return Status.OLD, "node speaks protocol %d, this host %d: update its firmware" % (
            version,
            host,
        )
    return Status.NEWER, "node speaks protocol %d, this host %d: update the host" % (version, host)


def _text(info: dict[Any, Any], name: str) -> str | None:
    value = info.get(name)
    return value if isinstance(value, str) else None


def _int(info: dict[Any, Any], name: str) -> int | None:
    value = info.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def found_from_info(link: str, info: dict[Any, Any], key: str | None) -> FoundNode:
    """A node from its INFO map; a hostile map's odd types become None, never an error."""
    status, why = _version_status(_int(info, "protocol_version"))
    if status is Status.OK and info.get("configured") is False:
        why = "unconfigured: %s" % (_text(info, "config_error") or "no config")
    return FoundNode(
        link=link,
        node_id=_text(info, "node_id"),
        firmware=_text(info, "firmware"),
        protocol_version=_int(info, "protocol_version"),
        board=_text(info, "board"),
        channels=_int(info, "channels"),
        boot_id=_int(info, "boot_id"),
        key=key,
        status=status,
        why=why,
        info={str(name): value for name, value in info.items()},
    )


def found_from_error(link: str, request: int, code: int, detail: int, key: str | None) -> FoundNode:
    """A node that refused the request: with E_VERSION, `detail` is the node's version."""
    if code == messages.E_VERSION:
        status, why = _version_status(detail)
        version: int | None = detail
    else:
        version, status = None, Status.INCOMPATIBLE
        why = "answered %s with ERROR %s" % (
            catalogue.KINDS[request][0],
            catalogue.ERROR_NAMES.get(code, str(code)),
        )
    return FoundNode(link, None, None, version, None, None, None, key, status, why)


# The answers to DISCOVER. Anything else is an event (a node logs its boot at the
# first request it gets, DISCOVER included) or a stale reply, and is ignored.
_ANSWERS: Final = (messages.INFO, messages.ERROR)


def found_unreadable(link: str, why: str) -> FoundNode:
    """Something answered in a form this host cannot read (another datagram header)."""
    return FoundNode(link, None, None, None, None, None, None, None, Status.INCOMPATIBLE, why)


def _found_from_message(
    link: str, request: int, message: codec.Message, key: str | None = None
) -> FoundNode:
    """A node from its INFO or ERROR answer to `request`."""
    if message.kind == messages.INFO:
        return found_from_info(link, message.fields[0], key)
    detail = message.fields[1] if len(message.fields) > 1 else 0
    return found_from_error(link, request, message.fields[0], detail, key)


# -- UDP ------------------------------------------------------------------------------------


class _UdpAnswers:
    """Authenticates and deduplicates answers. Receivers per address, one per key: replay
    windows are per sender id, and nodes of separate fleets may share one."""

    def __init__(self, slots: Sequence[DiscoveryKey | None]) -> None:
        self.slots = slots
        self.receivers: dict[tuple[str, int], list[datagram.Receiver]] = {}  # one per slot
        self.found: dict[object, FoundNode] = {}
        self.answered: set[tuple[str, int]] = set()  # addresses of authenticated answers

    def take(self, data: bytes, address: tuple[str, int]) -> None:
        if len(self.found) >= MAX_ANSWERS:
            return
        link = "udp://%s:%d" % address
        if data[:2] == datagram.MAGIC and len(data) > 2 and data[2] != datagram.HEADER_VERSION:
            why = "datagram header version %d, this host %d" % (data[2], datagram.HEADER_VERSION)
            self._add(link, found_unreadable(link, why))
            return
        if address not in self.receivers:
            if len(self.receivers) >= MAX_ADDRESSES:
                return
            self.receivers[address] = [
                datagram.Receiver({slot.key_id: slot.key})
                if slot is not None
                else datagram.Receiver(allow_unsigned=True)
                for slot in self.slots
            ]
        for slot, receiver in zip(self.slots, self.receivers[address], strict=True):
            try:
                body = receiver.open(data)[1]
            except datagram.DatagramError:
                continue  # not this key's answer (or not an answer at all)
            try:
                message = codec.decode(body)
            except DecodeError:
                return
            if message.kind in _ANSWERS:
                self.answered.add(address)
                name = slot.name if slot is not None else None
                found = _found_from_message(link, messages.DISCOVER, message, name)
                identity = (found.node_id, found.boot_id) if found.boot_id is not None else link
                self._add(identity, found)
            return

    def _add(self, identity: object, found: FoundNode) -> None:
        # The first answer wins: a node reached by broadcast and by target is listed once.
        self.found.setdefault(identity, found)


def unique_keys(keys: Iterable[DiscoveryKey]) -> list[DiscoveryKey]:
    """Keys without repeats (two files may hold one key); the first name is kept."""
    seen: set[tuple[bytes, int]] = set()
    result = []
    for key in keys:
        if (key.key, key.key_id) not in seen:
            seen.add((key.key, key.key_id))
            result.append(key)
    return result


async def resolve_targets(
    targets: Iterable[tuple[str, int]], timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[tuple[str, int]]:
    """IPv4 addresses of (host, port) targets; DiscoveryError for one that does not resolve."""
    loop = asyncio.get_running_loop()
    resolved = []
    for host, port in targets:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM),
                timeout_s,
            )
        except TimeoutError:
            raise DiscoveryError(
                "%s:%d: cannot resolve: no answer in time" % (host, port)
            ) from None
        except OSError as error:
            raise DiscoveryError("%s:%d: cannot resolve: %s" % (host, port, error)) from None
        resolved.append((str(infos[0][4][0]), int(infos[0][4][1])))
    return resolved


class _Asker:
    """Sends DISCOVER signed with each key (and unsigned) to each destination."""

    def __init__(self, slots: Sequence[DiscoveryKey | None]) -> None:
        self.senders = [
            datagram.Sender(DISCOVERY_SENDER_ID, slot.key, slot.key_id)
            if slot is not None
            else datagram.Sender(DISCOVERY_SENDER_ID)
            for slot in slots
        ]
        # seq i + 1 goes out with key i (the unsigned one last): answers echo it.
        self.bodies = [codec.encode(messages.DISCOVER, i + 1) for i in range(len(slots))]
        self.failed: dict[tuple[str, int], str] = {}  # destination -> why, the first time

    def send(self, sock: socket.socket, destinations: Sequence[tuple[str, int]]) -> None:
        for destination in destinations:
            for sender, body in zip(self.senders, self.bodies, strict=True):
                # The clock as counter, as sessions do (transport.host_counter), so discovery
                # runs that overlap still count up at a node.
                sender.counter = max(sender.counter, host_counter())
                try:
                    sock.sendto(sender.seal(body), destination)
                except OSError as error:  # no route for a broadcast, a full buffer, ...
                    self.failed.setdefault(destination, error.strerror or str(error))


async def discover_udp(
    broadcasts: Sequence[str] = (DEFAULT_BROADCAST,),
    ports: Sequence[int] = (DEFAULT_PORT,),
    targets: Sequence[tuple[str, int]] = (),
    keys: Sequence[DiscoveryKey] = (),
    *,
    unsigned: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Discovery:
    """DISCOVER to every broadcast address at every port and to every (host, port) target,
    signed with each key and, when `unsigned`, once unsigned; INFO collected for `timeout_s`,
    or until every target has answered when there is no broadcast. IPv4 only, as broadcast
    is. Raises DiscoveryError for a target that does not resolve; an address that cannot be
    sent to becomes a note."""
    loop = asyncio.get_running_loop()
    unicast = await resolve_targets(targets, timeout_s)
    broadcast = [(address, port) for address in broadcasts for port in ports]
    destinations = list(dict.fromkeys(broadcast + unicast))  # each asked once
    slots: list[DiscoveryKey | None] = [*unique_keys(keys)]
    if unsigned:
        slots.append(None)
    result = Discovery()
    if not destinations or not slots:
        return result
    asker = _Asker(slots)
    answers = _UdpAnswers(slots)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # a burst of answers
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 (answers come back on any interface)
        started = loop.time()
        deadline = started + timeout_s
        sends = [started + fraction * timeout_s for fraction in ROUNDS]
        while True:
            now = loop.time()
            while sends and sends[0] <= now:
                sends.pop(0)
                asker.send(sock, destinations)
            if now >= deadline or (not broadcast and answers.answered.issuperset(unicast)):
                break  # a broadcast may find more until the end; targets are all answered
            wake = min(sends[0], deadline) if sends else deadline
            try:
                data, address = await asyncio.wait_for(
                    loop.sock_recvfrom(sock, datagram.MAX_DATAGRAM), wake - now
                )
            except TimeoutError:
                continue
            answers.take(data, (str(address[0]), int(address[1])))
    result.found.extend(answers.found.values())
    for destination in destinations:
        if destination in asker.failed:
            result.notes.append(
                "udp://%s:%d: cannot send: %s" % (*destination, asker.failed[destination])
            )
        elif destination in unicast and destination not in answers.answered:
            result.notes.append(
                "udp://%s:%d: no answer (no node there, or it has a key this host was not given)"
                % destination
            )
    return result


# -- serial ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsbId:
    vid: int
    pid: int | None  # None: every product of the vendor
    what: str


# USB ids of the boards servomesh runs on and of the USB-serial bridges on their dev boards.
# Ports with other ids (or none: a built-in UART, a pty) are probed only when named.
USB_IDS: Final = (
    UsbId(0x303A, None, "Espressif native USB (ESP32-S2/S3/C3/C6)"),
    UsbId(0x10C4, 0xEA60, "Silicon Labs CP210x"),
    UsbId(0x1A86, 0x7523, "WCH CH340"),
    UsbId(0x1A86, 0x55D4, "WCH CH9102"),
    UsbId(0x0403, 0x6001, "FTDI FT232R"),
    UsbId(0x0403, 0x6015, "FTDI FT231X"),
    UsbId(0x2E8A, 0x0005, "Raspberry Pi RP2040, MicroPython"),
)


class UsbPort(Protocol):
    """What `usb_candidates` reads of pyserial's ListPortInfo."""

    @property
    def device(self) -> str: ...
    @property
    def vid(self) -> int | None: ...
    @property
    def pid(self) -> int | None: ...


def usb_kind(vid: int | None, pid: int | None) -> UsbId | None:
    for known in USB_IDS:
        if vid == known.vid and known.pid in (None, pid):
            return known
    return None


def usb_candidates(ports: Iterable[UsbPort]) -> list[str]:
    """The device paths of the ports that may be a node's, sorted."""
    return sorted(port.device for port in ports if usb_kind(port.vid, port.pid) is not None)


def scan_usb_serial() -> list[str]:
    """Serial ports on this machine whose USB ids are in USB_IDS."""
    return usb_candidates(list_ports.comports())


def _open_failure(link: str, error: Exception) -> str:
    code = getattr(error, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(error)
    if code in (errno.EBUSY, errno.EAGAIN):
        # EAGAIN: another program holds the port's exclusive lock; EBUSY: it set TIOCEXCL.
        return "%s: busy, skipped: another program has it open (%s)" % (link, reason)
    if code == errno.EACCES:
        return "%s: cannot open: %s (a group such as dialout grants access)" % (link, reason)
    return "%s: cannot open: %s" % (link, reason)


async def probe_serial(
    path: str, timeout_s: float = DEFAULT_TIMEOUT_S, baud: int = DEFAULT_BAUD
) -> FoundNode | str:
    """DISCOVER on one serial port: the node that answers, or a note saying why none did."""
    link = "serial://" + path
    try:
        # Exclusive: never take bytes from a program that has the port (and locked it).
        port = serial.Serial(path, baud, timeout=0, exclusive=True)
        port.reset_input_buffer()  # console text from before this probe says nothing
    except (serial.SerialException, OSError) as error:
        return _open_failure(link, error)
    try:
        os.set_blocking(port.fileno(), False)  # pyserial's already is; _ask relies on it
        return await _ask(port.fileno(), link, timeout_s)
    except OSError as error:  # unplugged: expected while probing, so a note, not a failure
        return "%s: %s" % (link, error.strerror or error)
    finally:
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()


async def _ask(fd: int, link: str, timeout_s: float) -> FoundNode | str:
    """Send DISCOVER at the ROUNDS of the timeout until INFO or ERROR answers it. On the port's
    non-blocking fd, plain os.read and os.write never block the loop."""
    loop = asyncio.get_running_loop()
    seq, frame, echo = _typeable_discover()
    answer: asyncio.Future[codec.Message] = loop.create_future()
    decoder = stream.FrameDecoder()
    console = bytearray()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
            if not data:
                raise OSError(errno.EIO, "hung up")  # a pty whose other end closed
        except BlockingIOError:
            return
        except OSError as error:
            loop.remove_reader(fd)
            if not answer.done():
                answer.set_exception(error)
            return
        for is_frame, payload in decoder.feed(data):
            if not is_frame:
                console.extend(payload)
                del console[:-_CONSOLE_KEPT_BYTES]
                continue
            try:
                message = codec.decode(payload)
            except DecodeError:
                continue
            if message.seq == seq and message.kind in _ANSWERS and not answer.done():
                answer.set_result(message)

    loop.add_reader(fd, readable)
    try:
        started = loop.time()
        for fraction in (*ROUNDS[1:], 1.0):
            try:
                written = os.write(fd, frame)
            except BlockingIOError:
                written = 0
            if written != len(frame):
                return "%s: does not take data (flow control held?)" % link
            await asyncio.wait(
                {answer}, timeout=max(0.0, started + fraction * timeout_s - loop.time())
            )
            if answer.done():
                return _found_from_message(link, messages.DISCOVER, answer.result())
    finally:
        loop.remove_reader(fd)
        if not answer.done():
            answer.cancel()
    if echo in console or _REPL_PROMPT in console or _RAW_REPL_BANNER in console:
        # Leave the REPL as it was: the frames were only typed into its line (or raw buffer),
        # and Ctrl-C clears that. Never sent elsewhere: it would stop a running program.
        with contextlib.suppress(OSError):
            os.write(fd, _CTRL_C)
        return "%s: a MicroPython REPL without the servomesh node running" % link
    return "%s: no answer to DISCOVER within %.1f s (not a servomesh node, or booting)%s" % (
        link,
        timeout_s,
        "; it printed text" if console.strip() else "",
    )


def _typeable_discover() -> tuple[int, bytes, bytes]:
    """A DISCOVER frame with a fresh random seq (not a stale reply's, from an earlier host) that
    a REPL takes as plain typing, its seq and the text a friendly REPL echoes for it. About
    one seq in three qualifies."""
    while True:
        seq = 1 + secrets.randbelow(_SEQ_MAX)
        frame = stream.encode_frame(codec.encode(messages.DISCOVER, seq))
        echo = bytes(byte for byte in frame if 0x20 <= byte < 0x7F)
        if len(echo) >= _ECHO_MIN_BYTES and _REPL_KEYS.isdisjoint(frame):
            return seq, frame, echo


async def probe_serial_ports(
    paths: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S, baud: int = DEFAULT_BAUD
) -> Discovery:
    """DISCOVER on each port at once; a port listed twice is probed once."""
    unique = list(dict.fromkeys(paths))
    outcomes = await asyncio.gather(*(probe_serial(path, timeout_s, baud) for path in unique))
    result = Discovery()
    for outcome in outcomes:
        if isinstance(outcome, FoundNode):
            result.found.append(outcome)
        else:
            result.notes.append(outcome)
    return result


def serial_ports(paths: Iterable[str], scan_usb: bool, skip: Iterable[str] = ()) -> list[str]:
    """`paths`, plus the USB scan's when `scan_usb`, without those in `skip` (ports another
    part of the host has open), whichever name (a /dev/serial/by-id link) reaches them.
    Reads the file system: call it off the event loop."""
    found = list(paths) + (scan_usb_serial() if scan_usb else [])
    skipped = {os.path.realpath(path) for path in skip}
    return [path for path in dict.fromkeys(found) if os.path.realpath(path) not in skipped]


async def discover(
    *,
    broadcasts: Sequence[str] = (),
    ports: Sequence[int] = (DEFAULT_PORT,),
    targets: Sequence[tuple[str, int]] = (),
    keys: Sequence[DiscoveryKey] = (),
    serial_paths: Sequence[str] = (),
    scan_usb: bool = False,
    skip_serial: Iterable[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Discovery:
    """UDP discovery and serial probes at once (see `serial_ports` for the ports probed)."""
    paths = await asyncio.to_thread(serial_ports, serial_paths, scan_usb, skip_serial)
    resolved = await resolve_targets(targets, timeout_s)  # before anything starts: it may fail
    udp, on_serial = await asyncio.gather(
        discover_udp(broadcasts, ports, resolved, keys, timeout_s=timeout_s),
        probe_serial_ports(paths, timeout_s),
    )
    udp.extend(on_serial)
    return udp
