"""Timing across nodes, measured by the nodes themselves: synchronized starts and gapless
sequences, on four simulated boards (two on a pty serial link, two on UDP).

The unix-port nodes read CLOCK_MONOTONIC, the clock every process here shares (PLATFORM.md), so
the start ticks they report can be compared directly: their spread is the true skew.
"""

import asyncio
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servomesh.host import codec
from servomesh.host.fleet import Fleet
from servomesh.host.session import SessionOptions
from servomesh.host.sim import Simulator, write_fleet_config
from servomesh.protocol import messages

FAST = SessionOptions(request_timeout_s=0.5, backoff_max_s=0.3)
MOVES = 50
SKEW_P99_LIMIT_US = 2000
KEYFRAMES = 200
KEYFRAME_MS = 20
CONTROL_TICK_US = 10_000  # the simulated boards' control loop runs at 100 Hz


def wrapped_diff(a: int, b: int) -> int:
    """a - b for node ticks, which wrap at messages.TICKS_PERIOD."""
    delta = (a - b) % messages.TICKS_PERIOD
    return delta - messages.TICKS_PERIOD if delta >= messages.TICKS_PERIOD // 2 else delta


def sequence_toml(joints: list[str]) -> str:
    """A sequence of KEYFRAMES keyframes, every joint on a slow sine, one keyframe per 20 ms."""
    lines = ["[sequences.long]", "keyframes = ["]
    for i in range(KEYFRAMES):
        angle = 20 * math.sin(i / 15)
        targets = ", ".join("%s = %.2f" % (joint, angle) for joint in joints)
        lines.append("  { at_ms = %d, joints = { %s } }," % (i * KEYFRAME_MS, targets))
    lines.append("]")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("sync")
    with Simulator(nodes=4, serial=2, folder=folder / "boards") as sim:
        sim.wait_all_running(10)
        config = write_fleet_config(sim, folder / "fleet.toml")
        with config.open("a") as out:
            out.write(sequence_toml(["sim1_c0", "sim2_c1", "sim3_c2", "sim4_c3"]))
        yield config


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 90))  # type: ignore[arg-type]


async def until(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("not in %.1f s" % timeout_s)
        await asyncio.sleep(0.005)


def test_coordinated_moves_start_together_on_every_node(fleet_file: Path) -> None:
    starts: dict[int, dict[str, int]] = {}  # trace -> node -> start tick, from LOG move

    def on_log(node: str, message: codec.Message) -> None:
        _level, code, *args = message.fields
        if code == messages.LOG_MOVE:
            starts.setdefault(args[0], {})[node] = args[1]

    async def main() -> list[int]:
        async with Fleet.from_config(fleet_file, options=FAST, log_operations=False) as fleet:
            assert {row["state"] for row in fleet.nodes()} == {"ready"}
            links = {row["link"].split(":")[0] for row in fleet.nodes()}
            assert links == {"serial", "udp"}
            fleet.subscribe_logs(on_log)
            skews = []
            for i in range(MOVES):
                angle = 15.0 if i % 2 else -15.0
                called_us = time.monotonic_ns() // 1000
                trace = await fleet.move(
                    {"sim1_c0": angle, "sim2_c1": -angle, "sim3_c2": angle, "sim4_c3": -angle},
                    duration_ms=40,
                )
                await until(lambda: len(starts.get(trace, {})) == 4, 2)  # noqa: B023
                ticks = list(starts[trace].values())
                # Scheduled ahead, in the node's clock, which is this process's clock here.
                for tick in ticks:
                    ahead_us = wrapped_diff(tick, called_us % messages.TICKS_PERIOD)
                    assert 0 < ahead_us < 500_000, ahead_us
                skews.append(max(wrapped_diff(t, ticks[0]) for t in ticks)
                             - min(wrapped_diff(t, ticks[0]) for t in ticks))  # fmt: skip
                await asyncio.sleep(0.01)
            return skews

    skews = sorted(run(main()))  # type: ignore[call-overload]
    p99 = skews[math.ceil(0.99 * len(skews)) - 1]
    print("start skew over %d moves: p50 %d us, p99 %d us, max %d us"
          % (len(skews), statistics.median(skews), p99, skews[-1]))  # fmt: skip
    assert len(skews) == MOVES
    assert p99 <= SKEW_P99_LIMIT_US


def test_a_sequence_of_200_keyframes_plays_without_a_gap(fleet_file: Path) -> None:
    async def main() -> None:
        async with Fleet.from_config(fleet_file, options=FAST, log_operations=False) as fleet:
            before = {}
            for name, session in fleet.sessions.items():
                before[name] = (await session.request(messages.DISCOVER)).fields[0]
            await fleet.play("long", lead_in_ms=200)
            for name, session in fleet.sessions.items():
                info = (await session.request(messages.DISCOVER)).fields[0]
                played = info["segments_played"] - before[name]["segments_played"]
                assert played == KEYFRAMES, (name, played)  # the lead-in and 199 more
                # Measured by the node between consecutive segments of this play.
                print("%s: %d segments, longest pause %d us"
                      % (name, played, info["segment_gap_max_us"]))  # fmt: skip
                assert info["segment_gap_max_us"] <= CONTROL_TICK_US, (name, info)
            final = 20 * math.sin((KEYFRAMES - 1) / 15)
            await asyncio.sleep(0.1)
            for joint in ("sim1_c0", "sim2_c1", "sim3_c2", "sim4_c3"):
                position = fleet.joint_state(joint).position_deg
                assert position is not None, joint
                assert abs(position - final) < 1, (joint, position)

    run(main())
