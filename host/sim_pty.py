"""Pseudo-terminals for simulated serial boards, and the relay between them.

A serial board owns two ptys. The interpreter runs on the slave of the *board pty*, its
controlling terminal, so a 0x03 byte raises KeyboardInterrupt as on a board's USB serial. Host
tools need a device path, so the slave of a second, *user pty* (`/dev/pts/N`) is handed out and
a relay copies bytes between the two masters. Both ptys live as long as the board: the path
stays valid across resets, like a USB port that stays enumerated.
"""

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
from typing import Any, Final

# Index of each field in a termios attribute list (see termios.tcgetattr).
_IFLAG, _OFLAG, _CFLAG, _LFLAG, _CC = 0, 1, 2, 3, 6
_POSIX_VDISABLE: Final = 0  # Linux: a control character set to 0 is disabled

# Linux ioctls the termios module does not name: lock a pty against opens of its slave (a
# locked slave fails open() with EIO, as a vanished USB device node fails it with ENOENT), and
# hang up every open file of a tty (what unplugging a USB serial adapter does to them).
_TIOCSPTLCK: Final = 0x40045431
_TIOCVHANGUP: Final = 0x5437

_READ_SIZE: Final = 1 << 16
#: Bytes held for a slow reader before the relay stops reading the other side (back-pressure).
MAX_PENDING_BYTES: Final = 1 << 20


def _raw(attributes: list[Any]) -> None:
    """cfmakeraw, in place: 8-bit clean, no translation, no echo, no flow control."""
    iflag, oflag, cflag, lflag = (attributes[i] for i in (_IFLAG, _OFLAG, _CFLAG, _LFLAG))
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
        | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF | termios.INPCK
    )  # fmt: skip
    oflag &= ~termios.OPOST
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    attributes[_IFLAG], attributes[_OFLAG] = iflag, oflag
    attributes[_CFLAG], attributes[_LFLAG] = cflag, lflag
    attributes[_CC][termios.VMIN], attributes[_CC][termios.VTIME] = 1, 0


def set_board_mode(fd: int) -> None:
    """Raw, but 0x03 still raises SIGINT: the interpreter's line as on a board's USB serial."""
    attributes = termios.tcgetattr(fd)
    _raw(attributes)
    # ISIG keeps 0x03 -> SIGINT -> KeyboardInterrupt; NOFLSH keeps the bytes that follow it
    # (mpremote sends Ctrl-C then Ctrl-A at once). Frames may contain 0x1c and 0x1a: disable
    # the other signal characters so they are plain data.
    attributes[_LFLAG] |= termios.ISIG | termios.NOFLSH
    cc = attributes[_CC]
    cc[termios.VINTR] = b"\x03"
    cc[termios.VQUIT] = cc[termios.VSUSP] = _POSIX_VDISABLE
    termios.tcsetattr(fd, termios.TCSANOW, attributes)


def set_raw_mode(fd: int) -> None:
    """Plain raw mode; on a pty master it sets the slave's mode (Linux)."""
    attributes = termios.tcgetattr(fd)
    _raw(attributes)
    termios.tcsetattr(fd, termios.TCSANOW, attributes)


def open_pty(board_side: bool) -> tuple[int, int]:
    """(master, slave), both non-inheritable; the master is non-blocking."""
    master, slave = os.openpty()
    (set_board_mode if board_side else set_raw_mode)(slave)
    os.set_blocking(master, False)
    return master, slave


class Relay:
    """Copies bytes between a board pty master and a user pty master, without loss or reordering.

    The owner's event loop asks `interest()` which masters to watch and calls `on_read` /
    `on_write` when they are ready. When nobody has the user side open, board output is dropped
    (as a board's USB CDC drops output with no host attached); a pty master reports only "hung
    up", never "opened again", so the owner calls `check_attached` when inotify reports an open
    of the path, and now and then in case it did not.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.board_master, self.board_slave = open_pty(board_side=True)
        self.user_master, user_slave = open_pty(board_side=False)
        self.user_path = os.ttyname(user_slave)
        # Closing our only handle on the user side leaves the master "hung up" until a peer
        # opens the path, which is how the relay notices peers come and go.
        os.close(user_slave)
        self.attached = False
        self.unplugged = False
        self.board_alive = False
        self._to_user = bytearray()
        self._to_board = bytearray()
        self.dropped_bytes = 0

    def interest(self) -> dict[int, tuple[bool, bool]]:
        """{fd: (want_read, want_write)} for the event loop."""
        watch = {
            self.board_master: (
                len(self._to_user) < MAX_PENDING_BYTES or not self.attached,
                bool(self._to_board),
            )
        }
        if self.attached:
            watch[self.user_master] = (len(self._to_board) < MAX_PENDING_BYTES, bool(self._to_user))
        else:
            watch[self.user_master] = (False, False)
        return watch

    def on_read(self, fd: int) -> None:
        data = self._read(fd)
        if data is None:
            return
        if fd == self.board_master:
            if self.attached:
                self._to_user += data
            else:
                self.dropped_bytes += len(data)
            self._flush(self.user_master, self._to_user)
        elif self.board_alive:
            self._to_board += data
            self._flush(self.board_master, self._to_board)
        # else: the board is off; what a host sends to a powered-down board is lost

    def on_write(self, fd: int) -> None:
        if fd == self.board_master:
            self._flush(fd, self._to_board)
        elif self.attached:
            self._flush(fd, self._to_user)

    def unplug(self) -> None:
        """Pull the cable: every peer's file on the user side hangs up (reads end, writes
        fail with EIO) and the path refuses to open until `replug`. Needs CAP_SYS_ADMIN."""
        if self.unplugged:
            return
        # The hang-up needs a file of the slave: open one before the lock forbids it.
        own = os.open(self.user_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            fcntl.ioctl(self.user_master, _TIOCSPTLCK, struct.pack("i", 1))
            self.unplugged = True
            fcntl.ioctl(own, _TIOCVHANGUP)
        finally:
            os.close(own)
        self._detach()

    def replug(self) -> None:
        """Plug the cable back in: the same path opens again."""
        if self.unplugged:
            fcntl.ioctl(self.user_master, _TIOCSPTLCK, struct.pack("i", 0))
            self.unplugged = False

    def check_attached(self) -> bool:
        """Whether a peer has the user side open now (cheap: one poll with zero timeout)."""
        if not self.attached and not self.unplugged:
            poller = select.poll()
            poller.register(self.user_master, select.POLLIN)
            self.attached = not any(ev & select.POLLHUP for _, ev in poller.poll(0))
        return self.attached

    def drop_board_input(self) -> None:
        """Discard bytes sent to the board but not read by it yet."""
        self._to_board.clear()
        termios.tcflush(self.board_slave, termios.TCIFLUSH)

    def close(self) -> None:
        for fd in (self.board_master, self.board_slave, self.user_master):
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)

    def _read(self, fd: int) -> bytes | None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno != errno.EIO or fd != self.user_master:
                raise
            self._detach()
            return None
        return data

    def _detach(self) -> None:
        # EIO on the user master: the last peer closed the path. pyserial leaves VMIN=0 behind,
        # which makes the next peer's blocking reads return b"" at once: make it raw again, and
        # discard what the old peer left unread so the next one starts clean.
        self.attached = False
        self._to_user.clear()
        set_raw_mode(self.user_master)
        termios.tcflush(self.user_master, termios.TCOFLUSH)

    def _flush(self, fd: int, pending: bytearray) -> None:
        if not pending or (fd == self.user_master and not self.attached):
            return
        try:
            written = os.write(fd, pending)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno != errno.EIO or fd != self.user_master:
                raise
            self._detach()
            return
        del pending[:written]
