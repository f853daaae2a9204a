"""HTTP API benchmark: joint commands through the real app next to a no-op FastAPI route, and
telemetry freshness over the WebSocket. A report: targets print PASS or MISS.

    .venv/bin/python tools/bench_api.py [--quick]

Simulated boards (MicroPython unix port) stream STATE every TELEMETRY_MS. Three uvicorn
processes, started the same way (this file, --serve, on the first CPU): the real app
(create_app on a Fleet of those boards); a no-op app whose `PUT /noop/{name}` takes the same
body model and does nothing, the framework's own floor; and that no-op route plus one UDP round
trip to a bare MicroPython echo (bench_echo.py), the floor of any route that waits for a node.
This process (on the last CPU, with the boards and the echo) is the client:
- `PUT /api/joints/{name}` -> node ACK -> 200, against `PUT /noop/{name}` and
  `PUT /echo/{name}`: one keep-alive http.client connection each, in batches that take turns;
  p50/p99 over every sample.
- Telemetry freshness: node STATE sent -> `joints` message received by a client, from the
  STATE's node_ticks_us (the unix port ticks on this machine's CLOCK_MONOTONIC, as
  time.monotonic_ns() does), with 1 and then CLIENTS WebSocket clients reading.
"""

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import children
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.typing import Origin, Subprotocol

from servomesh.host import upy
from servomesh.host.api import models
from servomesh.host.api.app import create_app
from servomesh.host.fleet import Fleet
from servomesh.host.ports import free_ports
from servomesh.host.session import TICKS_MASK
from servomesh.host.sim import Simulator, write_fleet_config

TELEMETRY_MS = 20
NODES = 2
CLIENTS = 10
JOINT = "sim1_c0"
TARGET_RATIO = 1.4  # joint command p50 / no-op p50
TARGET_FRESH_P99_MS = 20.0
START_S, REPLY_S = 20.0, 5.0  # a server's start-up (the fleet's too); any single answer
TMPFS = "/dev/shm"  # noqa: S108 - only mkdtemp creates anything there
ECHO_SCRIPT = Path(__file__).with_name("bench_echo.py")
ECHOED = 41  # bytes per echoed datagram: a signed SET's
Row = Callable[..., None]
Verdict = Callable[[str, bool], str]


# -- the servers (child processes) -------------------------------------------------------------


def noop_app() -> FastAPI:
    app = FastAPI()

    @app.put("/noop/{name}")
    async def noop(name: str, command: models.JointCommand) -> models.Command:
        return models.Command(trace_id=0, action="set")

    return app


class Echoes(asyncio.DatagramProtocol):
    """Round trips to a UDP echo, one at a time: `await echoes.round_trip()`."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: asyncio.Future[bytes] | None = None
        self.count = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(data)

    async def round_trip(self) -> None:
        assert self.transport is not None  # noqa: S101 - started by the lifespan
        self.count += 1
        sent = self.count.to_bytes(ECHOED, "big")
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.sendto(sent)
        if await asyncio.wait_for(self.waiting, REPLY_S) != sent:
            raise RuntimeError("the echo answered another datagram")


def echo_app(port: int) -> FastAPI:
    echoes = Echoes()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: echoes, remote_addr=("127.0.0.1", port)
        )
        echoes.transport = transport
        try:
            yield
        finally:
            transport.close()

    app = FastAPI(lifespan=lifespan)

    @app.put("/echo/{name}")
    async def echo(name: str, command: models.JointCommand) -> models.Command:
        await echoes.round_trip()
        return models.Command(trace_id=0, action="set")

    return app


def serve(kind: str, config: str) -> int:
    """Serve the real app, the no-op one or the echo one on a free loopback port; print the
    port first. `config`: the fleet's config, or the echo's UDP port."""
    # IPPROTO_TCP said, not left 0: asyncio sets TCP_NODELAY only on sockets that say it.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    logging.getLogger("servomesh.host").setLevel(logging.ERROR)  # reboots to config are expected
    if kind == "app":
        app = create_app(Fleet.from_config(config))
    elif kind == "noop":
        app = noop_app()
    else:
        app = echo_app(int(config))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    )
    server.run(sockets=[listener])
    return 0


def start(argv: list[str], cpus: set[int], stack: contextlib.ExitStack) -> str:
    """A child process (children.spawn) that `stack` kills; returns the first line it prints."""
    null, pipe = subprocess.DEVNULL, subprocess.PIPE
    proc = children.spawn(argv, cpus, stack, stdin=null, stdout=pipe, text=True)
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
    ready, _, _ = select.select([proc.stdout], [], [], START_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError("%s did not start (exit %s)" % (" ".join(argv[1:3]), proc.poll()))
    return line


def start_server(kind: str, config: object, cpus: set[int], stack: contextlib.ExitStack) -> int:
    """A server (this file, --serve) for `kind`; returns its port."""
    line = start([sys.executable, __file__, "--serve", kind, str(config)], cpus, stack)
    if not line.strip().isdigit():
        raise RuntimeError("the %s server printed %r, not its port" % (kind, line))
    return int(line)


# -- the client (this process) -----------------------------------------------------------------


class Putter:
    """One keep-alive connection that PUTs `{"deg": ..., "ms": 0}` to a path."""

    def __init__(self, port: int, path: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REPLY_S)
        self.path, self.count = path, 0

    def once(self) -> int:
        """One PUT; returns its nanoseconds."""
        self.count += 1
        body = b'{"deg": %d, "ms": 0}' % (10 if self.count % 2 else -10)
        start = time.perf_counter_ns()
        # one send for headers and body: no Nagle wait for a delayed ACK
        self.connection.request("PUT", self.path, body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter_ns() - start
        if response.status != 200:
            raise RuntimeError("%s answered %d: %r" % (self.path, response.status, answer[:200]))
        return elapsed


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REPLY_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + START_S
    while True:
        with contextlib.suppress(OSError):
            if get(port, "/readyz")[0] == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet was not ready within %.0f s" % START_S)
        time.sleep(0.05)


def interleave(cases: dict[str, Putter], samples: int, batch: int) -> dict[str, list[float]]:
    """Microseconds per PUT: each case runs `batch` in turn, in a rotating order."""
    result: dict[str, list[float]] = {name: [] for name in cases}
    items = list(cases.items())
    for _, putter in items:  # warm-up: connections, first calls, caches
        for _ in range(batch):
            putter.once()
    for turn in range(samples // batch):
        shift = turn % len(items)
        for name, putter in items[shift:] + items[:shift]:
            result[name] += [putter.once() / 1000 for _ in range(batch)]
    return result


async def freshness(port: int, clients: int, seconds: float) -> dict[str, Any]:
    """Every `joints` message's age at its client: node tick -> received (ms), and host
    receive -> received (ms, wall clock); with the messages per second per client."""
    base = "http://127.0.0.1:%d" % port
    url = base.replace("http://", "ws://") + "/api/telemetry"
    ages: list[float] = []
    host_ages: list[float] = []
    counts = [0] * clients
    measuring = False

    async def client(index: int) -> None:
        async with connect(
            url, origin=Origin(base), subprotocols=[Subprotocol("servomesh")], open_timeout=REPLY_S
        ) as ws:
            while True:
                text = await ws.recv()
                received_us, received_s = time.monotonic_ns() // 1000, time.time()
                message = json.loads(text)
                if message["type"] == "joints" and measuring:
                    ages.append(((received_us - message["node_ticks_us"]) & TICKS_MASK) / 1000)
                    host_ages.append((received_s - message["t"]) * 1000)
                    counts[index] += 1

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    try:
        await asyncio.sleep(1.0)  # connected, hello read, queues drained
        for task in tasks:
            if task.done():
                task.result()  # a client that could not connect says why
        measuring = True
        await asyncio.sleep(seconds)
        measuring = False
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"ages": ages, "host_ages": host_ages, "rate": statistics.mean(counts) / seconds}


def command_ms(port: int, count: int) -> list[float]:
    """fleet.set's own time (request -> node ACK, in the server) of the last `count` sets,
    from the operation log."""
    status, body = get(port, "/api/log?action=set&limit=%d" % min(count, 1000))
    if status != 200:
        return []
    return [float(entry["latency_ms"]) for entry in json.loads(body)["entries"]]


def dropped(port: int) -> float:
    status, body = get(port, "/metrics")
    if status != 200:
        return float("nan")
    match = re.search(rb"^servomesh_websocket_dropped_messages_total (\S+)$", body, re.M)
    return float(match.group(1)) if match else float("nan")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[round(share * (len(ordered) - 1))] if ordered else float("nan")


def run(quick: bool, row: Row, verdict: Verdict) -> None:
    samples, batch, fresh_s = (400, 20, 3.0) if quick else (2000, 20, 10.0)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, {cpus[-1]}) if len(cpus) >= 2 else (set(), set())
    shm = TMPFS if os.path.isdir(TMPFS) else None
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="api-", dir=shm)))
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)  # the boards start here and stay
            stack.callback(os.sched_setaffinity, 0, set(cpus))
        sim = stack.enter_context(Simulator(nodes=NODES, folder=folder / "boards"))
        sim.wait_all_running(START_S)
        config = write_fleet_config(sim, folder / "fleet.toml")
        every = r"\1telemetry_ms = %d\n" % TELEMETRY_MS
        config.write_text(re.sub(r"(\[nodes\.[^\]]+\]\n)", every, config.read_text()))
        (echo_port,) = free_ports(1)
        start(upy.command(str(ECHO_SCRIPT), "udp", str(echo_port)), client_cpus, stack)
        app_port = start_server("app", config, server_cpus, stack)
        noop_port = start_server("noop", config, server_cpus, stack)
        echo_route_port = start_server("echo", echo_port, server_cpus, stack)
        wait_ready(app_port)
        putters = {
            "PUT /api/joints/{name} (node ACK)": Putter(app_port, "/api/joints/" + JOINT),
            "PUT /noop/{name} (no-op route)": Putter(noop_port, "/noop/" + JOINT),
            "PUT /echo/{name} (no-op + UDP echo)": Putter(echo_route_port, "/echo/" + JOINT),
        }
        latencies = interleave(putters, samples, batch)
        in_fleet_ms = command_ms(app_port, samples)
        one = asyncio.run(asyncio.wait_for(freshness(app_port, 1, fresh_s), fresh_s + 30))
        many = asyncio.run(asyncio.wait_for(freshness(app_port, CLIENTS, fresh_s), fresh_s + 30))
        drops = dropped(app_port)
    print(
        "\nHTTP API: uvicorn (h11, asyncio) in 3 processes on CPU %s, client, %d boards and the "
        "echo on CPU %s;\n  %d PUTs per route in batches of %d taking turns (keep-alive "
        "http.client); boards stream STATE every %d ms"
        % (
            ",".join(map(str, sorted(server_cpus))) or "any",
            NODES,
            ",".join(map(str, sorted(client_cpus))) or "any",
            samples,
            batch,
            TELEMETRY_MS,
        )
    )
    row("case", "p50 us", "p99 us; max", "target", "result")
    p50s = []
    for name, values in latencies.items():
        p50s.append(statistics.median(values))
        extra = "%.0f; %.0f" % (percentile(values, 0.99), max(values))
        row(name, "%.0f" % p50s[-1], extra)
        if len(p50s) == 1:
            extra = "%.0f; %.0f" % (percentile(in_fleet_ms, 0.99) * 1000, max(in_fleet_ms) * 1000)
            median_ms = statistics.median(in_fleet_ms)
            row("  of which fleet.set (operation log)", "%.0f" % (median_ms * 1000), extra)
    joint, noop, echo = p50s
    ok = verdict("joint command p50 / no-op p50", joint / noop <= TARGET_RATIO)
    target = "<= %.1f" % TARGET_RATIO
    row("ratio joint command p50 / no-op p50", "%.2f" % (joint / noop), "", target, ok)
    # What any route that waits for a node pays before doing anything itself.
    row("  floor: no-op + UDP echo p50 / no-op p50", "%.2f" % (echo / noop))
    print(
        "\nTelemetry freshness: node STATE sent -> `joints` received by a WebSocket client, "
        "%.0f s per case\n  (host->client: the hub's receive of the STATE -> the client)" % fresh_s
    )
    row("case", "p99 ms", "p50; max; host->client p99", "target", "result")
    for clients, result in ((1, one), (CLIENTS, many)):
        ages = result["ages"]
        extra = "%.2f; %.1f; %.2f" % (
            percentile(ages, 0.5),
            max(ages, default=float("nan")),
            percentile(result["host_ages"], 0.99),
        )
        label = "%d client%s, %.0f msg/s each" % (clients, "s" * (clients > 1), result["rate"])
        if clients == CLIENTS:
            ok = verdict("telemetry freshness p99", percentile(ages, 0.99) <= TARGET_FRESH_P99_MS)
            target = "<= %.0f" % TARGET_FRESH_P99_MS
            row(label, "%.2f" % percentile(ages, 0.99), extra, target, ok)
        else:
            row(label, "%.2f" % percentile(ages, 0.99), extra)
    row("messages dropped by the hub (all clients)", "%.0f" % drops)


def main() -> int:
    parser = argparse.ArgumentParser(description="servomesh HTTP API benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter windows")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(*args.serve)
    import bench  # its table format and MISS list

    return bench.alone("HTTP API benchmark", lambda: run(args.quick, bench.row, bench.verdict))


if __name__ == "__main__":
    sys.exit(main())
