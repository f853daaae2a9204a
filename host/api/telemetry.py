"""The telemetry WebSocket (docs/api.md, section 4): fleet events fanned out to clients.

Fleet callbacks only convert, encode and enqueue (they never await): each client has its own
bounded queue, drained by its own writer task, so a client that reads slowly (or never) loses
its oldest messages and slows neither the fleet nor the other clients. A message is encoded
once and the same text goes to every client that wants it.
"""

import asyncio
import contextlib
import json
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from fastapi import WebSocket, WebSocketDisconnect

from servomesh.host import oplog
from servomesh.host.api import models
from servomesh.host.api.security import SUBPROTOCOL
from servomesh.host.fleet import Fleet

log = logging.getLogger(__name__)

MIN_RATE_HZ: Final = 1.0
MAX_RATE_HZ: Final = 100.0
_GOING_AWAY: Final = 1001  # WebSocket close code: the server is shutting down
_CLOSE_TIMEOUT_S: Final = 1.0  # a close frame to a client whose socket is full never goes out
_STATE_NODE_TICKS: Final = 2  # STATE values: kind, seq, node_ticks_us, ...
_CHANGES: Final = operator.itemgetter("name", "state", "boot_id", "reconnects", "reboots")

Filter = frozenset[str] | None  # None: everything


class QueueStats(NamedTuple):
    queued: int  # messages waiting now (at most queue_size)
    dropped: int  # messages dropped from this client's full queue


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


@dataclass(eq=False)
class _Client:
    """One WebSocket's queue, subscription and per-node rate state."""

    websocket: WebSocket
    queue: deque[str] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    joints: Filter = None
    nodes: Filter = None
    period_s: float = 1 / 50
    due_s: dict[str, float] = field(default_factory=dict)  # node -> next send time (loop clock)
    pending: dict[str, str] = field(default_factory=dict)  # node -> latest coalesced message
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    dropped: int = 0

    def reset_rate(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.pending.clear()
        self.due_s.clear()


class SubscriptionError(ValueError):
    """A subscription message the hub cannot take; the text goes back to the client."""


class TelemetryHub:
    """Fans fleet telemetry out to WebSocket clients; `serve` runs one client."""

    max_message_bytes = 4096  # a subscription is small; anything larger is refused
    poll_interval_s = 0.1  # how often node states are compared for a `nodes` message at once

    def __init__(
        self,
        fleet: Fleet,
        *,
        queue_size: int = 256,
        default_rate_hz: float = 50,
        node_period_s: float = 1.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not MIN_RATE_HZ <= default_rate_hz <= MAX_RATE_HZ:
            raise ValueError("default_rate_hz must be from 1 to 100")
        self.fleet = fleet
        self.queue_size = queue_size
        self.default_rate_hz = default_rate_hz
        self.node_period_s = node_period_s
        self.dropped = 0  # messages dropped from full queues, all clients, since start
        self._clients: set[_Client] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self._nodes_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._no_clients = asyncio.Event()
        self._no_clients.set()
        self._node_joints: dict[str, list[str]] = {}
        for name, joint in fleet.config.joints.items():
            self._node_joints.setdefault(joint.node, []).append(name)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def queues(self) -> list[QueueStats]:
        """Each client's queue: its length now and its drops."""
        return [QueueStats(len(client.queue), client.dropped) for client in self._clients]

    async def start(self) -> None:
        self._closed.clear()
        self._unsubscribe = [
            self.fleet.subscribe(self._on_state),
            self.fleet.subscribe_status(self._on_status),
            self.fleet.subscribe_operations(self._on_operation),
        ]
        self._nodes_task = asyncio.create_task(self._send_nodes())

    async def close(self) -> None:
        """Stop listening, end every client's `serve` (a close frame where the socket takes
        one) and wait for them, bounded."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._closed.set()
        if self._nodes_task is not None:
            self._nodes_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nodes_task
            self._nodes_task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_clients.wait(), 2 * _CLOSE_TIMEOUT_S)

    # -- one client ------------------------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        """Run one client until it disconnects or the hub closes. The caller has checked its
        token and Origin."""
        offered = websocket.scope.get("subprotocols") or []
        try:
            await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        except (WebSocketDisconnect, OSError):
            return  # gone during the handshake: expected, nothing to tell
        if self._closed.is_set():
            await self._close_socket(websocket)
            return
        client = _Client(websocket, period_s=1 / self.default_rate_hz)
        # Listed before the hello is sent: what happens meanwhile is queued after it.
        self._clients.add(client)
        self._no_clients.clear()
        tasks: list[asyncio.Task[None]] = []
        try:
            await websocket.send_text(self._hello())
            tasks = [
                asyncio.create_task(self._read(client)),
                asyncio.create_task(self._write(client)),
                asyncio.create_task(self._wait_closed()),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (WebSocketDisconnect, OSError):
            pass  # the client went away during the hello: expected, nothing to tell
        finally:
            self._clients.discard(client)
            if not self._clients:
                self._no_clients.set()
            client.reset_rate()
            log.debug("a telemetry client left; %d messages dropped for it", client.dropped)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError):
                    await task
        if self._closed.is_set():
            await self._close_socket(websocket)

    async def _wait_closed(self) -> None:
        await self._closed.wait()

    async def _close_socket(self, websocket: WebSocket) -> None:
        # A client that never reads has a full socket: its close frame waits forever.
        with contextlib.suppress(TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
            await asyncio.wait_for(websocket.close(code=_GOING_AWAY), _CLOSE_TIMEOUT_S)

    async def _write(self, client: _Client) -> None:
        try:
            while True:
                while client.queue:
                    await client.websocket.send_text(client.queue.popleft())
                client.wake.clear()
                await client.wake.wait()
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the client is gone (RuntimeError: starlette, a send after its close)

    async def _read(self, client: _Client) -> None:
        while True:
            message = await client.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                if text is None:
                    raise SubscriptionError("send the subscription as JSON text")
                self._subscribe(client, text)
            except SubscriptionError as error:
                self._enqueue(
                    client, _encode({"type": "error", "t": time.time(), "detail": str(error)})
                )

    def _subscribe(self, client: _Client, text: str) -> None:
        """Apply a subscription message to `client`; SubscriptionError says what is wrong."""
        if len(text) > self.max_message_bytes or len(text.encode()) > self.max_message_bytes:
            raise SubscriptionError("a message is at most %d bytes" % self.max_message_bytes)
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise SubscriptionError("not JSON") from None
        if not isinstance(body, dict):
            raise SubscriptionError('expected {"subscribe": {...}, "max_rate_hz": N}')
        unknown = set(body) - {"subscribe", "max_rate_hz"}
        if unknown:
            raise SubscriptionError("unknown fields: %s" % ", ".join(sorted(unknown)))
        subscribe = body.get("subscribe", {})
        if not isinstance(subscribe, dict):
            raise SubscriptionError("subscribe: expected an object")
        unknown = set(subscribe) - {"joints", "nodes"}
        if unknown:
            raise SubscriptionError("subscribe: unknown fields: %s" % ", ".join(sorted(unknown)))
        joints = _filter("joints", subscribe.get("joints", "*"), self.fleet.config.joints)
        nodes = _filter("nodes", subscribe.get("nodes", "*"), self.fleet.config.nodes)
        rate_hz = body.get("max_rate_hz", self.default_rate_hz)
        if (
            isinstance(rate_hz, bool)
            or not isinstance(rate_hz, int | float)
            or not math.isfinite(rate_hz)
            or not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ
        ):
            raise SubscriptionError("max_rate_hz: a number from 1 to 100")
        client.joints, client.nodes, client.period_s = joints, nodes, 1 / rate_hz
        client.reset_rate()

    # -- fleet events (on the event loop; never await) -------------------------------------

    def _enqueue(self, client: _Client, text: str) -> None:
        if len(client.queue) >= self.queue_size:
            client.queue.popleft()  # drop the oldest: a slow reader sees fresh data
            client.dropped += 1
            self.dropped += 1
        client.queue.append(text)
        client.wake.set()

    def _broadcast(self, text: str) -> None:
        for client in self._clients:
            self._enqueue(client, text)

    def _on_state(self, node: str, values: list[Any]) -> None:
        names = self._node_joints.get(node)
        if not names or not self._clients:
            return
        received_s = time.time()
        ticks = values[_STATE_NODE_TICKS] if len(values) > _STATE_NODE_TICKS else None
        states: dict[str, dict[str, Any]] = {}
        for name in names:
            state = self.fleet.joint_state(name)
            states[name] = {
                "target_deg": state.target_deg,
                "position_deg": state.position_deg,
                "moving": state.moving,
                "released": state.released,
            }
        encoded: dict[tuple[str, ...], str] = {}  # one encoding per distinct joint selection
        for client in self._clients:
            chosen = tuple(n for n in names if client.joints is None or n in client.joints)
            if not chosen:
                continue
            text = encoded.get(chosen)
            if text is None:
                text = encoded[chosen] = _encode(
                    {
                        "type": "joints",
                        "t": received_s,
                        "node": node,
                        "node_ticks_us": ticks,
                        "joints": {name: states[name] for name in chosen},
                    }
                )
            self._offer(client, node, text)

    def _offer(self, client: _Client, node: str, text: str) -> None:
        """Enqueue a `joints` message within the client's rate for `node`, or hold it as the
        node's pending message (a newer one replaces it) until the node's next slot."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A virtual schedule (GCRA) with half a period of tolerance: jitter in the node's
        # stream is not delayed, and over any window the rate stays within max_rate_hz.
        due = client.due_s.get(node, now)
        early_s = due - now - client.period_s / 2
        if early_s > 0:
            client.pending[node] = text
            if node not in client.timers:
                client.timers[node] = loop.call_later(early_s, self._release, client, node)
            return
        # A late timer may still hold an older message: this one supersedes it.
        client.pending.pop(node, None)
        timer = client.timers.pop(node, None)
        if timer is not None:
            timer.cancel()
        client.due_s[node] = max(due, now) + client.period_s
        self._enqueue(client, text)

    def _release(self, client: _Client, node: str) -> None:
        client.timers.pop(node, None)
        text = client.pending.pop(node, None)
        if text is not None and client in self._clients:
            now = asyncio.get_running_loop().time()
            client.due_s[node] = max(client.due_s.get(node, now), now) + client.period_s
            self._enqueue(client, text)

    def _on_status(self, status: dict[str, Any]) -> None:
        self._broadcast(_encode({"type": "status", "t": time.time(), **status}))

    def _on_operation(self, operation: oplog.Operation) -> None:
        if not self._clients:
            return  # every command comes here: no encoding for nobody
        body = models.Operation.model_validate(operation, from_attributes=True)
        message = {"type": "operation", "t": time.time(), "operation": body.model_dump(mode="json")}
        self._broadcast(_encode(message))

    async def _send_nodes(self) -> None:
        """`nodes` every node_period_s, and at once when a node's state changes."""
        last: list[tuple[Any, ...]] = []
        next_s = 0.0
        while True:
            await asyncio.sleep(self.poll_interval_s)
            if not self._clients:
                continue  # a client's hello has the nodes
            rows = self.fleet.nodes()
            # A reboot passes through `connecting` for a few ms, less than a poll: a new boot
            # or reconnect counts as a change too.
            states = [_CHANGES(row) for row in rows]
            now = time.monotonic()
            if states != last or now >= next_s:
                self._broadcast_nodes(rows)
                next_s = now + self.node_period_s
            last = states

    def _broadcast_nodes(self, rows: list[dict[str, Any]]) -> None:
        t = time.time()
        nodes = [_node(row) for row in rows]
        encoded: dict[Filter, str] = {}  # one encoding per distinct node filter
        for client in self._clients:
            text = encoded.get(client.nodes)
            if text is None:
                chosen = [n for n in nodes if client.nodes is None or n["name"] in client.nodes]
                text = encoded[client.nodes] = _encode({"type": "nodes", "t": t, "nodes": chosen})
            if client.nodes is None or client.nodes:
                self._enqueue(client, text)

    def _hello(self) -> str:
        fleet = self.fleet
        joints = [
            models.Joint.of(fleet, name).model_dump(mode="json") for name in fleet.config.joints
        ]
        nodes = [_node(row) for row in fleet.nodes()]
        status = fleet.status()
        return _encode(
            {"type": "hello", "t": time.time(), **status, "joints": joints, "nodes": nodes}
        )


def _node(row: dict[str, Any]) -> dict[str, Any]:
    return models.Node.of(row).model_dump(mode="json")


def _filter(what: str, value: object, known: dict[str, Any]) -> Filter:
    """A subscription's "*" or list of names, checked against the fleet config."""
    if value == "*":
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise SubscriptionError('subscribe.%s: "*" or a list of names' % what)
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise SubscriptionError("subscribe.%s: no such %s: %s" % (what, what, ", ".join(unknown)))
    return frozenset(value)
