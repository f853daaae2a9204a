"""Watchdog and reset: `machine.WDT` and `machine.reset` on boards, emulated on the unix port.

The unix port has neither. There the watchdog is the simulator's job, as a hardware WDT is
outside the CPU: `feed` rewrites the file `wdt` in the flash folder, and the simulator restarts
a board whose file goes stale (reset cause "watchdog"). `reset` ends the interpreter with
EXIT_RESET, which the simulator answers with a restart (reset cause "soft").
"""

import sys
import time

from servomesh.protocol import messages
from servomesh.protocol.compat import const

EXIT_RESET = const(75)
EXIT_WATCHDOG = const(76)
HEARTBEAT_FILE = "wdt"
RESET_CAUSE_FILE = "reset_cause"

try:
    import machine

    _WDT = machine.WDT
    _reset = machine.reset
    _reset_cause = machine.reset_cause
except (ImportError, AttributeError):  # the unix port: machine has none of them
    _WDT = None
    _reset = None
    _reset_cause = None


class Watchdog:
    """Resets the board unless `feed` is called within `timeout_ms`."""

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.emulated = _WDT is None
        self._wdt = None if self.emulated else _WDT(timeout=timeout_ms)
        self._written_ms = 0
        self._write()

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()
        elif time.ticks_diff(time.ticks_ms(), self._written_ms) >= self.timeout_ms // 4:
            # A file write can stall for milliseconds on a busy disk: write a few times per
            # timeout, not at every feed.
            self._write()

    def _write(self):
        if self._wdt is None:
            with open(HEARTBEAT_FILE, "w") as f:
                f.write("%d\n" % self.timeout_ms)
            self._written_ms = time.ticks_ms()


def reset():
    """Reboot the board (never returns)."""
    if _reset is not None:
        _reset()
    sys.exit(EXIT_RESET)


def reset_cause():
    """Why the board last reset, one of messages.RESET_CAUSES."""
    if _reset_cause is not None:
        cause = _reset_cause()
        for name, cause_name in (
            ("PWRON_RESET", "power_on"),
            ("HARD_RESET", "hard"),
            ("WDT_RESET", "watchdog"),
            ("DEEPSLEEP_RESET", "deep_sleep"),
            ("SOFT_RESET", "soft"),
        ):
            if getattr(machine, name, None) == cause:
                return cause_name
        return "unknown"
    try:
        with open(RESET_CAUSE_FILE) as f:
            cause = f.read().strip()
    except OSError:
        return "power_on"
    return cause if cause in messages.RESET_CAUSES else "unknown"
