"""Prometheus metrics (docs/api.md, section 5), read from the fleet at each scrape.

Labels are bounded: node names come from the fleet config, reasons and results from the
protocol's catalogue, actions from the fleet's commands. Nothing keyed by trace or joint value.
"""

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from servomesh.host import oplog
from servomesh.host.fleet import Fleet

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Command latency buckets, seconds: a command on a LAN takes milliseconds.
BUCKETS: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class TelemetryStats(Protocol):
    """What the metrics read from the telemetry hub."""

    @property
    def clients(self) -> int: ...

    @property
    def dropped(self) -> int: ...


class FleetCollector(Collector):
    """Node gauges and counters from `Fleet.nodes()`, command counts from its operations."""

    def __init__(self, fleet: Fleet, telemetry: TelemetryStats) -> None:
        self.fleet = fleet
        self.telemetry = telemetry
        self.commands: Counter[tuple[str, str]] = Counter()
        self.frames: Counter[str] = Counter()
        # per action: bucket counts (cumulative at export), sum
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        fleet.subscribe_operations(self._operation)
        fleet.subscribe(self._state)

    def _operation(self, operation: oplog.Operation) -> None:
        self.commands[(operation.action, operation.result)] += 1
        seconds = operation.latency_ms / 1000
        counts = self._buckets.setdefault(operation.action, [0] * (len(BUCKETS) + 1))
        index = bisect.bisect_left(BUCKETS, seconds)  # the first edge >= seconds: le
        counts[index] += 1
        self._sums[operation.action] = self._sums.get(operation.action, 0.0) + seconds

    def _state(self, node: str, _values: object) -> None:
        self.frames[node] += 1

    def collect(self) -> Iterator[Metric]:
        rows = self.fleet.nodes()
        up = GaugeMetricFamily("servomesh_node_up", "1 when ready or degraded", labels=["node"])
        rtt = GaugeMetricFamily(
            "servomesh_node_rtt_seconds", "Smoothed round trip", labels=["node"]
        )
        offset = GaugeMetricFamily(
            "servomesh_node_clock_offset_seconds", "Node clock minus host clock", labels=["node"]
        )
        simple = {
            name: CounterMetricFamily("servomesh_node_%s" % name, text, labels=["node"])
            for name, text in (
                ("requests", "Requests sent, each counted once however often it is sent"),
                ("retries", "Requests sent again"),
                ("keepalives", "KEEPALIVE heartbeats sent (no reply: the link is heard from)"),
                ("timeouts", "Requests that got no answer"),
                ("reconnects", "Times the link was found dead and reopened"),
                ("reboots", "Node reboots seen (new boot ids)"),
            )
        }
        refused = CounterMetricFamily(
            "servomesh_node_refused", "Requests the node refused", labels=["node", "reason"]
        )
        rejected = CounterMetricFamily(
            "servomesh_node_rejected_frames",
            "Frames from the node's link this host rejected",
            labels=["node", "reason"],
        )
        frames = CounterMetricFamily(
            "servomesh_telemetry_frames", "STATE frames received", labels=["node"]
        )
        for row in rows:
            name = row["name"]
            up.add_metric([name], 1.0 if row["state"] in ("ready", "degraded") else 0.0)
            if row["rtt_ms"] is not None:
                rtt.add_metric([name], row["rtt_ms"] / 1000)
            if row["clock_offset_us"] is not None:
                offset.add_metric([name], row["clock_offset_us"] / 1e6)
            for key, family in simple.items():
                family.add_metric([name], row[key])
            for reason, count in sorted(row["refused"].items()):
                refused.add_metric([name, reason], count)
            for reason, count in sorted(row.get("rejected", {}).items()):
                rejected.add_metric([name, reason], count)
            frames.add_metric([name], self.frames[name])
        yield from (up, rtt, offset, *simple.values(), refused, rejected, frames)
        commands = CounterMetricFamily(
            "servomesh_commands", "Commands by action and result", labels=["action", "result"]
        )
        for (action, result), count in sorted(self.commands.items()):
            commands.add_metric([action, result], count)
        yield commands
        duration = HistogramMetricFamily(
            "servomesh_command_duration_seconds", "Command latency", labels=["action"]
        )
        for action, counts in sorted(self._buckets.items()):
            cumulative, running = [], 0
            for edge, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((edge, running))
            duration.add_metric([action], cumulative, sum_value=self._sums[action])
        yield duration
        yield CounterMetricFamily(
            "servomesh_telemetry_shed_frames",
            "STATE frames dropped unread: the host fell too far behind (UdpHub.shed)",
            value=self.fleet.hub.shed,
        )
        yield GaugeMetricFamily(
            "servomesh_fleet_stopped", "1 while the fleet is stopped", value=int(self.fleet.stopped)
        )
        yield GaugeMetricFamily(
            "servomesh_websocket_clients", "Telemetry clients", value=self.telemetry.clients
        )
        yield CounterMetricFamily(
            "servomesh_websocket_dropped_messages",
            "Telemetry messages dropped for slow clients",
            value=self.telemetry.dropped,
        )


def registry(fleet: Fleet, telemetry: TelemetryStats) -> CollectorRegistry:
    """A registry of this app's own: apps in one process (tests) do not share metrics."""
    own = CollectorRegistry()
    own.register(FleetCollector(fleet, telemetry))
    return own


def render(own: CollectorRegistry) -> bytes:
    return generate_latest(own)
