"""A session per node: handshake, requests with retries, heartbeats, clock, reconnects.

States: connecting (first handshake), ready, degraded (heartbeats go unanswered, or requests
needed retries, but the node still answers), offline (no answer: requests fail at once while
the session reconnects with capped exponential backoff), incompatible (another protocol
version, or another node than the config expects: no requests until it changes).

Requests are retried with the same seq, which is safe: a node answers a repeat from its
reply cache and never executes it twice. A reboot shows as a new boot id (from LOG boot or
from ERROR unbound), after which the session handshakes again, re-pushes the node's config
and only then is ready.

Heartbeats come three times per link timeout of the node. A node heard from since the last one
(its telemetry, a reply) gets a KEEPALIVE, which it does not answer; a silent one gets a PING,
and so does every node once per `clock_every` heartbeats. With hundreds of nodes streaming,
a PING and its PONG per heartbeat took a fifth of the host's CPU.

Clock: every PONG carries the node's clock; the sample with the smallest round trip of the last
few gives the offset, with half that round trip as its uncertainty (the NTP minimum-delay
filter).
"""

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from servomesh.host import codec, logs
from servomesh.host.transport import LinkError, Transport
from servomesh.protocol import catalogue, messages
from servomesh.protocol.cbor import DecodeError

TICKS_MASK = messages.TICKS_PERIOD - 1
_CLOCK_SAMPLES = 8
_SEQ_LIMIT = 0x3FFFFFFF
# A request may be outstanding only while fewer than this many newer ones have been sent: the
# node caches its last 32 replies (firmware/dispatch.py CACHE_SIZE), and a retry must find its
# reply there, not run again.
SEQ_WINDOW = 16

StateHandler = Callable[["NodeSession", codec.Message], None]
# Makes the node's config what the host wants; True when the node reboots to apply it.
ConfigPush = Callable[["NodeSession"], Awaitable[bool]]


class NodeState(enum.StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    INCOMPATIBLE = "incompatible"


class NodeError(Exception):
    """A request to a node failed; the message names the node and why."""


class NodeOfflineError(NodeError):
    pass


class NodeTimeoutError(NodeError, TimeoutError):
    pass


class NodeIncompatibleError(NodeError):
    pass


class NodeRefusedError(NodeError):
    """The node answered ERROR; `code` is the protocol's error code, `reason` its name."""

    def __init__(self, node: str, kind: int, code: int, detail: int) -> None:
        self.code, self.detail = code, detail
        self.reason = catalogue.ERROR_NAMES.get(code, "error %d" % code)
        super().__init__(
            "%s refused %s: %s%s"
            % (node, catalogue.KINDS[kind][0], self.reason, " (%d)" % detail if detail else "")
        )


@dataclass
class SessionOptions:
    request_timeout_s: float = 1.0
    attempts: int = 4  # sends per request, the first included
    link_timeout_ms: int = 1000  # the node's: heartbeats come three times as often
    offline_after_misses: int = 3  # heartbeats unanswered in a row
    clock_every: int = 6  # heartbeats per PING (a clock sample) while the node is heard from
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    telemetry_ms: int = 0  # TELEMETRY asked for after each handshake; 0: off


@dataclass
class SessionCounters:
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    keepalives: int = 0  # KEEPALIVE notices sent (no reply): heartbeats to a node heard from
    refused: int = 0
    reconnects: int = 0
    reboots: int = 0
    version_mismatches: int = 0
    rtt_ms: float | None = None  # smoothed round trip
    clock_offset_us: int | None = None
    clock_uncertainty_us: int | None = None
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0  # bodies from the node that are not messages of the catalogue
    reflected: int = 0  # messages of a kind only a host sends: its own, sent back


class NodeSession:
    """The host's side of one node. Start with `start()`, end with `close()`."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        node_id: str | None = None,
        options: SessionOptions | None = None,
        on_state: StateHandler | None = None,
        on_log: StateHandler | None = None,
        push_config: ConfigPush | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.expected_node_id = node_id
        self.options = options or SessionOptions()
        self.on_state = on_state
        self.on_log = on_log
        self.push_config = push_config
        self.log = logs.NodeLog(logging.getLogger(__name__), name)
        self.state = NodeState.CONNECTING
        self.why = "connecting"  # a clear reason for the state, for users
        self.info: dict[str, Any] = {}
        self.boot_id: int | None = None
        self.counters = SessionCounters()
        self._seq = 0
        self._pending: dict[int, asyncio.Future[codec.Message | None]] = {}
        self._window = asyncio.Condition()  # requests wait here while SEQ_WINDOW is full
        self._queued = 0
        self._samples: deque[tuple[int, int]] = deque(maxlen=_CLOCK_SAMPLES)  # (rtt, offset)
        self._wake = asyncio.Event()  # reconnect now (a reboot seen, a link lost)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._open = False
        self._misses = 0
        self._heard = False  # anything from the node since the last heartbeat
        self._since_clock = 0  # heartbeats since the last PING
        self._closing = False

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="session %s" % self.name)

    async def wait_ready(self, timeout_s: float) -> None:
        """Until the node is ready; raises NodeError with the reason when it is not in time."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            raise NodeOfflineError("%s is %s: %s" % (self.name, self.state, self.why)) from None

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_pending(NodeOfflineError("%s: session closed" % self.name))
        self._close_link()

    @property
    def ready(self) -> bool:
        return self.state in (NodeState.READY, NodeState.DEGRADED)

    def _set_state(self, state: NodeState, why: str) -> None:
        if state != self.state:
            level = (
                logging.INFO
                if state in (NodeState.READY, NodeState.CONNECTING)
                else logging.WARNING
            )
            self.log.log(level, "%s -> %s: %s", self.state, state, why)
        self.state, self.why = state, why
        if self.ready:
            self._ready.set()
        else:
            self._ready.clear()
            if state in (NodeState.OFFLINE, NodeState.INCOMPATIBLE):
                self._fail_pending(NodeOfflineError("%s is %s: %s" % (self.name, state, why)))

    # -- requests --------------------------------------------------------------------------

    async def request(
        self, kind: int, *fields: Any, timeout_s: float | None = None
    ) -> codec.Message:
        """Send a request and return its reply (ACK, INFO, PONG, CONFIG).

        Raises NodeRefusedError for an ERROR reply, NodeOfflineError when the node is not
        ready (at once, without waiting), NodeTimeoutError after the last retry.
        """
        self.check_ready()
        return await self.request_now(kind, *fields, timeout_s=timeout_s)

    def check_ready(self) -> None:
        """Raise NodeIncompatibleError or NodeOfflineError, with the reason, unless ready."""
        if not self.ready:
            if self.state == NodeState.INCOMPATIBLE:
                raise NodeIncompatibleError("%s is incompatible: %s" % (self.name, self.why))
            raise NodeOfflineError("%s is %s: %s" % (self.name, self.state, self.why))

    async def request_now(
        self, kind: int, *fields: Any, timeout_s: float | None = None
    ) -> codec.Message:
        """`request` without the readiness check: for the handshake and config push."""
        timeout = self.options.request_timeout_s if timeout_s is None else timeout_s
        if self._queued or not self._seq_free():  # in turn, behind those already waiting
            self._queued += 1
            try:
                async with self._window:
                    await self._window.wait_for(self._seq_free)
            finally:
                self._queued -= 1
        seq, body, bound_to = self._message(kind, fields)
        loop = asyncio.get_running_loop()
        self.counters.requests += 1
        attempts = max(1, self.options.attempts)
        started = time.monotonic()
        reply: codec.Message | None = None
        try:
            for attempt in range(attempts):
                if attempt:
                    self.counters.retries += 1
                self._send(body, bound_to)
                left = timeout - (time.monotonic() - started)
                wait = left / (attempts - attempt)
                if wait <= 0:
                    break  # the loop stalled past the deadline (hundreds of handshakes at once)
                # A future per attempt, which the timer resolves to None: a late reply to an
                # earlier send of the same seq answers this one just as well.
                future: asyncio.Future[codec.Message | None] = loop.create_future()
                self._pending[seq] = future
                timer = loop.call_later(wait, _no_reply, future)
                try:
                    reply = await future
                finally:
                    timer.cancel()
                if reply is not None:
                    break
            if reply is None:
                self.counters.timeouts += 1
                raise NodeTimeoutError(
                    "%s: no reply to %s within %.0f ms"
                    % (self.name, catalogue.KINDS[kind][0], timeout * 1000)
                )
        finally:
            self._pending.pop(seq, None)
            if self._queued:
                async with self._window:
                    self._window.notify_all()
        rtt_ms = (time.monotonic() - started) * 1000
        srtt = self.counters.rtt_ms
        self.counters.rtt_ms = rtt_ms if srtt is None else srtt + (rtt_ms - srtt) / 8
        if reply.kind == messages.ERROR:
            code = reply.fields[0]
            detail = reply.fields[1] if len(reply.fields) > 1 else 0
            reason = catalogue.ERROR_NAMES.get(code, str(code))
            by_reason = self.counters.refused_by_reason
            by_reason[reason] = by_reason.get(reason, 0) + 1
            self.counters.refused += 1
            if code == messages.E_UNBOUND:
                self._rebooted("the node answers unbound: it has rebooted")
                raise NodeOfflineError("%s rebooted; reconnecting" % self.name)
            raise NodeRefusedError(self.name, kind, code, detail)
        return reply

    def notify(self, kind: int, *fields: Any) -> None:
        """Send a notice (KEEPALIVE), which the node never answers; NodeOfflineError when the
        link cannot take it."""
        _, body, bound_to = self._message(kind, fields)
        self._send(body, bound_to)

    def _message(self, kind: int, fields: tuple[Any, ...]) -> tuple[int, bytes, int | None]:
        """The next seq, the body of `[kind, seq, *fields]` and the boot id to bind it to."""
        self._seq = self._seq % _SEQ_LIMIT + 1
        body = codec.encode(kind, self._seq, *fields)  # a refused body leaves a gap: harmless
        bind = self.transport.bound and kind not in messages.READ_ONLY_KINDS
        return self._seq, body, self.boot_id if bind else None

    def _send(self, body: bytes, bound_to: int | None) -> None:
        try:
            self.transport.send(body, bound_to)
        except (LinkError, OSError) as error:
            raise NodeOfflineError("%s: %s" % (self.name, error)) from None

    def _seq_free(self) -> bool:
        return not self._pending or self._seq + 1 - min(self._pending) < SEQ_WINDOW

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a request that gave up must not warn
        self._pending.clear()

    # -- incoming ----------------------------------------------------------------------------

    def _receive(self, body: bytes) -> None:
        try:
            message = codec.decode(body)
        except DecodeError as error:
            self.counters.undecodable += 1
            self.log.debug("undecodable body: %s", error)
            return
        if message.kind < messages.ACK:
            # Requests and notices go host to node only: this is the host's own message sent
            # back (a serial port that echoes, someone on the LAN reflecting a datagram, which
            # the tag does not tell from the node's). Taken as the reply to its seq, a PING
            # would pass for a PONG and a HELLO for an INFO.
            self.counters.reflected += 1
            self.log.debug("dropped a message of kind %d, which only a host sends", message.kind)
            return
        self._heard = True
        if message.kind == messages.STATE:
            if self.on_state is not None:
                self.on_state(self, message)
            return
        if message.kind == messages.LOG:
            if message.fields[1] == messages.LOG_BOOT and self.boot_id is not None:
                self._rebooted("the node logged a new boot")
            if self.on_log is not None:
                self.on_log(self, message)
            return
        future = self._pending.get(message.seq)
        if future is not None and not future.done():
            future.set_result(message)

    def _lost(self, why: str) -> None:
        self._open = False
        self._set_state(NodeState.OFFLINE, "link lost: %s" % why)
        self._wake.set()

    def _rebooted(self, why: str) -> None:
        if self.state in (NodeState.READY, NodeState.DEGRADED):
            self._set_state(NodeState.CONNECTING, why)
            self._wake.set()

    # -- clock -------------------------------------------------------------------------------

    def node_ticks(self, host_ns: int) -> int:
        """The node's clock (ticks_us mod 2**30) at host `time.monotonic_ns()` = host_ns."""
        offset = self.counters.clock_offset_us
        if offset is None:
            raise NodeOfflineError("%s: clock not synchronized yet" % self.name)
        return int((host_ns // 1000 + offset) & TICKS_MASK)

    def host_ns(self, node_ticks: int, near_ns: int) -> int:
        """The host time of node clock value `node_ticks`, taken within half a clock period
        of `near_ns` (the node's clock wraps every 2**30 µs)."""
        offset = self.counters.clock_offset_us
        if offset is None:
            raise NodeOfflineError("%s: clock not synchronized yet" % self.name)
        near_ticks = (near_ns // 1000 + offset) & TICKS_MASK
        delta = (node_ticks - near_ticks) & TICKS_MASK
        if delta >= messages.TICKS_PERIOD // 2:
            delta -= messages.TICKS_PERIOD
        return int(near_ns + delta * 1000)

    async def sync_clock(self, samples: int = 1) -> None:
        for _ in range(samples):
            sent = time.monotonic_ns()
            reply = await self.request_now(messages.PING)
            received = time.monotonic_ns()
            rtt_us = (received - sent) // 1000
            offset = (reply.fields[0] - (sent + received) // 2000) & TICKS_MASK
            if offset >= messages.TICKS_PERIOD // 2:
                offset -= messages.TICKS_PERIOD  # shown signed: a node a little behind is -12
            self._samples.append((rtt_us, offset))
        rtt_us, offset = min(self._samples)
        self.counters.clock_offset_us = offset
        self.counters.clock_uncertainty_us = rtt_us // 2 + 1

    # -- the session's task ----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.options.backoff_initial_s
        while not self._closing:
            if not self.ready:
                try:
                    await self._connect()
                    backoff = self.options.backoff_initial_s
                except NodeIncompatibleError as error:
                    self._set_state(NodeState.INCOMPATIBLE, str(error))
                except (NodeError, LinkError) as error:
                    if self.state != NodeState.CONNECTING or self.boot_id is not None:
                        self._set_state(NodeState.OFFLINE, str(error))
                    else:
                        self.why = str(error)
                if not self.ready:
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.options.backoff_max_s)
                    continue
            # A third of the node's link timeout, less up to a tenth at random: sessions
            # started together do not all PING in the same instant.
            spread = random.uniform(0.9, 1.0)  # noqa: S311 (timing jitter, not a secret)
            await self._sleep(self.options.link_timeout_ms / 3000 * spread)
            if self.ready:
                await self._heartbeat()

    async def _sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less when woken (a reboot seen, a link lost)."""
        self._wake.clear()
        # A timer on the event, not wait_for: that makes a task per sleep, and a fleet of
        # hundreds of nodes sleeps between heartbeats thousands of times a second.
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _heartbeat(self) -> None:
        heard, self._heard = self._heard, False
        self._since_clock += 1
        if (
            heard
            and self.state == NodeState.READY  # a degraded session waits for a PONG
            and self._since_clock < self.options.clock_every
            and messages.KEEPALIVE in self.info.get("kinds", ())  # older firmware: PING
        ):
            try:
                self.notify(messages.KEEPALIVE)
                self.counters.keepalives += 1
            except NodeError as error:
                self.log.debug("keepalive: %s", error)
            return
        self._since_clock = 0
        try:
            await self.sync_clock()
            self._heard = False  # the PONG answers this heartbeat, not the next one
            self._misses = 0
            if self.state == NodeState.DEGRADED:
                self._set_state(NodeState.READY, "heartbeats answered again")
        except NodeTimeoutError:
            self._misses += 1
            if self._misses >= self.options.offline_after_misses:
                self.counters.reconnects += 1
                self._set_state(NodeState.OFFLINE, "%d heartbeats unanswered" % self._misses)
            else:
                self._set_state(NodeState.DEGRADED, "a heartbeat went unanswered")
        except NodeError as error:
            self.log.debug("heartbeat: %s", error)

    def _close_link(self) -> None:
        if self._open:
            self._open = False
            self.transport.close()

    async def _connect(self) -> None:
        if not self._open:
            await self.transport.open(self._receive, self._lost)
            self._open = True
        timeout = min(self.options.request_timeout_s, 0.5)
        reply = await self._handshake(timeout)
        info = dict(reply.fields[0])
        node_id = info.get("node_id")
        if self.expected_node_id is not None and node_id != self.expected_node_id:
            raise NodeIncompatibleError(
                "%s answers as node %r, the config expects %r"
                % (self.transport.name, node_id, self.expected_node_id)
            )
        if info.get("protocol_version") != messages.PROTOCOL_VERSION:
            self.counters.version_mismatches += 1
            raise NodeIncompatibleError(
                "node speaks protocol %r, this host %d: update the firmware with servomesh deploy"
                % (info.get("protocol_version"), messages.PROTOCOL_VERSION)
            )
        if self.boot_id is not None and info["boot_id"] != self.boot_id:
            self.counters.reboots += 1
            self.log.warning("rebooted (reset cause %s)", info.get("reset_cause"))
        self.info, self.boot_id = info, info["boot_id"]
        self._samples.clear()
        self._heard, self._since_clock = False, 0
        await self.sync_clock(3)
        if self.push_config is not None and await self.push_config(self):
            raise NodeOfflineError("%s: rebooting to apply the fleet's config" % self.name)
        if self.options.telemetry_ms:
            await self.request_now(messages.TELEMETRY, self.options.telemetry_ms)
        self._misses = 0
        self._set_state(
            NodeState.READY, "boot %d, firmware %s" % (self.boot_id, info.get("firmware"))
        )

    async def _handshake(self, timeout_s: float) -> codec.Message:
        reflected = self.counters.reflected
        try:
            return await self.request_now(
                messages.HELLO, messages.PROTOCOL_VERSION, timeout_s=timeout_s
            )
        except NodeRefusedError as error:
            if error.code == messages.E_VERSION:
                self.counters.version_mismatches += 1
                raise NodeIncompatibleError(
                    "node speaks protocol %d, this host %d: update the firmware with servomesh "
                    "deploy" % (error.detail, messages.PROTOCOL_VERSION)
                ) from None
            raise
        except NodeTimeoutError:
            if self.counters.reflected > reflected:
                raise NodeOfflineError(
                    "%s: no answer to HELLO, only the HELLO itself sent back (a link that "
                    "echoes, such as TX wired to RX)" % self.transport.name
                ) from None
            raise NodeOfflineError(
                "%s: no answer to HELLO (node off, wrong address, or another key)"
                % self.transport.name
            ) from None


def _no_reply(future: "asyncio.Future[codec.Message | None]") -> None:
    if not future.done():
        future.set_result(None)
