"""A small test client for nodes, built on servomesh.protocol: UDP and serial (pty) links.

Replies are matched to requests by seq; STATE and LOG events that arrive meanwhile are kept in
`events`. Every wait has a timeout.
"""

import abc
import os
import select
import socket
import time
from typing import Any

import serial

from servomesh.protocol import cbor, datagram, messages, stream

HOST_SENDER_ID = 0


class NoReplyError(TimeoutError):
    """The node did not answer in time."""


class Client(abc.ABC):
    """What both links share: seq numbering, reply matching, event collection."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.seq = 0
        self.events: list[list[Any]] = []
        self.boot_id: int | None = None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def request(self, kind: int, *fields: Any, seq: int | None = None) -> list[Any]:
        """Send `[kind, seq, *fields]`; return the reply's values."""
        seq = self.next_seq() if seq is None else seq
        self.send_body(cbor.dumps([kind, seq, *fields]), kind)
        return self.reply_to(seq)

    def reply_to(self, seq: int, timeout_s: float | None = None) -> list[Any]:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            for body in self.receive_bodies(deadline - time.monotonic()):
                values = cbor.loads(body)
                assert isinstance(values, list), values
                assert messages.check(values, len(values)) == 0, values
                if values[0] >= messages.STATE:
                    self.events.append(values)
                elif values[1] == seq:
                    # Only a host sends requests: this one is the client's own, come back.
                    assert values[0] >= messages.ACK, "own request read back: %r" % values
                    if values[0] == messages.INFO:
                        self.boot_id = values[2]["boot_id"]  # what requests bind to
                    return values
            if time.monotonic() >= deadline:
                raise NoReplyError("no reply to seq %d" % seq)

    def wait_event(self, kind: int, timeout_s: float, where: Any = None) -> list[Any]:
        """The first event of `kind` (matching `where(values)` if given), waiting if needed."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, values in enumerate(self.events):
                if values[0] == kind and (where is None or where(values)):
                    del self.events[: i + 1]
                    return values
            if time.monotonic() >= deadline:
                raise NoReplyError("no event %d within %.1f s" % (kind, timeout_s))
            for body in self.receive_bodies(min(0.05, deadline - time.monotonic())):
                self.events.append(cbor.loads(body))

    @abc.abstractmethod
    def send_body(self, body: bytes, kind: int | None = None) -> None:
        """Send one message body the link's way."""

    @abc.abstractmethod
    def receive_bodies(self, timeout_s: float) -> list[bytes]:
        """The message bodies that arrive within `timeout_s`."""


class UdpClient(Client):
    def __init__(self, port: int, key: bytes | None, timeout_s: float = 1.0) -> None:
        super().__init__(timeout_s)
        self.address = ("127.0.0.1", port)
        counter = time.time_ns() // 10_000  # like the host: increasing across client restarts
        self.sender = datagram.Sender(HOST_SENDER_ID, key, 1, counter=counter)
        self.receiver = datagram.Receiver({1: key} if key else None, allow_unsigned=key is None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def seal(self, body: bytes, kind: int | None = None) -> bytes:
        """A datagram for `body`, BOUND to the node's boot unless `kind` is read-only."""
        bind = kind not in messages.READ_ONLY_KINDS and self.boot_id is not None
        return self.sender.seal(body, bound_to=self.boot_id if bind else None)

    def send_body(self, body: bytes, kind: int | None = None) -> None:
        self.send_raw(self.seal(body, kind))

    def send_raw(self, packet: bytes) -> None:
        self.sock.sendto(packet, self.address)

    def receive_bodies(self, timeout_s: float) -> list[bytes]:
        bodies = []
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout_s))
        while ready:
            packet = self.sock.recv(datagram.MAX_DATAGRAM)
            bodies.append(self.receiver.open(packet)[1])
            ready, _, _ = select.select([self.sock], [], [], 0)
        return bodies

    def close(self) -> None:
        self.sock.close()


class SerialClient(Client):
    def __init__(self, path: str, timeout_s: float = 1.0) -> None:
        super().__init__(timeout_s)
        self.port = serial.Serial(path, 115200, timeout=0)
        self.decoder = stream.FrameDecoder()
        self.text = bytearray()

    def send_body(self, body: bytes, kind: int | None = None) -> None:
        self.send_raw(stream.encode_frame(body))

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def receive_bodies(self, timeout_s: float) -> list[bytes]:
        ready, _, _ = select.select([self.port.fileno()], [], [], max(0.0, timeout_s))
        if not ready:
            return []
        data = os.read(self.port.fileno(), 4096)
        bodies = []
        for is_frame, payload in self.decoder.feed(data):
            if is_frame:
                bodies.append(payload)
            else:
                self.text += payload
        return bodies

    def close(self) -> None:
        self.port.close()
