"""Through a lossy, duplicating, reordering link, every command completes exactly once, and
heartbeats keep the node out of its failsafe."""

import asyncio
import time
from pathlib import Path

from nodeclient import UdpClient
from nodetest import info, wait_ready
from udp_proxy import LossyUdpProxy

from servomesh.host import fleet_config
from servomesh.host.fleet import Fleet
from servomesh.host.session import NodeState, SessionOptions
from servomesh.host.sim import Simulator
from servomesh.protocol import messages

COMMANDS = 1000
CONCURRENCY = 50
# 8 sends in 1 s: a command fails only if 8 round trips in a row are lost, about 2e-6.
PATIENT = SessionOptions(request_timeout_s=1.0, attempts=8)


def fleet_through(proxy: LossyUdpProxy, key: bytes, folder: Path) -> Path:
    key_file = folder / "sim-1.key"
    key_file.write_text(key.hex())
    text = fleet_config.sim_fleet_toml(
        ["udp://127.0.0.1:%d" % proxy.address[1]], 6, [key_file.name]
    )
    # No heartbeats during the run: the count below is of SETs alone.
    text = text.replace('link = "udp', 'link_timeout_ms = 60000\nlink = "udp', 1)
    config = folder / "fleet.toml"
    config.write_text(text)
    return config


def test_a_thousand_commands_through_a_lossy_link_each_run_once(tmp_path: Path) -> None:
    with Simulator(nodes=1, folder=tmp_path / "boards") as sim:
        sim.wait_all_running(10)
        board = sim.boards[0]
        assert board.key is not None
        upstream = ("127.0.0.1", board.udp_port)
        with LossyUdpProxy(upstream, seed=11, loss=0.1, duplicate=0.05, reorder=0.05) as proxy:
            config = fleet_through(proxy, board.key, tmp_path)

            async def main() -> tuple[int, int]:
                async with Fleet.from_config(config, options=PATIENT) as fleet:
                    session = fleet.sessions["sim-1"]
                    assert session.ready, session.why
                    direct = UdpClient(board.udp_port, board.key)  # another sender id
                    wait_ready(direct)
                    before = info(direct)["counters"]
                    for first in range(0, COMMANDS, CONCURRENCY):
                        await asyncio.gather(
                            *(
                                fleet.set("sim1_c%d" % (i % 6), (i % 90) - 45.0)
                                for i in range(first, first + CONCURRENCY)
                            )
                        )
                    after = info(direct)["counters"]
                    direct.close()
                    assert session.counters.retries > 0  # the link did lose things
                    executed = after["requests_executed"] - before["requests_executed"]
                    repeated = after["requests_repeated"] - before["requests_repeated"]
                    return executed, repeated

            executed, repeated = asyncio.run(asyncio.wait_for(main(), 120))
            counters = proxy.counters
            assert counters["to_upstream"].dropped > 0
            assert counters["to_upstream"].duplicated > 0
            # Every SET ran once (plus the direct client's last HELLO); repeats were answered
            # from the reply cache.
            assert executed == COMMANDS + 1
            assert repeated > 0


def test_heartbeats_hold_off_the_failsafe_through_loss_and_mark_a_dead_link(
    tmp_path: Path,
) -> None:
    """With 10% loss each way the node never starts its failsafe; with the link cut the session
    goes degraded, then offline; with the link back it is ready again, on the same boot."""
    with Simulator(nodes=1, folder=tmp_path / "boards") as sim:
        sim.wait_all_running(10)
        board = sim.boards[0]
        assert board.key is not None
        with LossyUdpProxy(("127.0.0.1", board.udp_port), seed=5, loss=0.1) as proxy:
            key_file = tmp_path / "sim-1.key"
            key_file.write_text(board.key.hex())
            text = fleet_config.sim_fleet_toml(
                ["udp://127.0.0.1:%d" % proxy.address[1]], 6, [key_file.name]
            )
            config = tmp_path / "fleet.toml"
            config.write_text(text)  # link_timeout_ms 1000: a heartbeat about every 0.3 s

            async def main() -> None:
                async with Fleet.from_config(config, options=PATIENT) as fleet:
                    session = fleet.sessions["sim-1"]
                    assert session.ready, session.why
                    codes: list[int] = []
                    fleet.subscribe_logs(lambda _node, message: codes.append(message.fields[1]))
                    counters = session.counters
                    pings, keepalives = counters.requests, counters.keepalives
                    await asyncio.sleep(3.0)
                    # About 9 heartbeats: the node streams STATE, so most are KEEPALIVEs; a
                    # PING every 6th, for the clock, and after a heartbeat heard nothing.
                    assert counters.keepalives - keepalives >= 5
                    assert counters.requests - pings >= 1
                    assert counters.requests + counters.keepalives - pings - keepalives >= 8
                    assert messages.LOG_LINK_LOST not in codes
                    assert session.ready
                    boot = session.boot_id

                    proxy.set(loss=1.0)
                    states = []
                    deadline = time.monotonic() + 5.0
                    while session.state != NodeState.OFFLINE and time.monotonic() < deadline:
                        if not states or states[-1] != session.state:
                            states.append(session.state)
                        await asyncio.sleep(0.02)
                    assert states[-1] == NodeState.DEGRADED  # before offline
                    assert session.state == NodeState.OFFLINE, session.why
                    assert "heartbeats unanswered" in session.why

                    proxy.set(loss=0.0)
                    await session.wait_ready(5.0)
                    assert session.boot_id == boot  # the node ran on; only the link was cut

            asyncio.run(asyncio.wait_for(main(), 60))
