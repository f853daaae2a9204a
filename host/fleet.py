"""The fleet: many nodes on serial and UDP links as one set of named joints.

    async with Fleet.from_config("arm.toml") as fleet:
        await fleet.move({"elbow": 45, "wrist_pitch": -10}, duration_ms=400)

Degrees are the host's: joints map them to pulses (fleet_config.Joint) and nodes only see
pulses. Moves across nodes start together: one start time in the host clock, scheduled in
each node's own clock through its session's clock offset. Sequences stream timestamped
SEGMENTs ahead of time, so playback has no gaps. Every command goes to the operation log.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from servomesh.host import codec, fleet_config, logs, oplog
from servomesh.host.session import (
    TICKS_MASK,
    NodeError,
    NodeRefusedError,
    NodeSession,
    NodeTimeoutError,
    SessionOptions,
)
from servomesh.host.transport import SerialTransport, Transport, UdpHub, UdpTransport
from servomesh.protocol import messages

log = logging.getLogger(__name__)

START_LEAD_MS = 30  # a synchronized start this far ahead: every node has its MOVE by then
SEQUENCE_LOOKAHEAD_MS = 1500  # segments are sent this far ahead of their start
SEQUENCE_QUEUE = 12  # segments in flight per node (the node queues 16)
DEFAULT_TELEMETRY_MS = 50
# kind, seq, six node fields, the counters: where STATE's channel groups start
_FIXED_STATE = 2 + 6 + len(messages.STATE_COUNTERS)


class FleetError(Exception):
    """A fleet command could not run; the message says which joint or node and why."""


class UnknownNameError(FleetError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class LimitError(FleetError, ValueError):
    """A target outside a joint's limits: never clamped."""


class StoppedError(FleetError):
    """The fleet is stopped (latched) until clear()."""


@dataclass(frozen=True)
class JointState:
    name: str
    node: str
    target_deg: float | None  # where the node's current motion ends
    position_deg: float | None  # what the hardware reports (None when released)
    moving: bool
    released: bool
    updated_s: float | None  # time.time() of the STATE it came from


def read_key(path: Path) -> bytes:
    """A key file: the 32-byte key as 64 hex digits (servomesh provision writes them)."""
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise FleetError("key file %s: %s" % (path, error.strerror)) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise FleetError("key file %s: not hex digits" % path) from None
    if len(key) != 32:
        raise FleetError("key file %s: %d bytes, a key is 32" % (path, len(key)))
    return key


class Fleet:
    """The fleet of a config. Use as an async context manager, or start()/close()."""

    def __init__(
        self,
        config: fleet_config.Fleet,
        *,
        source: str = "python",
        log_operations: bool = True,
        options: SessionOptions | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.hub = UdpHub()
        self.sessions: dict[str, NodeSession] = {}
        self.stopped = False
        self._trace = itertools.count(int(time.time()) % 100_000 * 1000 + 1)
        self._states: dict[str, list[Any]] = {}  # node -> last STATE
        self._state_times: dict[str, float] = {}
        # A tuple, replaced on (un)subscribe: every STATE iterates it, without a copy.
        self._listeners: tuple[Callable[[str, list[Any]], None], ...] = ()
        self._log_listeners: list[Callable[[str, codec.Message], None]] = []
        self._playing: asyncio.Task[None] | None = None
        self._playing_name: str | None = None
        self._playing_nodes: list[str] = []
        self._status_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._operation_listeners: list[Callable[[oplog.Operation], None]] = []
        self.oplog = oplog.OperationLog(config.host.data_dir) if log_operations else None
        self._oplog_failing = False  # the last record was refused: warned already
        base = options or SessionOptions()
        for name, node in config.nodes.items():
            self.sessions[name] = NodeSession(
                name,
                self._transport(node),
                node_id=node.node_id,
                options=dataclasses.replace(
                    base,
                    link_timeout_ms=node.link_timeout_ms,
                    telemetry_ms=node.telemetry_ms or DEFAULT_TELEMETRY_MS,
                ),
                on_state=self._on_state,
                on_log=self._on_log,
                push_config=self._push_config,
            )

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **options: Any) -> Self:
        return cls(fleet_config.load(Path(path)), **options)

    def _transport(self, node: fleet_config.Node) -> Transport:
        link = node.link
        if link.scheme == "serial":
            return SerialTransport(link.path, link.baud)
        key = read_key(node.key_file) if node.key_file is not None else None
        return UdpTransport(self.hub, link.host, link.port, key)

    async def start(self, ready_timeout_s: float = 5.0, reboot_grace_s: float = 0.0) -> None:
        """Start every session and wait up to `ready_timeout_s` for them to be ready, and up to
        `reboot_grace_s` more for those that answered but are not ready yet: most often a node
        rebooting to apply the fleet's config, which on a board means booting and joining
        Wi-Fi again. Nodes that are not ready stay offline and keep reconnecting (`nodes()`)."""
        await self.hub.start()
        for session in self.sessions.values():
            await session.start()
        await _wait_ready(self.sessions.values(), ready_timeout_s)
        await _wait_ready(
            [s for s in self.sessions.values() if s.boot_id is not None], reboot_grace_s
        )
        for session in self.sessions.values():
            if not session.ready:
                session.log.warning("%s (%s)", session.state, session.why)

    async def close(self) -> None:
        if self._playing is not None:
            self._playing.cancel()
            with contextlib.suppress(asyncio.CancelledError, FleetError, NodeError):
                await self._playing
        for session in self.sessions.values():
            await session.close()
        self.hub.close()
        if self.oplog is not None:
            self.oplog.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- telemetry -------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[str, list[Any]], None]) -> Callable[[], None]:
        """Call `listener(node_name, state_values)` for every STATE; returns the unsubscriber."""
        self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            self._listeners = tuple(other for other in self._listeners if other is not listener)

        return unsubscribe

    def subscribe_logs(self, listener: Callable[[str, codec.Message], None]) -> Callable[[], None]:
        self._log_listeners.append(listener)
        return lambda: self._log_listeners.remove(listener)

    def subscribe_status(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call `listener(status())` when the fleet is stopped or cleared and when a sequence
        starts or ends; returns the unsubscriber."""
        self._status_listeners.append(listener)
        return lambda: self._status_listeners.remove(listener)

    def subscribe_operations(
        self, listener: Callable[[oplog.Operation], None]
    ) -> Callable[[], None]:
        """Call `listener(operation)` for every command recorded; returns the unsubscriber."""
        self._operation_listeners.append(listener)
        return lambda: self._operation_listeners.remove(listener)

    def status(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "playing": self.playing}

    def _status_changed(self) -> None:
        status = self.status()
        for listener in list(self._status_listeners):
            listener(status)

    def _on_state(self, session: NodeSession, message: codec.Message) -> None:
        values = message.values
        self._states[session.name] = values
        self._state_times[session.name] = time.time()
        for listener in self._listeners:
            listener(session.name, values)

    def _on_log(self, session: NodeSession, message: codec.Message) -> None:
        logs.node_log(session.log, message.fields[0], message.fields[1], message.fields[2:])
        for listener in list(self._log_listeners):
            listener(session.name, message)

    def joint_state(self, name: str) -> JointState:
        joint = self.joint(name)
        values = self._states.get(joint.node)
        if values is None:
            return JointState(name, joint.node, None, None, False, False, None)
        base = _FIXED_STATE + 5 * joint.channel
        if len(values) < base + 5:
            return JointState(name, joint.node, None, None, False, False, None)
        flags = values[base + 4]
        return JointState(
            name,
            joint.node,
            _deg(joint, values[base + 3]),
            _deg(joint, values[base + 2]),
            bool(flags & messages.CHANNEL_MOVING),
            bool(flags & messages.CHANNEL_RELEASED),
            self._state_times.get(joint.node),
        )

    # -- names -----------------------------------------------------------------------------

    def joint(self, name: str) -> fleet_config.Joint:
        try:
            return self.config.joints[name]
        except KeyError:
            raise UnknownNameError("no joint named %r" % name) from None

    def session(self, name: str) -> NodeSession:
        try:
            return self.sessions[name]
        except KeyError:
            raise UnknownNameError("no node named %r" % name) from None

    def pulses(self, targets: dict[str, float]) -> dict[str, list[tuple[int, int]]]:
        """Per node, (channel, pulse_us) for `targets` in degrees; LimitError names the joint."""
        per_node: dict[str, list[tuple[int, int]]] = {}
        for name, deg in targets.items():
            joint = self.joint(name)
            try:
                pulse = joint.deg_to_pulse_us(deg)
            except ValueError as error:
                raise LimitError(str(error)) from None
            per_node.setdefault(joint.node, []).append((joint.channel, pulse))
        return per_node

    # -- commands ----------------------------------------------------------------------------

    async def move(
        self, targets: dict[str, float], duration_ms: int = 0, *, source: str | None = None
    ) -> int:
        """Move joints to `targets` (degrees), all starting at one instant, arriving together
        after `duration_ms` (0: each as fast as its limits allow). Returns the trace id."""
        return await self._move(targets, duration_ms, source, "move", "")

    async def _move(
        self,
        targets: dict[str, float],
        duration_ms: int,
        source: str | None,
        action: str,
        detail: str,
    ) -> int:
        trace = next(self._trace)
        started = time.monotonic()
        try:
            self._check_not_stopped()
            per_node = self.pulses(targets)
            sessions = [self.session(name) for name in per_node]
            for session in sessions:
                session.check_ready()  # all or none: no node moves while another cannot
            lead_ms = START_LEAD_MS + max((s.counters.rtt_ms or 0) * 2 for s in sessions)
            start_ns = time.monotonic_ns() + int(lead_ms * 1_000_000)
            scheduled = len(per_node) > 1  # one node alone starts at once
            await asyncio.gather(
                *(
                    self._move_node(self.sessions[name], pairs, duration_ms, start_ns, trace)
                    if scheduled
                    else self._move_node(self.sessions[name], pairs, duration_ms, None, trace)
                    for name, pairs in per_node.items()
                )
            )
        except Exception as error:
            self._record(action, targets, trace, error, started, source, detail)
            raise
        self._record(action, targets, trace, None, started, source, detail)
        return trace

    async def _move_node(
        self,
        session: NodeSession,
        pairs: list[tuple[int, int]],
        duration_ms: int,
        start_ns: int | None,
        trace: int,
    ) -> None:
        # Tick 0 means "at once" on the wire: a start that falls on it goes one µs later.
        start = 0 if start_ns is None else session.node_ticks(start_ns) or 1
        flat = [value for pair in pairs for value in pair]
        await session.request(messages.MOVE, duration_ms, start, trace, *flat)

    async def set(
        self,
        name: str,
        deg: float,
        *,
        duration_ms: int = 0,
        speed_deg_per_s: float | None = None,
        source: str | None = None,
    ) -> int:
        """Move one joint: over `duration_ms`, or at a speed (0/None: its configured speed)."""
        trace = next(self._trace)
        started = time.monotonic()
        try:
            self._check_not_stopped()
            joint = self.joint(name)
            ((channel, pulse),) = self.pulses({name: deg})[joint.node]
            speed = 0
            if speed_deg_per_s is not None:
                if speed_deg_per_s <= 0:
                    raise LimitError("%s: speed_deg_per_s must be positive" % name)
                speed = joint.rate_us_per_s(speed_deg_per_s)
            await self.session(joint.node).request(
                messages.SET, channel, pulse, duration_ms, speed, trace
            )
        except Exception as error:
            self._record("set", {name: deg}, trace, error, started, source)
            raise
        self._record("set", {name: deg}, trace, None, started, source)
        return trace

    async def pose(self, name: str, duration_ms: int = 1000, *, source: str | None = None) -> int:
        try:
            targets = self.config.poses[name]
        except KeyError:
            raise UnknownNameError("no pose named %r" % name) from None
        return await self._move(dict(targets), duration_ms, source, "pose", name)

    async def stop(self, release: bool = False, *, source: str | None = None) -> int:
        """Stop every node (latched until clear); nodes that do not answer are named."""
        trace = next(self._trace)
        started = time.monotonic()
        self.stopped = True
        if self._playing is not None:
            self._playing.cancel()
        self._status_changed()
        mode = messages.STOP_RELEASE if release else messages.STOP_HOLD
        error = await self._everywhere(messages.STOP, mode, trace)
        self._record("stop", {}, trace, error, started, source)
        if error is not None:
            raise error
        return trace

    async def clear(self, *, source: str | None = None) -> int:
        """Clear the latched stop on every node; moves nothing."""
        trace = next(self._trace)
        started = time.monotonic()
        error = await self._everywhere(messages.CLEAR, trace)
        if error is None:
            self.stopped = False
            self._status_changed()
        self._record("clear", {}, trace, error, started, source)
        if error is not None:
            raise error
        return trace

    async def reboot(self, name: str, *, delay_ms: int = 100, source: str | None = None) -> int:
        """Reboot node `name`; its session sees the new boot, re-pushes its config and is
        ready again a moment later."""
        trace = next(self._trace)
        started = time.monotonic()
        try:
            await self.session(name).request(messages.REBOOT, delay_ms)
        except Exception as error:
            self._record("reboot", {}, trace, error, started, source, name)
            raise
        self._record("reboot", {}, trace, None, started, source, name)
        return trace

    async def _everywhere(self, kind: int, *fields: int) -> FleetError | None:
        results = await asyncio.gather(
            *(s.request(kind, *fields) for s in self.sessions.values()), return_exceptions=True
        )
        failed = [
            "%s (%s)" % (name, result)
            for name, result in zip(self.sessions, results, strict=True)
            if isinstance(result, BaseException)
        ]
        return FleetError("not reached: " + "; ".join(failed)) if failed else None

    def _check_not_stopped(self) -> None:
        if self.stopped:
            raise StoppedError("the fleet is stopped: clear it first")

    # -- sequences ---------------------------------------------------------------------------

    async def play(self, name: str, *, lead_in_ms: int = 500, source: str | None = None) -> int:
        """Play sequence `name`: a synchronized move to its first keyframe over `lead_in_ms`,
        then its keyframes as queued segments, streamed ahead. Returns when it has played."""
        trace, task = self._start_sequence(name, lead_in_ms, source)
        await task
        return trace

    def start_sequence(self, name: str, *, lead_in_ms: int = 500, source: str | None = None) -> int:
        """Start playing sequence `name` in the background (see `play`); returns its trace id.
        `playing` names it until it ends; its result goes to the operation log."""
        return self._start_sequence(name, lead_in_ms, source)[0]

    def _start_sequence(
        self, name: str, lead_in_ms: int, source: str | None
    ) -> tuple[int, asyncio.Task[None]]:
        try:
            sequence = self.config.sequences[name]
        except KeyError:
            raise UnknownNameError("no sequence named %r" % name) from None
        if self.playing is not None:
            raise FleetError("sequence %r is playing: stop it first" % self.playing)
        self._check_not_stopped()
        frames = [self._frame_targets(frame) for frame in sequence.keyframes]
        trace = next(self._trace)
        task = asyncio.create_task(
            self._play_and_record(name, frames, sequence, lead_in_ms, trace, source)
        )
        task.add_done_callback(self._sequence_ended)
        self._playing, self._playing_name = task, name
        self._status_changed()
        return trace, task

    def _sequence_ended(self, task: "asyncio.Task[None]") -> None:
        # Nobody awaits a sequence started in the background: say here how it ended.
        if not task.cancelled() and task.exception() is not None:
            log.warning("sequence stopped: %s", task.exception())

    @property
    def playing(self) -> str | None:
        """The sequence playing now, if any."""
        return self._playing_name

    async def stop_sequence(self) -> bool:
        """Stop the sequence playing, if any: its nodes drop the segments they hold and stay
        where they are (a STOP hold then CLEAR on those nodes; the fleet is not left stopped).
        Returns whether one was playing."""
        task = self._playing
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, FleetError, NodeError):
            await task
        if not self.stopped:
            nodes = self._playing_nodes
            trace = next(self._trace)
            for kind, fields in (
                (messages.STOP, (messages.STOP_HOLD, trace)),
                (messages.CLEAR, (trace,)),
            ):
                await asyncio.gather(
                    *(self.sessions[n].request(kind, *fields) for n in nodes),
                    return_exceptions=True,
                )
        return True

    async def _play_and_record(
        self,
        name: str,
        frames: list[dict[str, float]],
        sequence: fleet_config.Sequence,
        lead_in_ms: int,
        trace: int,
        source: str | None,
    ) -> None:
        started = time.monotonic()
        try:
            while True:
                await self._play(frames, sequence, lead_in_ms, trace)
                if not sequence.loop:
                    break
        except asyncio.CancelledError as error:
            self._record("sequence", {}, trace, StoppedError("stopped"), started, source, name)
            raise error
        except Exception as error:
            self._record("sequence", {}, trace, error, started, source, name)
            raise
        else:
            self._record("sequence", {}, trace, None, started, source, name)
        finally:
            self._playing_name = None
            self._status_changed()

    def _frame_targets(self, frame: fleet_config.Keyframe) -> dict[str, float]:
        if frame.pose is not None:
            return dict(self.config.poses[frame.pose])
        return dict(frame.joints or {})

    async def _play(
        self,
        frames: list[dict[str, float]],
        sequence: fleet_config.Sequence,
        lead_in_ms: int,
        trace: int,
    ) -> None:
        self._check_not_stopped()
        per_frame = [self.pulses(targets) for targets in frames]
        nodes = sorted({node for frame in per_frame for node in frame})
        self._playing_nodes = nodes
        lead_in_ms = max(lead_in_ms, self._lead_in_ms(frames[0]))
        sessions = [self.session(node) for node in nodes]
        begin_ns = time.monotonic_ns() + (START_LEAD_MS + lead_in_ms) * 1_000_000
        at_ms = [frame.at_ms for frame in sequence.keyframes]
        # Segment i runs from keyframe i-1 to keyframe i; segment 0 is the lead-in.
        segments: list[tuple[int, int, int]] = []  # (index, start_ns, duration_ms)
        segments.append((0, begin_ns - lead_in_ms * 1_000_000, lead_in_ms))
        for i in range(1, len(frames)):
            start_ns = begin_ns + at_ms[i - 1] * 1_000_000
            segments.append((i, start_ns, at_ms[i] - at_ms[i - 1]))
        # Each node's starts are reckoned from one clock reading, not converted one by one:
        # the offset estimate moves between heartbeats, and segment i must start exactly
        # where segment i-1 ends in the node's clock, or the node pauses between them.
        origin_ns = segments[0][1]
        origin = {session.name: session.node_ticks(origin_ns) for session in sessions}
        in_flight: list[int] = []  # end times (ns) of segments sent, oldest first
        for index, start_ns, duration_ms in segments:
            while True:
                now = time.monotonic_ns()
                while in_flight and in_flight[0] <= now:
                    in_flight.pop(0)
                ahead_ms = (start_ns - now) / 1e6
                if len(in_flight) < SEQUENCE_QUEUE and ahead_ms <= SEQUENCE_LOOKAHEAD_MS:
                    break
                await asyncio.sleep(0.02)
            requests = []
            for session in sessions:
                pairs = per_frame[index].get(session.name)
                if not pairs:
                    continue
                flat = [value for pair in pairs for value in pair]
                start = (origin[session.name] + (start_ns - origin_ns) // 1000) & TICKS_MASK
                start = start or 1  # 0 means "at once"
                requests.append(
                    session.request(
                        messages.SEGMENT, start, duration_ms, messages.EASE_LINEAR, trace, *flat
                    )
                )
            await asyncio.gather(*requests)
            in_flight.append(start_ns + duration_ms * 1_000_000)
        end_ns = begin_ns + at_ms[-1] * 1_000_000
        await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))

    def _lead_in_ms(self, targets: dict[str, float]) -> int:
        """How long the move to `targets` takes at the joints' speed limits, from where they
        are: a lead-in shorter than that would be refused by the nodes as too fast."""
        slowest = 0.0
        for name, deg in targets.items():
            joint = self.joint(name)
            here = self.joint_state(name).position_deg
            if joint.speed_deg_per_s and here is not None:
                slowest = max(slowest, abs(deg - here) / joint.speed_deg_per_s)
        return math.ceil(slowest * 1100)  # 10% over: the node rounds its limit its own way

    # -- config and status -------------------------------------------------------------------

    async def _push_config(self, session: NodeSession) -> bool:
        """After each handshake: make the node's config the fleet's (the node keeps it as it
        is when nothing changes); True when the node reboots to apply it."""
        current = (await session.request_now(messages.CONFIG_GET)).fields[0]
        wanted = self.config.node_config(session.name, current)
        wanted["channels"] = [
            [
                messages.FAILSAFES.index(channel[field]) if field == "failsafe" else channel[field]
                for field in messages.CONFIG_CHANNEL_FIELDS
            ]
            for channel in wanted["channels"]
        ]
        reply = await session.request_now(messages.CONFIG_SET, wanted, timeout_s=3.0)
        return bool(reply.fields and reply.fields[0])

    def nodes(self) -> list[dict[str, Any]]:
        """Every node's link, state and counters, for tables and the API."""
        rows = []
        for name, session in self.sessions.items():
            counters = session.counters
            rows.append(
                {
                    "name": name,
                    "link": session.transport.name,
                    "state": str(session.state),
                    "why": session.why,
                    "node_id": session.info.get("node_id"),
                    "firmware": session.info.get("firmware"),
                    "boot_id": session.boot_id,
                    "rtt_ms": counters.rtt_ms,
                    "clock_offset_us": counters.clock_offset_us,
                    "clock_uncertainty_us": counters.clock_uncertainty_us,
                    "requests": counters.requests,
                    "retries": counters.retries,
                    "keepalives": counters.keepalives,
                    "timeouts": counters.timeouts,
                    "reconnects": counters.reconnects,
                    "reboots": counters.reboots,
                    "refused": dict(counters.refused_by_reason),
                    "rejected": self._rejected(session),
                }
            )
        return rows

    @staticmethod
    def _rejected(session: NodeSession) -> dict[str, int]:
        """What this host refused from the node's link, by reason: frames or datagrams, bodies
        that are no message of the catalogue, and its own messages sent back."""
        rejected = session.transport.rejected()
        if session.counters.undecodable:
            rejected["undecodable"] = session.counters.undecodable
        if session.counters.reflected:
            rejected["reflected"] = session.counters.reflected
        return rejected

    def _record(
        self,
        action: str,
        targets: dict[str, float],
        trace: int,
        error: BaseException | None,
        started: float,
        source: str | None,
        detail: str = "",
    ) -> None:
        operation = oplog.Operation(
            time_s=time.time(),
            source=source or self.source,
            action=action,
            joints=dict(targets),
            trace_id=trace,
            result=_result(error),
            # what the command named (a pose, a sequence), then what went wrong
            detail=": ".join(part for part in (detail, str(error or "")) if part),
            latency_ms=(time.monotonic() - started) * 1000,
        )
        if self.oplog is not None:
            try:
                self.oplog.append(operation)
                self._oplog_failing = False
            except oplog.OperationLogError as failure:
                # The command happened (or failed for its own reason): a log that cannot take
                # its record must not answer for it. Said once per outage, not per command.
                level = logging.DEBUG if self._oplog_failing else logging.WARNING
                log.log(level, "operation %s (trace %d) not logged: %s", action, trace, failure)
                self._oplog_failing = True
        for listener in list(self._operation_listeners):
            listener(operation)


async def _wait_ready(sessions: Iterable[NodeSession], timeout_s: float) -> None:
    """Until each of `sessions` is ready or `timeout_s` has passed, whichever comes first."""
    if timeout_s <= 0:
        return
    waiting = [s.wait_ready(timeout_s) for s in sessions if not s.ready]
    # Every wait to its end: on a first NodeError, gather would return with the others running.
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, NodeError):
            raise outcome


def _result(error: BaseException | None) -> str:
    """An operation's result: "ok" or what went wrong, as the operation log names it."""
    if error is None:
        return "ok"
    if isinstance(error, NodeRefusedError):
        return error.reason
    if isinstance(error, NodeTimeoutError):
        return "timeout"
    if isinstance(error, LimitError):
        return "out_of_limits"
    if isinstance(error, StoppedError):
        return "stopped"
    if isinstance(error, UnknownNameError):
        return "unknown"
    return "offline" if isinstance(error, NodeError) else "error"


def _deg(joint: fleet_config.Joint, pulse_us: int) -> float | None:
    if not pulse_us:
        return None
    try:
        return joint.pulse_us_to_deg(pulse_us)
    except ValueError:
        return None
