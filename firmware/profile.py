"""Motion profiles for firmware/motion.py: each channel's current motion, and its arithmetic.

No floats (a float is a heap object on ESP32), no allocation, and, for inputs within the bounds
each function states, no intermediate outside -2**30 .. 2**30 - 1 (a small int on 32-bit ports;
anything bigger is a heap-allocated long int).

Units: distances in sub (1/16 µs), speeds in sub/s, accelerations in sub/s², durations in µs
(`_ms`: milliseconds). A phase fraction u counts ONE per whole phase.

A phase is p(u) = p0 + b*u + c*u**2 + e*u**3 for u from 0 to 1 over its duration:
- constant acceleration from v0 to v1 over T: b = v0*T, c = (v1 - v0)*T/2, e = 0;
- ease in-out (smoothstep 3u² - 2u³) over d: b = 0, c = 3d, e = -2d; peak speed 1.5 d/T at
  u = 1/2, peak acceleration 6 d/T² at both ends;
- linear over d: b = d.
"""

from servomesh.firmware.clock import add_us, diff_us
from servomesh.protocol.compat import const

SUB_SHIFT = const(4)  # 16 sub per µs: speeds down to 1 µs/s still move every tick
PHASES = const(4)  # per channel at most: brake, accelerate, cruise, brake
ONE = const(0x4000)
SAT = const(0x20000000)  # what muldiv answers for a result it cannot hold
# No phase lasts longer: elapsed times stay far inside the node clock's 2**29 µs window, and a
# phase of up to 2**28 µs still divides into a 14-bit fraction in small steps.
MAX_PHASE_US = const(0x10000000)
MAX_PHASE_MS = const(268435)
VELOCITY_MAX = const(0x400000)  # sub/s; any velocity the engine plans with is clamped to this
_FRAC_BITS = const(14)
_FRAC_MASK = const(0x3FFF)
_HALF = const(0x2000)  # ONE / 2
_US_PER_S = const(1000000)
_TICKS_MASK = const(0x3FFFFFFF)
_TICKS_HALF = const(0x20000000)


def muldiv(a, b, c, up):
    """floor(a*b/c), or the ceiling when `up`; SAT when the result would reach SAT.

    0 <= a < 2**30, 0 <= b < 2**29, 0 < c <= 2**28. Binary long multiplication keeps the
    running remainder below 2*c; called at command time, rarely per tick.
    """
    q = a // c
    r = a - q * c
    if q:
        if b > SAT // q:
            return SAT
        q *= b
    acc = 0  # (r * the bits of b seen so far) mod c
    quo = 0  # ... and its quotient, below b
    bit = 1
    while bit <= b >> 1:
        bit <<= 1
    while bit:
        quo += quo
        acc += acc
        if acc >= c:
            acc -= c
            quo += 1
        if b & bit:
            acc += r
            if acc >= c:
                acc -= c
                quo += 1
        bit >>= 1
    if up and acc:
        quo += 1
    if quo >= SAT - q:
        return SAT
    return q + quo


def isqrt(x):
    """floor(sqrt(x)) for 0 <= x < 2**30, digit by digit."""
    root = 0
    bit = 0x10000000
    while bit > x:
        bit >>= 2
    while bit:
        if x >= root + bit:
            x -= root + bit
            root = (root >> 1) + bit
        else:
            root >>= 1
        bit >>= 2
    return root


def isqrt_up(x):
    """ceil(sqrt(x)) for 0 <= x < 2**30."""
    root = isqrt(x)
    return root + 1 if root * root < x else root


def fraction(elapsed, duration):
    """floor(elapsed * ONE / duration) for 0 <= elapsed < duration <= MAX_PHASE_US."""
    if duration < 0x10000:
        return (elapsed << _FRAC_BITS) // duration
    if duration < 0x800000:  # two 7-bit steps of long division
        r = elapsed << 7
        q = r // duration
        r = (r - q * duration) << 7
        return (q << 7) | (r // duration)
    u = 0
    r = elapsed
    for _ in range(7):  # 2 bits a step: r << 2 stays below 2**30
        r <<= 2
        q = r // duration
        r -= q * duration
        u = (u << 2) | q
    return u


def scale(x, f):
    """x * f / ONE, rounded, for |x| < 2**29 and 0 <= f <= ONE; split so no product passes
    2**30."""
    return (x >> _FRAC_BITS) * f + (((x & _FRAC_MASK) * f + _HALF) >> _FRAC_BITS)


def phase_position(p0, b, c, e, u):
    """A phase's position at fraction u (0 <= u < ONE), kept between its two ends: every phase
    is monotonic, so rounding never steps outside it (nor past a target)."""
    # scale() written out: this runs for every moving channel on every tick.
    p = p0
    if b:
        p += (b >> _FRAC_BITS) * u + (((b & _FRAC_MASK) * u + _HALF) >> _FRAC_BITS)
    if c or e:
        u2 = (u * u) >> _FRAC_BITS
        p += (c >> _FRAC_BITS) * u2 + (((c & _FRAC_MASK) * u2 + _HALF) >> _FRAC_BITS)
        if e:
            u3 = (u2 * u) >> _FRAC_BITS
            p += (e >> _FRAC_BITS) * u3 + (((e & _FRAC_MASK) * u3 + _HALF) >> _FRAC_BITS)
    p1 = p0 + b + c + e
    if p1 >= p0:
        return p1 if p > p1 else p0 if p < p0 else p
    return p1 if p < p1 else p0 if p > p0 else p


def phase_velocity(b, c, e, u, duration):
    """A phase's velocity at fraction u, in sub/s, within +-VELOCITY_MAX."""
    x = b + scale(2 * c, u) + scale(3 * e, (u * u) >> _FRAC_BITS)  # dp/du, sub per phase
    v = muldiv(x if x >= 0 else -x, _US_PER_S, duration, 0)
    v = v if v < VELOCITY_MAX else VELOCITY_MAX
    return v if x >= 0 else -v


def total_ms(durations, k, n):
    """The length in ms, rounded up, of the n phases from durations[k]."""
    ms = 0
    rest = 0
    for j in range(n):
        ms += durations[k + j] // 1000
        rest += durations[k + j] % 1000
    return ms + (rest + 999) // 1000


def smooth_min_ms(dist, speed, accel):
    """Shortest ease in-out duration, in ms, over `dist` sub (< 2**19) that keeps the peak speed
    within `speed` sub/s and the peak acceleration within `accel` sub/s² (0: unlimited)."""
    ms = 0
    if speed:
        ms = muldiv(dist, 1500, speed, 1)  # T >= 1.5 dist / speed
    if accel:
        # T >= sqrt(6 dist / accel); in ms², or in (32 ms)² (977 > 1e6 / 1024) when that is large
        x = muldiv(6 * dist, _US_PER_S, accel, 1)
        t = isqrt_up(x) if x < SAT else isqrt_up(muldiv(6 * dist, 977, accel, 1)) << 5
        if t > ms:
            ms = t
    return ms if ms < MAX_PHASE_MS else MAX_PHASE_MS


def _peak(dist, v0, accel):
    # floor(sqrt(accel * dist + v0²/2)): the top speed of an accelerate-then-brake profile.
    # Scaled down by 4**s until both terms fit; the root then loses at most 2**s sub/s.
    s = 0
    while True:
        x = muldiv(accel, dist, 1 << (s + s), 0)
        y = muldiv(v0, v0, 2 << (s + s), 0)
        if x < 0x8000000 and y < 0x8000000:
            return isqrt(x + y) << s
        s += 1


def _cap(duration):
    return duration if duration < MAX_PHASE_US else MAX_PHASE_US


def _put(durations, bs, cs, es, k, duration, b, c, sign):
    durations[k] = _cap(duration)
    bs[k] = b if sign > 0 else -b
    cs[k] = c if sign > 0 else -c
    es[k] = 0


def plan_ramp(durations, bs, cs, es, k, sign, dist, v0, speed, accel, room):
    """Write the phases of a ramp into durations/bs/cs/es[k:k + 4]; return how many (0..4).

    The ramp covers `dist` sub (< 2**19) toward the target (`sign` +1 up, -1 down), starting at
    velocity `v0` sub/s (positive toward the target, |v0| <= VELOCITY_MAX) under `speed` sub/s
    and `accel` sub/s² (0: unlimited; accel <= 2**26). Like a Maestro: accelerate, cruise,
    brake to stop exactly on the target. Moving away from the target, it first brakes to rest,
    going at most `room` sub further (the pulse limit behind). Too fast to stop in time at
    `accel`, it brakes harder rather than pass the target: a ramp never overshoots.
    """
    if not accel:
        if not dist:
            return 0
        t = muldiv(dist, _US_PER_S, speed, 1) if speed else 0  # no speed limit either: a jump
        _put(durations, bs, cs, es, k, t, dist, 0, sign)
        return 1
    n = 0
    if v0 < 0:
        w = -v0
        t = _cap(muldiv(w, _US_PER_S, accel, 1))
        d = muldiv(w, t, 2 * _US_PER_S, 0)
        if d > room:  # brake harder: never past the pulse limit
            d = room
            t = muldiv(2 * d, _US_PER_S, w, 1)
        _put(durations, bs, cs, es, k, t, -2 * d, d, sign)
        n = 1
        dist += d
        v0 = 0
    elif v0 and muldiv(v0, v0, 2 * accel, 1) > dist:
        # Cannot stop in time at `accel`: brake at the rate that ends exactly on the target.
        _put(durations, bs, cs, es, k, muldiv(2 * dist, _US_PER_S, v0, 0), 2 * dist, -dist, sign)
        return 1
    if speed and v0 >= speed:
        top = speed
    else:
        top = _peak(dist, v0, accel)
        if speed and top > speed:
            top = speed
    if not top:
        return n
    t1 = _cap(muldiv(top - v0 if top > v0 else v0 - top, _US_PER_S, accel, 0))
    d1 = muldiv(v0 + top, t1, 2 * _US_PER_S, 0)
    t3 = _cap(muldiv(top, _US_PER_S, accel, 0))
    d3 = muldiv(top, t3, 2 * _US_PER_S, 0)
    cruise = dist - d1 - d3  # takes the rounding, so the phases add up to dist exactly
    if cruise < 0:
        d3 += cruise
        cruise = 0
        if d3 < 0:
            d1 += d3
            d3 = 0
    if t1:
        b = muldiv(v0, t1, _US_PER_S, 0)
        _put(durations, bs, cs, es, k + n, t1, b, d1 - b, sign)
        n += 1
    if cruise:
        _put(durations, bs, cs, es, k + n, muldiv(cruise, _US_PER_S, top, 1), cruise, 0, sign)
        n += 1
    if d3:
        _put(durations, bs, cs, es, k + n, t3, 2 * d3, -d3, sign)
        n += 1
    return n


class Profiles:
    """Every channel's current motion: up to PHASES phases, evaluated from the node clock.

    Positions come from the time elapsed since each phase's start, never from adding up steps:
    a late tick does not drift, a motion ends exactly on its target, and two nodes given the
    same start finish together. A motion whose start is still ahead holds its start position.
    """

    def __init__(self, count):
        size = count * PHASES
        self.pos = [0] * count  # position at the last evaluation, sub
        self._p0 = [0] * count  # position at the start of the current phase
        self._t0 = [0] * count  # node clock at the start of the current phase
        self._phase = [0] * count  # index of the current phase
        self._phases = [0] * count  # phase count; _phase == _phases: idle
        self._dur = [0] * size
        self._b = [0] * size
        self._c = [0] * size
        self._e = [0] * size
        self._cache_e = -1  # one-entry cache: the channels of one MOVE or segment share u
        self._cache_dur = 0
        self._cache_u = 0

    def active(self, ch):
        """True until the channel's motion has ended (also while its start is ahead)."""
        return self._phase[ch] < self._phases[ch]

    def started(self, ch, now):
        """True while the channel's motion has begun and not ended."""
        i = self._phase[ch]
        return i < self._phases[ch] and (i > 0 or diff_us(now, self._t0[ch]) >= 0)

    def halt(self, ch, p):
        """End the channel's motion; it holds at p."""
        self._phases[ch] = 0
        self._phase[ch] = 0
        self.pos[ch] = p

    def begin(self, ch, start, p0, duration_us, delta, eased):
        """Replace the channel's motion: from p0 over `delta` sub in one phase, linear or eased
        in-out, beginning at node clock `start`."""
        k = ch * PHASES
        self._dur[k] = duration_us
        self._b[k] = 0 if eased else delta
        self._c[k] = 3 * delta if eased else 0
        self._e[k] = -2 * delta if eased else 0
        self._start(ch, start, p0, 1)

    def ramp(self, ch, now, p, target, v0, speed, accel, room):
        """Replace the channel's motion by a ramp from p, at velocity v0, to target (see
        plan_ramp); return its duration in ms."""
        sign = 1 if target >= p else -1
        k = ch * PHASES
        n = plan_ramp(
            self._dur, self._b, self._c, self._e, k, sign, (target - p) * sign, v0 * sign,
            speed, accel, room,
        )  # fmt: skip
        self._start(ch, now, p, n)
        return total_ms(self._dur, k, n)

    def _start(self, ch, start, p0, phases):
        self._t0[ch] = start
        self._p0[ch] = p0
        self.pos[ch] = p0
        self._phase[ch] = 0
        self._phases[ch] = phases

    def advance(self, ch, now):
        """The channel's position at `now`, stepping past the phases that have ended."""
        i = self._phase[ch]
        n = self._phases[ch]
        if i >= n:
            return self.pos[ch]
        t0 = self._t0[ch]
        e = (now - t0) & _TICKS_MASK  # diff_us(now, t0) written out, as it runs every tick
        if e >= _TICKS_HALF:
            return self.pos[ch]  # not started: hold
        k = ch * PHASES + i
        p0 = self._p0[ch]
        dur = self._dur[k]
        while e >= dur:
            p0 += self._b[k] + self._c[k] + self._e[k]
            i += 1
            if i == n:
                self._phase[ch] = i
                self.pos[ch] = p0
                return p0
            t0 = add_us(t0, dur)
            e -= dur
            k += 1
            dur = self._dur[k]
        self._phase[ch] = i
        self._t0[ch] = t0
        self._p0[ch] = p0
        if e != self._cache_e or dur != self._cache_dur:
            self._cache_e = e
            self._cache_dur = dur
            self._cache_u = fraction(e, dur)
        p = phase_position(p0, self._b[k], self._c[k], self._e[k], self._cache_u)
        self.pos[ch] = p
        return p

    def velocity(self, ch, now):
        """The channel's velocity at `now`, in sub/s, after advance(ch, now)."""
        i = self._phase[ch]
        e = diff_us(now, self._t0[ch])
        if i >= self._phases[ch] or e < 0:
            return 0
        k = ch * PHASES + i
        u = fraction(e, self._dur[k])
        return phase_velocity(self._b[k], self._c[k], self._e[k], u, self._dur[k])
