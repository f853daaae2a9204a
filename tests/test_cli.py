"""The `servomesh` command: `upy` runs device code as on a board; `demo` runs end to end."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SERVOMESH = str(Path(sys.executable).with_name("servomesh"))
REPO = Path(__file__).resolve().parents[1]


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVOMESH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_upy_imports_the_device_tree_from_anywhere(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from servomesh.protocol import cbor\n"
        "print(sys.implementation.name, cbor.FAST_PATH, cbor.dumps([3, 300]).hex(), sys.argv[1:])\n"
        "sys.exit(3)\n"
    )
    result = run("upy", str(script), "--help", "x", cwd=tmp_path)
    assert result.stdout.strip() == "micropython viper 820319012c ['--help', 'x']"
    assert result.returncode == 3  # the interpreter's exit status passes through


def test_upy_small_heap_flag_passes_through(tmp_path: Path) -> None:
    result = run(
        "upy", "-X", "heapsize=64k", "-c", "import gc; print(gc.mem_free() < 70000)", cwd=tmp_path
    )
    assert result.stdout.strip() == "True"


def test_upy_honours_micropython_override(tmp_path: Path) -> None:
    env = dict(os.environ, MICROPYTHON=str(tmp_path / "no-such-interpreter"))
    result = run("upy", "-c", "print(1)", cwd=tmp_path, env=env)
    assert result.returncode != 0
    wrapper = tmp_path / "wrapper"
    wrapper.write_text('#!/bin/sh\necho "wrapped $MICROPYPATH" "$@"\n')
    wrapper.chmod(0o755)
    env["MICROPYTHON"] = str(wrapper)
    result = run("upy", "-c", "x", cwd=tmp_path, env=env)
    assert result.stdout.startswith("wrapped .frozen:")
    assert result.stdout.rstrip().endswith("/lib -c x")


def test_upy_without_interpreter_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servomesh.host import upy

    monkeypatch.delenv("MICROPYTHON", raising=False)
    monkeypatch.setattr(upy.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(upy.InterpreterNotFoundError, match="MICROPYTHON="):
        upy.interpreter()


def test_demo_runs_real_nodes_end_to_end(tmp_path: Path) -> None:
    result = run("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    boards = [line for line in lines if line.startswith("sim-") and "firmware 0.1.0" in line]
    assert len(boards) == 3
    assert sum("serial:///dev/pts/" in line for line in boards) == 1
    assert sum("-> ACK {'result': 600}" in line for line in lines) == 3
    motion = [line for line in lines if "channel 0 after the start:" in line]
    assert len(motion) == 3
    for line in motion:  # each board starts at 1000 us and ends at 2000 us
        samples = [int(item.split(": ")[-1]) for item in line.split(", ")]
        assert 1000 <= samples[0] < 1100  # sampled within a few ms of the start
        assert samples[-1] == 2000
        assert samples == sorted(samples)
        assert any(1000 < sample < 2000 for sample in samples)  # it moved, not jumped
    assert "auth_failed 1, replayed 1" in result.stdout
    assert "SET -> ERROR stopped" in result.stdout
    assert lines[-1] == "All boards stopped."


def test_wheel_carries_the_device_tree(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("servomesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("protocol/cbor.py", "protocol/cbor_viper.py", "firmware/node.py", "host/cli.py"):
        assert "servomesh/" + module in names
    assert not any(name.startswith(("tests/", "tools/")) for name in names)
