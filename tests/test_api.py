"""The HTTP API end to end: a real uvicorn server on loopback, real simulated nodes, real HTTP
and WebSocket clients. Commands, stop and clear, poses, sequences, the operation log, errors
and the auth matrix."""

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from apiserver import make_tokens, running
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from servomesh.host.api.auth import TokenStore
from servomesh.host.cli_serve import serve
from servomesh.host.fleet import Fleet
from servomesh.host.sim import Simulator, write_fleet_config

SEQUENCE = """
[poses.tucked]
sim1_c0 = -30
sim2_c0 = 30

[sequences.sweep]
keyframes = [
  { at_ms = 0, joints = { sim1_c1 = -20, sim3_c1 = 20 } },
  { at_ms = 300, joints = { sim1_c1 = 20, sim3_c1 = -20 } },
  { at_ms = 600, joints = { sim1_c1 = 10, sim3_c1 = -10 } },
]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("api")
    with Simulator(nodes=3, serial=1, folder=folder / "boards") as sim:
        sim.wait_all_running(10)
        config = write_fleet_config(sim, folder / "fleet.toml")
        with config.open("a") as out:
            out.write(SEQUENCE)
        tokens = make_tokens(folder / "tokens.toml")
        with running(config, TokenStore.load(folder / "tokens.toml")) as base:
            yield base, tokens


def client(server: tuple[str, dict[str, str]], role: str = "operator") -> httpx.Client:
    base, tokens = server
    return httpx.Client(
        base_url=base, headers={"Authorization": "Bearer " + tokens[role]}, timeout=10
    )


def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("not in %.1f s: %s" % (timeout_s, what))
        time.sleep(0.02)


def position(http: httpx.Client, joint: str) -> float | None:
    value = http.get("/api/joints/" + joint).json()["position_deg"]
    return float(value) if value is not None else None


def near(http: httpx.Client, joint: str, deg: float) -> bool:
    now = position(http, joint)
    return now is not None and abs(now - deg) < 1


def test_every_node_is_ready(server: tuple[str, dict[str, str]]) -> None:
    with client(server, "viewer") as http:
        assert http.get("/readyz").json() == {"ready": True, "not_ready": {}}
        nodes = http.get("/api/nodes").json()
        assert [node["state"] for node in nodes] == ["ready"] * 3
        # The handshake's requests at least (HELLO, CONFIG_GET, PING...); keepalives are shown
        # (their counting is test_fleet's).
        assert all(node["requests"] >= 2 for node in nodes), nodes
        assert all(type(node["keepalives"]) is int for node in nodes), nodes
        assert http.get("/api/nodes/sim-2").json()["name"] == "sim-2"


def test_put_a_joint_and_see_it_arrive_over_the_websocket(
    server: tuple[str, dict[str, str]],
) -> None:
    base, tokens = server
    with (
        client(server) as http,
        connect(
            base.replace("http", "ws") + "/api/telemetry",
            subprotocols=["servomesh", "bearer." + tokens["viewer"]],  # type: ignore[list-item]
            origin=base,  # type: ignore[arg-type]
            open_timeout=5,
        ) as ws,
    ):
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        ws.send(json.dumps({"subscribe": {"joints": ["sim2_c2"], "nodes": []}}))
        reply = http.put("/api/joints/sim2_c2", json={"deg": 33, "ms": 200})
        assert reply.status_code == 200, reply.text
        trace = reply.json()["trace_id"]

        def arrived() -> bool:
            message = json.loads(ws.recv(timeout=5))
            joint = message.get("joints", {}).get("sim2_c2")
            return bool(joint) and abs((joint["position_deg"] or 99) - 33) < 1

        until(arrived, 5, "sim2_c2 at 33 deg over the WebSocket")
        log = http.get("/api/log", params={"joint": "sim2_c2", "limit": 1}).json()["entries"]
        assert (log[0]["trace_id"], log[0]["action"], log[0]["result"]) == (trace, "set", "ok")
        assert log[0]["source"] == "api:operator-user"


def test_a_synchronized_move_across_nodes(server: tuple[str, dict[str, str]]) -> None:
    targets = {"sim1_c3": 25.0, "sim2_c3": -25.0, "sim3_c3": 40.0}
    with client(server) as http:
        reply = http.post("/api/moves", json={"targets": targets, "duration_ms": 300})
        assert reply.status_code == 200, reply.text
        for joint, deg in targets.items():
            until(lambda j=joint, d=deg: near(http, j, d), 5, "%s at %s" % (joint, deg))


def test_stop_latches_and_clear_moves_nothing(server: tuple[str, dict[str, str]]) -> None:
    with client(server) as http:
        assert http.put("/api/joints/sim3_c4", json={"deg": 10, "ms": 100}).status_code == 200
        until(lambda: near(http, "sim3_c4", 10), 5, "sim3_c4 at 10")
        assert http.post("/api/stop").status_code == 200
        assert http.get("/api/status").json() == {"stopped": True, "playing": None}
        refused = http.put("/api/joints/sim3_c4", json={"deg": -10})
        assert refused.status_code == 409
        assert refused.json()["error"] == "stopped"
        assert http.post("/api/stop/clear").status_code == 200
        time.sleep(0.3)
        assert near(http, "sim3_c4", 10)  # CLEAR moved nothing
        assert http.get("/api/status").json()["stopped"] is False


def test_poses_saved_gone_to_and_deleted(server: tuple[str, dict[str, str]]) -> None:
    with client(server, "admin") as http:
        poses = http.get("/api/poses").json()
        assert poses["tucked"]["saved"] is False  # from the fleet config
        conflict = http.put("/api/poses/tucked", json={"joints": {"sim1_c0": 0}})
        assert conflict.status_code == 409
        saved = http.put("/api/poses/reach", json={"joints": {"sim1_c5": 15, "sim3_c5": -15}})
        assert saved.status_code == 200, saved.text
        go = http.post("/api/poses/reach/go", json={"duration_ms": 200})
        assert go.status_code == 200, go.text
        until(lambda: near(http, "sim1_c5", 15) and near(http, "sim3_c5", -15), 5, "at reach")
        entry = http.get("/api/log", params={"action": "pose", "limit": 1}).json()["entries"][0]
        assert (entry["trace_id"], entry["detail"]) == (go.json()["trace_id"], "reach")
        assert http.delete("/api/poses/reach").status_code == 204
        assert http.post("/api/poses/reach/go").status_code == 404
        outside = http.put("/api/poses/wild", json={"joints": {"sim1_c5": 500}})
        assert outside.status_code == 422


def test_a_sequence_plays_in_the_background(server: tuple[str, dict[str, str]]) -> None:
    with client(server) as http:
        sequences = http.get("/api/sequences").json()
        assert sequences == [{"name": "sweep", "keyframes": 3, "duration_ms": 600, "loop": False}]
        started = http.post("/api/sequences/sweep/play", json={"lead_in_ms": 200})
        assert started.status_code == 202, started.text
        assert http.get("/api/status").json()["playing"] == "sweep"
        busy = http.post("/api/sequences/sweep/play")
        assert busy.status_code == 409
        until(lambda: http.get("/api/status").json()["playing"] is None, 5, "the end")
        until(lambda: near(http, "sim1_c1", 10) and near(http, "sim3_c1", -10), 3, "last frame")
        trace = started.json()["trace_id"]
        entries = http.get("/api/log", params={"action": "sequence", "limit": 5}).json()
        assert any(e["trace_id"] == trace and e["result"] == "ok" for e in entries["entries"])


def test_errors_are_clear_and_never_500(server: tuple[str, dict[str, str]]) -> None:
    with client(server) as http:
        outside = http.put("/api/joints/sim1_c0", json={"deg": 95})
        assert outside.status_code == 422
        assert outside.json() == {
            "error": "out_of_limits",
            "detail": "joint sim1_c0: 95 deg is outside its limits -90 .. 90 deg",
        }
        missing = http.put("/api/joints/nope", json={"deg": 0})
        assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
        typo = http.put("/api/joints/sim1_c0", json={"degs": 0})
        assert (typo.status_code, typo.json()["error"]) == (422, "invalid")
        assert "deg" in typo.json()["detail"]
        both = http.put("/api/joints/sim1_c0", json={"deg": 0, "ms": 10, "speed_deg_per_s": 5})
        assert both.status_code == 422
        garbage = http.put(
            "/api/joints/sim1_c0", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert (garbage.status_code, garbage.json()["error"]) == (400, "bad_request")
        huge = http.post("/api/moves", content=b"x" * 70_000)
        assert (huge.status_code, huge.json()["error"]) == (413, "too_large")
        assert http.get("/api/nothing").status_code == 404


def test_metrics_in_prometheus_format(server: tuple[str, dict[str, str]]) -> None:
    with client(server, "viewer") as http:
        text = http.get("/metrics").text
        assert 'servomesh_node_up{node="sim-1"} 1.0' in text
        requests = http.get("/api/nodes/sim-1").json()["requests"]
        counted = re.search(r'servomesh_node_requests_total\{node="sim-1"\} (\d+)\.0', text)
        assert counted is not None, text
        assert 2 <= int(counted.group(1)) <= requests
        assert 'servomesh_node_keepalives_total{node="sim-1"}' in text
        assert "servomesh_commands_total{" in text
        assert "servomesh_command_duration_seconds_bucket{" in text
        assert "servomesh_telemetry_shed_frames_total 0.0" in text


# -- the auth matrix ---------------------------------------------------------------------------

# (method, route as the schema names it, a concrete path, body, the role it needs)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("GET", "/api/nodes", "", None, "viewer"),
    ("GET", "/api/nodes/{name}", "sim-1", None, "viewer"),
    ("POST", "/api/nodes/{name}/reboot", "nope", None, "admin"),
    ("GET", "/api/joints", "", None, "viewer"),
    ("GET", "/api/joints/{name}", "sim1_c0", None, "viewer"),
    ("PUT", "/api/joints/{name}", "sim1_c0", {"deg": 0, "ms": 50}, "operator"),
    ("POST", "/api/moves", "", {"targets": {"sim1_c0": 0}}, "operator"),
    ("GET", "/api/poses", "", None, "viewer"),
    ("PUT", "/api/poses/{name}", "matrix", {"joints": {"sim1_c0": 0}}, "admin"),
    ("DELETE", "/api/poses/{name}", "matrix", None, "admin"),
    ("POST", "/api/poses/{name}/go", "tucked", {"duration_ms": 50}, "operator"),
    ("GET", "/api/sequences", "", None, "viewer"),
    ("POST", "/api/sequences/{name}/play", "sweep", None, "operator"),
    ("POST", "/api/sequences/stop", "", None, "operator"),
    ("GET", "/api/status", "", None, "viewer"),
    ("POST", "/api/stop", "", None, "operator"),
    ("POST", "/api/stop/clear", "", None, "operator"),
    ("GET", "/api/log", "", None, "viewer"),
    ("GET", "/metrics", "", None, "viewer"),
]
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def test_the_auth_matrix_covers_every_route(server: tuple[str, dict[str, str]]) -> None:
    with client(server) as http:
        schema = http.get("/openapi.json").json()
    documented = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if path not in ("/healthz", "/readyz")  # probes: open to all, on purpose
    }
    assert documented == {(method, route) for method, route, _, _, _ in ROUTES}


@pytest.mark.parametrize(("method", "route", "name", "body", "needs"), ROUTES)
def test_auth_matrix(
    server: tuple[str, dict[str, str]],
    method: str,
    route: str,
    name: str,
    body: dict[str, Any] | None,
    needs: str,
) -> None:
    base, tokens = server
    path = route.replace("{name}", name)
    with httpx.Client(base_url=base, timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            reply = http.request(method, path, json=body, headers=headers)
            assert reply.status_code == 401, (headers, reply.text)
            assert reply.json()["error"] == "unauthorized"
        for role, token in tokens.items():
            reply = http.request(
                method, path, json=body, headers={"Authorization": "Bearer " + token}
            )
            if RANK[role] < RANK[needs]:
                assert reply.status_code == 403, (role, reply.text)
                assert needs in reply.json()["detail"]
            else:
                assert reply.status_code not in (401, 403, 500), (role, reply.text)
        if path == "/api/sequences/sweep/play":
            http.post(
                "/api/sequences/stop", headers={"Authorization": "Bearer " + tokens["operator"]}
            )
        if path == "/api/stop":
            http.post("/api/stop/clear", headers={"Authorization": "Bearer " + tokens["admin"]})


def test_the_websocket_needs_a_token_and_this_servers_origin(
    server: tuple[str, dict[str, str]],
) -> None:
    base, tokens = server
    url = base.replace("http", "ws") + "/api/telemetry"
    for protocols, origin in (
        (["servomesh"], base),  # no token
        (["servomesh", "bearer.wrong"], base),
        (["servomesh", "bearer." + tokens["viewer"]], "http://evil.example"),
        (["servomesh", "bearer." + tokens["viewer"]], None),
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, subprotocols=protocols, origin=origin, open_timeout=5)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403


def test_serving_off_loopback_without_tokens_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[nodes.a]\nlink = "udp://127.0.0.1:9"\n')
    fleet = Fleet.from_config(config, log_operations=False)
    with pytest.raises(ValueError, match="without tokens"):
        serve(fleet, "0.0.0.0", 0)  # noqa: S104


# -- property-based fuzzing from the OpenAPI schema (last: it stops the fleet, among others) --


def test_fuzzing_from_the_schema_finds_no_5xx_and_no_answer_outside_it(
    server: tuple[str, dict[str, str]],
) -> None:
    base, tokens = server
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(ROUTES) + 2  # and the two probes
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": "Bearer " + tokens["admin"]},
                checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
                timeout=10,
            )

        call()
