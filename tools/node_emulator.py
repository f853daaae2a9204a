"""Emulated servo nodes for host benchmarks and tests: many nodes in one CPython process.

    python tools/node_emulator.py SPEC.json

SPEC.json: {"channels": 6, "nodes": [{"node_id": "emu-1", "sender_id": 1, "key": "<64 hex
digits>", "port": 0}, ...]}. Each node binds its own UDP port on 127.0.0.1 (0: a free one).
Once all are bound the process prints one line, {"ports": [...]} in the spec's order, then
serves every node from one select loop until its stdin reaches end of file (the parent holds
the pipe: when it dies, its nodes go too) or SIGINT/SIGTERM.

A host sees what a node running firmware/node.py sends: signed datagrams from the node's
sender id with counters from boot_count << 24; INFO, PONG, CONFIG, ACK and ERROR answered as
firmware/dispatch.py answers, with its checks in its order, its reply cache (a repeat is
answered from the cache, never executed twice; HELLO forgets the peer's entries) and ERROR
unbound for a state-changing request that is not BOUND to this boot; LOG boot, stopped,
cleared, rebooting; STATE in the real layout every TELEMETRY period. The node clock is
CLOCK_MONOTONIC in microseconds mod 2**30, the unix port's ticks_us.

Left out, as a stand-in for the host's view rather than a motion engine: motion is a linear
ramp with no speed or acceleration limits, SEGMENT queues nothing (it moves like MOVE), there
is no link-loss failsafe and no serial link, and a valid CONFIG_SET applies at once: ACK 0,
no reboot. REBOOT starts a new boot (new boot id, empty cache, telemetry off) in place.
"""

import contextlib
import heapq
import itertools
import json
import os
import random
import secrets
import select
import selectors
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from servomesh.host import codec
from servomesh.protocol import datagram, messages
from servomesh.protocol.cbor import DecodeError

FIRMWARE = "0.1.0-emulated"  # INFO's firmware: the host shows it, so users see what they run
KEY_ID = 1
TICKS_MASK = messages.TICKS_PERIOD - 1
CACHE_SIZE = 32  # firmware/dispatch.py CACHE_SIZE and CACHE_TTL_MS
CACHE_TTL_NS = 30_000 * 1_000_000
UDP_BATCH = 16  # datagrams read per node per wake-up, as firmware/links.py
TIMER_BATCH = 16  # STATE sent between looks at the sockets: requests never wait behind a burst
MAX_MS = 60_000  # duration_ms, delay_ms and period_ms bounds of firmware/dispatch.py
MIN_PERIOD_MS = 10
MAX_AHEAD_US = 60_000_000
REBOOT_FLUSH_MS = 50
START_S = 15.0  # an emulator process binds its ports within this
FREE_HEAP_BYTES = 90_000  # what STATE reports: a plausible ESP32 figure
HIDDEN = "<hidden>"
_COUNTER = {name: i for i, name in enumerate(messages.STATE_COUNTERS)}
_KINDS = [kind for kind in range(messages.ACK) if messages.known(kind)]


def node_ticks(now_ns: int) -> int:
    return (now_ns // 1000) & TICKS_MASK


def ticks_diff(a: int, b: int) -> int:
    d = (a - b) & TICKS_MASK
    return d - messages.TICKS_PERIOD if d >= messages.TICKS_PERIOD // 2 else d


@dataclass(slots=True)
class Channel:
    """One servo output: a linear ramp from `from_us` to `target_us` (0 and 0: released)."""

    wire: list[int]  # CONFIG's array: messages.CONFIG_CHANNEL_FIELDS
    from_us: int = 0
    target_us: int = 0
    start_ns: int = 0
    end_ns: int = 0

    def setpoint(self, now_ns: int) -> int:
        if now_ns >= self.end_ns:
            return self.target_us
        if now_ns < self.start_ns:
            return self.from_us
        span = self.end_ns - self.start_ns
        return self.from_us + (self.target_us - self.from_us) * (now_ns - self.start_ns) // span

    def go(self, pulse_us: int, start_ns: int, duration_ms: int, now_ns: int) -> int:
        """Ramp to `pulse_us` from `start_ns`; a released channel attaches there at once.
        Returns the planned duration in ms."""
        here = self.setpoint(now_ns)
        duration_ms = duration_ms if here else 0
        self.from_us = here if here else 0
        self.target_us = pulse_us
        self.start_ns = start_ns
        self.end_ns = start_ns + duration_ms * 1_000_000
        return duration_ms

    def hold(self, now_ns: int, release: bool) -> None:
        here = 0 if release else self.setpoint(now_ns)
        self.from_us = self.target_us = here
        self.start_ns = self.end_ns = now_ns

    def flags(self, now_ns: int) -> int:
        flags = messages.CHANNEL_MOVING if self.start_ns <= now_ns < self.end_ns else 0
        return flags | (messages.CHANNEL_RELEASED if not self.setpoint(now_ns) else 0)


def channels_from_wire(raw: Any) -> list[Channel]:
    """CONFIG_SET's channels (arrays of CONFIG_CHANNEL_FIELDS or the file's maps), checked for
    what the emulator uses; ValueError when they are not a node's channels."""
    if type(raw) is not list or not 1 <= len(raw) <= 16:
        raise ValueError("channels must be a list of 1 to 16")
    channels = []
    for raw_item in raw:
        item = raw_item
        if isinstance(raw_item, list):
            item = dict(zip(messages.CONFIG_CHANNEL_FIELDS, raw_item, strict=True))
        if not isinstance(item, dict):
            raise ValueError("a channel is an array or a map")
        low, high = item.get("min_us") or 1000, item.get("max_us") or 2000
        if not all(type(v) is int and 400 <= v <= 2600 for v in (low, high)) or high <= low:
            raise ValueError("bad pulse limits")
        failsafe = item.get("failsafe") or 0
        wire = [
            int(item.get("pin", 0)),
            low,
            high,
            item.get("home_us") or (low + high) // 2,
            item.get("speed_us_per_s") or 0,
            item.get("accel_us_per_s2") or 0,
            failsafe if type(failsafe) is int else messages.FAILSAFES.index(failsafe),
        ]
        channels.append(Channel(wire))
    return channels


class EmulatedNode:
    """One node on its own UDP socket. `due_ns()` and `on_timer()` drive its telemetry."""

    def __init__(
        self, node_id: str, sender_id: int, key: bytes, port: int = 0, channels: int = 6
    ) -> None:
        self.key = key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.config: dict[str, Any] = {
            "node_id": node_id,
            "sender_id": sender_id,
            "board": "sim",
            "channels": [[ch, 1000, 2000, 1500, 0, 0, 0] for ch in range(channels)],
            "control_hz": 100,
            "link_timeout_ms": 1000,
            "telemetry_ms": 0,
            "udp_port": self.port,
            "key_id": KEY_ID,
            "serial": False,
            "udp_host": "127.0.0.1",
            "key": HIDDEN,
            "allow_unsigned": False,
            "sim_slew_us_per_s": 4444,
        }
        self.channels = channels_from_wire(self.config["channels"])
        self.boot_count = 0
        self.scheduled_ns: int | None = None  # the Emulator's: when its heap wakes this node
        self._boot(reset_cause="power_on")

    def _boot(self, reset_cause: str) -> None:
        self.boot_count += 1
        self.boot_id = random.getrandbits(30)
        self.booted_ns = time.monotonic_ns()
        self.reset_cause = reset_cause
        self.receiver = datagram.Receiver({KEY_ID: self.key}, boot_id=self.boot_id)
        self.sender = datagram.Sender(
            self.config["sender_id"], self.key, KEY_ID, self.boot_count << 24
        )
        self.counters = [0] * len(messages.STATE_COUNTERS)
        self.cache: list[tuple[tuple[int, int, int], bytes, int] | None] = [None] * CACHE_SIZE
        self._cache_next = 0
        self.address: tuple[str, int] | None = None  # the host's: replies, STATE and LOG go there
        self.told_boot = False
        self.stopped = False
        self.trace = 0
        self.state_seq = self.log_seq = -1
        self.telemetry_ms: int | None = None  # None: no TELEMETRY yet this boot
        self.state_due_ns: int | None = None
        self.reboot_ns: int | None = None
        self._rest_groups: list[int] | None = None
        for channel in self.channels:
            channel.hold(self.booted_ns, release=True)

    # -- timers ------------------------------------------------------------------------------

    def due_ns(self) -> int | None:
        dues = [t for t in (self.state_due_ns, self.reboot_ns) if t is not None]
        return min(dues) if dues else None

    def on_timer(self, now_ns: int) -> None:
        if self.reboot_ns is not None and now_ns >= self.reboot_ns:
            self._boot(reset_cause="soft")
            return
        due = self.state_due_ns
        if due is None or now_ns < due:
            return
        self.send_state(now_ns)
        period_ns = (self.telemetry_ms or 0) * 1_000_000
        # A steady rate; after a stall skip ahead rather than burst, as the control loop does.
        self.state_due_ns = due + period_ns if now_ns - due < period_ns else now_ns + period_ns

    def send_state(self, now_ns: int) -> None:
        self.state_seq = (self.state_seq + 1) & 0x3FFFFFFF
        values = [
            messages.STATE,
            self.state_seq,
            node_ticks(now_ns),
            messages.STATE_STOPPED if self.stopped else 0,
            self.trace,
            1_000_000 // self.config["control_hz"],
            0,
            FREE_HEAP_BYTES,
            *self.state_counters(),
            *self._channel_groups(now_ns),
        ]
        self._send(cbor2.dumps(values))  # the bytes codec.encode makes, without its checks

    def _channel_groups(self, now_ns: int) -> list[int]:
        """STATE's channel groups: computed while a channel moves, then kept until a request."""
        if self._rest_groups is not None:
            return self._rest_groups
        groups = []
        for ch, channel in enumerate(self.channels):
            setpoint = channel.setpoint(now_ns)  # position_us: a board's last written pulse
            groups += (ch, setpoint, setpoint, channel.target_us, channel.flags(now_ns))
        if all(now_ns >= channel.end_ns for channel in self.channels):
            self._rest_groups = groups
        return groups

    def state_counters(self) -> list[int]:
        rejected, counters = self.receiver.rejected, self.counters
        counters[1] = rejected["malformed"] + rejected["version"]
        counters[2] = rejected["unsigned"] + rejected["unknown_key"] + rejected["bad_tag"]
        counters[2] += rejected["peers"]
        counters[3] = rejected["replay"] + rejected["too_old"]
        return counters

    # -- incoming ----------------------------------------------------------------------------

    def drain(self, now_ns: int) -> None:
        for _ in range(UDP_BATCH):
            try:
                packet, address = self.sock.recvfrom(datagram.MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            try:
                peer, body = self.receiver.open(packet)
            except datagram.DatagramError:
                continue  # counted by the receiver; an unauthenticated peer gets no answer
            self.address = address
            reply = self.handle(peer, body, now_ns)
            if reply is not None:
                self._send(reply)

    def handle(self, peer: int, body: bytes, now_ns: int) -> bytes | None:
        """The reply body to the request `body` from sender id `peer`, as the firmware's
        Dispatcher.handle answers it (None: no reply)."""
        try:
            values = codec.loads(body)
        except DecodeError:
            values = None
        if not isinstance(values, list):
            self.counters[_COUNTER["bodies_malformed"]] += 1
            return self._error(0, messages.E_MALFORMED)
        code = messages.check(values, len(values))
        if code:
            self.counters[_COUNTER["bodies_malformed"]] += 1
            seq = values[1] if len(values) > 1 else 0
            readable = type(seq) is int and 1 <= seq <= 0x3FFFFFFF
            return self._error(seq if readable else 0, code)
        kind, seq = values[0], values[1]
        if kind >= messages.ACK:
            self.counters[_COUNTER["bodies_malformed"]] += 1
            return None
        if kind == messages.KEEPALIVE:  # a notice: never answered, not a request executed
            if self.receiver.bound:
                self._host_seen(now_ns)
            else:
                self.counters[_COUNTER["requests_refused"]] += 1
            return None
        if not self.receiver.bound and kind not in messages.READ_ONLY_KINDS:
            return self._error(seq, messages.E_UNBOUND)  # maybe recorded before this boot
        self._host_seen(now_ns)
        key = (peer, seq, kind)
        if kind == messages.HELLO:
            self.cache = [e if e is None or e[0][0] != peer else None for e in self.cache]
        else:
            for entry in self.cache:
                if entry is not None and entry[0] == key and now_ns - entry[2] < CACHE_TTL_NS:
                    self.counters[_COUNTER["requests_repeated"]] += 1
                    return entry[1]
        self.counters[_COUNTER["requests_executed"]] += 1
        self._rest_groups = None  # the request may move a channel
        reply = self._execute(kind, seq, values[2:], now_ns)
        if isinstance(reply, int):  # ACK result or -ERROR code: cached, as _done caches
            body = codec.encode(messages.ACK, seq, reply) if reply >= 0 else None
            if body is None:
                self.counters[_COUNTER["requests_refused"]] += 1
                body = codec.encode(messages.ERROR, seq, -reply)
            self.cache[self._cache_next] = (key, body, now_ns)
            self._cache_next = (self._cache_next + 1) % CACHE_SIZE
            return body
        return reply

    def _error(self, seq: int, code: int, detail: int = 0) -> bytes:
        self.counters[_COUNTER["requests_refused"]] += 1
        if detail:
            return codec.encode(messages.ERROR, seq, code, detail)
        return codec.encode(messages.ERROR, seq, code)

    def _host_seen(self, now_ns: int) -> None:
        if not self.told_boot:
            self.told_boot = True
            cause = messages.RESET_CAUSES.index(self.reset_cause)
            self._log(messages.LOG_INFO, messages.LOG_BOOT, cause, self.boot_count)
        if self.telemetry_ms is None and self.config["telemetry_ms"]:
            self._telemetry(self.config["telemetry_ms"], now_ns)  # the configured stream

    def _execute(self, kind: int, seq: int, fields: list[Any], now_ns: int) -> bytes | int:
        """A reply body (not cached), or an ACK result >= 0 / -ERROR code (cached)."""
        if kind == messages.PING:
            return codec.encode(messages.PONG, seq, node_ticks(time.monotonic_ns()))
        if kind == messages.HELLO:
            if fields[0] != messages.PROTOCOL_VERSION:
                return self._error(seq, messages.E_VERSION, messages.PROTOCOL_VERSION)
            return codec.encode(messages.INFO, seq, self.info(now_ns))
        if kind == messages.DISCOVER:
            return codec.encode(messages.INFO, seq, self.info(now_ns))
        if kind == messages.CONFIG_GET:
            return codec.encode(messages.CONFIG, seq, self.config)
        if kind == messages.CONFIG_SET:
            return self._configure(fields[0])
        if kind == messages.REBOOT:
            if fields[0] > MAX_MS:
                return -messages.E_BAD_FIELDS
            self.reboot_ns = now_ns + max(fields[0], REBOOT_FLUSH_MS) * 1_000_000
            self._log(messages.LOG_INFO, messages.LOG_REBOOTING, fields[0])
            return int(fields[0])
        if kind == messages.SET:
            speed, trace = (list(fields[3:]) + [0, 0])[:2]
            if not 0 <= fields[2] <= MAX_MS or speed < 0:
                return -messages.E_BAD_FIELDS
            code = self._check_pairs(fields[:2]) or (messages.E_STOPPED if self.stopped else 0)
            if code:
                return -code
            self.trace = trace
            return self.channels[fields[0]].go(fields[1], now_ns, fields[2], now_ns)
        if kind in (messages.MOVE, messages.SEGMENT):
            return self._move(kind, fields, now_ns)
        if kind == messages.STOP:
            if fields[0] not in (messages.STOP_HOLD, messages.STOP_RELEASE):
                return -messages.E_BAD_FIELDS
            trace = fields[1] if len(fields) > 1 else 0
            for channel in self.channels:
                channel.hold(now_ns, release=fields[0] == messages.STOP_RELEASE)
            self.stopped, self.trace = True, trace
            self._log(messages.LOG_WARNING, messages.LOG_STOPPED, fields[0], trace)
            return 0
        if kind == messages.CLEAR:
            self.stopped, self.trace = False, fields[0] if fields else 0
            self._log(messages.LOG_INFO, messages.LOG_CLEARED)
            return 0
        if kind == messages.TELEMETRY:
            period_ms, link = fields[0], fields[1] if len(fields) > 1 else 0
            # No serial link here: LINK_SERIAL is refused, as on a node with "serial": false.
            if (period_ms and not MIN_PERIOD_MS <= period_ms <= MAX_MS) or link not in (0, 2):
                return -messages.E_BAD_FIELDS
            self._telemetry(period_ms, now_ns)
            return int(period_ms)
        return -messages.E_UNKNOWN_KIND

    def _check_pairs(self, pairs: list[int]) -> int:
        seen = set()
        for ch, pulse in zip(pairs[::2], pairs[1::2], strict=True):
            if not 0 <= ch < len(self.channels):
                return messages.E_BAD_CHANNEL
            if not self.channels[ch].wire[1] <= pulse <= self.channels[ch].wire[2]:
                return messages.E_OUT_OF_LIMITS
            if ch in seen:
                return messages.E_BAD_FIELDS  # a channel twice in one command
            seen.add(ch)
        return 0

    def _move(self, kind: int, fields: list[Any], now_ns: int) -> int:
        if kind == messages.MOVE:
            duration_ms, start, trace, pairs = fields[0], fields[1], fields[2], fields[3:]
        else:
            start, duration_ms, easing, trace, pairs = *fields[:4], fields[4:]
            if easing not in (messages.EASE_LINEAR, messages.EASE_IN_OUT):
                return -messages.E_BAD_FIELDS
        if not 0 <= duration_ms <= MAX_MS or not 0 <= start <= TICKS_MASK:
            return -messages.E_BAD_FIELDS
        code = self._check_pairs(pairs) or (messages.E_STOPPED if self.stopped else 0)
        if code:
            return -code
        start_ns = now_ns
        if start:
            late_us = ticks_diff(node_ticks(now_ns), start)
            if late_us > 1_000_000 // self.config["control_hz"]:
                return -messages.E_LATE
            if late_us < -MAX_AHEAD_US:
                return -messages.E_BAD_FIELDS
            start_ns = now_ns - late_us * 1000
        for ch, pulse in zip(pairs[::2], pairs[1::2], strict=True):
            self.channels[ch].go(pulse, start_ns, duration_ms, now_ns)
        self.trace = trace
        return int(duration_ms) if kind == messages.MOVE else 0

    def _configure(self, new: dict[str, Any]) -> int:
        wifi = new.get("wifi")
        password = wifi.get("password") if isinstance(wifi, dict) else None
        if new.get("key") not in (None, HIDDEN) or password not in (None, HIDDEN):
            self._log(messages.LOG_WARNING, messages.LOG_CONFIG_INVALID, 1)
            return -messages.E_BAD_CONFIG  # a secret would have crossed the LAN in the clear
        try:
            channels = channels_from_wire(new.get("channels"))
            if not all(isinstance(new.get(k), str) for k in ("node_id", "board")):
                raise ValueError("node_id and board are required")
            hz, telemetry = new.get("control_hz") or 100, new.get("telemetry_ms") or 0
            if not 10 <= hz <= 500 or not (telemetry == 0 or MIN_PERIOD_MS <= telemetry <= MAX_MS):
                raise ValueError("control_hz or telemetry_ms out of range")
        except (ValueError, TypeError):
            self._log(messages.LOG_WARNING, messages.LOG_CONFIG_INVALID)
            return -messages.E_BAD_CONFIG
        if [c.wire for c in channels] != [c.wire for c in self.channels]:
            self.channels = channels  # released, as after the reboot a node would take
        self.config = {
            **self.config,
            **{k: v for k, v in new.items() if v is not None},
            "channels": [c.wire for c in channels],
            "control_hz": hz,
            "telemetry_ms": telemetry,
            "key": HIDDEN,
        }
        return 0

    def _telemetry(self, period_ms: int, now_ns: int) -> None:
        self.telemetry_ms = period_ms
        self.state_due_ns = now_ns + period_ms * 1_000_000 if period_ms else None

    def info(self, now_ns: int) -> dict[str, Any]:
        counters = self.state_counters()
        return {
            "node_id": self.config["node_id"],
            "protocol_version": messages.PROTOCOL_VERSION,
            "firmware": FIRMWARE,
            "board": self.config["board"],
            "channels": len(self.channels),
            "kinds": _KINDS,
            "boot_id": self.boot_id,
            "boot_count": self.boot_count,
            "reset_cause": self.reset_cause,
            "configured": True,
            "uptime_ms": (now_ns - self.booted_ns) // 1_000_000 & 0x3FFFFFFF,
            "counters": dict(zip(messages.STATE_COUNTERS, counters, strict=True)),
            "heap_used_bytes": 40_000,
            "control_hz": self.config["control_hz"],
            "loop_late_us": {"ticks": 0},
        }

    # -- outgoing ----------------------------------------------------------------------------

    def _log(self, level: int, code: int, *args: int) -> None:
        self.log_seq = (self.log_seq + 1) & 0x3FFFFFFF
        self._send(cbor2.dumps([messages.LOG, self.log_seq, level, code, *args]))

    def _send(self, body: bytes) -> None:
        if self.address is None:
            return
        with contextlib.suppress(OSError):  # a full buffer drops it, as the network may
            self.sock.sendto(self.sender.seal(body), self.address)


class Emulator:
    """Serves many nodes from one select loop; telemetry deadlines wait in a heap."""

    def __init__(self, nodes: list[EmulatedNode]) -> None:
        self.nodes = nodes
        self.selector = selectors.DefaultSelector()
        for node in nodes:
            self.selector.register(node.sock, selectors.EVENT_READ, node)
        self._heap: list[tuple[int, int, EmulatedNode]] = []
        self._order = itertools.count()  # ties in the heap never compare nodes

    def _schedule(self, node: EmulatedNode) -> None:
        due = node.due_ns()
        if due is not None and due != node.scheduled_ns:
            node.scheduled_ns = due  # an older heap entry for this node is now stale
            heapq.heappush(self._heap, (due, next(self._order), node))

    def run(self, stop_fd: int | None = None) -> None:
        """Serve until `stop_fd` (a pipe) reaches end of file."""
        if stop_fd is not None:
            self.selector.register(stop_fd, selectors.EVENT_READ, None)
        heap = self._heap
        while True:
            now_ns = time.monotonic_ns()
            timeout_s = min(0.1, max(0.0, (heap[0][0] - now_ns) / 1e9)) if heap else 0.1
            for key, _ in self.selector.select(timeout_s):
                node = key.data
                if node is None:
                    if not os.read(key.fd, 4096):
                        return
                    continue
                node.drain(time.monotonic_ns())
                self._schedule(node)
            now_ns = time.monotonic_ns()
            # Real nodes answer whatever their neighbours do: after a stall, the STATE that
            # fell due go out a batch at a time, with the requests that wait read in between.
            for _ in range(TIMER_BATCH):
                if not heap or heap[0][0] > now_ns:
                    break
                due, _, node = heapq.heappop(heap)
                if node.scheduled_ns != due:
                    continue  # rescheduled meanwhile
                node.scheduled_ns = None
                node.on_timer(now_ns)
                self._schedule(node)


# -- for the host side: emulator processes and a fleet config for them -----------------------


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    sender_id: int
    key: bytes


def make_specs(count: int) -> list[NodeSpec]:
    """`count` nodes emu-1 .. emu-N, each with a key of its own."""
    return [NodeSpec("emu-%d" % i, i, secrets.token_bytes(32)) for i in range(1, count + 1)]


class EmulatorProcess:
    """A process serving `specs`; `ports` in their order. `close()` kills it; it also ends by
    itself when this process dies (its stdin, our pipe, closes)."""

    def __init__(
        self, specs: list[NodeSpec], folder: Path, channels: int = 6, cpus: set[int] | None = None
    ) -> None:
        spec = {
            "channels": channels,
            "nodes": [
                {"node_id": n.node_id, "sender_id": n.sender_id, "key": n.key.hex()} for n in specs
            ],
        }
        path = folder / ("emulator-%s.json" % specs[0].node_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds keys
        with os.fdopen(fd, "w") as file:
            json.dump(spec, file)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the benchmark is ours to pass on
        )
        self.pid = self.proc.pid
        if cpus:
            os.sched_setaffinity(self.pid, cpus)
        self.ports: list[int] = []
        try:
            assert self.proc.stdout is not None  # noqa: S101 - for mypy: stdout is a PIPE
            if not select.select([self.proc.stdout], [], [], START_S)[0]:
                raise TimeoutError("the emulator did not start within %.0f s" % START_S)
            line = self.proc.stdout.readline()
            self.ports = list(json.loads(line)["ports"]) if line else []
            if len(self.ports) != len(specs):
                raise RuntimeError("the emulator exited: %d" % self.proc.wait(5))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def fleet_toml(
    specs: list[NodeSpec], ports: list[int], key_dir: Path, telemetry_ms: int, channels: int = 6
) -> str:
    """A fleet config (docs/fleet.md) for emulated nodes; writes their key files to `key_dir`.
    One joint per channel, `emu1_c0` ..., -90 .. 90 deg over 1000 .. 2000 us."""
    parts = ["# Emulated nodes (tools/node_emulator.py)\n"]
    for spec, port in zip(specs, ports, strict=True):
        key_file = key_dir / (spec.node_id + ".key")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(spec.key.hex() + "\n")
        parts.append(
            '[nodes.%s]\nlink = "udp://127.0.0.1:%d"\nkey_file = %s\nsender_id = %d\n'
            "telemetry_ms = %d\n"
            % (spec.node_id, port, json.dumps(str(key_file)), spec.sender_id, telemetry_ms)
        )
    for spec in specs:
        for ch in range(channels):
            parts.append(
                '[joints.%s_c%d]\nnode = "%s"\nchannel = %d\nmin_deg = -90\nmax_deg = 90\n'
                "min_pulse_us = 1000\nmax_pulse_us = 2000\n"
                % (spec.node_id.replace("-", ""), ch, spec.node_id, ch)
            )
    return "\n".join(parts)


def load_spec(path: Path) -> list[EmulatedNode]:
    spec = json.loads(path.read_text())
    channels = int(spec.get("channels", 6))
    return [
        EmulatedNode(
            str(item["node_id"]),
            int(item["sender_id"]),
            bytes.fromhex(item["key"]),
            int(item.get("port", 0)),
            channels,
        )
        for item in spec["nodes"]
    ]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    nodes = load_spec(Path(sys.argv[1]))
    print(json.dumps({"ports": [node.port for node in nodes]}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        Emulator(nodes).run(sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
