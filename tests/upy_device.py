"""Drive tests/device/runner.py inside the MicroPython unix port from pytest."""

import json
import os
import selectors
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from servomesh.host import mpy, upy

TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "device" / "runner.py"
SHARED = TESTS / "shared"
DEVICE_TESTS = TESTS / "device"


class DeviceError(RuntimeError):
    """The device runner failed, answered with an error, or did not answer in time."""


def _compiled_tests() -> Path:
    """tests/device and tests/shared as .mpy, in one folder, for small-heap runs."""
    folder = Path(tempfile.gettempdir()) / ("servomesh-tests-mpy-%d" % os.getuid())
    for source in (DEVICE_TESTS, SHARED):
        mpy.compile_tree(source, folder, march=upy.HOST_MARCH)
    return folder


class Device:
    """One unix-port interpreter running the test service; every request has a timeout.

    `compiled` loads everything as .mpy, as a deployed board does: on a 64 KiB heap the
    compiler itself would not fit beside the code.
    """

    def __init__(self, heap: str | None = None, compiled: bool = False) -> None:
        env = upy.environment(compiled=compiled)
        if compiled:
            tests = _compiled_tests()
            env["MICROPYPATH"] += ":" + str(tests)
            argv = upy.command("-m", "runner", str(tests), heap=heap)
        else:
            env["MICROPYPATH"] += ":" + str(DEVICE_TESTS)
            argv = upy.command(str(RUNNER), str(SHARED), heap=heap)
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._process.stdout is not None
        self._stdout = self._process.stdout.fileno()
        self._pending = b""

    def request(self, op: str, timeout_s: float = 60.0, **fields: Any) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(
            json.dumps({"op": op, **fields}, ensure_ascii=False).encode() + b"\n"
        )
        self._process.stdin.flush()
        answer = json.loads(self._read_line(timeout_s))
        if "error" in answer:
            raise DeviceError("device runner failed on %r: %s" % (op, answer["error"]))
        return answer["ok"]

    def _read_line(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self._stdout, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self.close()
                    raise DeviceError("no answer from the device within %.0f s" % timeout_s)
                chunk = os.read(self._stdout, 1 << 16)
                if not chunk:
                    raise DeviceError("device exited with %s" % self._process.wait(timeout=5))
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait(timeout=10)
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
