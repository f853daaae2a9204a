"""inotify through ctypes, so the simulator sleeps instead of polling.

It tells the simulator when a peer opens a serial path (a pty master reports a peer leaving,
never one arriving) and when a board's firmware arms its emulated watchdog.
"""

import ctypes
import os
import struct
from typing import Final

IN_OPEN: Final = 0x00000020
IN_CREATE: Final = 0x00000100
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE: Final = 1 << 16


class Inotify:
    """One inotify instance; `read()` drains it without blocking."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, "inotify_init1: %s" % os.strerror(error))

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        wd = int(self._add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            error = ctypes.get_errno()
            raise OSError(error, "inotify_add_watch %s: %s" % (path, os.strerror(error)))
        return wd

    def read(self) -> list[tuple[int, int, str]]:
        """Pending events as (wd, mask, name); name is "" for the watched path itself."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        events, offset = [], 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
            offset += length
            events.append((wd, mask, name))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
