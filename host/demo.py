"""`servomesh demo`, before the orchestrator exists: real node firmware on simulated boards.

Starts three simulated boards (the first also on a pty serial link), greets each over signed
UDP, moves a servo on every board with one synchronized start scheduled in the nodes' clock,
follows the motion through the nodes' telemetry, shows a forged and a replayed datagram being
refused, then stops. The orchestrator, HTTP API and dashboard take this command's place as
they land.
"""

import socket
import sys
import time
from typing import Any

from servomesh.host import codec
from servomesh.host.sim import Board, Simulator
from servomesh.protocol import catalogue, datagram, messages

_REPLY_TIMEOUT_S = 1.0
_READY_TIMEOUT_S = 10.0
_START_AHEAD_US = 300_000
_MOVE_MS = 600


class _Node:
    """The host side of one board: signed datagrams, seqs, requests bound to its boot."""

    def __init__(self, board: Board) -> None:
        if board.key is None:
            raise RuntimeError("the demo's boards are signed: %s has no key" % board.node_id)
        self.board = board
        self.sender = datagram.Sender(0, board.key, 1, counter=time.time_ns() // 10_000)
        self.receiver = datagram.Receiver({1: board.key})
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", board.udp_port))
        self.sock.settimeout(_REPLY_TIMEOUT_S)
        self.seq = 0
        self.boot_id: int | None = None
        self.states: list[list[Any]] = []

    def request(self, kind: int, *fields: Any) -> codec.Message:
        self.seq += 1
        bind = self.boot_id if kind not in messages.READ_ONLY_KINDS else None
        self.sock.send(self.sender.seal(codec.encode(kind, self.seq, *fields), bound_to=bind))
        return self.reply(self.seq)

    def reply(self, seq: int) -> codec.Message:
        while True:
            message = self._receive()
            if message.kind < messages.STATE and message.seq == seq:
                if message.kind == messages.INFO:
                    self.boot_id = message.fields[0]["boot_id"]
                return message

    def _receive(self) -> codec.Message:
        body = self.receiver.open(self.sock.recv(datagram.MAX_DATAGRAM))[1]
        message = codec.decode(body)
        if message.kind == messages.STATE:
            self.states.append([message.kind, message.seq, *message.fields])
        return message

    def hello(self) -> dict[str, Any]:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            try:
                return dict(self.request(messages.HELLO, messages.PROTOCOL_VERSION).fields[0])
            except (TimeoutError, ConnectionRefusedError):  # it binds a moment after it starts
                if time.monotonic() > deadline:
                    raise

    def follow(self, seconds: float) -> None:
        """Collect STATE telemetry for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._receive()
            except TimeoutError:
                return


def _setpoint(state: list[Any], channel: int) -> int:
    base = 2 + 6 + len(messages.STATE_COUNTERS) + 5 * channel
    return int(state[base + 1])


def run() -> int:
    print("servomesh demo: the node firmware on three simulated boards (MicroPython unix port).")
    print("(The orchestrator, HTTP API and dashboard take this command's place as they land.)\n")
    with Simulator(nodes=3, serial=1) as sim:
        sim.wait_all_running(_READY_TIMEOUT_S)
        nodes = [_Node(board) for board in sim.boards]
        for node in nodes:
            info = node.hello()
            links = node.board.udp_url + (
                "  " + node.board.serial_url if node.board.serial_url else ""
            )
            print(
                "%-6s %s, firmware %s, %d channels, boot id %d  %s"
                % (
                    info["node_id"],
                    info["board"],
                    info["firmware"],
                    info["channels"],
                    info["boot_id"],
                    links,
                )
            )
        print("\nMOVE channel 0 on every board to 2000 us in %d ms, one start for all:" % _MOVE_MS)
        for node in nodes:
            node.request(messages.TELEMETRY, 20)
            node.request(messages.SET, 0, 1000, 0)  # from a known place (a released servo jumps)
        time.sleep(0.05)  # a tick or two: the servos are there
        start = ((time.monotonic_ns() // 1000) + _START_AHEAD_US) & (messages.TICKS_PERIOD - 1)
        for node in nodes:
            reply = node.request(messages.MOVE, _MOVE_MS, start, 1, 0, 2000)
            print("  %s -> %s %s" % (node.board.node_id, reply.name, reply.named()))
        time.sleep((_START_AHEAD_US / 1e6) + _MOVE_MS / 1000 + 0.2)
        for node in nodes:
            node.follow(0.1)
            moved = [
                (int((s[2] - start) % messages.TICKS_PERIOD) // 1000, _setpoint(s, 0))
                for s in node.states
                if (s[2] - start) % messages.TICKS_PERIOD < 2_000_000
            ]
            samples = ", ".join(
                "%d ms: %d" % sample for sample in moved[:: max(1, len(moved) // 6)]
            )
            print("  %s channel 0 after the start: %s" % (node.board.node_id, samples))
        first = nodes[0]
        forged = bytearray(first.sender.seal(codec.encode(messages.SET, 999, 0, 1500, 0)))
        forged[-1] ^= 1
        first.sock.send(bytes(forged))
        replayed = first.sender.seal(codec.encode(messages.SET, 998, 0, 1500, 0), first.boot_id)
        first.sock.send(replayed)
        first.reply(998)
        first.sock.send(replayed)
        counters = first.request(messages.HELLO, messages.PROTOCOL_VERSION).fields[0]["counters"]
        print(
            "\nA forged and a replayed SET to %s: refused and counted: auth_failed %d, "
            "replayed %d" % (first.board.node_id, counters["auth_failed"], counters["replayed"])
        )
        reply = first.request(messages.STOP, messages.STOP_HOLD)
        refused = first.request(messages.SET, 0, 1500, 0)
        print(
            "STOP -> %s; then SET -> %s %s"
            % (reply.name, refused.name, catalogue.ERROR_NAMES[refused.fields[0]])
        )
        print(
            "CLEAR -> %s (nothing moves until the next command)"
            % first.request(messages.CLEAR).name
        )
        for node in nodes:
            node.sock.close()
    print("\nAll boards stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(run())
