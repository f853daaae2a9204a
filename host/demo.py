"""`servomesh demo`, foundation stage: the wire protocol between CPython and MicroPython.

Starts the protocol echo service (`servomesh.firmware.echo`) in the MicroPython unix port,
talks to it over signed UDP datagrams and shows each exchange, including a tampered and a
replayed datagram that the node rejects. The orchestrator, simulated servo nodes and the
dashboard take this command's place as they land.
"""

import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cbor2

from servomesh.host import codec, upy
from servomesh.protocol import datagram, messages, stream

_KEY_ID = 1
_HOST_SENDER_ID = 0
_REPLY_TIMEOUT_S = 1.0
_START_TIMEOUT_S = 10.0


def _free_udp_port() -> int:
    # The unix port cannot report the port it bound, so pick one here and hand it over.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(node: subprocess.Popen[str]) -> None:
    if node.stdout is None:
        raise RuntimeError("the echo service's output is not captured")
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = node.stdout.readline()
        if "listening" in line:
            return
        if not line and node.poll() is not None:
            break
    raise RuntimeError("the MicroPython echo service did not start")


def run() -> int:
    print("servomesh demo, foundation stage: the wire protocol between CPython and MicroPython.")
    print("(The orchestrator, simulated servo nodes and the dashboard replace this as they land.)")
    key = secrets.token_bytes(32)
    port = _free_udp_port()
    with tempfile.TemporaryDirectory() as folder:
        key_file = Path(folder) / "node.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key.hex())
        node = subprocess.Popen(
            upy.command("-m", "servomesh.firmware.echo", str(port), str(key_file)),
            env=upy.environment(),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_ready(node)
            print("MicroPython node: udp://127.0.0.1:%d (pid %d)\n" % (port, node.pid))
            _exchange(port, key)
        finally:
            node.terminate()
            node.wait(timeout=5)
    return 0


def _exchange(port: int, key: bytes) -> None:
    sender = datagram.Sender(_HOST_SENDER_ID, key, _KEY_ID, counter=time.time_ns() // 10_000)
    receiver = datagram.Receiver({_KEY_ID: key})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_REPLY_TIMEOUT_S)
        address = ("127.0.0.1", port)

        def request(label: str, packet: bytes) -> None:
            sock.sendto(packet, address)
            try:
                _, body = receiver.open(sock.recv(datagram.MAX_DATAGRAM))
            except TimeoutError:
                print("%-26s %3d B -> no answer (rejected by the node)" % (label, len(packet)))
                return
            reply = codec.decode(body)
            print("%-26s %3d B -> %s %s" % (label, len(packet), reply.name, reply.named()))

        hello = sender.seal(codec.encode(messages.HELLO, 1, messages.PROTOCOL_VERSION))
        request("HELLO", hello)
        request("PING", sender.seal(codec.encode(messages.PING, 2)))
        set_body = codec.encode(messages.SET, 300, 2, 1500, 400)
        set_packet = sender.seal(set_body)
        request("SET ch2 1500us 400ms", set_packet)
        tampered = bytearray(sender.seal(codec.encode(messages.SET, 301, 2, 2400, 400)))
        tampered[-15] ^= 0x01  # flip one bit of the body
        request("SET, tampered", bytes(tampered))
        request("SET, replayed", set_packet)
        request("SET, unknown kind 30", sender.seal(cbor2.dumps([30, 302])))
        request("HELLO (counters)", sender.seal(codec.encode(messages.HELLO, 3, 1)))
        print(
            "\nSET on the wire: %d B CBOR body, %d B serial frame, %d B signed datagram"
            % (len(set_body), len(stream.encode_frame(set_body)), len(set_packet))
        )


if __name__ == "__main__":
    sys.exit(run())
