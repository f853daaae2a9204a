"""A seeded userspace UDP proxy that drops, delays, duplicates and reorders datagrams, or sends
a client's datagrams back to it (reflects them, as someone on the LAN could).

This kernel has no `tc netem`, so tests put this proxy between a client and the node (or host)
under test. It runs its own selector loop in a daemon thread, so blocking-socket clients and
asyncio hosts in the test process can both use it.

Each client address gets its own upstream-facing socket: the upstream sees one source port per
client, as it would see distinct hosts, and a reply is routed by the socket it arrives on.

Randomness comes from `random.Random(seed)` only. Each direction draws from its own stream, and
every impaired datagram consumes the same number of draws whatever its fate or the settings, so
datagram N of a direction meets the same fate in two runs that send the same traffic in the same
order. With several concurrent clients that order is the order of arrival at the proxy.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal, get_args

log = logging.getLogger(__name__)

Direction = Literal["to_upstream", "to_client"]
Directions = Literal["both", "to_upstream", "to_client"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

Address = tuple[str, int]


@dataclass(frozen=True)
class Impairment:
    """What the link does to datagrams travelling in `directions`."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_ms: tuple[float, float] = (0.0, 0.0)
    directions: Directions = "both"
    # A client's datagrams go back to it, not upstream: no draws, no other impairment.
    reflect: bool = False

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            probability = getattr(self, name)
            if not 0.0 <= probability <= 1.0:  # also refuses NaN
                raise ValueError("%s must be within [0, 1], got %r" % (name, probability))
        low_ms, high_ms = self.delay_ms
        if not 0.0 <= low_ms <= high_ms:
            raise ValueError("delay_ms must be (low, high) with 0 <= low <= high")
        if self.directions not in get_args(Directions):
            raise ValueError("directions must be one of %s" % (get_args(Directions),))

    def applies_to(self, direction: Direction) -> bool:
        return self.directions in ("both", direction)


@dataclass
class Counters:
    """Datagrams seen in one direction.

    `forwarded` counts every datagram sent, duplicate copies included, once its send returns:
    it can trail what a fast peer has already received. The others are counted on arrival.
    """

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    # held back and then overtaken by the next datagram of the same client and direction
    reordered: int = 0
    # sent back to the client they came from (to_upstream only; then forwarded as to_client)
    reflected: int = 0
    # failed sends and receives (a peer not listening yet), and clients over `max_clients`
    errors: int = 0


@dataclass(eq=False)
class _Session:
    client: Address
    sock: socket.socket
    held: dict[Direction, _Send] = field(default_factory=dict)


@dataclass(eq=False)
class _Send:
    session: _Session
    direction: Direction
    payload: bytes
    cancelled: bool = False


class LossyUdpProxy:
    """Forward UDP between clients and `upstream`, impairing the link on a seeded schedule.

    Serves from construction until `close()` (or the end of a `with` block).
    """

    max_datagram_bytes = 65535
    # one socket per client: bounds the file descriptors a runaway test can take
    max_clients = 256
    # a held datagram goes out after this long if no later one overtakes it
    reorder_hold_ms = 5.0
    duplicate_gap_ms = (0.1, 2.0)
    # reads per socket per loop turn, so a flood cannot starve the timers
    max_reads_per_wakeup = 64
    # longest select() wait; close() also wakes the loop at once
    max_wait_s = 0.1
    close_timeout_s = 2.0

    def __init__(
        self,
        upstream: Address,
        *,
        seed: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay_ms: tuple[float, float] = (0.0, 0.0),
        directions: Directions = "both",
        reflect: bool = False,
    ) -> None:
        self._impairment = Impairment(loss, duplicate, reorder, delay_ms, directions, reflect)
        self._upstream = upstream
        seeds = random.Random(seed)
        self._rng = {direction: random.Random(seeds.getrandbits(64)) for direction in DIRECTIONS}
        self._lock = threading.Lock()
        self._counters = {direction: Counters() for direction in DIRECTIONS}
        self._sessions: dict[Address, _Session] = {}
        self._queue: list[tuple[float, int, _Send]] = []
        self._order = itertools.count()
        self._closed = False
        self._stopping = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._wake_w.setblocking(False)
            self._front.bind(("127.0.0.1", 0))
            self._address: Address = self._front.getsockname()
            for sock, on_readable in (
                (self._front, self._read_front),
                (self._wake_r, self._drain_wake),
            ):
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, on_readable)
            self._thread = threading.Thread(
                target=self._run, name="udp-proxy-%d" % self._address[1], daemon=True
            )
            self._thread.start()
        except BaseException:
            self._close_sockets()
            raise

    @property
    def address(self) -> Address:
        """Where clients send: 127.0.0.1 and an ephemeral port."""
        return self._address

    @property
    def impairment(self) -> Impairment:
        return self._impairment

    @property
    def counters(self) -> dict[Direction, Counters]:
        """A consistent snapshot of every direction's counters."""
        with self._lock:
            return {direction: replace(tally) for direction, tally in self._counters.items()}

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def set(
        self,
        *,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        delay_ms: tuple[float, float] | None = None,
        directions: Directions | None = None,
        reflect: bool | None = None,
    ) -> Impairment:
        """Change the impairments for datagrams received from now on; returns the new ones."""
        with self._lock:
            now = self._impairment
            self._impairment = Impairment(
                now.loss if loss is None else loss,
                now.duplicate if duplicate is None else duplicate,
                now.reorder if reorder is None else reorder,
                now.delay_ms if delay_ms is None else delay_ms,
                now.directions if directions is None else directions,
                now.reflect if reflect is None else reflect,
            )
            return self._impairment

    def close(self) -> None:
        """Stop the loop and close every socket; datagrams still scheduled are discarded."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        with contextlib.suppress(OSError):  # a full wake-up pipe wakes the loop all the same
            self._wake_w.send(b"\0")
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            log.warning(
                "udp proxy %s: loop did not stop within %.1f s", self._address, self.close_timeout_s
            )
        self._close_sockets()

    def __enter__(self) -> LossyUdpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _close_sockets(self) -> None:
        for session in self._sessions.values():
            session.sock.close()
        self._sessions.clear()
        for sock in (self._front, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                wait_s = self._send_due()
                wait_s = self.max_wait_s if wait_s is None else min(wait_s, self.max_wait_s)
                for key, _ in self._selector.select(wait_s):
                    on_readable: Callable[[], None] = key.data
                    on_readable()
        except Exception:
            log.exception("udp proxy %s: loop failed", self._address)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):  # nothing to drain: it raced a previous drain
            self._wake_r.recv(64)

    def _read_front(self) -> None:
        for _ in range(self.max_reads_per_wakeup):
            try:
                payload, client = self._front.recvfrom(self.max_datagram_bytes)
            except BlockingIOError:
                return
            except OSError as exc:
                self._count_error("to_upstream", exc)
                continue
            session = self._sessions.get(client) or self._open_session(client)
            if session is None:
                with self._lock:
                    self._counters["to_upstream"].received += 1
                continue
            self._impair(session, "to_upstream", payload)

    def _read_upstream(self, session: _Session) -> None:
        for _ in range(self.max_reads_per_wakeup):
            try:
                payload = session.sock.recv(self.max_datagram_bytes)
            except BlockingIOError:
                return
            except OSError as exc:
                # ECONNREFUSED when the upstream is not listening (yet): a lost datagram, as on
                # a real link, and the proxy keeps serving.
                self._count_error("to_client", exc)
                continue
            self._impair(session, "to_client", payload)

    def _open_session(self, client: Address) -> _Session | None:
        if len(self._sessions) >= self.max_clients:
            self._count_error("to_upstream", "client %s over max_clients" % (client,))
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # connected: the kernel filters out strangers and reports the upstream's ICMP errors
            sock.connect(self._upstream)
        except OSError as exc:
            sock.close()
            self._count_error("to_upstream", exc)
            return None
        session = _Session(client, sock)
        self._sessions[client] = session
        self._selector.register(
            sock, selectors.EVENT_READ, functools.partial(self._read_upstream, session)
        )
        return session

    def _impair(self, session: _Session, direction: Direction, payload: bytes) -> None:
        # Under the lock throughout (no I/O here), so a snapshot that shows a datagram as
        # received also shows its fate.
        with self._lock:
            self._decide(session, direction, payload, time.monotonic())

    def _decide(self, session: _Session, direction: Direction, payload: bytes, now: float) -> None:
        impairment = self._impairment
        tally = self._counters[direction]
        tally.received += 1
        if impairment.reflect and direction == "to_upstream":
            tally.reflected += 1
            self._schedule(now, _Send(session, "to_client", payload))
            return
        if not impairment.applies_to(direction):
            self._schedule(now, _Send(session, direction, payload))
            return
        rng = self._rng[direction]
        # Always five draws, so one datagram's fate never shifts the dice for the next ones.
        loss_draw, duplicate_draw, reorder_draw, delay_draw, gap_draw = (
            rng.random() for _ in range(5)
        )
        if loss_draw < impairment.loss:
            tally.dropped += 1
            return
        low_ms, high_ms = impairment.delay_ms
        due = now + (low_ms + (high_ms - low_ms) * delay_draw) / 1000.0
        send = _Send(session, direction, payload)
        overtaken = session.held.pop(direction, None)
        if overtaken is None and reorder_draw < impairment.reorder:
            session.held[direction] = send
            self._schedule(due + self.reorder_hold_ms / 1000.0, send)
        else:
            self._schedule(due, send)
        if overtaken is not None:
            # Same due time, later sequence number: goes out right after this datagram.
            overtaken.cancelled = True
            self._schedule(due, _Send(session, direction, overtaken.payload))
            tally.reordered += 1
        if duplicate_draw < impairment.duplicate:
            gap_low_ms, gap_high_ms = self.duplicate_gap_ms
            gap_ms = gap_low_ms + (gap_high_ms - gap_low_ms) * gap_draw
            self._schedule(due + gap_ms / 1000.0, _Send(session, direction, payload))
            tally.duplicated += 1

    def _schedule(self, due: float, send: _Send) -> None:
        heapq.heappush(self._queue, (due, next(self._order), send))

    def _send_due(self) -> float | None:
        """Send what is due; return the seconds until the next send, or None if none waits."""
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            _, _, send = heapq.heappop(self._queue)
            if send.cancelled:
                continue
            session = send.session
            if session.held.get(send.direction) is send:
                del session.held[send.direction]  # nothing overtook it within the hold time
            try:
                if send.direction == "to_upstream":
                    session.sock.send(send.payload)
                else:
                    self._front.sendto(send.payload, session.client)
            except OSError as exc:
                # A full buffer or a vanished peer loses the datagram, as a real link would.
                self._count_error(send.direction, exc)
                continue
            with self._lock:
                self._counters[send.direction].forwarded += 1
        return self._queue[0][0] - now if self._queue else None

    def _count_error(self, direction: Direction, reason: object) -> None:
        with self._lock:
            self._counters[direction].errors += 1
            first = self._counters[direction].errors == 1
        # WARNING once per direction, DEBUG on the repeats
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "udp proxy %s: %s: %s",
            self._address,
            direction,
            reason,
        )
