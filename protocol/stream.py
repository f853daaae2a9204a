"""Serial stream framing: frames interleaved with console text on one byte stream.

    frame = SOF, escape(body + crc32(body) as 4 bytes little-endian), EOF

SOF (0xC0) and EOF (0xC1) never occur in UTF-8 text, so console output between frames is left
as it is and handed back as text. Inside a frame, SOF, EOF, ESC (0xDB) and 0x03 are sent as
ESC followed by the byte XOR 0x20: a frame never holds 0x03, so a Ctrl-C from mpremote always
reaches a running node's REPL. A decoder resynchronises at the next SOF after garbage,
truncation or a bad CRC, and counts each dropped frame by reason.
"""

import binascii

from .compat import const
from .messages import MAX_BODY_BYTES

SOF = const(0xC0)
EOF = const(0xC1)
ESC = const(0xDB)
_CTRL_C = const(0x03)
_FLIP = const(0x20)

MAX_BODY = MAX_BODY_BYTES  # bytes of message body in one frame, before escaping
_CRC_BYTES = const(4)

_OUTSIDE = const(0)
_INSIDE = const(1)
_ESCAPED = const(2)
_SKIPPING = const(3)  # after an oversized frame: drop bytes until the next SOF or EOF

# Reasons a frame is dropped, as keys of FrameDecoder.errors
REASONS = ("crc", "truncated", "too_long", "bad_escape", "short")


def _needs_escape(byte):
    return byte == SOF or byte == EOF or byte == ESC or byte == _CTRL_C


def encode_frame(body):
    """Return the frame for `body` (bytes-like, at most MAX_BODY bytes)."""
    if len(body) > MAX_BODY:
        raise ValueError("body of %d bytes exceeds %d" % (len(body), MAX_BODY))
    if len(body) == 0:
        raise ValueError("empty body")
    crc = binascii.crc32(body) & 0xFFFFFFFF
    out = bytearray()
    out.append(SOF)
    for part in (body, crc.to_bytes(_CRC_BYTES, "little")):
        for byte in part:
            if _needs_escape(byte):
                out.append(ESC)
                out.append(byte ^ _FLIP)
            else:
                out.append(byte)
    out.append(EOF)
    return bytes(out)


class FrameDecoder:
    """Splits a byte stream into frame bodies and console text.

    `feed(data)` returns a list of `(is_frame, payload)` in stream order: verified bodies
    (is_frame True) and runs of text between frames (is_frame False, bytes as received).
    Dropped frames are counted in `errors` by reason; their bytes are not returned.
    """

    def __init__(self, max_body=MAX_BODY):
        self._frame = bytearray(max_body + _CRC_BYTES)
        self._limit = max_body + _CRC_BYTES
        self._length = 0
        self._state = _OUTSIDE
        self._text = bytearray()
        self.errors = {reason: 0 for reason in REASONS}
        self.frames = 0

    def feed(self, data):
        out = []
        frame = self._frame
        state = self._state
        length = self._length
        for byte in data:
            if byte == SOF:
                if state == _INSIDE or state == _ESCAPED:
                    self.errors["truncated"] += 1
                elif self._text:
                    out.append((False, bytes(self._text)))
                    self._text = bytearray()
                state = _INSIDE
                length = 0
            elif state == _OUTSIDE:
                self._text.append(byte)
            elif state == _SKIPPING:
                if byte == EOF:
                    state = _OUTSIDE
            elif byte == EOF:
                if state == _ESCAPED:
                    self.errors["bad_escape"] += 1
                else:
                    body = self._check(length)
                    if body is not None:
                        out.append((True, body))
                state = _OUTSIDE
            elif state == _ESCAPED:
                plain = byte ^ _FLIP
                if not _needs_escape(plain):
                    self.errors["bad_escape"] += 1
                    state = _SKIPPING
                elif length == self._limit:
                    self.errors["too_long"] += 1
                    state = _SKIPPING
                else:
                    frame[length] = plain
                    length += 1
                    state = _INSIDE
            elif byte == ESC:
                state = _ESCAPED
            elif length == self._limit:
                self.errors["too_long"] += 1
                state = _SKIPPING
            else:
                frame[length] = byte
                length += 1
        self._state = state
        self._length = length
        if self._text:
            out.append((False, bytes(self._text)))
            self._text = bytearray()
        return out

    def _check(self, length):
        if length <= _CRC_BYTES:
            self.errors["short"] += 1
            return None
        body = bytes(self._frame[: length - _CRC_BYTES])
        crc = int.from_bytes(self._frame[length - _CRC_BYTES : length], "little")
        if binascii.crc32(body) & 0xFFFFFFFF != crc:
            self.errors["crc"] += 1
            return None
        self.frames += 1
        return body
