"""The node's links: serial (the REPL's stdin/stdout) and UDP, both feeding one dispatcher.

Each link is an asyncio task. They wait for input through asyncio's poller, so the control
loop and the other link run while a link is idle, and they drain a bounded batch per wake-up,
so a flood of requests delays the control loop by at most one batch.
"""

import select
import socket
import sys
from asyncio import core

from servomesh.protocol import datagram, stream
from servomesh.protocol.compat import const

SERIAL_PEER = const(0x10000)  # peer id of the serial link's host; UDP peers are sender ids
_SERIAL_CHUNK = const(256)
_UDP_BATCH = const(16)
_EAGAIN = const(11)


class SerialLink:
    """Frames on the USB REPL's stdin/stdout; console text between frames is ignored."""

    name = "serial"

    def __init__(self, node):
        self.node = node
        self.decoder = stream.FrameDecoder()
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._chunk = bytearray(_SERIAL_CHUNK)
        self.alive = False
        self.closed = False  # stdin reached its end: no serial host (e.g. a UDP-only sim board)

    def bound_to_boot(self):
        return True  # a serial cable is its own proof of presence: nothing to replay

    def frames_dropped(self):
        total = 0
        for reason in stream.REASONS:
            total += self.decoder.errors[reason]
        return total

    async def run(self):
        # `yield queue_read(...)` is how MicroPython's own asyncio streams wait for input.
        self.alive = True
        try:
            while not self.closed:
                yield core._io_queue.queue_read(sys.stdin)
                self._drain()
        finally:
            self.alive = False

    def _drain(self):
        # stdin's read(n) blocks until n bytes arrive, so read what poll says is there.
        chunk = self._chunk
        n = 0
        while n < _SERIAL_CHUNK and self._poll.poll(0):
            byte = self._in.read(1)
            if not byte:
                self.closed = True
                break
            chunk[n] = byte[0]
            n += 1
        if not n:
            return
        dispatcher = self.node.dispatcher
        for is_frame, body in self.decoder.feed(memoryview(chunk)[:n]):
            if is_frame:
                size = dispatcher.handle(self, SERIAL_PEER, body, 0, len(body))
                if size:
                    self.send(dispatcher.out, size)

    def send(self, body, size):
        self._out.write(stream.encode_frame(memoryview(body)[:size]))


class UdpLink:
    """One message per datagram, authenticated (protocol/datagram.py); answers DISCOVER too."""

    name = "udp"

    def __init__(self, node, host, port, receiver, sender):
        self.node = node
        self.receiver = receiver
        self.sender = sender
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(socket.getaddrinfo(host, port)[0][-1])
        self.address = None  # where the host last spoke from: STATE and LOG go there
        self.alive = False

    def bound_to_boot(self):
        """Whether the request just received cannot have been recorded before this boot."""
        return self.receiver.bound or self.receiver.allow_unsigned

    async def run(self):
        self.alive = True
        try:
            while True:
                yield core._io_queue.queue_read(self.sock)
                for _ in range(_UDP_BATCH):
                    try:
                        packet, address = self.sock.recvfrom(datagram.MAX_DATAGRAM)
                    except OSError as error:
                        if error.args[0] == _EAGAIN:
                            break
                        raise
                    self._datagram(packet, address)
        finally:
            self.alive = False

    def _datagram(self, packet, address):
        receiver = self.receiver
        try:
            end = receiver.accept(packet)
        except datagram.DatagramError:
            return  # counted by the receiver; an unauthenticated peer gets no answer
        previous = self.address
        self.address = address  # before dispatching: events it causes go to this host
        dispatcher = self.node.dispatcher
        size = dispatcher.handle(self, receiver.sender_id, packet, datagram.HEADER_BYTES, end)
        if not dispatcher.contact:
            self.address = previous  # a scan or a refused request: the host stays where it was
        if size:
            self._sendto(dispatcher.out, size, address)

    def send(self, body, size):
        if self.address is not None:
            self._sendto(body, size, self.address)

    def _sendto(self, body, size, address):
        try:
            self.sock.sendto(self.sender.seal(memoryview(body)[:size]), address)
        except OSError:
            pass  # a full socket buffer drops the datagram, as the network may; the host retries
