"""Motion engine: ramps, timed moves, coordinated starts and a segment queue, per channel.

This module takes commands, checks them, keeps the segment queue, the latched stop and the
failsafe, and writes the servos. Each channel's trajectory lives in profile.Profiles: phases
evaluated from the node clock, so late ticks do not drift and motions end exactly on target.

Units: positions in sub (1/16 µs), speeds in sub/s, accelerations in sub/s², durations in µs,
node clock values from firmware/clock.py. Servos get whole µs, written only on a change.

Rules the node and dispatcher rely on:
- Commands return 0 or a `messages` error code and change nothing when they refuse. Checks, in
  order: fields (E_BAD_FIELDS; a channel twice in one MOVE or SEGMENT too), channels
  (E_BAD_CHANNEL), pulse limits (E_OUT_OF_LIMITS, never clamped), the latched stop
  (E_STOPPED), the start (E_LATE more than one period past, E_BAD_FIELDS more than 60 s ahead),
  the queue (E_QUEUE_FULL), a segment's average speed (E_OUT_OF_LIMITS).
- A SET or MOVE on a channel replaces what it was doing and drops its targets from the queued
  segments; other channels' segments play on. A segment, at its start, replaces whatever its
  channels are doing then.
- SET with duration_ms > 0 and MOVE are eased in-out from rest at the current setpoint,
  stretched (all MOVE channels alike) to respect speed and acceleration; SET's speed_us_per_s,
  if lower than the channel's, also limits a timed SET. A ramp (SET with duration_ms 0, the home
  failsafe) starts from the current velocity, so a new target mid-ramp stays smooth.
- A released servo's position is unknown on real hardware: the first motion on a released
  channel attaches at its target (a jump) unless servos.position_us() reports a position inside
  the channel's limits (the simulation does), in which case it moves from there.
- No phase lasts longer than profile.MAX_PHASE_US (268 s): slower requests go that much faster.
  Speeds above 2**17 µs/s and accelerations above 2**22 µs/s² count as those values.
"""

from servomesh.firmware import profile
from servomesh.firmware.clock import add_us, diff_us
from servomesh.protocol import messages
from servomesh.protocol.compat import const

_SHIFT = const(4)  # profile.SUB_SHIFT: 16 sub per µs
_HALF_US = const(8)  # half a µs in sub, to round
_MAX_DURATION_MS = const(60000)
_MAX_AHEAD_US = const(60000000)
_TICKS_MASK = const(0x3FFFFFFF)
_SPEED_CAP = const(0x20000)  # µs/s
_ACCEL_CAP = const(0x400000)  # µs/s²
_PULSE_CAP = const(16383)  # µs; keeps positions in sub below 2**18
_HOME = const(1)
_RELEASE = const(2)
_FAILSAFES = ("hold", "home", "release")


class Motion:
    """The motion engine of one node; see the module docstring for the rules."""

    QUEUE_SEGMENTS = 16  # queued segments; each holds up to one target per channel

    def __init__(self, channels, servos, period_us):
        n = len(channels)
        self.count = n
        self.servos = servos
        self.period_us = period_us
        self._min_us = [c["min_us"] for c in channels]
        self._max_us = [c["max_us"] for c in channels]
        self._home_us = [c["home_us"] for c in channels]
        self._speed = [_limit(c["speed_us_per_s"], 0, _SPEED_CAP) << _SHIFT for c in channels]
        self._accel = [_limit(c["accel_us_per_s2"], 0, _ACCEL_CAP) << _SHIFT for c in channels]
        self._failsafe = [_FAILSAFES.index(c["failsafe"]) for c in channels]
        for i in range(n):
            if not 0 < self._min_us[i] <= self._home_us[i] <= self._max_us[i] <= _PULSE_CAP:
                raise ValueError(
                    "channel %d: needs 0 < min_us <= home_us <= max_us <= %d" % (i, _PULSE_CAP)
                )
        self.setpoint_us = [0] * n  # what the channel outputs now; 0: released
        self.target_us = [0] * n  # where its current motion ends
        self._released = [1] * n
        self._written = [0] * n
        self.profiles = profile.Profiles(n)  # profiles.pos[ch]: the position in sub
        self._queued = [0] * n  # targets waiting in the queue, per channel
        self._last_queued = [0] * n  # the latest queued target, µs
        self._mark = [0] * n  # duplicate check: the command stamp that last named the channel
        self._stamp = 0
        self._scratch = [0] * n
        q = self.QUEUE_SEGMENTS
        self._q_start = [0] * q
        self._q_dur_us = [0] * q
        self._q_easing = [0] * q
        self._q_count = [0] * q
        self._q_trace = [0] * q
        self._q_channel = [0] * (q * n)  # -1: dropped by a later SET or MOVE
        self._q_pulse = [0] * (q * n)
        self._q_head = 0
        self.queue_size = 0
        self._chain = False  # a segment was accepted that may not have ended yet
        self._chain_end = 0
        self._tail_start = 0
        self._now = 0  # the latest clock value seen
        self._ticked = 0  # the last tick's clock value
        self.stopped = False
        self.in_failsafe = False
        self.trace = 0
        self.planned_ms = 0
        self.accepted = 0
        self.refused = 0
        self.segments_played = 0
        # The longest pause between consecutive segments of one trace (one sequence played):
        # 0 while a host streams them back to back, as it should.
        self.segment_gap_max_us = 0
        self._played_trace = 0
        self._played_end = 0
        self.start_us = 0  # the node-clock start of the last MOVE accepted
        self.writes = 0
        self.ticks = 0

    # -- state for telemetry ----------------------------------------------------------------

    def moving(self, ch):
        return self.profiles.started(ch, self._now)

    def flags(self, ch):
        flags = messages.CHANNEL_MOVING if self.moving(ch) else 0
        if self._released[ch]:
            flags |= messages.CHANNEL_RELEASED
        if self._queued[ch]:
            flags |= messages.CHANNEL_QUEUED
        return flags

    # -- commands ----------------------------------------------------------------------------

    def set(self, channel, pulse_us, duration_ms, speed_us_per_s, trace, now):
        self._clock(now)
        if not 0 <= duration_ms <= _MAX_DURATION_MS or speed_us_per_s < 0:
            return self._refuse(messages.E_BAD_FIELDS)
        code = self._check(channel, pulse_us)
        if code or self.stopped:
            return self._refuse(code or messages.E_STOPPED)
        ch = channel
        self._drop_queued(ch)
        speed = self._speed[ch]
        if speed_us_per_s:
            mine = _limit(speed_us_per_s, 0, _SPEED_CAP) << _SHIFT
            if not speed or mine < speed:
                speed = mine
        target = pulse_us << _SHIFT
        p = self._here(ch, now)
        if p < 0:  # released, position unknown: attach at the target
            self.profiles.begin(ch, now, target, 0, 0, False)
            self.planned_ms = 0
        elif duration_ms:
            ms = profile.smooth_min_ms(abs(target - p), speed, self._accel[ch])
            ms = ms if ms > duration_ms else duration_ms
            self.profiles.begin(ch, now, p, ms * 1000, target - p, True)
            self.planned_ms = ms
        else:
            self.planned_ms = self._ramp(ch, now, p, target, speed)
        self.target_us[ch] = pulse_us
        return self._accept(trace)

    def move(self, values, first, pairs, duration_ms, start_us, trace, now):
        self._clock(now)
        code = self._check_fields(values, first, pairs, duration_ms, start_us)
        code = code or self._check_pairs(values, first, pairs)
        if code or self.stopped:
            return self._refuse(code or messages.E_STOPPED)
        start = start_us or now
        code = self._check_start(start, now)
        if code:
            return self._refuse(code)
        ms = duration_ms
        for j in range(pairs):  # one duration for all: the longest any channel needs
            ch = values[first + 2 * j]
            p = self._here(ch, now)
            self._scratch[j] = p
            if p >= 0:
                need = profile.smooth_min_ms(
                    abs((values[first + 2 * j + 1] << _SHIFT) - p), self._speed[ch], self._accel[ch]
                )
                ms = need if need > ms else ms
        for j in range(pairs):
            ch = values[first + 2 * j]
            pulse = values[first + 2 * j + 1]
            self._drop_queued(ch)
            p = self._scratch[j]
            p = p if p >= 0 else pulse << _SHIFT
            # Until the start the phase has not begun: the channel holds (or stays released).
            self.profiles.begin(ch, start, p, ms * 1000, (pulse << _SHIFT) - p, True)
            self.target_us[ch] = pulse
        self.planned_ms = ms
        self.start_us = start
        return self._accept(trace)

    def segment(self, values, first, pairs, start_us, duration_ms, easing, trace, now):
        self._clock(now)
        code = self._check_fields(values, first, pairs, duration_ms, start_us)
        if not code and easing != messages.EASE_LINEAR and easing != messages.EASE_IN_OUT:
            code = messages.E_BAD_FIELDS
        code = code or self._check_pairs(values, first, pairs)
        if code or self.stopped:
            return self._refuse(code or messages.E_STOPPED)
        if start_us:
            start = start_us
            code = self._check_start(start, now)
            if not code and self.queue_size and diff_us(start, self._tail_start) < 0:
                code = messages.E_BAD_FIELDS  # out of order: the queue plays in start order
        elif self.queue_size or (self._chain and diff_us(now, self._chain_end) <= self.period_us):
            start = self._chain_end  # right after the previous segment: no gap
            if diff_us(start, now) > _MAX_AHEAD_US:
                code = messages.E_QUEUE_FULL  # the queue already holds a minute of motion
        else:
            start = now
        if not code and self.queue_size >= self.QUEUE_SEGMENTS:
            code = messages.E_QUEUE_FULL
        if code:
            return self._refuse(code)
        # Segments play as given: only their average speed is checked, against where each
        # channel will be when the segment starts. Acceleration between segments is the host
        # planner's responsibility.
        ms = 0
        for j in range(pairs):
            ch = values[first + 2 * j]
            speed = self._speed[ch]
            if self._queued[ch]:
                ref = self._last_queued[ch] << _SHIFT
            elif self._released[ch]:
                ref = self._reported(ch)
            else:
                ref = self.target_us[ch] << _SHIFT
            if speed and ref >= 0:
                need = profile.muldiv(
                    abs((values[first + 2 * j + 1] << _SHIFT) - ref), 1000, speed, 1
                )
                ms = need if need > ms else ms
        if ms > (duration_ms or _MAX_DURATION_MS):  # too fast, or slower than a segment can be
            return self._refuse(messages.E_OUT_OF_LIMITS)
        ms = duration_ms or ms
        n = self.count
        slot = self._q_head + self.queue_size
        slot = slot - self.QUEUE_SEGMENTS if slot >= self.QUEUE_SEGMENTS else slot
        self._q_start[slot] = start
        self._q_dur_us[slot] = ms * 1000
        self._q_easing[slot] = easing
        self._q_count[slot] = pairs
        self._q_trace[slot] = trace
        for j in range(pairs):
            ch = values[first + 2 * j]
            self._q_channel[slot * n + j] = ch
            self._q_pulse[slot * n + j] = values[first + 2 * j + 1]
            self._last_queued[ch] = values[first + 2 * j + 1]
            self._queued[ch] += 1
        self.queue_size += 1
        self._tail_start = start
        self._chain_end = add_us(start, ms * 1000)
        self._chain = True
        self.planned_ms = ms
        return self._accept(trace)

    def stop(self, mode, trace=0):
        """Latched stop: every channel holds its setpoint (STOP_HOLD) or is released."""
        if mode != messages.STOP_HOLD and mode != messages.STOP_RELEASE:
            return self._refuse(messages.E_BAD_FIELDS)
        self._clear_queue()
        for ch in range(self.count):
            self._hold(ch)
        if mode == messages.STOP_RELEASE:
            self.servos.release_all()
            for ch in range(self.count):
                self._release(ch)
        self.stopped = True
        self.planned_ms = 0
        return self._accept(trace)

    def clear(self, trace=0):
        """Unlatch the stop. Starts nothing: channels stay where they are, or released."""
        self.stopped = False
        self.planned_ms = 0
        return self._accept(trace)

    def failsafe(self, now=-1):
        """The link was lost: each channel holds, ramps home or is released, as configured.

        Released channels stay released: nothing moves an idle servo because a link dropped.
        While stopped, "home" holds: the latched stop wins over motion. `now` defaults to the
        last tick's clock. A repeated call changes nothing.
        """
        if self.in_failsafe:
            return
        self.in_failsafe = True
        if now >= 0:
            self._clock(now)
        now = self._now
        self._clear_queue()
        for ch in range(self.count):
            action = self._failsafe[ch]
            if self._released[ch]:
                self._release(ch)  # and a motion that was about to attach it is dropped
            elif action == _RELEASE:
                self.servos.release(ch)
                self._release(ch)
            elif action == _HOME and not self.stopped:
                p = self._here(ch, now)
                self._ramp(ch, now, p, self._home_us[ch] << _SHIFT, self._speed[ch])
                self.target_us[ch] = self._home_us[ch]
            else:
                self._hold(ch)

    def link_restored(self):
        """Clears in_failsafe; moves nothing (a home ramp under way runs on to home)."""
        self.in_failsafe = False

    # -- the control tick ---------------------------------------------------------------------

    def tick(self, now):
        """Advance every channel to `now`, write the pulses that changed, then tick the servos."""
        self._clock(now)
        if self.queue_size:
            self._start_due(now)
        elif self._chain and diff_us(now, self._chain_end) > self.period_us:
            self._chain = False  # before the clock difference to it could wrap
        servos = self.servos
        profiles = self.profiles
        for ch in range(self.count):
            if self._released[ch]:
                if not profiles.started(ch, now):
                    continue
                self._released[ch] = 0  # the first motion on a released channel attaches it
            out = (profiles.advance(ch, now) + _HALF_US) >> _SHIFT
            self.setpoint_us[ch] = out
            if out != self._written[ch]:
                servos.write_us(ch, out)  # may raise (a failing I2C bus): retried next tick
                self._written[ch] = out
                self.writes += 1
        self._ticked = now
        servos.tick(now)
        self.ticks += 1

    def _start_due(self, now):
        n = self.count
        profiles = self.profiles
        while self.queue_size:
            h = self._q_head
            start = self._q_start[h]
            if diff_us(now, start) < 0:
                return
            for j in range(self._q_count[h]):
                ch = self._q_channel[h * n + j]
                if ch < 0:
                    continue
                self._queued[ch] -= 1
                pulse = self._q_pulse[h * n + j]
                if self._released[ch]:
                    p = self._reported(ch)
                    p = p if p >= 0 else pulse << _SHIFT
                elif diff_us(start, self._ticked) > 0:
                    p = profiles.advance(ch, start)  # exactly where the last motion is then
                else:
                    p = profiles.pos[ch]  # a start already past at the last tick
                eased = self._q_easing[h] == messages.EASE_IN_OUT
                profiles.begin(ch, start, p, self._q_dur_us[h], (pulse << _SHIFT) - p, eased)
                self.target_us[ch] = pulse
            trace = self._q_trace[h]
            if trace and trace == self._played_trace:
                gap = diff_us(start, self._played_end)
                if gap > self.segment_gap_max_us:
                    self.segment_gap_max_us = gap
            self._played_trace = trace
            self._played_end = add_us(start, self._q_dur_us[h])
            h += 1
            self._q_head = 0 if h == self.QUEUE_SEGMENTS else h
            self.queue_size -= 1
            self.segments_played += 1

    # -- helpers --------------------------------------------------------------------------------

    def _clock(self, now):
        # Times only move forward, by less than a phase lasts. A jump past that (the loop
        # stalled for minutes) makes elapsed times ambiguous: every channel holds where it is.
        gap = diff_us(now, self._now)
        if gap > profile.MAX_PHASE_US or gap < -profile.MAX_PHASE_US:
            self._clear_queue()
            for ch in range(self.count):
                self.profiles.halt(ch, self.profiles.pos[ch])
                self.target_us[ch] = self.setpoint_us[ch]
        self._now = now

    def _here(self, ch, now):
        # Position at `now`, in sub; -1: released, position unknown.
        if self._released[ch]:
            return self._reported(ch)
        return self.profiles.advance(ch, now)

    def _reported(self, ch):
        # A released servo's position as the hardware reports it, in sub; -1 if unknown.
        pulse = self.servos.position_us(ch) or 0
        if self._min_us[ch] <= pulse <= self._max_us[ch]:
            return pulse << _SHIFT
        return -1

    def _ramp(self, ch, now, p, target, speed):
        # A ramp from p, where _here(ch, now) found the channel; returns its duration in ms.
        v = 0 if self._released[ch] else self.profiles.velocity(ch, now)
        low = self._min_us[ch] << _SHIFT
        high = self._max_us[ch] << _SHIFT
        room = p - low if target >= p else high - p  # how far it may brake away from target
        return self.profiles.ramp(ch, now, p, target, v, speed, self._accel[ch], room)

    def _hold(self, ch):
        # Freeze at the current setpoint.
        self.profiles.halt(ch, self.setpoint_us[ch] << _SHIFT)
        self.target_us[ch] = self.setpoint_us[ch]

    def _release(self, ch):
        self.profiles.halt(ch, 0)
        self._released[ch] = 1
        self._written[ch] = 0
        self.setpoint_us[ch] = 0
        self.target_us[ch] = 0

    def _drop_queued(self, ch):
        if not self._queued[ch]:
            return
        n = self.count
        h = self._q_head
        for _ in range(self.queue_size):
            for j in range(self._q_count[h]):
                if self._q_channel[h * n + j] == ch:
                    self._q_channel[h * n + j] = -1
            h = 0 if h + 1 == self.QUEUE_SEGMENTS else h + 1
        self._queued[ch] = 0

    def _clear_queue(self):
        self.queue_size = 0
        self._q_head = 0
        self._chain = False
        self._played_trace = 0  # what was dropped is no pause to measure
        for ch in range(self.count):
            self._queued[ch] = 0

    def _check(self, ch, pulse_us):
        if ch < 0 or ch >= self.count:
            return messages.E_BAD_CHANNEL
        if pulse_us < self._min_us[ch] or pulse_us > self._max_us[ch]:
            return messages.E_OUT_OF_LIMITS
        return 0

    def _check_fields(self, values, first, pairs, duration_ms, start_us):
        if not 0 <= duration_ms <= _MAX_DURATION_MS or not 0 <= start_us <= _TICKS_MASK:
            return messages.E_BAD_FIELDS
        if pairs < 0 or first < 0 or pairs > (len(values) - first) >> 1:
            return messages.E_BAD_FIELDS
        return 0

    def _check_pairs(self, values, first, pairs):
        self._stamp += 1
        if self._stamp > 0x3FFFFFF:
            self._stamp = 1
            for ch in range(self.count):
                self._mark[ch] = 0
        for j in range(pairs):
            ch = values[first + 2 * j]
            code = self._check(ch, values[first + 2 * j + 1])
            if code:
                return code
            if self._mark[ch] == self._stamp:
                return messages.E_BAD_FIELDS  # a channel twice in one command
            self._mark[ch] = self._stamp
        return 0

    def _check_start(self, start, now):
        late_us = diff_us(now, start)
        if late_us > self.period_us:
            return messages.E_LATE
        if late_us < -_MAX_AHEAD_US:
            return messages.E_BAD_FIELDS
        return 0

    def _accept(self, trace):
        self.trace = trace
        self.accepted += 1
        return 0

    def _refuse(self, code):
        self.refused += 1
        return code


def _limit(value, low, high):
    return low if value < low else high if value > high else value
