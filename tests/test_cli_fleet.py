"""`servomesh nodes | move | stop | clear` against simulated boards, as a script would run them."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servomesh.host.sim import Simulator, write_fleet_config

SERVOMESH = str(Path(sys.executable).with_name("servomesh"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SERVOMESH, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("cli")
    with Simulator(nodes=2, serial=1, folder=folder / "boards") as sim:
        sim.wait_all_running(10)
        yield str(write_fleet_config(sim, folder / "fleet.toml"))


def test_nodes_lists_every_node_ready(config: str) -> None:
    result = run("nodes", "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["name"], row["state"]) for row in rows] == [("sim-1", "ready"), ("sim-2", "ready")]
    assert all(row["firmware"] for row in rows)
    table = run("nodes", "--config", config)
    assert table.stdout.splitlines()[0].split()[:3] == ["name", "state", "link"]


def test_move_stop_and_clear(config: str) -> None:
    moved = run("move", "--config", config, "sim1_c0=20", "sim2_c3=-30", "--ms", "200")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith("ok, trace ")
    assert run("stop", "--config", config).returncode == 0
    refused = run("move", "--config", config, "sim1_c0=10")
    assert refused.returncode == 2
    assert "stopped" in refused.stderr
    assert run("clear", "--config", config).returncode == 0
    assert run("move", "--config", config, "sim1_c0=10").returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sim1_c0=500"], "sim1_c0"),  # out of limits: named, never clamped
        (["elbow=10"], "no joint named 'elbow'"),
        (["sim1_c0"], "write JOINT=DEGREES"),
    ],
)
def test_bad_targets_are_one_clear_line(config: str, args: list[str], message: str) -> None:
    result = run("move", "--config", config, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_config_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[nodes.a]\nlink = "tcp://x:1"\n')
    result = run("nodes", "--config", str(bad))
    assert result.returncode == 2
    assert "nodes.a.link" in result.stderr
    assert "Traceback" not in result.stderr
