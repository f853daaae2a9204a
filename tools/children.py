"""Child processes for the benchmarks: none outlives the benchmark that started it."""

import contextlib
import ctypes
import os
import signal
import subprocess
from typing import Any

_PR_SET_PDEATHSIG = 1


def spawn(
    argv: list[str],
    cpus: set[int] | None = None,
    stack: contextlib.ExitStack | None = None,
    **options: Any,
) -> subprocess.Popen[Any]:
    """Start `argv` in a session of its own, killed by the kernel should this process die
    first (PR_SET_PDEATHSIG), pinned to `cpus` when given, and killed with its whole group
    when `stack` closes. `options` go to Popen."""
    prctl = ctypes.CDLL(None).prctl  # resolved before the fork
    kill = int(signal.SIGKILL)
    death_signal = lambda: prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)  # noqa: E731 - C only
    proc = subprocess.Popen(
        argv,
        start_new_session=True,
        preexec_fn=death_signal,  # noqa: PLW1509 - no threads yet; it only calls prctl
        **options,
    )
    if stack is not None:
        stack.callback(proc.wait, 5)
        stack.callback(os.killpg, proc.pid, signal.SIGKILL)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc
