"""Request dispatcher: one request body in, exactly one reply body out (a KEEPALIVE notice
gets none).

A repeated request (same peer and seq, within CACHE_TTL_MS) is answered from the reply cache
and never executed twice; a HELLO starts a new session and forgets that peer's entries. Hot
requests go from received bytes to encoded reply without allocating: decode into a
preallocated list, check, hand off to the motion engine, encode into a preallocated buffer.
Replies that carry maps (INFO, CONFIG) are rare and allocate.
"""

import time

from servomesh.protocol import cbor, messages
from servomesh.protocol.compat import const

CACHE_SIZE = const(32)
CACHE_TTL_MS = const(30000)
_REPLY_BYTES = const(48)
_MAX_DELAY_MS = const(60000)
_MAX_PERIOD_MS = const(60000)
_MIN_PERIOD_MS = const(10)

# Indexes into Node.counters, in messages.STATE_COUNTERS order.
BODIES_MALFORMED = const(4)
REQUESTS_REFUSED = const(5)
REQUESTS_REPEATED = const(6)
REQUESTS_EXECUTED = const(7)

_NO_REPLY = const(0)


class Dispatcher:
    """Executes requests for `node` (see firmware/node.py for what it provides)."""

    def __init__(self, node):
        self.node = node
        self.values = [0] * messages.MAX_FIELDS
        self.reply = bytearray(_REPLY_BYTES)  # hot replies are encoded here
        self.out = self.reply  # the last reply: `reply` or an allocated map reply
        self._fields = [0] * 5  # the hot reply being built: kind, seq, a, b
        self._cache_peer = [-1] * CACHE_SIZE
        self._cache_seq = [0] * CACHE_SIZE
        self._cache_kind = [0] * CACHE_SIZE  # the request's kind: a repeat must match it
        self._cache_reply = [0] * CACHE_SIZE  # reply kind: ACK or ERROR
        self._cache_a = [0] * CACHE_SIZE
        self._cache_b = [0] * CACHE_SIZE
        self._cache_count = [0] * CACHE_SIZE
        self._cache_ms = [0] * CACHE_SIZE
        self._cache_next = 0
        self.contact = False  # whether the last request came from a host (not a scan)

    def handle(self, link, peer, data, start, end):
        """Answer the request in `data[start:end]` from `peer` (an int naming the sender on its
        link); return the reply's length in `self.out`, or 0 when there is no reply (a reply or
        event kind sent to a node is not a request)."""
        values = self.values
        counters = self.node.counters
        self.contact = False
        try:
            count = cbor.decode_ints_into(data, start, end, values)
            if count < 0:
                count = self._decode_rare(data, start, end)
        except cbor.DecodeError:
            counters[BODIES_MALFORMED] += 1
            return self._error(0, messages.E_MALFORMED, 0)
        code = messages.check(values, count)
        if code:
            counters[BODIES_MALFORMED] += 1
            return self._error(_readable_seq(values, count), code, 0)
        kind = values[0]
        if kind >= messages.ACK:
            counters[BODIES_MALFORMED] += 1
            return _NO_REPLY
        seq = values[1]
        if kind == messages.KEEPALIVE:
            return self._keepalive(link)
        if not link.bound_to_boot() and kind not in messages.READ_ONLY_KINDS:
            # Possibly recorded before this boot: the host must HELLO and bind to it.
            return self._error(seq, messages.E_UNBOUND, 0)
        # DISCOVER is a scan, not a host: it must not arm the failsafe or take the telemetry.
        self.contact = kind != messages.DISCOVER
        if self.contact:
            self.node.host_seen(link)
        if kind == messages.HELLO:
            self._forget(peer)
        else:
            slot = self._cached(peer, seq, kind)
            if slot >= 0:
                counters[REQUESTS_REPEATED] += 1
                return self._encode(
                    self._cache_reply[slot],
                    seq,
                    self._cache_a[slot],
                    self._cache_b[slot],
                    self._cache_count[slot],
                )
        counters[REQUESTS_EXECUTED] += 1
        return self._execute(link, peer, kind, seq, count)

    def _keepalive(self, link):
        # A notice: never answered, not a request executed. Over UDP it counts only BOUND: one
        # recorded before this boot must not feed the failsafe.
        if link.bound_to_boot():
            self.contact = True
            self.node.host_seen(link)
        else:
            self.node.counters[REQUESTS_REFUSED] += 1
        return _NO_REPLY

    def _decode_rare(self, data, start, end):
        # Bodies with a map (CONFIG_SET): the generic decoder, which allocates.
        decoded = cbor.loads(data[start:end] if start or end != len(data) else data)
        if not isinstance(decoded, list) or len(decoded) > len(self.values):
            raise cbor.DecodeError("not a message")
        count = len(decoded)
        for i in range(count):
            self.values[i] = decoded[i]
        return count

    def _execute(self, link, peer, kind, seq, count):
        node = self.node
        values = self.values
        if kind == messages.PING:
            return self._encode(messages.PONG, seq, node.now_us(), 0, 3)
        if kind == messages.HELLO:
            if values[2] != messages.PROTOCOL_VERSION:
                return self._error(seq, messages.E_VERSION, messages.PROTOCOL_VERSION)
            return self._map_reply(messages.INFO, seq, node.info())
        if kind == messages.DISCOVER:
            return self._map_reply(messages.INFO, seq, node.info())
        if kind == messages.CONFIG_GET:
            return self._map_reply(messages.CONFIG, seq, node.public_config())
        if kind == messages.CONFIG_SET:
            code = node.configure(values[2], link)
            return self._done(peer, kind, seq, code, 1 if node.rebooting() else 0)
        if kind == messages.REBOOT:
            delay_ms = values[2]
            if delay_ms > _MAX_DELAY_MS:
                return self._done(peer, kind, seq, messages.E_BAD_FIELDS, 0)
            node.reboot_in(delay_ms)
            return self._done(peer, kind, seq, 0, delay_ms)
        motion = node.motion
        if motion is None:
            return self._done(peer, kind, seq, messages.E_UNCONFIGURED, 0)
        now = node.now_us()
        if kind == messages.SET:
            code = motion.set(
                values[2],
                values[3],
                values[4],
                values[5] if count > 5 else 0,
                values[6] if count > 6 else 0,
                now,
            )
            return self._done(peer, kind, seq, code, motion.planned_ms)
        if kind == messages.MOVE:
            code = motion.move(values, 5, (count - 5) >> 1, values[2], values[3], values[4], now)
            if not code:  # the start as this node scheduled it: what synchronization achieved
                node.log(messages.LOG_DEBUG, messages.LOG_MOVE, values[4], motion.start_us)
            return self._done(peer, kind, seq, code, motion.planned_ms)
        if kind == messages.SEGMENT:
            code = motion.segment(
                values, 6, (count - 6) >> 1, values[2], values[3], values[4], values[5], now
            )
            return self._done(peer, kind, seq, code, 0)
        if kind == messages.STOP:
            mode = values[2]
            if mode != messages.STOP_HOLD and mode != messages.STOP_RELEASE:
                return self._done(peer, kind, seq, messages.E_BAD_FIELDS, 0)
            node.stop(mode, values[3] if count > 3 else 0)
            return self._done(peer, kind, seq, 0, 0)
        if kind == messages.CLEAR:
            node.clear(values[2] if count > 2 else 0)
            return self._done(peer, kind, seq, 0, 0)
        if kind == messages.TELEMETRY:
            period_ms = values[2]
            target = values[3] if count > 3 else messages.LINK_REQUESTER
            if (period_ms and not _MIN_PERIOD_MS <= period_ms <= _MAX_PERIOD_MS) or not (
                messages.LINK_REQUESTER <= target <= messages.LINK_UDP
            ):
                return self._done(peer, kind, seq, messages.E_BAD_FIELDS, 0)
            code = node.telemetry(period_ms, target, link)
            return self._done(peer, kind, seq, code, period_ms)
        return self._done(peer, kind, seq, messages.E_UNKNOWN_KIND, kind)

    def _done(self, peer, kind, seq, code, result):
        """Reply ACK(result) or ERROR(code) and remember it for repeats."""
        # Plain assignments: unpacking four values would build a tuple (an allocation).
        if code:
            self.node.counters[REQUESTS_REFUSED] += 1
            reply = messages.ERROR
            a = code
        else:
            reply = messages.ACK
            a = result
        b = 0
        n = 3
        slot = self._cache_next
        self._cache_next = (slot + 1) % CACHE_SIZE
        self._cache_peer[slot] = peer
        self._cache_seq[slot] = seq
        self._cache_kind[slot] = kind
        self._cache_reply[slot] = reply
        self._cache_a[slot] = a
        self._cache_b[slot] = b
        self._cache_count[slot] = n
        self._cache_ms[slot] = time.ticks_ms()
        return self._encode(reply, seq, a, b, n)

    def _error(self, seq, code, detail):
        self.node.counters[REQUESTS_REFUSED] += 1
        return self._encode(messages.ERROR, seq, code, detail, 4 if detail else 3)

    def _encode(self, kind, seq, a, b, count):
        fields = self._fields
        fields[0] = kind
        fields[1] = seq
        fields[2] = a
        fields[3] = b
        self.out = self.reply
        return cbor.encode_ints_into(self.reply, 0, fields, count)

    def _map_reply(self, kind, seq, payload):
        self.out = cbor.dumps([kind, seq, payload])
        return len(self.out)

    def _cached(self, peer, seq, kind):
        if seq not in self._cache_seq:  # a scan in C: most requests are new
            return -1
        now_ms = time.ticks_ms()
        for slot in range(CACHE_SIZE):
            if (
                self._cache_seq[slot] == seq
                and self._cache_peer[slot] == peer
                and self._cache_kind[slot] == kind
                and time.ticks_diff(now_ms, self._cache_ms[slot]) < CACHE_TTL_MS
            ):
                return slot
        return -1

    def _forget(self, peer):
        for slot in range(CACHE_SIZE):
            if self._cache_peer[slot] == peer:
                self._cache_peer[slot] = -1


def _readable_seq(values, count):
    """The request's seq if it is one, else 0 ("your request could not be read")."""
    if count < 2:
        return 0
    seq = values[1]
    if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= cbor.HOT_INT_MAX:
        return seq
    return 0
