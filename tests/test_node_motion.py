"""Motion and safety of the node firmware, judged from its own telemetry (STATE at 100 Hz)."""

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nodeclient import NoReplyError, UdpClient
from nodetest import (
    channel,
    channel_state,
    counters,
    info,
    node_now_us,
    states,
    ticks_diff,
    udp_client,
    wait_ready,
)

from servomesh.host.sim import Simulator
from servomesh.protocol import cbor
from servomesh.protocol import messages as E  # noqa: N812 (E.SET reads like the wire)

PERIOD_US = 10_000  # 100 Hz control loop
SPEED = 2000  # µs/s on channel 0
ACCEL = 20_000  # µs/s² on channel 0
TIMEOUT_MS = 300  # link-loss timeout of the safety board


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    limited = channel(0, speed_us_per_s=SPEED, accel_us_per_s2=ACCEL)
    configs: list[dict[str, Any] | None] = [
        {"channels": [limited, channel(1), channel(2)], "link_timeout_ms": 60_000},
        {
            "channels": [
                channel(0, failsafe="hold"),
                channel(1, failsafe="home"),
                channel(2, failsafe="release"),
            ],
            "link_timeout_ms": TIMEOUT_MS,
        },
    ]
    with Simulator(nodes=2, configs=configs) as simulator:
        simulator.wait_all_running(10)
        yield simulator


@pytest.fixture
def arm(sim: Simulator) -> Iterator[UdpClient]:
    client = udp_client(sim.boards[0])
    client.request(E.CLEAR)
    assert client.request(E.TELEMETRY, 10)[0] == E.ACK
    yield client
    client.request(E.TELEMETRY, 0)
    client.close()


def settle(client: UdpClient, ch: int, pulse_us: int) -> None:
    """Put channel `ch` at `pulse_us` and wait until it is there."""
    assert client.request(E.SET, ch, pulse_us, 50)[0] == E.ACK
    deadline = time.monotonic() + 5
    for state in states(client, 5):
        if channel_state(state, ch)["setpoint_us"] == pulse_us and time.monotonic() < deadline:
            return
    raise AssertionError("channel %d did not reach %d" % (ch, pulse_us))


def test_speed_and_acceleration_limits_hold_within_one_tick(arm: UdpClient) -> None:
    settle(arm, 0, 1000)
    arm.events.clear()
    assert arm.request(E.SET, 0, 2200, 0)[0] == E.ACK
    reports = list(states(arm, 1.4))
    samples = [(s[2], channel_state(s, 0)["setpoint_us"]) for s in reports]
    late_us = max(s[6] for s in reports)  # loop_late_max_us: how late the ticks ran
    assert samples[-1][1] == 2200, samples[-1]  # 1200 µs at 2000 µs/s: 0.6 s + ramps
    speeds = []
    for (t0, p0), (t1, p1) in itertools.pairwise(samples):
        dt_us = ticks_diff(t1, t0)
        assert dt_us > 0
        # Telemetry samples fall between ticks: allow one (possibly late) tick's worth of motion.
        assert abs(p1 - p0) <= SPEED * (dt_us + PERIOD_US + late_us) / 1e6 + 1
        speeds.append((p1 - p0) / dt_us * 1e6)
    assert max(speeds) > 0.8 * SPEED  # it did cruise near the limit
    # Acceleration: from rest, distance covered by time t is at most a*t²/2 (a tick late at
    # most); the same holds for the distance still to go before the stop.
    moving = [(t, p) for t, p in samples if p != 1000]
    t_start = ticks_diff(moving[0][0], samples[0][0]) - PERIOD_US
    t_end = next(t for t, p in samples if p == 2200)
    for t, p in samples:
        since_us = ticks_diff(t, samples[0][0]) - t_start + PERIOD_US + late_us
        until_us = ticks_diff(t_end, t) + PERIOD_US + late_us
        if since_us > 0:
            assert p - 1000 <= ACCEL * (since_us / 1e6) ** 2 / 2 + 1, (t, p)
        assert 2200 - p <= ACCEL * (until_us / 1e6) ** 2 / 2 + 1 or until_us > 0.2e6, (t, p)


def test_timed_move_arrives_on_time(arm: UdpClient) -> None:
    settle(arm, 1, 1000)
    arm.events.clear()
    start = (node_now_us() + 100_000) & (E.TICKS_PERIOD - 1)
    assert arm.request(E.MOVE, 400, start, 5, 1, 2000)[:3] == [E.ACK, arm.seq, 400]
    arrived = None
    for state in states(arm, 1.0):
        ch = channel_state(state, 1)
        elapsed = ticks_diff(state[2], start)
        if elapsed < 0:
            assert ch["setpoint_us"] == 1000  # holds until its start
        elif arrived is None and ch["setpoint_us"] == 2000:
            arrived = elapsed
        elif arrived is None:
            assert ch["setpoint_us"] < 2000, elapsed
    assert arrived is not None
    assert 400_000 - PERIOD_US <= arrived <= 400_000 + 2 * PERIOD_US  # one tick + telemetry


def test_segments_play_back_to_back(arm: UdpClient) -> None:
    settle(arm, 2, 1200)
    arm.events.clear()
    start = (node_now_us() + 80_000) & (E.TICKS_PERIOD - 1)
    assert arm.request(E.SEGMENT, start, 200, E.EASE_LINEAR, 6, 2, 1800)[0] == E.ACK
    assert arm.request(E.SEGMENT, 0, 200, E.EASE_LINEAR, 6, 2, 1200)[0] == E.ACK
    reports = list(states(arm, 0.8))
    trace = [(ticks_diff(s[2], start), channel_state(s, 2)["setpoint_us"]) for s in reports]
    during = [(t, p) for t, p in trace if 0 <= t <= 400_000]
    late_us = max(s[6] for s in reports)  # loop_late_max_us: how late the ticks ran
    # Linear up then down: at 1800 only around the joint, never resting there.
    at_peak = [t for t, p in during if p == 1800]
    assert len(at_peak) <= 2, at_peak
    for t, p in during:  # piecewise linear: within one (possibly late) tick of the ideal path
        ideal = 1200 + 600 * t / 200_000 if t <= 200_000 else 1800 - 600 * (t - 200_000) / 200_000
        assert abs(p - ideal) <= 600 * (PERIOD_US + late_us) / 200_000 + 1, (t, p, ideal)
    assert trace[-1][1] == 1200


def test_the_node_measures_pauses_between_segments_of_one_trace(arm: UdpClient) -> None:
    settle(arm, 2, 1200)
    before_info = info(arm)
    before, before_played = before_info["segment_gap_max_us"], before_info["segments_played"]
    start = (node_now_us() + 80_000) & (E.TICKS_PERIOD - 1)
    later = (start + 50_000 + 30_000) & (E.TICKS_PERIOD - 1)  # 30 ms after the first ends
    other = (later + 50_000 + 70_000) & (E.TICKS_PERIOD - 1)  # another trace: not a pause
    assert arm.request(E.SEGMENT, start, 50, E.EASE_LINEAR, 41, 2, 1300)[0] == E.ACK
    assert arm.request(E.SEGMENT, later, 50, E.EASE_LINEAR, 41, 2, 1400)[0] == E.ACK
    assert arm.request(E.SEGMENT, other, 50, E.EASE_LINEAR, 42, 2, 1200)[0] == E.ACK
    time.sleep(0.45)  # all three have played by 330 ms
    after = info(arm)
    assert after["segment_gap_max_us"] == max(before, 30_000)
    assert after["segments_played"] == before_played + 3


def test_refused_targets_cause_no_motion(arm: UdpClient) -> None:
    settle(arm, 0, 1500)
    arm.events.clear()
    assert arm.request(E.SET, 0, 2600, 100)[:3] == [E.ERROR, arm.seq, E.E_OUT_OF_LIMITS]
    assert arm.request(E.MOVE, 100, 0, 0, 0, 1000, 1, 9999)[:3] == [
        E.ERROR,
        arm.seq,
        E.E_OUT_OF_LIMITS,
    ]
    assert {channel_state(s, 0)["setpoint_us"] for s in states(arm, 0.3)} == {1500}


def test_clear_moves_nothing(arm: UdpClient) -> None:
    settle(arm, 0, 1300)
    assert arm.request(E.SET, 0, 2000, 0)[0] == E.ACK  # moving at 2000 µs/s
    assert arm.request(E.STOP, E.STOP_HOLD)[0] == E.ACK
    arm.events.clear()
    held = {channel_state(s, 0)["setpoint_us"] for s in states(arm, 0.2)}
    assert len(held) == 1
    assert arm.request(E.SET, 0, 1500, 0)[:3] == [E.ERROR, arm.seq, E.E_STOPPED]
    assert arm.request(E.CLEAR)[0] == E.ACK
    arm.events.clear()
    assert {channel_state(s, 0)["setpoint_us"] for s in states(arm, 0.3)} == held
    assert arm.request(E.STOP, E.STOP_RELEASE)[0] == E.ACK
    state = arm.wait_event(E.STATE, 1, lambda s: s[3] & E.STATE_STOPPED)
    assert all(channel_state(state, ch)["flags"] & E.CHANNEL_RELEASED for ch in range(3))
    assert arm.request(E.CLEAR)[0] == E.ACK


def test_failsafe_acts_within_timeout_plus_one_tick(sim: Simulator) -> None:
    client = udp_client(sim.boards[1])
    client.request(E.CLEAR)
    for ch, pulse in ((0, 1200), (1, 2000), (2, 1800)):
        assert client.request(E.SET, ch, pulse, 0)[0] == E.ACK
    assert client.request(E.TELEMETRY, 10)[0] == E.ACK
    last_request = node_now_us()  # the host goes silent from here
    client.events.clear()
    failsafe_at = None
    for state in states(client, 1.0):
        if state[3] & E.STATE_FAILSAFE:
            failsafe_at = ticks_diff(state[2], last_request)
            final = state
            break
    assert failsafe_at is not None
    assert TIMEOUT_MS * 1000 <= failsafe_at <= TIMEOUT_MS * 1000 + PERIOD_US + 10_000
    for state in states(client, 0.3):
        final = state
    assert channel_state(final, 0)["setpoint_us"] == 1200  # hold
    assert channel_state(final, 1)["setpoint_us"] == 1500  # home (unlimited: at once)
    assert channel_state(final, 2)["flags"] & E.CHANNEL_RELEASED  # release
    assert client.request(E.PING)[0] == E.PONG  # the link is back: failsafe ends, nothing moves
    state = client.wait_event(E.STATE, 1, lambda s: not s[3] & E.STATE_FAILSAFE)
    assert channel_state(state, 1)["setpoint_us"] == 1500
    client.request(E.TELEMETRY, 0)
    client.close()


def test_keepalives_feed_the_failsafe_unanswered_and_only_when_bound(sim: Simulator) -> None:
    client = udp_client(sim.boards[1])
    client.request(E.CLEAR)
    assert client.request(E.TELEMETRY, 10)[0] == E.ACK

    def keepalives(seconds: float) -> list[list[Any]]:
        """KEEPALIVE every 0.1 s for `seconds`; the STATE received meanwhile."""
        received = []
        for _ in range(round(seconds / 0.1)):
            client.send_body(cbor.dumps([E.KEEPALIVE, client.next_seq()]), E.KEEPALIVE)
            deadline = time.monotonic() + 0.1
            while (left := deadline - time.monotonic()) > 0:
                for body in client.receive_bodies(left):
                    values = cbor.loads(body)
                    assert values[0] in (E.STATE, E.LOG), values  # a notice gets no reply
                    if values[0] == E.STATE:
                        received.append(values)
        return received

    bound = keepalives(1.0)  # three link timeouts with nothing but KEEPALIVE
    assert len(bound) > 50
    assert not any(state[3] & E.STATE_FAILSAFE for state in bound)
    executed = [counters(state)["requests_executed"] for state in (bound[0], bound[-1])]
    assert executed[0] == executed[1]  # a notice is not a request executed

    client.boot_id = None  # unbound from here: it could have been recorded before this boot
    unbound = keepalives(0.6)
    assert any(state[3] & E.STATE_FAILSAFE for state in unbound)
    refused = counters(unbound[-1])["requests_refused"] - counters(bound[-1])["requests_refused"]
    assert refused >= 5
    info(client)  # binds again
    assert client.request(E.PING)[0] == E.PONG  # ends the failsafe
    client.request(E.TELEMETRY, 0)
    client.close()


def test_reboot_reports_new_boot_id_and_cause(sim: Simulator) -> None:
    client = udp_client(sim.boards[1])
    before = info(client)
    assert client.request(E.REBOOT, 0)[0] == E.ACK
    sim.boards[1].wait_until(lambda b: b.restarts >= 1, 10)
    after = wait_ready(client)[2]
    assert after["boot_id"] != before["boot_id"]
    assert after["boot_count"] == before["boot_count"] + 1
    assert after["reset_cause"] == "soft"
    with pytest.raises(NoReplyError):  # the old boot's replies are not replayed by the new one
        client.reply_to(999, timeout_s=0.1)
    client.close()
