"""The `servomesh` command: `upy` runs device code as on a board; `demo` serves the example
fleet on simulated boards until Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from apiserver import free_port

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


def test_demo_serves_the_example_fleet_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [SERVOMESH, "demo", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        assert demo.stdout is not None
        deadline = time.monotonic() + 60
        while not any(line.startswith("dashboard:") for line in lines):
            assert time.monotonic() < deadline, lines
            line = demo.stdout.readline()
            assert line, lines  # it exited
            lines.append(line)
        base = "http://127.0.0.1:%d" % port
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(100):  # the server answers once the fleet is up
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            nodes = http.get("/api/nodes").json()
            assert [node["name"] for node in nodes] == ["arm-wrist", "arm-base", "head"]
            assert {node["state"] for node in nodes} == {"ready"}
            assert nodes[0]["link"].startswith("serial:///dev/pts/")
            joints = [joint["name"] for joint in http.get("/api/joints").json()]
            assert len(joints) == 8  # a 6-joint arm and a pan-tilt head
            assert http.put("/api/joints/pan", json={"deg": 30, "ms": 100}).status_code == 200
            assert "<title>" in http.get("/").text
        children = _children(demo.pid)
        assert len(children) >= 3  # the boards' interpreters
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
        assert demo.returncode == 0, output
        assert "demo stopped" in output
        assert not [pid for pid in children if Path("/proc/%d" % pid).exists()]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_wheel_carries_the_device_tree(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("servomesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "protocol/cbor.py",
        "protocol/cbor_viper.py",
        "firmware/node.py",
        "host/cli.py",
        "host/api/app.py",
        "host/api/dashboard/index.html",  # the dashboard works offline: its files ship
        "examples/arm.toml",  # servomesh demo runs it
    ):
        assert "servomesh/" + module in names
    assert not any(name.startswith(("tests/", "tools/")) for name in names)
