"""Through a lossy, duplicating, reordering link, every command completes exactly once."""

import asyncio
from pathlib import Path

from nodeclient import UdpClient
from nodetest import info, wait_ready
from udp_proxy import LossyUdpProxy

from servomesh.host import fleet_config
from servomesh.host.fleet import Fleet
from servomesh.host.session import SessionOptions
from servomesh.host.sim import Simulator

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
