"""Deploy benchmark (issue 6): `servomesh deploy` to a simulated board over its pty, next to
`mpremote cp -r` of the same files in the same run. A report: targets print PASS or MISS.

    .venv/bin/python tools/bench_deploy.py [--quick]

Cases, on one simulated board whose node runs:
- full deploy with a cold compile cache (a first deploy: mpy-cross on every module);
- full deploy with the compiled files cached (the board's lib/ and main.py removed first);
- no-change deploy (median of several): the node, asked with DISCOVER, runs this build;
- no-change deploy with --verify (median): break in, survey, nothing copied, reset, HELLO;
- `mpremote connect PORT resume cp -r servomesh :lib/ + cp main.py :main.py` of the same
  compiled files, timed through the real CLI; its bytes counted in a second, in-process run of
  the same mpremote code (`do_filesystem_recursive_cp`) on a port whose writes are counted.
Bytes are what the host writes to the port. Targets: a no-change deploy under 1 s; a full
deploy sends at most the compiled files (the .mpy files and main.py) plus 10%.
"""

import argparse
import contextlib
import io
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mpremote.commands import do_filesystem_cp, do_filesystem_recursive_cp
from mpremote.transport_serial import SerialTransport

from servomesh.host import board_repl, deploy
from servomesh.host.sim import Simulator

Row = Callable[..., None]
Verdict = Callable[[str, bool], str]

START_S = 10.0
MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
TARGET_NO_CHANGE_S = 1.0
TARGET_BYTES_RATIO = 1.10


def compiled_bytes(flash: Path, result: deploy.DeployResult) -> int:
    """Size of the code files a deploy wrote (the config is not compiled: it counts as cost)."""
    return sum((flash / path).stat().st_size for path in result.copied if path != deploy.CONFIG)


def wipe(flash: Path) -> None:
    """The board's deployed code goes, with the deploy's record of it: the next copy is a full
    one."""
    shutil.rmtree(flash / "lib" / "servomesh", ignore_errors=True)
    (flash / deploy.MAIN).unlink(missing_ok=True)
    (flash / deploy.DEPLOYED).unlink(missing_ok=True)


def stage(build: Path, target: Path, main: bytes) -> Path:
    """The compiled files as mpremote would copy them: servomesh/<package>/*.mpy, main.py
    (compile_tree's .sha256 stamps and its copy of firmware/main.py stay behind)."""
    for mpy in build.rglob("*.mpy"):
        relative = mpy.relative_to(build)
        out = target / "servomesh" / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mpy, out)
    (target / "main.py").write_bytes(main)
    return target


def mpremote_cli_s(port: str, staged: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [MPREMOTE, "connect", port, "resume", "cp", "-r", "servomesh", ":lib/"]
        + ["+", "cp", "main.py", ":main.py"],
        cwd=staged,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.monotonic() - started


def mpremote_bytes(port: str, staged: Path) -> int:
    """Bytes the same mpremote copy writes, counted on the port's writes."""
    transport = SerialTransport(port, 115200, timeout=board_repl.IO_TIMEOUT_S)
    sent = 0
    write = transport.serial.write

    def counted(data: bytes) -> Any:
        nonlocal sent
        sent += len(data)
        return write(data)

    transport.serial.write = counted
    state = SimpleNamespace(transport=transport)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
            transport.enter_raw_repl(soft_reset=False)
            # check_hash as the CLI sets it (no --force): a hash exec per file first
            do_filesystem_recursive_cp(state, str(staged / "servomesh"), ":lib", False, True)
            do_filesystem_cp(state, str(staged / "main.py"), ":main.py", False, True)
        transport.exit_raw_repl()
    finally:
        transport.close()
    return sent


def run(quick: bool, row: Row, verdict: Verdict) -> None:
    repeats = 3 if quick else 7
    # Each break-in stops a node with Ctrl-C, which the simulator reports as a warning.
    boards_log = logging.getLogger("servomesh.host.sim_board")
    level = boards_log.level
    boards_log.setLevel(logging.ERROR)
    try:
        figures = measure(repeats)
    finally:
        boards_log.setLevel(level)
    report(figures, row, verdict)


@dataclass(frozen=True)
class Figures:
    cold: deploy.DeployResult  # full deploy, cold compile cache
    warm: deploy.DeployResult  # full deploy, compiled files cached
    same: list[deploy.DeployResult]  # no-change deploys
    verified: list[deploy.DeployResult]  # no-change deploys with verify: every file hashed
    code_bytes: int  # the compiled files a full deploy writes
    cli_s: float  # mpremote cp -r, everything
    cli_same_s: float  # mpremote cp -r, nothing changed
    cp_bytes: int  # what mpremote's copy writes to the port


def measure(repeats: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as folder:
        root = Path(folder)
        with Simulator(nodes=1, serial=1, folder=root / "boards") as sim:
            sim.wait_all_running(START_S)
            board = sim.boards[0]
            port = (board.serial_url or "").removeprefix("serial://")
            build = root / "build"
            cold = deploy.deploy(port, build_dir=build)
            code_bytes = compiled_bytes(board.flash, cold)
            wipe(board.flash)
            warm = deploy.deploy(port, build_dir=build)
            same = [deploy.deploy(port, build_dir=build) for _ in range(repeats)]
            verified = [deploy.deploy(port, build_dir=build, verify=True) for _ in range(repeats)]
            for result in same + verified:
                if result.copied:
                    raise RuntimeError("a no-change deploy copied %s" % (result.copied,))
            compiled = next(build.glob("*-mpy*"))
            staged = stage(compiled, root / "stage", (board.flash / deploy.MAIN).read_bytes())
            wipe(board.flash)  # the node runs on: its modules are loaded
            cli_s = mpremote_cli_s(port, staged)
            cli_same_s = mpremote_cli_s(port, staged)  # it skips files whose hash matches
            wipe(board.flash)
            cp_bytes = mpremote_bytes(port, staged)
    return Figures(cold, warm, same, verified, code_bytes, cli_s, cli_same_s, cp_bytes)


def report(figures: Figures, row: Row, verdict: Verdict) -> None:
    cold, warm, same, code_bytes = figures.cold, figures.warm, figures.same, figures.code_bytes
    cli_s, cli_same_s, cp_bytes = figures.cli_s, figures.cli_same_s, figures.cp_bytes
    repeats = len(same)
    no_change_s = statistics.median(result.seconds for result in same)
    verified_s = statistics.median(result.seconds for result in figures.verified)
    print(
        "\nDeploy to a simulated board over its pty (%d code files, %d bytes compiled; "
        "no-change: median of %d)"
        % (len([p for p in cold.copied if p != deploy.CONFIG]), code_bytes, repeats)
    )
    row("case", "seconds", "bytes sent", "target", "result")
    row("full deploy, cold compile cache", "%.2f" % cold.seconds, "%d" % cold.bytes_sent)
    row("full deploy, compiled files cached", "%.2f" % warm.seconds, "%d" % warm.bytes_sent)
    ok = verdict("no-change deploy under 1 s", no_change_s < TARGET_NO_CHANGE_S)
    extra = "%d" % same[0].bytes_sent
    row("no-change deploy", "%.3f" % no_change_s, extra, "< %.1f s" % TARGET_NO_CHANGE_S, ok)
    extra = "%d" % figures.verified[0].bytes_sent
    row("no-change deploy --verify (every file hashed)", "%.2f" % verified_s, extra)
    row("mpremote cp -r of the same files (CLI)", "%.2f" % cli_s, "%d" % cp_bytes)
    row("mpremote cp -r again, nothing changed (CLI)", "%.2f" % cli_same_s)
    ratio = cold.bytes_sent / code_bytes
    ok = verdict("full deploy bytes / compiled files", ratio <= TARGET_BYTES_RATIO)
    target = "<= %.2f" % TARGET_BYTES_RATIO
    row("full deploy bytes sent / compiled files", "%.3f" % ratio, "", target, ok)
    row("mpremote cp -r bytes sent / compiled files", "%.3f" % (cp_bytes / code_bytes))
    speedup = "%.1fx; %.1fx" % (cold.seconds / no_change_s, warm.seconds / no_change_s)
    row("full / no-change deploy time (cold; cached)", speedup)


def main() -> int:
    parser = argparse.ArgumentParser(description="servomesh deploy benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer no-change deploys")
    args = parser.parse_args()
    import bench  # its table format and MISS list

    return bench.alone("Deploy benchmark", lambda: run(args.quick, bench.row, bench.verdict))


if __name__ == "__main__":
    sys.exit(main())
