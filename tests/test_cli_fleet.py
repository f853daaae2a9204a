"""`servomesh nodes | move | stop | clear` against simulated boards, as a script would run them."""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servomesh.host.cli_fleet import READY_TIMEOUT_S, REBOOT_GRACE_S
from servomesh.host.sim import DEFAULT_MAIN, Simulator, write_fleet_config
from servomesh.host.sim_board import BoardState

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


def test_nodes_waits_for_a_node_that_reboots_to_apply_the_config_not_for_a_dead_one(
    tmp_path: Path,
) -> None:
    # Each boot takes longer than READY_TIMEOUT_S, as a board's boot and Wi-Fi join may.
    slow_boot_s = READY_TIMEOUT_S + 0.5
    main = "import time\ntime.sleep(%.1f)\n%s" % (slow_boot_s, DEFAULT_MAIN)
    with Simulator(nodes=2, folder=tmp_path / "boards", main=main) as sim:
        config = str(write_fleet_config(sim, tmp_path / "fleet.toml"))
        slow, dead = sim.boards
        dead.terminate()
        dead.wait_until(lambda b: b.state is BoardState.OFF, 10)
        key_file = tmp_path / "fleet.keys" / "sim-1.key"
        first_boot = run(
            *("nodes", "--target", "127.0.0.1:%d" % slow.udp_port, "--key-file", str(key_file)),
            *("--timeout", str(slow_boot_s + 5)),
        )
        assert first_boot.returncode == 0, first_boot.stderr
        started = time.monotonic()
        result = run("nodes", "--config", config, "--json")
        elapsed = time.monotonic() - started
    assert "sim-1: rebooting to apply the fleet's config" in result.stderr  # the CLI's first run
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert (rows["sim-1"]["state"], rows["sim-1"]["reboots"]) == ("ready", 1)
    assert rows["sim-2"]["state"] == "connecting"  # never answered
    assert result.returncode == 1  # not every node is ready
    assert elapsed < READY_TIMEOUT_S + REBOOT_GRACE_S  # no grace for a node that never answered
