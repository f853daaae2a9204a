"""tools/node_emulator.py against the real host: a Fleet gets ready, commands are ACKed, STATE
streams at the asked rate, and a repeated request is answered from the reply cache."""

import asyncio
import importlib.util
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servomesh.host import codec
from servomesh.host.fleet import Fleet
from servomesh.host.session import SessionOptions
from servomesh.protocol import datagram, messages

TOOLS = Path(__file__).resolve().parents[1] / "tools"
_spec = importlib.util.spec_from_file_location("node_emulator", TOOLS / "node_emulator.py")
assert _spec is not None
assert _spec.loader is not None
node_emulator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(node_emulator)

WAIT_S = 5.0  # a bound on a loaded machine, never a sleep
FAST = SessionOptions(request_timeout_s=0.5, backoff_max_s=0.3)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Any], list[int]]]:
    folder = tmp_path_factory.mktemp("emulated")
    specs = node_emulator.make_specs(2)
    process = node_emulator.EmulatorProcess(specs, folder)
    try:
        yield specs, process.ports
    finally:
        process.close()


class Client:
    """A bare host (sender id 9) on its own socket: requests with chosen seqs, replies by seq."""

    def __init__(self, key: bytes, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.sender = datagram.Sender(9, key, 1, counter=time.time_ns() // 10_000)
        self.receiver = datagram.Receiver({1: key})
        self.boot_id: int | None = None
        self.events: list[codec.Message] = []

    def request(self, kind: int, seq: int, *fields: Any, bound: bool = True) -> codec.Message:
        """Send (a fresh datagram, as a retry is) and wait for the reply to `seq`."""
        body = codec.encode(kind, seq, *fields)
        self.sock.send(self.sender.seal(body, bound_to=self.boot_id if bound else None))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            message = self.receive()
            if message is not None and message.kind < messages.STATE and message.seq == seq:
                if message.kind == messages.INFO:
                    self.boot_id = message.fields[0]["boot_id"]
                return message
        raise TimeoutError("no reply to seq %d" % seq)

    def receive(self) -> codec.Message | None:
        try:
            message = codec.decode(self.receiver.open(self.sock.recv(2048))[1])
        except TimeoutError:
            return None
        if message.kind >= messages.STATE:
            self.events.append(message)
        return message

    def counters(self, seq: int) -> dict[str, int]:
        return dict(self.request(messages.DISCOVER, seq).fields[0]["counters"])


def test_fleet_gets_ready_commands_and_streams(
    emulated: tuple[list[Any], list[int]], tmp_path: Path
) -> None:
    specs, ports = emulated
    config = tmp_path / "fleet.toml"
    config.write_text(node_emulator.fleet_toml(specs, ports, tmp_path, telemetry_ms=20))

    async def main() -> None:
        frames: dict[str, int] = {}
        fleet = Fleet.from_config(config, options=FAST, log_operations=False)
        fleet.subscribe(lambda name, values: frames.__setitem__(name, frames.get(name, 0) + 1))
        async with fleet:
            assert {row["state"] for row in fleet.nodes()} == {"ready"}
            assert {row["firmware"] for row in fleet.nodes()} == {node_emulator.FIRMWARE}
            await fleet.set("emu1_c2", 30.0)
            await fleet.move({"emu1_c0": -45.0, "emu2_c5": 10.0}, duration_ms=100)
            await fleet.stop()
            await fleet.clear()
            before = dict(frames)
            await asyncio.sleep(1.0)
            counts = [frames[name] - before.get(name, 0) for name in ("emu-1", "emu-2")]
            state = fleet.joint_state("emu1_c2")
        assert all(15 <= count <= 100 for count in counts), counts  # 50 Hz asked for 1 s
        assert state.position_deg == pytest.approx(30.0, abs=0.5)
        assert not state.moving
        assert not state.released

    asyncio.run(asyncio.wait_for(main(), 30))


def test_repeat_answered_from_cache_never_executed_twice(
    emulated: tuple[list[Any], list[int]],
) -> None:
    specs, ports = emulated
    client = Client(specs[1].key, ports[1])
    unbound = client.request(messages.SET, 40, 0, 1500, 0, bound=False)
    assert (unbound.kind, unbound.fields[0]) == (messages.ERROR, messages.E_UNBOUND)
    hello = client.request(messages.HELLO, 41, messages.PROTOCOL_VERSION)
    assert hello.fields[0]["node_id"] == specs[1].node_id
    before = client.counters(42)
    first = client.request(messages.SET, 43, 1, 1200, 0)
    assert (first.kind, first.fields) == (messages.ACK, (0,))
    assert client.request(messages.SET, 44, 1, 1800, 0).kind == messages.ACK
    repeat = client.request(messages.SET, 43, 1, 1200, 0)  # a retry of seq 43
    assert repeat == first
    after = client.counters(45)
    assert after["requests_repeated"] - before["requests_repeated"] == 1
    assert after["requests_executed"] - before["requests_executed"] == 3  # 2 SETs, 1 DISCOVER
    client.request(messages.TELEMETRY, 46, 20)
    client.events.clear()  # a stream left on by the Fleet test may have sent older ones
    deadline = time.monotonic() + WAIT_S
    while not client.events and time.monotonic() < deadline:
        client.receive()
    state = next(event for event in client.events if event.kind == messages.STATE)
    assert len(state.fields) == 14 + 5 * 6
    channel_1 = state.fields[14 + 5 : 14 + 10]
    assert channel_1[:4] == (1, 1800, 1800, 1800)  # the repeat moved nothing back
    client.request(messages.TELEMETRY, 47, 0)
