"""The orchestrator core against real simulated nodes: sessions, moves, stop, log, reboots."""

import asyncio
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodeclient import UdpClient
from nodetest import wait_ready
from udp_proxy import LossyUdpProxy

from servomesh.host.fleet import Fleet, LimitError, StoppedError, UnknownNameError
from servomesh.host.oplog import Operation
from servomesh.host.session import (
    NodeIncompatibleError,
    NodeOfflineError,
    NodeSession,
    NodeState,
    NodeTimeoutError,
    SessionOptions,
)
from servomesh.host.sim import Board, Simulator, write_fleet_config
from servomesh.host.transport import SerialTransport, UdpHub, UdpTransport
from servomesh.protocol import messages

FAST = SessionOptions(request_timeout_s=0.5, backoff_max_s=0.3)


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Simulator, Path]]:
    folder = tmp_path_factory.mktemp("fleet")
    with Simulator(nodes=3, serial=1, folder=folder / "boards") as sim:
        sim.wait_all_running(10)
        yield sim, write_fleet_config(sim, folder / "fleet.toml")


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def until(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("not in %.1f s" % timeout_s)
        await asyncio.sleep(0.02)


async def keep_setting(fleet: Fleet, joint: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await fleet.set(joint, 5.0)
        await asyncio.sleep(0.05)


def test_config_out_keys_are_private(boards: tuple[Simulator, Path]) -> None:
    _, config = boards
    keys = sorted(config.with_name("fleet.keys").iterdir())
    assert len(keys) == 3
    assert all(os.stat(key).st_mode & 0o777 == 0o600 for key in keys)


def test_every_node_gets_ready_and_moves(boards: tuple[Simulator, Path]) -> None:
    _, config = boards

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST) as fleet:
            rows = {row["name"]: row for row in fleet.nodes()}
            assert {row["state"] for row in rows.values()} == {"ready"}, rows
            assert rows["sim-1"]["link"].startswith("serial://")
            assert rows["sim-2"]["link"].startswith("udp://")
            assert all(row["clock_offset_us"] is not None for row in rows.values())
            targets = {"sim1_c0": 30.0, "sim2_c1": -45.0, "sim3_c5": 10.0}
            trace = await fleet.move(targets, duration_ms=300)

            def arrived() -> bool:
                states = [fleet.joint_state(name) for name in targets]
                return all(
                    s.position_deg is not None and abs(s.position_deg - targets[s.name]) < 1
                    for s in states
                )

            await until(arrived, 5)
            assert fleet.oplog is not None
            fleet.oplog.flush()
            entry = fleet.oplog.query(limit=1)[0]
            assert (entry.action, entry.result, entry.trace_id) == ("move", "ok", trace)
            assert entry.joints == targets

    run(main())


def test_bad_targets_are_refused_without_motion(boards: tuple[Simulator, Path]) -> None:
    _, config = boards

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST) as fleet:
            with pytest.raises(LimitError, match="sim1_c0"):
                await fleet.move({"sim1_c0": 120.0, "sim2_c0": 10.0}, duration_ms=100)
            with pytest.raises(UnknownNameError, match="nope"):
                await fleet.set("nope", 0)
            assert fleet.oplog is not None
            fleet.oplog.flush()
            results = [entry.result for entry in fleet.oplog.query(limit=2)]
            assert results == ["unknown", "out_of_limits"]

    run(main())


def test_an_operation_log_that_refuses_records_fails_no_command(
    boards: tuple[Simulator, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A closed log here; a full one or a failing disk refuse records the same way. The
    commands keep their own results, the listeners still hear of them, and the refusal is
    said once as a warning, then at debug level."""
    _, config = boards

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST) as fleet:
            heard: list[Operation] = []
            fleet.subscribe_operations(heard.append)
            assert fleet.oplog is not None
            fleet.oplog.close()
            caplog.set_level(logging.DEBUG, logger="servomesh.host.fleet")
            traces = [await fleet.set("sim1_c0", deg) for deg in (5.0, -5.0)]
            with pytest.raises(UnknownNameError, match="nope"):
                await fleet.set("nope", 0)
            said = [r for r in caplog.records if "not logged" in r.getMessage()]
            assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
            assert "closed" in said[0].getMessage()
            assert [op.result for op in heard] == ["ok", "ok", "unknown"]
            assert [op.trace_id for op in heard[:2]] == traces

    run(main())


def test_stop_latches_until_clear_and_clear_moves_nothing(boards: tuple[Simulator, Path]) -> None:
    _, config = boards

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST) as fleet:
            await fleet.set("sim2_c2", 0.0, duration_ms=100)
            await until(lambda: fleet.joint_state("sim2_c2").position_deg is not None, 3)
            await fleet.stop()
            with pytest.raises(StoppedError):
                await fleet.move({"sim2_c2": 20.0})
            fleet.stopped = False  # the node's own latch, not the host's, must refuse it now
            with pytest.raises(Exception, match="stopped"):
                await fleet.set("sim2_c2", 20.0)
            fleet.stopped = True
            await fleet.clear()
            await asyncio.sleep(0.3)
            state = fleet.joint_state("sim2_c2")
            assert not state.moving
            assert state.position_deg is not None
            assert abs(state.position_deg) < 1

    run(main())


def test_a_killed_node_is_offline_then_ready_with_a_new_boot(
    boards: tuple[Simulator, Path],
) -> None:
    sim, config = boards

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST) as fleet:
            session = fleet.sessions["sim-3"]
            boot = session.boot_id
            sim.boards[2].kill()  # SIGKILL: off until started again
            failed_at = time.monotonic()
            with pytest.raises((NodeOfflineError, TimeoutError), match="sim-3"):
                await keep_setting(fleet, "sim3_c0", 5)
            assert time.monotonic() - failed_at < 2  # within the request timeouts, not a hang
            await until(lambda: session.state == NodeState.OFFLINE, 3)
            with pytest.raises(NodeOfflineError, match="sim-3 is offline"):
                await fleet.set("sim3_c0", 5.0)  # at once, while offline
            sim.boards[2].start()
            await until(lambda: session.state == NodeState.READY and session.boot_id != boot, 2)
            assert session.counters.reboots == 1
            await fleet.set("sim3_c0", 5.0)

    run(main())


def test_heartbeats_ping_a_silent_node_and_keep_a_streaming_one_alive(
    boards: tuple[Simulator, Path],
) -> None:
    """Telemetry off, every heartbeat is a PING; with STATE streaming, KEEPALIVE notices, and a
    PING every `clock_every` heartbeats for the clock."""
    sim, _ = boards
    board = next(b for b in sim.boards if b.udp_port and b.serial_url is None)
    options = SessionOptions(request_timeout_s=0.5, link_timeout_ms=300, telemetry_ms=0)

    async def main() -> None:
        hub = UdpHub(("127.0.0.1", 0))
        link = UdpTransport(hub, "127.0.0.1", board.udp_port, board.key)
        session = NodeSession("heartbeats", link, options=options)
        await session.start()
        try:
            await session.wait_ready(5)
            await session.request(messages.TELEMETRY, 0)  # the node's configured stream, off
            counters = session.counters
            # The reply was heard, so the next heartbeat may still be a KEEPALIVE; from the
            # first PING on, silence.
            requests = counters.requests
            await until(lambda: counters.requests > requests, 2)
            requests, keepalives = counters.requests, counters.keepalives
            await asyncio.sleep(1.0)  # a heartbeat every 0.09-0.1 s
            assert counters.keepalives == keepalives
            assert counters.requests - requests >= 6
            await session.request(messages.TELEMETRY, 20)
            await asyncio.sleep(0.2)
            requests, keepalives = counters.requests, counters.keepalives
            await asyncio.sleep(1.2)
            assert counters.keepalives - keepalives >= 6
            assert 1 <= counters.requests - requests <= 4
            assert session.state == NodeState.READY
            await session.request(messages.TELEMETRY, 0)
        finally:
            await session.close()
            hub.close()

    run(main())


def node_counters(board: Board) -> dict[str, int]:
    """The node's counters, read over a correctly keyed link (the HELLO counts itself)."""
    client = UdpClient(board.udp_port, board.key)
    try:
        return dict(wait_ready(client)[2]["counters"])
    finally:
        client.close()


def test_a_wrong_key_is_a_clear_error_counted_on_both_sides_and_moves_nothing(
    boards: tuple[Simulator, Path],
) -> None:
    sim, config = boards
    wrong = config.with_name("wrong.key")
    wrong.write_text(bytes(range(32)).hex())
    wrong.chmod(0o600)
    forged = config.with_name("forged.toml")
    forged.write_text(config.read_text().replace("fleet.keys/sim-2.key", "wrong.key"))
    before = node_counters(sim.boards[1])

    async def main() -> None:
        async with Fleet.from_config(forged, options=FAST, log_operations=False) as fleet:
            session = fleet.sessions["sim-2"]
            assert not session.ready
            assert "another key" in session.why
            row = next(row for row in fleet.nodes() if row["name"] == "sim-2")
            assert "another key" in row["why"]
            assert session.counters.timeouts >= 1
            with pytest.raises(NodeOfflineError, match="sim-2"):
                await fleet.set("sim2_c0", 30.0)
            await fleet.set("sim3_c0", 1.0)  # the right keys still work

    run(main())
    after = node_counters(sim.boards[1])
    assert after["auth_failed"] > before["auth_failed"]
    # Nothing ran for the forger: only the HELLO of the second reading itself.
    assert after["requests_executed"] == before["requests_executed"] + 1


def test_the_hosts_own_datagrams_sent_back_never_pass_for_replies(
    boards: tuple[Simulator, Path],
) -> None:
    """The tag cannot tell the host's datagram from the node's (one key, both ways). BOUND
    requests are refused by the host's receiver; the kind refuses the rest. A reflected PING
    taken for its PONG would keep a node the host cannot reach `ready`."""
    sim, config = boards
    board = sim.boards[1]

    async def main(proxy: LossyUdpProxy) -> None:
        link = "udp://127.0.0.1:%d" % board.udp_port
        through = config.with_name("reflected.toml")
        through.write_text(
            config.read_text().replace(link, "udp://127.0.0.1:%d" % proxy.address[1])
        )
        async with Fleet.from_config(through, options=FAST, log_operations=False) as fleet:
            session = fleet.sessions["sim-2"]
            await fleet.set("sim2_c1", 10.0)  # relayed: the real ACK
            proxy.set(reflect=True)
            before = await asyncio.to_thread(node_counters, board)
            with pytest.raises(NodeTimeoutError, match="no reply to SET"):
                await fleet.set("sim2_c1", 25.0)
            await until(lambda: session.state == NodeState.OFFLINE, 10)
            assert "heartbeats unanswered" in session.why
            row = next(row for row in fleet.nodes() if row["name"] == "sim-2")
            assert row["rejected"]["reflected"] >= FAST.offline_after_misses  # the PINGs
            assert row["rejected"]["malformed"] >= FAST.attempts  # the SETs: BOUND
            assert proxy.counters["to_upstream"].reflected >= FAST.attempts
        after = node_counters(board)
        assert after["requests_executed"] == before["requests_executed"] + 1  # the HELLO above

    with LossyUdpProxy(("127.0.0.1", board.udp_port), seed=1) as proxy:
        run(main(proxy))


def test_a_serial_port_that_echoes_is_named_and_never_ready() -> None:
    """TX wired to RX: every frame comes back as sent, and must not pass for the node's."""
    controller, device = os.openpty()
    tty.setraw(device)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            if select.select([controller], [], [], 0.05)[0]:
                os.write(controller, os.read(controller, 4096))

    async def main() -> None:
        session = NodeSession("loop", SerialTransport(os.ttyname(device)), options=FAST)
        await session.start()
        try:
            await until(lambda: session.counters.timeouts >= 2, 10)
            assert session.state == NodeState.CONNECTING
            assert "only the HELLO itself sent back" in session.why
            assert session.counters.reflected >= 2
            assert session.boot_id is None
        finally:
            await session.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        run(main())
    finally:
        stop.set()
        thread.join(5)
        os.close(controller)
        os.close(device)


def test_a_protocol_mismatch_is_a_clear_error_counted_and_moves_nothing(
    boards: tuple[Simulator, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config = boards

    async def position(joint: str) -> float | None:
        async with Fleet.from_config(config, options=FAST, log_operations=False) as fleet:
            await until(lambda: fleet.joint_state(joint).updated_s is not None, 3)
            return fleet.joint_state(joint).position_deg

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST, log_operations=False) as fleet:
            await fleet.set("sim2_c3", -20.0, duration_ms=50)
        await asyncio.sleep(0.2)
        assert abs((await position("sim2_c3") or 99) + 20) < 1
        with monkeypatch.context() as patch:
            patch.setattr(messages, "PROTOCOL_VERSION", messages.PROTOCOL_VERSION + 1)
            async with Fleet.from_config(config, options=FAST, log_operations=False) as fleet:
                session = fleet.sessions["sim-2"]
                assert session.state == NodeState.INCOMPATIBLE
                assert "node speaks protocol 1, this host 2" in session.why
                assert session.counters.version_mismatches >= 1
                with pytest.raises(NodeIncompatibleError, match=r"sim-2 is incompatible.*firmware"):
                    await fleet.move({"sim2_c3": 40.0}, duration_ms=50)
        await asyncio.sleep(0.2)
        assert abs((await position("sim2_c3") or 99) + 20) < 1

    run(main())


def test_an_unplugged_serial_link_is_seen_within_a_second_and_reconnects(
    boards: tuple[Simulator, Path],
) -> None:
    sim, config = boards

    async def main() -> None:
        async with Fleet.from_config(config, options=FAST, log_operations=False) as fleet:
            session = fleet.sessions["sim-1"]
            assert session.transport.name.startswith("serial://")
            boot = session.boot_id
            sim.boards[0].unplug()
            unplugged_at = time.monotonic()
            await until(lambda: session.state == NodeState.OFFLINE, 1.0)
            print("unplug seen in %.0f ms" % ((time.monotonic() - unplugged_at) * 1000))
            with pytest.raises(NodeOfflineError, match="sim-1 is offline"):
                await fleet.set("sim1_c0", 5.0)
            await asyncio.sleep(0.5)  # unplugged for a while: reopening fails meanwhile
            assert session.state == NodeState.OFFLINE
            sim.boards[0].replug()
            await until(lambda: session.state == NodeState.READY, 3)
            assert session.boot_id == boot  # the board ran on: the same boot
            await fleet.set("sim1_c0", 5.0)

    run(main())
