"""The command latency histogram: each operation in the first bucket whose edge it does not
exceed (Prometheus `le`), cumulative at export. No fleet or server needed: a stand-in that
hands the collector its operations."""

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from servomesh.host.api import metrics
from servomesh.host.fleet import Fleet
from servomesh.host.oplog import Operation


class Operations:
    """What FleetCollector reads from a Fleet, with no nodes."""

    def __init__(self) -> None:
        self.hub = SimpleNamespace(shed=0)
        self.stopped = False
        self.listener: Callable[[Operation], None] | None = None

    def subscribe_operations(self, listener: Callable[[Operation], None]) -> None:
        self.listener = listener

    def subscribe(self, _listener: Any) -> None:
        pass

    def nodes(self) -> list[dict[str, Any]]:
        return []

    def record(self, action: str, latency_ms: float) -> None:
        assert self.listener is not None
        self.listener(
            Operation(
                time_s=0.0,
                source="test",
                action=action,
                joints={},
                trace_id=1,
                result="ok",
                latency_ms=latency_ms,
            )
        )


def test_latencies_land_in_the_first_bucket_they_do_not_exceed() -> None:
    fleet = Operations()
    telemetry = SimpleNamespace(clients=0, dropped=0)
    own = metrics.registry(cast(Fleet, fleet), telemetry)
    for latency_ms in (0.5, 1.0, 1.0001, 2.0, 4999.0, 5000.0, 5000.5):
        fleet.record("set", latency_ms)
    fleet.record("stop", 20.0)
    text = metrics.render(own).decode()
    name = "servomesh_command_duration_seconds"
    buckets = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + '_bucket{action="set"')
    }
    # on an edge counts in that edge's bucket; above the last edge only in +Inf
    assert buckets["0.001"] == 2
    assert buckets["0.002"] == 4
    assert buckets["0.02"] == 4
    assert buckets["5.0"] == 6
    assert buckets["+Inf"] == 7
    assert '%s_count{action="set"} 7.0' % name in text
    assert '%s_bucket{action="stop",le="0.01"} 0.0' % name in text
    assert '%s_bucket{action="stop",le="0.02"} 1.0' % name in text
    assert 'servomesh_commands_total{action="set",result="ok"} 7.0' in text
