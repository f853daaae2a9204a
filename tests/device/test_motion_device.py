"""The motion engine and node clock, driven with synthetic time inside the MicroPython unix port.

Times start just before the node clock wraps (2**30 µs), so most motions cross the wrap.
"""

from expect import raises
from heap_checks import locked

from servomesh.firmware import clock, profile
from servomesh.firmware.motion import Motion
from servomesh.protocol import messages

MASK = 0x3FFFFFFF  # messages.TICKS_PERIOD - 1
PERIOD = 10000  # µs: a 100 Hz control loop
BASE = MASK - 300000  # 0.3 s before the clock wraps
SUB = 16  # sub per µs
HOLD = messages.STOP_HOLD
RELEASE = messages.STOP_RELEASE
MOVING = messages.CHANNEL_MOVING
RELEASED = messages.CHANNEL_RELEASED
QUEUED = messages.CHANNEL_QUEUED


def at(ms):
    """The node clock `ms` milliseconds after BASE."""
    return clock.add_us(BASE, ms * 1000)


class FakeServos:
    """The hardware layer's interface; keeps counts only, so it allocates nothing."""

    def __init__(self, count, reported_us=0):
        self.pulse = [0] * count
        self.reported_us = [reported_us] * count  # position_us() of a released channel
        self.writes = 0
        self.released_calls = 0
        self.release_all_calls = 0
        self.ticks = 0
        self.last_tick = -1

    def write_us(self, ch, pulse_us):
        self.pulse[ch] = pulse_us
        self.writes += 1

    def release(self, ch):
        self.pulse[ch] = 0
        self.released_calls += 1

    def release_all(self):
        for ch in range(len(self.pulse)):
            self.pulse[ch] = 0
        self.release_all_calls += 1

    def released(self, ch):
        return self.pulse[ch] == 0

    def position_us(self, ch):
        return self.pulse[ch] or self.reported_us[ch]

    def tick(self, now_us):
        self.ticks += 1
        self.last_tick = now_us


def make(count=2, speed=0, accel=0, failsafe="hold", reported_us=0, min_us=500, max_us=2500):
    channels = []
    for ch in range(count):
        channels.append(
            {
                "min_us": min_us,
                "max_us": max_us,
                "home_us": 1500,
                "speed_us_per_s": speed[ch] if isinstance(speed, list) else speed,
                "accel_us_per_s2": accel,
                "failsafe": failsafe[ch] if isinstance(failsafe, list) else failsafe,
            }
        )
    servos = FakeServos(count, reported_us)
    return Motion(channels, servos, PERIOD), servos


def attach(m, pulses, ms=0):
    """Attach released channels at `pulses` (a jump: no position reported) at time `ms`."""
    for ch in range(len(pulses)):
        assert m.set(ch, pulses[ch], 0, 0, 0, at(ms)) == 0
    m.tick(at(ms))
    for ch in range(len(pulses)):
        assert m.setpoint_us[ch] == pulses[ch]


def run(m, ms_from, ms_to, ch=0, step_ms=10, sub=False):
    """Tick every `step_ms` from ms_from to ms_to inclusive; the channel's position per tick."""
    trace = []
    for ms in range(ms_from, ms_to + 1, step_ms):
        m.tick(at(ms))
        trace.append(m.profiles.pos[ch] if sub else m.setpoint_us[ch])
    return trace


def steps(trace):
    return [trace[i + 1] - trace[i] for i in range(len(trace) - 1)]


def first_at(trace, value):
    for i in range(len(trace)):
        if trace[i] == value:
            return i
    return -1


# --- clock ----------------------------------------------------------------------------------


def test_clock_diff_and_add_across_the_wrap():
    assert clock.diff_us(5, MASK - 23) == 29
    assert clock.diff_us(MASK - 23, 5) == -29
    assert clock.add_us(MASK - 9, 15) == 5
    assert clock.add_us(5, -15) == MASK - 9
    assert clock.add_us(MASK, 1) == 0 and clock.add_us(MASK, MASK) == MASK - 1
    assert clock.add_us(0, -(1 << 30)) == 0 and clock.add_us(7, 0) == 7
    assert clock.diff_us(1 << 29, 0) == -(1 << 29)
    assert clock.diff_us((1 << 29) - 1, 0) == (1 << 29) - 1
    assert clock.diff_us(0, 1 << 29) == -(1 << 29)
    assert 0 <= clock.now_us() <= MASK


def test_clock_allocates_nothing():
    for name, call in (
        ("now_us", clock.now_us),
        ("diff_us", lambda: clock.diff_us(5, 1073741800)),
        ("add_us", lambda: clock.add_us(1073741800, 1000000)),
    ):
        call()
        assert locked(call) is None, name


# --- profile arithmetic ---------------------------------------------------------------------


def test_profile_muldiv_isqrt_fraction_are_exact():
    for a, b, c in (
        (1000000, 1000000, 3),
        (4194304, 268435455, 1000000),
        (35200, 1500, 16),
        (7, 0, 9),
    ):
        exact = a * b // c
        assert profile.muldiv(a, b, c, 0) == (exact if exact < profile.SAT else profile.SAT)
        ceil = -(-a * b // c)
        assert profile.muldiv(a, b, c, 1) == (ceil if ceil < profile.SAT else profile.SAT)
    assert profile.muldiv(1 << 29, (1 << 29) - 1, 1, 0) == profile.SAT
    for x in (0, 1, 2, 3, 4, 99, 100, 101, (1 << 30) - 1):
        r = profile.isqrt(x)
        assert r * r <= x < (r + 1) * (r + 1), x
        assert profile.isqrt_up(x) == (r if r * r == x else r + 1)
    for e, d in ((0, 1), (1, 3), (65535, 65536), (999999, 1000000), (268435455, 268435456)):
        assert profile.fraction(e, d) == e * profile.ONE // d, (e, d)
    assert profile.scale(-100000, 8192) == -50000 and profile.scale(12345, 16384) == 12345


# --- ramps (SET with duration 0) --------------------------------------------------------------


def test_ramp_keeps_the_speed_limit_and_ends_exactly():
    m, _ = make(speed=1000)  # µs/s: 10 µs per 10 ms tick
    attach(m, [1000])
    assert m.set(0, 2000, 0, 0, 7, at(0)) == 0
    assert m.planned_ms == 1000 and m.trace == 7 and m.target_us[0] == 2000
    trace = run(m, 10, 1300)
    assert max(steps(trace)) <= 10 + 1 and min(steps(trace)) >= 0
    assert max(trace) == 2000 and trace[-1] == 2000
    arrived_ms = 10 + 10 * first_at(trace, 2000)
    assert 990 <= arrived_ms <= 1000, arrived_ms
    assert not m.moving(0) and m.flags(0) == 0


def test_ramp_speed_override_only_slows_down():
    m, _ = make(speed=1000)
    attach(m, [1000])
    assert m.set(0, 1500, 0, 250, 0, at(0)) == 0  # slower than the channel: 2 s
    assert m.planned_ms == 2000
    assert m.set(0, 1500, 0, 5000, 0, at(0)) == 0  # faster: the channel's 1000 µs/s
    assert m.planned_ms == 500
    m2, _ = make(speed=0)
    attach(m2, [1000])
    assert m2.set(0, 1500, 0, 250, 0, at(0)) == 0  # unlimited channel, this move at 250 µs/s
    assert m2.planned_ms == 2000


def test_ramp_keeps_the_acceleration_limit():
    m, _ = make(speed=2000, accel=8000)
    attach(m, [1000])
    assert m.set(0, 2000, 0, 0, 0, at(0)) == 0
    # 0.25 s to reach 2000 µs/s (250 µs), 0.25 s cruising (500 µs), 0.25 s braking (250 µs)
    assert 749 <= m.planned_ms <= 751, m.planned_ms
    trace = run(m, 0, 1000, sub=True)
    speeds = steps(trace)  # sub per tick
    assert max(speeds) <= 2000 * SUB // 100 + 2
    changes = steps(speeds)  # 8000 µs/s² is 12.8 sub per tick per tick
    assert max(changes) <= 13 + 2 and min(changes) >= -13 - 2, (max(changes), min(changes))
    assert trace[-1] == 2000 * SUB and max(trace) == 2000 * SUB
    arrived_ms = 10 * first_at(trace, 2000 * SUB)
    assert 750 <= arrived_ms <= 760, arrived_ms


def test_ramp_reverses_mid_way_under_the_limits_without_overshoot():
    m, _ = make(speed=2000, accel=8000)
    attach(m, [1000])
    assert m.set(0, 2000, 0, 0, 0, at(0)) == 0
    before = run(m, 10, 400, sub=True)  # cruising up at 2000 µs/s by now
    assert m.set(0, 1200, 0, 0, 0, at(400)) == 0
    after = run(m, 410, 2500, sub=True)
    trace = before + after
    speeds = steps(trace)
    changes = steps(speeds)
    assert max(changes) <= 13 + 2 and min(changes) >= -13 - 2, (max(changes), min(changes))
    assert max(speeds) <= 320 + 2 and min(speeds) >= -320 - 2
    # it brakes on up (2000²/(2*8000) = 250 µs further) then comes down to 1200, never below
    assert max(after) <= before[-1] + 250 * SUB + 2 * 320
    assert max(after) > before[-1]
    assert min(after) == 1200 * SUB and after[-1] == 1200 * SUB
    assert m.setpoint_us[0] == 1200 and not m.moving(0)


def test_ramp_to_a_nearer_target_ahead_brakes_harder_rather_than_pass_it():
    m, _ = make(speed=2000, accel=8000)
    attach(m, [1000])
    assert m.set(0, 2000, 0, 0, 0, at(0)) == 0
    before = run(m, 10, 400)
    stop_at = before[-1] + 100  # less than the 250 µs it needs to stop at 8000 µs/s²
    assert m.set(0, stop_at, 0, 0, 0, at(400)) == 0
    after = run(m, 410, 1000)
    assert max(after) == stop_at and after[-1] == stop_at
    assert min(steps(after)) >= 0  # straight there: no overshoot and back


def test_ramp_with_acceleration_but_no_speed_limit_is_triangular():
    m, _ = make(accel=4000)
    attach(m, [1000])
    assert m.set(0, 2000, 0, 0, 0, at(0)) == 0
    assert 999 <= m.planned_ms <= 1001  # 2 * sqrt(500 / 2000) s
    trace = run(m, 0, 1200, sub=True)
    assert trace[-1] == 2000 * SUB and max(trace) == 2000 * SUB
    assert max(steps(trace)) <= 2000 * SUB // 100 + 2  # peak 2000 µs/s at the middle


def test_unlimited_ramp_jumps():
    m, servos = make()
    attach(m, [1000])
    writes = servos.writes
    assert m.set(0, 2200, 0, 0, 0, at(0)) == 0 and m.planned_ms == 0
    m.tick(at(10))
    assert m.setpoint_us[0] == 2200 and servos.pulse[0] == 2200 and servos.writes == writes + 1


# --- timed moves (SET with duration) ----------------------------------------------------------


def test_timed_move_arrives_on_time_even_with_late_ticks():
    m, _ = make()
    attach(m, [1000])
    assert m.set(0, 2000, 500, 0, 0, at(0)) == 0 and m.planned_ms == 500
    m.tick(at(10))
    assert 1000 < m.setpoint_us[0] < 1010  # eased in
    m.tick(at(250))  # a late tick: the position comes from the clock, not from tick counts
    assert 1499 <= m.setpoint_us[0] <= 1501
    m.tick(at(490))
    assert 1990 < m.setpoint_us[0] < 2000
    m.tick(at(500))
    assert m.setpoint_us[0] == 2000 and not m.moving(0)


def test_timed_move_is_stretched_to_the_speed_limit():
    m, _ = make(speed=1000)
    attach(m, [1000])
    assert m.set(0, 2000, 500, 0, 0, at(0)) == 0
    assert m.planned_ms == 1500  # peak speed 1.5 * 1000 µs / 1.5 s = 1000 µs/s
    trace = run(m, 10, 1600, sub=True)
    assert max(steps(trace)) <= 10 * SUB + 2
    assert max(steps(trace)) >= 10 * SUB - 2  # and it does use the speed: not stretched further
    arrived_ms = 10 + 10 * first_at(trace, 2000 * SUB)
    assert arrived_ms == 1500, arrived_ms
    assert m.set(0, 1000, 3000, 0, 0, at(1600)) == 0 and m.planned_ms == 3000  # long enough
    assert m.set(0, 1000, 500, 500, 0, at(1600)) == 0 and m.planned_ms == 3000  # SET's speed


def test_timed_move_is_stretched_to_the_acceleration_limit():
    m, _ = make(accel=20000)
    attach(m, [1000])
    assert m.set(0, 2000, 100, 0, 0, at(0)) == 0
    assert m.planned_ms == 548  # sqrt(6 * 1000 µs / 20000 µs/s²) = 0.5477 s
    trace = run(m, 0, 700, sub=True)
    changes = steps(steps(trace))  # 20000 µs/s² is 32 sub per tick per tick
    assert max(changes) <= 32 + 6 and min(changes) >= -32 - 6, (max(changes), min(changes))
    assert max(changes) >= 32 - 6  # and it does use the acceleration: not stretched further
    assert trace[-1] == 2000 * SUB
    m2, _ = make(accel=1000)
    attach(m2, [1000])
    assert m2.set(0, 2000, 100, 0, 0, at(0)) == 0
    assert m2.planned_ms == 2450  # sqrt(6) s, rounded up to the ms


# --- MOVE --------------------------------------------------------------------------------------


def test_move_holds_until_its_start_then_finishes_on_time():
    m, servos = make(count=3)
    attach(m, [1000, 2000, 1500])
    writes = servos.writes
    values = [4, 1, 300, 0, 9, 0, 1500, 1, 1000]
    start = at(200)
    assert m.move(values, 5, 2, 300, start, 9, at(0)) == 0
    assert m.planned_ms == 300 and m.trace == 9 and m.target_us[:2] == [1500, 1000]
    run(m, 10, 190)
    assert m.setpoint_us == [1000, 2000, 1500] and servos.writes == writes
    assert not m.moving(0) and m.flags(0) == 0
    m.tick(at(350))
    assert 1249 <= m.setpoint_us[0] <= 1251 and 1499 <= m.setpoint_us[1] <= 1501
    assert m.moving(0) and m.flags(1) == MOVING
    m.tick(at(490))
    assert m.setpoint_us[0] < 1500 and m.setpoint_us[1] > 1000
    m.tick(at(500))
    assert m.setpoint_us == [1500, 1000, 1500]


def test_moves_with_the_same_start_finish_together_whatever_the_tick_phase():
    a, _ = make()
    b, _ = make()
    attach(a, [1000])
    attach(b, [1000])
    values = [0, 2000]
    assert a.move(values, 0, 1, 700, at(100), 0, at(0)) == 0
    assert b.move(values, 0, 1, 700, at(100), 0, at(3)) == 0
    for ms in range(0, 900, 7):  # b ticks every 7 ms, late by up to 7 ms
        b.tick(at(ms))
        if ms % 70 == 0:  # a ticks every 10 ms; compare where both tick
            a.tick(at(ms))
            assert a.setpoint_us[0] == b.setpoint_us[0], ms
    assert a.setpoint_us[0] == b.setpoint_us[0] == 2000


def test_move_stretches_all_channels_alike():
    m, _ = make(speed=[1000, 0])
    attach(m, [1000, 1000])
    assert m.move([0, 2000, 1, 1200], 0, 2, 200, 0, 0, at(0)) == 0
    assert m.planned_ms == 1500  # channel 0 needs 1.5 s; channel 1 waits for it
    for ms in (300, 750, 1200):
        m.tick(at(ms))
        done0 = (m.setpoint_us[0] - 1000) * 1000 // 1000
        done1 = (m.setpoint_us[1] - 1000) * 1000 // 200
        assert abs(done0 - done1) <= 6, ms  # the same eased fraction, per mille
    m.tick(at(1500))
    assert m.setpoint_us[:2] == [2000, 1200]


def test_move_start_checks():
    m, _ = make()
    attach(m, [1000, 1000])
    values = [0, 2000]
    now = at(1000)
    assert m.move(values, 0, 1, 100, clock.add_us(now, -PERIOD - 1), 0, now) == messages.E_LATE
    assert m.move(values, 0, 1, 100, clock.add_us(now, 60000001), 0, now) == messages.E_BAD_FIELDS
    assert m.move(values, 0, 1, 100, 1 << 30, 0, now) == messages.E_BAD_FIELDS
    assert m.move(values, 0, 1, 100, -5, 0, now) == messages.E_BAD_FIELDS
    assert m.move([0, 2000, 0, 1500], 0, 2, 100, 0, 0, now) == messages.E_BAD_FIELDS  # twice
    assert m.move(values, 0, 2, 100, 0, 0, now) == messages.E_BAD_FIELDS  # past the values
    assert m.refused == 6 and m.target_us[0] == 1000
    assert m.move(values, 0, 1, 100, clock.add_us(now, 60000000), 0, now) == 0
    assert m.move(values, 0, 1, 100, clock.add_us(now, -PERIOD), 0, now) == 0
    m.tick(clock.add_us(now, 90000))  # the start was 10 ms ago: 100 ms from then
    assert m.setpoint_us[0] == 2000


# --- SEGMENT --------------------------------------------------------------------------------------


def _expected(ms, segments, p0):
    # Where back-to-back segments put a channel `ms` after the first starts.
    start = 0
    for duration, target, ease in segments:
        if ms < start + duration:
            u = (ms - start) / duration
            f = u if ease == messages.EASE_LINEAR else u * u * (3 - 2 * u)
            return p0 + (target - p0) * f
        start += duration
        p0 = target
    return p0


def test_segments_play_back_to_back_without_a_gap():
    m, _ = make()
    attach(m, [1000])
    segments = (
        (200, 1200, messages.EASE_LINEAR),
        (100, 1100, messages.EASE_IN_OUT),
        (300, 1400, messages.EASE_LINEAR),
    )
    for duration, target, ease in segments:
        assert m.segment([0, target], 0, 1, 0, duration, ease, 5, at(0)) == 0
        assert m.planned_ms == duration
    assert m.queue_size == 3 and m.flags(0) == QUEUED
    for ms in range(3, 700, 7):  # ticks off the segment boundaries
        m.tick(at(ms))
        want = _expected(ms, segments, 1000)
        assert abs(m.setpoint_us[0] - want) <= 1, (ms, m.setpoint_us[0], want)
    m.tick(at(200))  # past a boundary already: nothing changes backward
    assert m.setpoint_us[0] == 1400 and m.queue_size == 0 and m.flags(0) == 0
    assert m.segments_played == 3


def test_segment_boundaries_are_exact():
    m, _ = make()
    attach(m, [1000])
    assert m.segment([0, 1200], 0, 1, 0, 200, messages.EASE_LINEAR, 0, at(0)) == 0
    assert m.segment([0, 1600], 0, 1, 0, 400, messages.EASE_LINEAR, 0, at(0)) == 0
    m.tick(at(100))
    assert m.setpoint_us[0] == 1100
    m.tick(at(200))
    assert m.setpoint_us[0] == 1200  # the first ends on its target, exactly at its end
    m.tick(at(210))
    assert m.setpoint_us[0] == 1210  # the second started exactly then: 10 ms at 1 µs/ms
    m.tick(at(600))
    assert m.setpoint_us[0] == 1600


def test_segment_appended_while_the_last_one_plays_chains_to_its_end():
    m, _ = make()
    attach(m, [1000])
    assert m.segment([0, 1100], 0, 1, 0, 100, messages.EASE_LINEAR, 0, at(0)) == 0
    m.tick(at(50))
    assert m.queue_size == 0 and m.moving(0)
    assert m.segment([0, 1300], 0, 1, 0, 100, messages.EASE_LINEAR, 0, at(60)) == 0
    m.tick(at(150))  # the second began at 100, not at 60 when it came
    assert m.setpoint_us[0] == 1200
    m.tick(at(500))
    assert m.segment([0, 1000], 0, 1, 0, 100, messages.EASE_LINEAR, 0, at(500)) == 0
    m.tick(at(550))  # nothing was playing: it starts when it comes
    assert m.setpoint_us[0] == 1150


def test_segment_queue_full_and_checks():
    m, _ = make(speed=1000)
    attach(m, [1000, 1000])
    for i in range(Motion.QUEUE_SEGMENTS):
        assert m.segment([0, 1000 + 10 * i, 1, 1000], 0, 2, 0, 100, 0, 0, at(0)) == 0, i
    assert m.segment([0, 1000], 0, 1, 0, 100, 0, 0, at(0)) == messages.E_QUEUE_FULL
    assert m.queue_size == Motion.QUEUE_SEGMENTS
    run(m, 10, 1700, step_ms=50)
    assert m.queue_size == 0 and m.setpoint_us[0] == 1150
    # average speed: 500 µs at 1000 µs/s needs 500 ms
    assert m.segment([0, 1650], 0, 1, 0, 499, 0, 0, at(1700)) == messages.E_OUT_OF_LIMITS
    assert m.segment([0, 1650], 0, 1, 0, 500, 0, 0, at(1700)) == 0
    assert m.segment([0, 1150], 0, 1, 0, 0, 0, 0, at(1700)) == 0 and m.planned_ms == 500
    assert m.segment([0, 1150], 0, 1, 0, 100, 2, 0, at(1700)) == messages.E_BAD_FIELDS
    late = clock.add_us(at(1700), -PERIOD - 1)
    assert m.segment([0, 1150], 0, 1, late, 100, 0, 0, at(1700)) == messages.E_LATE
    early = at(1690)  # before the queue's last start (1700 + 500)
    assert m.segment([0, 1150], 0, 1, early, 100, 0, 0, at(1700)) == messages.E_BAD_FIELDS
    assert m.queue_size == 2


def test_segment_chain_more_than_a_minute_ahead_is_queue_full():
    m, _ = make()
    attach(m, [1000])
    assert m.segment([0, 1100], 0, 1, 0, 60000, 0, 0, at(0)) == 0
    assert m.segment([0, 1200], 0, 1, 0, 60000, 0, 0, at(0)) == 0  # starts 60 s ahead
    assert m.segment([0, 1300], 0, 1, 0, 100, 0, 0, at(0)) == messages.E_QUEUE_FULL


def test_segment_with_a_start_waits_for_it():
    m, _ = make()
    attach(m, [1000])
    assert m.segment([0, 1100], 0, 1, at(300), 100, 0, 0, at(0)) == 0
    run(m, 10, 300)
    assert m.setpoint_us[0] == 1000 and m.flags(0) == MOVING  # started at 300 exactly
    m.tick(at(350))
    assert m.setpoint_us[0] == 1050


def test_set_drops_only_its_channels_queued_targets():
    m, _ = make()
    attach(m, [1000, 1000])
    assert m.segment([0, 1100, 1, 1100], 0, 2, 0, 100, 0, 0, at(0)) == 0
    assert m.segment([0, 1200, 1, 1200], 0, 2, 0, 100, 0, 0, at(0)) == 0
    assert m.flags(0) == QUEUED and m.flags(1) == QUEUED
    assert m.set(1, 1800, 0, 0, 0, at(0)) == 0  # a jump, no limits
    assert not m.flags(1) & QUEUED and m.flags(0) == QUEUED
    run(m, 10, 300)
    assert m.setpoint_us[:2] == [1200, 1800]


# --- refusals ---------------------------------------------------------------------------------


def test_refused_commands_change_nothing_and_write_nothing():
    m, servos = make()
    attach(m, [1500, 1500])
    assert m.set(0, 1800, 0, 0, 3, at(0)) == 0
    m.tick(at(10))
    writes = servos.writes
    state = (list(m.setpoint_us), list(m.target_us), m.queue_size, m.trace, m.planned_ms)
    cases = (
        (messages.E_BAD_CHANNEL, lambda: m.set(2, 1500, 0, 0, 1, at(10))),
        (messages.E_BAD_CHANNEL, lambda: m.set(-1, 1500, 0, 0, 1, at(10))),
        (messages.E_OUT_OF_LIMITS, lambda: m.set(0, 499, 0, 0, 1, at(10))),
        (messages.E_OUT_OF_LIMITS, lambda: m.set(0, 2501, 0, 0, 1, at(10))),
        (messages.E_BAD_FIELDS, lambda: m.set(0, 1500, 60001, 0, 1, at(10))),
        (messages.E_BAD_FIELDS, lambda: m.set(0, 1500, -1, 0, 1, at(10))),
        (messages.E_BAD_FIELDS, lambda: m.set(0, 1500, 0, -1, 1, at(10))),
        (messages.E_BAD_CHANNEL, lambda: m.move([0, 1000, 5, 1000], 0, 2, 0, 0, 1, at(10))),
        (messages.E_OUT_OF_LIMITS, lambda: m.move([0, 1000, 1, 2600], 0, 2, 0, 0, 1, at(10))),
        (messages.E_BAD_FIELDS, lambda: m.move([0, 1000], 0, 1, 60001, 0, 1, at(10))),
        (messages.E_OUT_OF_LIMITS, lambda: m.segment([1, 1000, 0, 9], 0, 2, 0, 9, 0, 1, at(10))),
        (messages.E_BAD_CHANNEL, lambda: m.segment([1, 1000, 2, 9], 0, 2, 0, 9, 0, 1, at(10))),
        (messages.E_BAD_FIELDS, lambda: m.stop(2)),
    )
    for code, call in cases:
        assert call() == code
        m.tick(at(10))
        assert (
            list(m.setpoint_us),
            list(m.target_us),
            m.queue_size,
            m.trace,
            m.planned_ms,
        ) == state
    assert servos.writes == writes and m.refused == len(cases)
    assert m.set(0, 500, 60000, 0, 1, at(10)) == 0 and m.set(1, 2500, 0, 0, 1, at(10)) == 0


# --- STOP, CLEAR, failsafe ------------------------------------------------------------------------


def test_stop_hold_freezes_and_clear_moves_nothing():
    m, servos = make(speed=1000)
    attach(m, [1000, 1000])
    assert m.set(0, 2000, 0, 0, 0, at(0)) == 0
    assert m.segment([1, 2000], 0, 1, 0, 2000, 0, 0, at(0)) == 0
    run(m, 10, 300)
    frozen = list(m.setpoint_us)
    assert m.stop(HOLD, 44) == 0 and m.stopped and m.trace == 44
    assert m.queue_size == 0 and m.target_us == frozen and not m.moving(0)
    writes = servos.writes
    run(m, 310, 600)
    assert m.setpoint_us == frozen and servos.writes == writes
    assert m.set(0, 1500, 0, 0, 0, at(600)) == messages.E_STOPPED
    assert m.move([0, 1500], 0, 1, 0, 0, 0, at(600)) == messages.E_STOPPED
    assert m.segment([0, 1500], 0, 1, 0, 500, 0, 0, at(600)) == messages.E_STOPPED
    assert m.clear() == 0 and not m.stopped
    run(m, 610, 900)
    assert m.setpoint_us == frozen and servos.writes == writes
    assert m.set(0, 1500, 0, 0, 0, at(900)) == 0


def test_stop_release_releases_and_the_next_command_attaches():
    m, servos = make()
    attach(m, [1000, 1200])
    assert m.stop(RELEASE) == 0 and servos.release_all_calls == 1
    assert m.flags(0) == RELEASED and m.setpoint_us == [0, 0]
    assert m.set(0, 1500, 0, 0, 0, at(10)) == messages.E_STOPPED
    assert m.clear() == 0
    writes = servos.writes
    run(m, 10, 100)
    assert servos.writes == writes and m.flags(1) == RELEASED  # stays released
    assert m.set(0, 1700, 500, 0, 0, at(100)) == 0 and m.planned_ms == 0  # position unknown
    m.tick(at(110))
    assert m.setpoint_us[0] == 1700 and servos.pulse[0] == 1700 and m.flags(0) == 0


def test_released_channel_with_a_reported_position_moves_from_there():
    m, servos = make(reported_us=1200)  # like the simulated servo
    writes = servos.writes
    run(m, 0, 50)
    assert servos.writes == writes and m.setpoint_us == [0, 0] and m.flags(0) == RELEASED
    assert m.set(0, 1400, 200, 0, 0, at(50)) == 0 and m.planned_ms == 200
    m.tick(at(60))
    assert 1200 <= m.setpoint_us[0] < 1210
    m.tick(at(250))
    assert m.setpoint_us[0] == 1400
    servos.reported_us[1] = 3000  # outside the limits: unknown, so it attaches at the target
    assert m.set(1, 1400, 200, 0, 0, at(250)) == 0 and m.planned_ms == 0


def test_failsafe_hold_home_release_and_link_restored():
    m, servos = make(count=4, speed=1000, failsafe=["hold", "home", "release", "home"])
    attach(m, [1000, 1000, 1000])  # channel 3 stays released
    for ch in range(3):
        assert m.set(ch, 2000, 0, 0, 0, at(0)) == 0
    run(m, 10, 200)
    held = m.setpoint_us[0]
    assert m.set(3, 1800, 0, 0, 0, at(200)) == 0  # would attach channel 3 at the next tick
    m.failsafe()
    assert m.in_failsafe and servos.released_calls == 1
    assert m.flags(2) == RELEASED and m.flags(3) == RELEASED and m.setpoint_us[2] == 0
    assert m.target_us[0] == held and m.target_us[1] == 1500
    trace = run(m, 210, 800, ch=1)
    assert max(steps(trace)) <= 11 and trace[-1] == 1500 and m.setpoint_us[0] == held
    assert m.flags(3) == RELEASED
    writes = servos.writes
    m.link_restored()
    assert not m.in_failsafe
    run(m, 810, 1000)
    assert servos.writes == writes


def test_failsafe_home_while_stopped_holds():
    m, servos = make(failsafe="home")
    attach(m, [1000, 2000])
    assert m.stop(HOLD) == 0
    m.failsafe()
    writes = servos.writes
    run(m, 10, 500)
    assert m.setpoint_us == [1000, 2000] and servos.writes == writes


def test_writes_only_changes_and_ticks_the_servos():
    m, servos = make()
    attach(m, [1000, 1000])
    writes = servos.writes
    ticks = servos.ticks
    run(m, 10, 100)
    assert servos.writes == writes and servos.ticks == ticks + 10 and servos.last_tick == at(100)


def test_a_failed_write_is_retried_next_tick():
    m, servos = make()
    attach(m, [1000, 1000])
    assert m.set(0, 1200, 0, 0, 0, at(0)) == 0
    servos.write_us = _failing_write
    raises(OSError, m.tick, at(10))
    del servos.write_us  # the bus recovers
    m.tick(at(20))
    assert servos.pulse[0] == 1200


def _failing_write(ch, pulse_us):
    raise OSError(5)


def test_a_stalled_loop_holds_instead_of_jumping():
    m, _ = make(speed=1)  # 1 µs/s: the 268 s longest phase, so it moves faster than asked
    attach(m, [1000])
    assert m.set(0, 2000, 0, 0, 0, at(0)) == 0
    assert m.planned_ms == profile.MAX_PHASE_MS + 1
    m.tick(at(100000))
    where = m.setpoint_us[0]
    assert 1300 < where < 1400  # 1000 µs in 268.4 s
    m.tick(at(100000 + 300000))  # 5 min without a tick: elapsed times are no longer certain
    assert m.setpoint_us[0] == where and m.target_us[0] == where and not m.moving(0)
    run(m, 400010, 400100)
    assert m.setpoint_us[0] == where


def test_ramp_from_a_timed_move_keeps_its_velocity():
    m, _ = make(speed=2000, accel=8000)
    attach(m, [1000])
    assert m.set(0, 2000, 1000, 0, 0, at(0)) == 0 and m.planned_ms == 1000
    before = run(m, 10, 300, sub=True)
    assert m.set(0, 2400, 0, 0, 0, at(300)) == 0
    after = run(m, 310, 1500, sub=True)
    assert abs((after[0] - before[-1]) - (before[-1] - before[-2])) <= 14  # no velocity step
    assert after[-1] == 2400 * SUB and max(after) == 2400 * SUB


def test_bad_channel_config_is_refused_at_construction():
    servos = FakeServos(1)
    good = {"min_us": 500, "max_us": 2500, "home_us": 1500, "speed_us_per_s": 0}
    good.update({"accel_us_per_s2": 0, "failsafe": "hold"})
    Motion([good], servos, PERIOD)
    for key, value in (("min_us", 2600), ("home_us", 400), ("max_us", 20000), ("failsafe", "x")):
        bad = dict(good)
        bad[key] = value
        raises(ValueError, Motion, [bad], servos, PERIOD)


# --- allocation ---------------------------------------------------------------------------------


def test_tick_and_commands_allocate_nothing():
    m, servos = make(count=4, speed=[800, 0, 0, 0], accel=5000, failsafe="home")
    attach(m, [1000, 1000, 1000, 1000])
    move = [0, 1800, 1, 1200, 2, 1300]
    segment = [3, 1400]
    refused = [0, 1800, 9, 1200]
    clock_now = [at(0)]

    def tick():
        clock_now[0] = clock.add_us(clock_now[0], PERIOD)
        m.tick(clock_now[0])

    assert m.set(0, 2000, 0, 0, 1, at(0)) == 0
    assert m.move(move[2:], 0, 2, 400, at(20), 2, at(0)) == 0
    for _ in range(6):
        assert m.segment(segment, 0, 1, 0, 30, messages.EASE_IN_OUT, 3, at(0)) == 0
    checks = (
        ("tick", tick),
        ("set ramp", lambda: m.set(0, 1500, 0, 0, 4, clock_now[0])),
        ("set timed", lambda: m.set(1, 1900, 300, 700, 5, clock_now[0])),
        ("move", lambda: m.move(move, 0, 3, 200, 0, 6, clock_now[0])),
        ("segment", lambda: m.segment(segment, 0, 1, 0, 50, 0, 7, clock_now[0])),
        ("refused", lambda: m.move(refused, 0, 2, 200, 0, 6, clock_now[0])),
        ("moving", lambda: m.moving(0)),
        ("flags", lambda: m.flags(3)),
        ("failsafe", m.failsafe),
        ("link_restored", m.link_restored),
        ("stop", lambda: m.stop(HOLD)),
        ("clear", m.clear),
    )
    for name, call in checks:
        for _ in range(3):
            tick()  # several channels mid-motion, segments starting
        assert locked(call) is None, name
        for _ in range(5):
            assert locked(tick) is None, "tick after " + name
    assert m.ticks > 60 and servos.writes > 20
