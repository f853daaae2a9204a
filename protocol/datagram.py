"""Datagram framing for UDP: one message per datagram, authenticated (the MAVLink 2 model).

    offset size field
    0      2    magic "SM" (0x53 0x4D)
    2      1    header version (1)
    3      1    flags: bit 0 SIGNED, bit 1 BOUND (needs SIGNED); other bits must be 0
    4      2    sender id, big-endian
    6      1    key id (0 when unsigned)
    7      6    counter, big-endian; strictly increasing per (sender, key id) for the key's life
    13     n    CBOR message body
    13+n   12   tag, only when SIGNED: HMAC-SHA256(key, bytes 0 .. 13+n)[:12]; when BOUND,
                HMAC-SHA256(key, boot id as 4 bytes big-endian + bytes 0 .. 13+n)[:12]

BOUND ties a request to the receiving node's current boot (its boot id, from INFO): a datagram
recorded before the node rebooted fails the tag afterwards, though the node's replay windows
start empty. Nodes take requests that change state over UDP only when bound.

A receiver checks the tag first, then a sliding replay window of WINDOW counters per
(sender, key id): a counter seen before is a replay; one WINDOW or more below the highest
seen is too old. Unsigned datagrams are accepted only by a receiver that has no keys and was
built with `allow_unsigned=True`: a keyed receiver never falls back to unsigned. Every
rejection is counted by reason in `Receiver.rejected`.

Windows live in memory: a sender must keep its counter increasing across its own restarts
(the host derives it from the clock; a node from a boot counter kept in flash).
"""

import struct

from .compat import const
from .hmac_sha256 import HmacKey
from .messages import MAX_BODY_BYTES

MAGIC = b"SM"
HEADER_VERSION = const(1)
FLAG_SIGNED = const(1)
FLAG_BOUND = const(2)
HEADER_BYTES = const(13)
TAG_BYTES = const(12)
COUNTER_MAX = const(0xFFFFFFFFFFFF)
WINDOW = const(64)
MAX_DATAGRAM = HEADER_BYTES + MAX_BODY_BYTES + TAG_BYTES  # 1049: no IP fragmentation
_WINDOW_BYTES = const(8)  # WINDOW bits
_RING_MASK = const(7)  # _WINDOW_BYTES - 1

REASONS = (
    "malformed",
    "version",
    "unsigned",
    "unknown_key",
    "bad_tag",
    "replay",
    "too_old",
    "peers",
)


class DatagramError(ValueError):
    """A datagram was rejected; `reason` is one of REASONS."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _boot_bytes(boot_id):
    if not 0 <= boot_id <= 0xFFFFFFFF:
        raise ValueError("boot id out of range")
    return struct.pack(">I", boot_id)


def _header(flags, sender_id, key_id, counter):
    if not 0 <= sender_id <= 0xFFFF:
        raise ValueError("sender id out of range")
    if not 0 <= key_id <= 0xFF:
        raise ValueError("key id out of range")
    if not 0 <= counter <= COUNTER_MAX:
        raise ValueError("counter out of range")
    return MAGIC + struct.pack(
        ">BBHBHI", HEADER_VERSION, flags, sender_id, key_id, counter >> 32, counter & 0xFFFFFFFF
    )


class Sender:
    """Seals bodies as datagrams from one sender id, signed with `key` unless it is None."""

    def __init__(self, sender_id, key=None, key_id=1, counter=0, key_type=HmacKey):
        if key is not None and not 1 <= key_id <= 0xFF:
            raise ValueError("key id must be 1-255")
        self.sender_id = sender_id
        self.key_id = key_id if key is not None else 0
        self._key = key_type(key) if key is not None else None
        self.counter = counter  # the last counter used; the next datagram takes counter + 1

    def seal(self, body, bound_to=None):
        """The datagram for `body`; `bound_to` (a node's boot id) makes it BOUND."""
        if not 0 < len(body) <= MAX_BODY_BYTES:
            raise ValueError("body of %d bytes: 1 to %d allowed" % (len(body), MAX_BODY_BYTES))
        if self.counter >= COUNTER_MAX:
            raise ValueError("counter exhausted: this key needs replacing")
        self.counter += 1
        if self._key is None:
            return _header(0, self.sender_id, 0, self.counter) + bytes(body)
        if bound_to is None:
            header = _header(FLAG_SIGNED, self.sender_id, self.key_id, self.counter)
            return header + bytes(body) + self._key.digest(header, body)[:TAG_BYTES]
        header = _header(FLAG_SIGNED | FLAG_BOUND, self.sender_id, self.key_id, self.counter)
        tag = self._key.digest(_boot_bytes(bound_to), header, body)[:TAG_BYTES]
        return header + bytes(body) + tag


def _mark(ring, counter):
    ring[(counter >> 3) & _RING_MASK] |= 1 << (counter & 7)


class Receiver:
    """Opens datagrams: checks header, tag and replay window; counts rejections by reason.

    `keys` maps key id (1-255) to key bytes. `max_peers` bounds the replay windows kept, so
    authenticated but unknown senders cannot grow memory without limit. `key_type` computes
    the tags: HmacKey, or a faster equivalent where the port has one (host/transport.py).
    """

    def __init__(
        self, keys=None, allow_unsigned=False, max_peers=32, boot_id=None, key_type=HmacKey
    ):
        if keys and allow_unsigned:
            raise ValueError("a receiver with keys never accepts unsigned datagrams")
        self._keys = {}
        for key_id, key in (keys or {}).items():
            if not 1 <= key_id <= 0xFF:
                raise ValueError("key id must be 1-255")
            self._keys[key_id] = key_type(key)
        self.allow_unsigned = allow_unsigned
        self.max_peers = max_peers
        self._windows = {}  # (sender << 8 | key id) -> [highest counter's high, low, ring]
        self.rejected = {reason: 0 for reason in REASONS}
        self.accepted = 0
        # Set by open(): whether the datagram just accepted was BOUND to this boot.
        self._boot = _boot_bytes(boot_id) if boot_id is not None else None
        self.bound = False
        self.sender_id = 0  # of the datagram just accepted

    def _rejection(self, reason):
        self.rejected[reason] += 1
        return DatagramError(reason)

    def open(self, datagram):
        """Return `(sender_id, body)` of an accepted datagram; raise DatagramError otherwise."""
        end = self.accept(datagram)
        return self.sender_id, bytes(datagram[HEADER_BYTES:end])

    def accept(self, datagram):
        """Check `datagram` as `open` does, without copying its body: return where the body
        ends (it starts at HEADER_BYTES) and leave its sender in `sender_id`."""
        size = len(datagram)
        if (
            size <= HEADER_BYTES
            or size > MAX_DATAGRAM
            or datagram[0] != 0x53
            or datagram[1] != 0x4D
        ):
            raise self._rejection("malformed")  # not b"SM"
        if datagram[2] != HEADER_VERSION:
            raise self._rejection("version")
        flags = datagram[3]
        if flags & ~(FLAG_SIGNED | FLAG_BOUND) or flags == FLAG_BOUND:
            raise self._rejection("malformed")
        bound = flags & FLAG_BOUND
        if bound and self._boot is None:
            raise self._rejection("malformed")  # only a node, which has a boot id, takes BOUND
        sender_id = datagram[4] << 8 | datagram[5]
        key_id = datagram[6]
        self.bound = False
        if not flags & FLAG_SIGNED:
            if not self.allow_unsigned:
                raise self._rejection("unsigned")
            if size - HEADER_BYTES > MAX_BODY_BYTES:
                raise self._rejection("malformed")
            self.accepted += 1
            self.sender_id = sender_id
            return size
        end = size - TAG_BYTES
        if end <= HEADER_BYTES:
            raise self._rejection("malformed")
        key = self._keys.get(key_id)
        if key is None:
            raise self._rejection("unknown_key")
        if not key.verify(datagram, end, self._boot if bound else None):
            raise self._rejection("bad_tag")
        self._check_window(sender_id << 8 | key_id, datagram)
        self.accepted += 1
        self.bound = bound != 0
        self.sender_id = sender_id
        return end

    def _check_window(self, peer, datagram):
        # The counter as two small ints (16 + 32 bits would not be one on a 32-bit board);
        # the window is a ring of WINDOW bits indexed by the counter's low bits.
        high = datagram[7] << 8 | datagram[8]
        low = datagram[9] << 24 | datagram[10] << 16 | datagram[11] << 8 | datagram[12]
        window = self._windows.get(peer)
        if window is None:
            if len(self._windows) >= self.max_peers:
                raise self._rejection("peers")
            window = [high, low, bytearray(_WINDOW_BYTES)]
            self._windows[peer] = window
            _mark(window[2], low)
            return
        if high == window[0]:
            ahead = low - window[1]
        else:
            ahead = ((high - window[0]) << 32) + low - window[1]
        ring = window[2]
        if ahead > 0:
            if ahead >= WINDOW:
                for i in range(_WINDOW_BYTES):
                    ring[i] = 0
            else:
                counter = window[1]
                for _ in range(ahead):  # forget the counters the window slides past
                    counter += 1
                    ring[(counter >> 3) & _RING_MASK] &= ~(1 << (counter & 7))
            window[0] = high
            window[1] = low
            _mark(ring, low)
            return
        if ahead <= -WINDOW:
            raise self._rejection("too_old")
        if ring[(low >> 3) & _RING_MASK] & (1 << (low & 7)):
            raise self._rejection("replay")
        _mark(ring, low)

    def forget(self, sender_id):
        """Drop a sender's replay windows (e.g. when a node is removed from the fleet)."""
        for peer in list(self._windows):
            if peer >> 8 == sender_id:
                del self._windows[peer]
