"""Node clock: `time.ticks_us()` modulo 2**30 (messages.TICKS_PERIOD) on every port.

32-bit ports already wrap there; the unix port's ticks are wider and are masked. Node clock
values are compared only through `diff_us` and `add_us`, which keep every intermediate inside
the small-int range of a 32-bit port (-2**30 .. 2**30 - 1), so they never allocate. TICKS_PERIOD
itself (2**30) is not a small int on those ports: these helpers never compute with it.
"""

import time

from servomesh.protocol.compat import const

_MASK = const(0x3FFFFFFF)  # TICKS_PERIOD - 1
_HALF = const(0x20000000)  # TICKS_PERIOD // 2


def now_us():
    """The node clock now, 0 .. 2**30 - 1."""
    return time.ticks_us() & _MASK


def diff_us(a, b):
    """a - b for clock values a, b (0 .. 2**30 - 1), as a signed -2**29 .. 2**29 - 1."""
    d = (a - b) & _MASK
    if d >= _HALF:
        return d - _HALF - _HALF
    return d


def add_us(t, delta_us):
    """The clock value `delta_us` (any small int) after clock value t."""
    # (t + delta) & _MASK could pass 2**30 on the way: go below zero instead and wrap back.
    r = t - _MASK - 1 + (delta_us & _MASK)
    if r < 0:
        r = r + _MASK + 1
    return r
