"""The telemetry WebSocket (docs/api.md, section 4) end to end: a real uvicorn server on
loopback, the real app, simulated nodes, and clients over real sockets.

The server runs on the test's own event loop, so the hub's queues can be read between awaits.
"""

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import socket
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from servomesh.host.api.app import create_app
from servomesh.host.api.telemetry import TelemetryHub
from servomesh.host.fleet import Fleet
from servomesh.host.session import TICKS_MASK, SessionOptions
from servomesh.host.sim import Simulator, write_fleet_config

FAST = SessionOptions(request_timeout_s=0.5, backoff_max_s=0.3)
TELEMETRY_MS = 20
STEP_S = 5.0  # the bound on any single wait of these tests
SMALL_SEND_BUFFER = 8192
SLOW_QUEUE = 64  # a smaller queue than the default fills sooner; the bound is the same code


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("telemetry")
    with Simulator(nodes=2, folder=folder / "boards") as sim:
        sim.wait_all_running(10)
        path = write_fleet_config(sim, folder / "fleet.toml")
        # Every node streams STATE at 50 Hz, the default max_rate_hz.
        text = re.sub(
            r"(\[nodes\.[^\]]+\]\n)", r"\1telemetry_ms = %d\n" % TELEMETRY_MS, path.read_text()
        )
        path.write_text(text)
        yield path


class Server:
    def __init__(self, base: str, hub: TelemetryHub) -> None:
        self.base, self.hub = base, hub
        self.ws_url = base.replace("http://", "ws://") + "/api/telemetry"

    def connect(self, **options: Any) -> Any:
        options.setdefault("subprotocols", ["servomesh"])
        return connect(self.ws_url, origin=Origin(self.base), open_timeout=STEP_S, **options)


@contextlib.asynccontextmanager
async def serving(config: Path, send_buffer: int | None = None) -> AsyncIterator[Server]:
    """The app on a free loopback port, on this event loop, until the block ends.
    `send_buffer`: the server sockets' SO_SNDBUF (accepted sockets inherit the listener's), so
    a client that never reads fills it in a second rather than the minute autotuning allows."""
    app = create_app(Fleet.from_config(config, options=FAST))
    hub: TelemetryHub = app.state.hub
    # IPPROTO_TCP said, not left 0: asyncio sets TCP_NODELAY only on sockets that say it, and
    # without it every response waits ~40 ms for a delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        await until(lambda: server.started or task.done(), 3 * STEP_S)
        if task.done():
            task.result()  # the start-up error
        yield Server("http://127.0.0.1:%d" % port, hub)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 3 * STEP_S)
        listener.close()


async def until(check: Any, timeout_s: float = STEP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not in %.1f s" % timeout_s)
        await asyncio.sleep(0.01)


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 90))


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), STEP_S))
    return message


async def receive_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    deadline = time.monotonic() + STEP_S
    while time.monotonic() < deadline:
        message = await receive(ws)
        if message["type"] == kind:
            return message
    raise AssertionError("no %s message in %.1f s" % (kind, STEP_S))


async def collect(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """The messages received over `seconds`, each stamped with when (`received_us`)."""
    messages = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            message = json.loads(await asyncio.wait_for(ws.recv(), left))
            message["received_us"] = time.monotonic_ns() // 1000
            messages.append(message)
    return messages


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; its close code."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), STEP_S)
    return ws.close_code


def age_ms(message: dict[str, Any]) -> float:
    """Node STATE sent -> received here (now, or at `received_us`): the unix-port nodes tick
    on this machine's CLOCK_MONOTONIC, as time.monotonic_ns() does."""
    received_us: int = message.get("received_us", time.monotonic_ns() // 1000)
    ticks: int = message["node_ticks_us"]
    return float((received_us - ticks) & TICKS_MASK) / 1000


async def open_silent_client(server: Server) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads a byte: its
    receive buffer is tiny, so the server's socket fills and its sends to it block."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)  # the server answers on this same event loop
    host_port = server.base.removeprefix("http://")
    address = ("127.0.0.1", int(host_port.rsplit(":", 1)[1]))
    await asyncio.wait_for(loop.sock_connect(sock, address), STEP_S)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /api/telemetry HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: %s\r\n"
        "Sec-WebSocket-Protocol: servomesh\r\n\r\n" % (host_port, key, server.base)
    )
    await asyncio.wait_for(loop.sock_sendall(sock, request.encode()), STEP_S)
    head = b""
    while b"\r\n\r\n" not in head:
        # byte by byte: nothing past the response head is read
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), STEP_S)
        if not chunk:
            raise AssertionError("closed during the handshake: %r" % head)
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def put_latencies_s(http: httpx.AsyncClient, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        reply = await http.put("/api/joints/sim1_c0", json={"deg": 10.0 * (i % 2), "ms": 0})
        latencies.append(time.perf_counter() - started)
        assert reply.status_code == 200, reply.text
    return latencies


def test_hello_then_joints_nodes_status_and_operations(config: Path) -> None:
    async def main() -> None:
        async with serving(config) as server, server.connect() as ws:
            assert ws.subprotocol == "servomesh"
            hello = await receive(ws)
            assert hello["type"] == "hello"
            assert (hello["stopped"], hello["playing"]) == (False, None)
            assert len(hello["joints"]) == 12
            assert {row["name"] for row in hello["nodes"]} == {"sim-1", "sim-2"}
            assert all(row["rejected"] == {} for row in hello["nodes"])
            joints = await receive_type(ws, "joints")
            assert joints["node"] in ("sim-1", "sim-2")
            assert set(next(iter(joints["joints"].values()))) == {
                "target_deg",
                "position_deg",
                "moving",
                "released",
            }
            assert age_ms(joints) < 1000
            assert {row["state"] for row in (await receive_type(ws, "nodes"))["nodes"]} == {"ready"}
            async with httpx.AsyncClient(base_url=server.base, timeout=STEP_S) as http:
                reply = await http.put("/api/joints/sim2_c1", json={"deg": 20, "ms": 100})
                assert reply.status_code == 200
                operation = (await receive_type(ws, "operation"))["operation"]
                assert operation["action"] == "set"
                assert operation["joints"] == {"sim2_c1": 20.0}
                assert operation["trace_id"] == reply.json()["trace_id"]
                assert (await http.post("/api/stop")).status_code == 200
                status = await receive_type(ws, "status")
                assert (status["stopped"], status["playing"]) == (True, None)
                assert (await http.post("/api/stop/clear")).status_code == 200
                assert (await receive_type(ws, "status"))["stopped"] is False

    run(main())


def test_without_the_subprotocol_the_server_accepts_none(config: Path) -> None:
    async def main() -> None:
        async with serving(config) as server, server.connect(subprotocols=None) as ws:
            assert ws.subprotocol is None
            assert (await receive(ws))["type"] == "hello"

    run(main())


def test_subscription_filters_joints_and_nodes(config: Path) -> None:
    async def main() -> None:
        async with serving(config) as server, server.connect() as ws:
            await receive(ws)  # hello
            wanted = {"sim1_c0", "sim2_c3"}
            subscription = {"subscribe": {"joints": sorted(wanted), "nodes": ["sim-2"]}}
            await ws.send(json.dumps(subscription))
            await collect(ws, 0.5)  # what was queued before the subscription took effect
            messages = await collect(ws, 1.5)
            joints = [m for m in messages if m["type"] == "joints"]
            assert {m["node"] for m in joints} == {"sim-1", "sim-2"}
            assert {name for m in joints for name in m["joints"]} == wanted
            nodes = [m for m in messages if m["type"] == "nodes"]
            assert nodes
            assert all([row["name"] for row in m["nodes"]] == ["sim-2"] for m in nodes)
            assert not [m for m in messages if m["type"] == "error"]

            await ws.send(json.dumps({"subscribe": {"joints": [], "nodes": []}}))
            await collect(ws, 0.5)
            assert [m["type"] for m in await collect(ws, 1.2)] == []

    run(main())


def test_a_node_state_change_is_sent_at_once(config: Path) -> None:
    async def main() -> None:
        async with (
            serving(config) as server,
            server.connect() as ws,
            httpx.AsyncClient(base_url=server.base, timeout=STEP_S) as http,
        ):
            await receive(ws)  # hello
            await ws.send(json.dumps({"subscribe": {"joints": []}}))
            await receive_type(ws, "nodes")
            server.hub.node_period_s = 3600.0  # after the next one, only a change sends `nodes`
            await receive_type(ws, "nodes")
            # every `nodes` message from now on tells of a change: sim-2 has a new boot
            before = {row["name"]: row for row in (await http.get("/api/nodes")).json()}
            assert (await http.post("/api/nodes/sim-2/reboot")).status_code == 200
            changes: list[dict[str, tuple[str, int]]] = []
            deadline = time.monotonic() + 4 * STEP_S  # the reboot, its detection, a handshake
            while not (changes and changes[-1]["sim-2"][0] == "ready"):
                assert time.monotonic() < deadline, changes
                for message in await collect(ws, 0.5):
                    if message["type"] == "nodes":
                        rows = message["nodes"]
                        changes.append({r["name"]: (r["state"], r["boot_id"]) for r in rows})
            assert changes[-1]["sim-2"][1] != before["sim-2"]["boot_id"], changes
            assert changes[-1]["sim-1"] == ("ready", before["sim-1"]["boot_id"]), changes
            assert all(a != b for a, b in itertools.pairwise(changes)), changes

    run(main())


def test_rate_limit_coalesces_to_the_latest_state(config: Path) -> None:
    async def main() -> None:
        async with serving(config) as server, server.connect() as ws:
            await receive(ws)  # hello
            await ws.send(
                json.dumps({"subscribe": {"joints": ["sim1_c2"], "nodes": []}, "max_rate_hz": 5})
            )
            await collect(ws, 0.5)  # what was queued before the subscription took effect
            window_s = 2.0
            messages = [m for m in await collect(ws, window_s) if m["type"] == "joints"]
            # 50 STATE/s from the node, at most 5 messages/s (+ one of tolerance) to the client
            assert 5 * window_s - 2 <= len(messages) <= 5 * window_s + 2, len(messages)
            gaps_s = [b["t"] - a["t"] for a, b in itertools.pairwise(messages)]
            assert min(gaps_s) > 0.1, gaps_s  # half a period of tolerance, no bursts
            # coalesced, not queued: each carries the latest STATE its slot found, so its age is
            # within a STATE period or so, far below the 200 ms between messages
            ages = sorted(age_ms(m) for m in messages)
            assert statistics.median(ages) < 100, ages

    run(main())


def test_an_invalid_subscription_gets_an_error_and_keeps_the_connection(config: Path) -> None:
    async def main() -> None:
        async with serving(config) as server, server.connect() as ws:
            await receive(ws)  # hello
            await ws.send(json.dumps({"subscribe": {"joints": [], "nodes": []}}))
            bad: list[tuple[str | bytes, str]] = [
                ("not json", "not JSON"),
                ("[1, 2]", "expected"),
                ("[" * 3000 + "]" * 3000, "at most 4096 bytes"),
                ("[" * 2000 + "]" * 2000, "not JSON"),  # deeper than the parser's recursion
                (json.dumps({"subscribe": {"joints": ["sim1_c0", "nope", "nah"]}}), "nah, nope"),
                (json.dumps({"subscribe": {"nodes": ["sim-9"]}}), "sim-9"),
                (json.dumps({"subscribe": {"joints": "sim1_c0"}}), "list of names"),
                (json.dumps({"subscribe": {"limbs": "*"}}), "limbs"),
                (json.dumps({"subscribe": [], "max_rate_hz": 5}), "an object"),
                (json.dumps({"max_rate_hz": 0}), "max_rate_hz"),
                (json.dumps({"max_rate_hz": 101}), "max_rate_hz"),
                (json.dumps({"max_rate_hz": True}), "max_rate_hz"),
                ('{"max_rate_hz": NaN}', "max_rate_hz"),
                (json.dumps({"unsubscribe": 1}), "unsubscribe"),
                (b"\x00\x01", "JSON text"),
            ]
            for message, detail in bad:
                await ws.send(message)
                error = await receive_type(ws, "error")
                assert detail in error["detail"], (message[:40], error)

            # at the bounds: taken without a word, so the next error is the next bad message's
            def nothing_at(rate_hz: float) -> str:
                return json.dumps(
                    {"subscribe": {"joints": [], "nodes": []}, "max_rate_hz": rate_hz}
                )

            for good, bad_one, detail in (
                (nothing_at(100).ljust(4096), nothing_at(100).ljust(4097), "at most 4096 bytes"),
                (nothing_at(1), "?", "not JSON"),
                (nothing_at(99.5), "?", "not JSON"),
            ):
                await ws.send(good)
                await ws.send(bad_one)
                assert detail in (await receive_type(ws, "error"))["detail"]
            # still connected, and the last good subscription still holds: nothing arrives
            # until a valid one asks for it
            await ws.send(json.dumps({"subscribe": {"joints": ["sim2_c0"], "nodes": []}}))
            joints = await receive_type(ws, "joints")
            assert list(joints["joints"]) == ["sim2_c0"]

    run(main())


def test_a_silent_client_slows_neither_commands_nor_other_clients(config: Path) -> None:
    """A client that never reads: its queue fills, stays at its bound and drops the oldest,
    while commands and a reading client keep their latency (compared with a baseline taken in
    the same run, with generous ratios: the machine is shared)."""

    async def main() -> None:
        async with (
            serving(config, SMALL_SEND_BUFFER) as server,
            server.connect() as reader,
            httpx.AsyncClient(base_url=server.base, timeout=STEP_S) as http,
        ):
            hub = server.hub
            hub.queue_size = SLOW_QUEUE
            ages: dict[str, list[float]] = {"baseline": [], "silent": []}
            phase = "warm-up"
            longest = 0

            async def read() -> None:
                while True:
                    message = json.loads(await reader.recv())
                    if message["type"] == "joints" and phase in ages:
                        ages[phase].append(age_ms(message))

            async def watch() -> None:
                nonlocal longest
                while True:
                    longest = max([longest, *(q.queued for q in hub.queues())])
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(read()), asyncio.create_task(watch())]
            try:
                await put_latencies_s(http, 10)  # warm-up: connections, first calls
                phase = "baseline"
                baseline_s = await put_latencies_s(http, 40)
                await asyncio.sleep(1.0)
                phase = "filling"
                silent = await open_silent_client(server)
                try:
                    await until(lambda: hub.clients == 2)

                    def silent_dropped() -> int:
                        return max(q.dropped for q in hub.queues())

                    await until(lambda: silent_dropped() > 0, 30)
                    phase = "silent"
                    dropped_before = silent_dropped()
                    silent_s = await put_latencies_s(http, 40)
                    await asyncio.sleep(1.0)
                    stats = sorted(hub.queues(), key=lambda q: q.dropped)
                    phase = "done"
                finally:
                    silent.close()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            reading, stuck = stats
            assert stuck.queued == SLOW_QUEUE  # full, and never above its bound
            assert longest == SLOW_QUEUE
            assert stuck.dropped > dropped_before  # drops rise while it does not read
            assert hub.dropped >= stuck.dropped
            assert reading.dropped == 0
            # commands: p50 and p90 within generous ratios of the baseline
            for share in (0.5, 0.9):
                before, after = quantile(baseline_s, share), quantile(silent_s, share)
                assert after <= 3 * before + 0.002, (share, before, after)
            # the reading client: messages just as fresh, and as many per second
            assert len(ages["silent"]) > 0.5 * len(ages["baseline"]), ages
            before, after = statistics.median(ages["baseline"]), statistics.median(ages["silent"])
            assert after <= 3 * before + 5, (before, after)
            await until(lambda: hub.clients == 1)  # the silent one is gone once closed

    run(main())


def quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_closing_the_hub_ends_every_client_even_a_silent_one(config: Path) -> None:
    async def main() -> None:
        async with serving(config, SMALL_SEND_BUFFER) as server, server.connect() as ws:
            await receive(ws)  # hello
            hub = server.hub
            hub.queue_size = SLOW_QUEUE
            silent = await open_silent_client(server)
            try:
                await until(lambda: max(q.dropped for q in hub.queues()) > 0, 30)
                started = time.monotonic()
                await hub.close()
                assert time.monotonic() - started < 3.5
                assert hub.clients == 0
                assert await close_code(ws) == 1001  # going away
            finally:
                silent.close()

    run(main())
