"""Protocol echo service: the smallest node that speaks the wire protocol over UDP.

    micropython -m servomesh.firmware.echo PORT [KEY_FILE]

Answers HELLO with INFO, PING with PONG, any other catalogue request with ACK and malformed
requests with ERROR, all in signed datagrams when KEY_FILE (hex key, key id 1) is given. It
drives no servos: `servomesh demo` and the protocol tests use it to exercise the real codec,
framing and authentication on MicroPython until the node service replaces it.
"""

import socket
import sys
import time

from servomesh.protocol import cbor, datagram, messages

_KEY_ID = 1
_NODE_SENDER_ID = 1


def _read_key(path):
    with open(path) as f:
        return bytes.fromhex(f.read().strip())


def _reply(values, count, receiver):
    code = messages.check(values, count) if count >= 0 else messages.E_MALFORMED
    if code:
        # Echo the seq only if it is one; seq 0 says "your request could not be read".
        seq = values[1] if count >= 2 and messages.check([messages.PING, values[1]], 2) == 0 else 0
        return [messages.ERROR, seq, code]
    seq = values[1]
    kind = values[0]
    if kind == messages.HELLO or kind == messages.DISCOVER:
        info = {
            "protocol_version": messages.PROTOCOL_VERSION,
            "firmware": "echo",
            "accepted": receiver.accepted,
            "rejected": receiver.rejected,
        }
        return [messages.INFO, seq, info]
    if kind == messages.PING:
        return [messages.PONG, seq, time.ticks_us() & (messages.TICKS_PERIOD - 1)]
    if kind >= messages.ACK:
        return [messages.ERROR, seq, messages.E_UNKNOWN_KIND]
    return [messages.ACK, seq]


def serve(port, key=None):
    receiver = datagram.Receiver({_KEY_ID: key} if key else {}, allow_unsigned=key is None)
    sender = datagram.Sender(_NODE_SENDER_ID, key, _KEY_ID)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    values = [0] * messages.MAX_FIELDS
    print("echo: listening on udp://127.0.0.1:%d" % port)
    while True:
        packet, address = sock.recvfrom(datagram.MAX_DATAGRAM)
        try:
            _, body = receiver.open(packet)
        except datagram.DatagramError:
            continue  # counted by the receiver; an unauthenticated peer gets no answer
        try:
            count = cbor.decode_ints_into(body, 0, len(body), values)
            if count < 0:
                decoded = cbor.loads(body)
                if isinstance(decoded, list) and len(decoded) <= len(values):
                    count = len(decoded)
                    values[:count] = decoded
        except cbor.DecodeError:
            count = -1
        sock.sendto(sender.seal(cbor.dumps(_reply(values, count, receiver))), address)


def main(argv):
    if len(argv) not in (2, 3):
        print("usage: micropython -m servomesh.firmware.echo PORT [KEY_FILE]")
        sys.exit(2)
    serve(int(argv[1]), _read_key(argv[2]) if len(argv) == 3 else None)


if __name__ == "__main__":
    main(sys.argv)
