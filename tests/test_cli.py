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


def test_demo_runs_the_protocol_end_to_end(tmp_path: Path) -> None:
    result = run("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("HELLO") and "INFO" in line for line in lines)
    assert any(line.startswith("SET ch2") and "ACK" in line for line in lines)
    assert sum("rejected by the node" in line for line in lines) == 2
    assert "'bad_tag': 1" in result.stdout
    assert "'replay': 1" in result.stdout
    assert "12 B CBOR body" in result.stdout


def test_wheel_carries_the_device_tree(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("servomesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("protocol/cbor.py", "protocol/cbor_viper.py", "firmware/echo.py", "host/cli.py"):
        assert "servomesh/" + module in names
    assert not any(name.startswith(("tests/", "tools/")) for name in names)
