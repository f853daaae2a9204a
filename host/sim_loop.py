"""The simulator's one thread: waits on every board process (pidfd) and every serial relay.

Board processes are started on this thread only: PR_SET_PDEATHSIG fires when the *thread* that
forked a child exits, so children forked by a short-lived caller thread would die with it.
Other threads hand work over with `call`, which waits for the result with a timeout.
"""

import contextlib
import logging
import os
import selectors
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Final, TypeVar

_log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[int, int], None]  # (fd, selectors event mask)

CALL_TIMEOUT_S: Final = 10.0
JOIN_TIMEOUT_S: Final = 5.0
_MAX_SELECT_S: Final = 1.0  # wake up now and then even when idle, to notice a stop request


class EventLoop:
    """A selector loop in a daemon thread; fd handlers and calls run on that thread only."""

    def __init__(self, name: str) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._calls: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self._stopping = False
        #: Called once per iteration; returns how soon (seconds) it wants to run again, or None.
        self.tick: Callable[[], float | None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, function: Callable[[], T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Run `function` on the loop thread and return its result (or raise its exception)."""
        if self.on_loop_thread:
            return function()
        if not self._thread.is_alive():
            raise RuntimeError("the simulator's event loop is not running")
        future: Future[T] = Future()
        self._calls.append((function, future))  # type: ignore[arg-type]
        self._wake()
        return future.result(timeout_s)

    def watch(self, fd: int, read: bool, write: bool, handler: Handler) -> None:
        """Watch `fd` for the given readiness (both False: stop watching it). Loop thread only."""
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        registered = fd in self._selector.get_map()
        if not events:
            if registered:
                self._selector.unregister(fd)
        elif registered:
            self._selector.modify(fd, events, handler)
        else:
            self._selector.register(fd, events, handler)

    def stop(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        self._stopping = True
        if self._thread.is_alive() and not self.on_loop_thread:
            self._wake()
            self._thread.join(JOIN_TIMEOUT_S)
        if not self._thread.is_alive():
            self._selector.close()
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):  # closed by an earlier stop()
                    os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_write, b"\0")

    def _tick(self) -> float:
        try:
            wanted = self.tick() if self.tick is not None else None
        except Exception:
            _log.exception("simulator: periodic check failed")
            wanted = None
        return _MAX_SELECT_S if wanted is None else min(wanted, _MAX_SELECT_S)

    def _run(self) -> None:
        while not self._stopping:
            timeout = self._tick()
            for key, mask in self._selector.select(timeout):
                if key.fd == self._wake_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_read, 4096)
                    continue
                try:
                    key.data(key.fd, mask)
                except Exception:
                    # One board's fault (a vanished pty, a failed restart) must not stop the
                    # thread that serves every other board.
                    _log.exception("simulator: handler for fd %d failed", key.fd)
            self._run_calls()
        while self._calls:  # whoever still waits learns at once that nobody will answer
            _, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the simulator's event loop has stopped"))

    def _run_calls(self) -> None:
        while self._calls:
            function, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except BaseException as error:
                    future.set_exception(error)
