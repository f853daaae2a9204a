"""Heap report: does the node, compiled to .mpy, boot and answer 10,000 signed SETs on a 32-bit
MicroPython with a 64 KiB heap, without MemoryError and without its heap growing? A report, not
a test: exit status 0 whatever it found, 1 only when a run could not be made.

    .venv/bin/python tools/bench_wasm32.py [--heaps 48k,56k,64k,80k] [--unix-heaps 128k,144k]
                                           [--sets 10000] [--no-find-min] [--no-unix]

The 32-bit interpreter is MicroPython's webassembly port (the npm package pinned in
tools/wasm32/package.json), run by Node.js 20+ through tools/wasm32/run.mjs: its pointers and
object headers are 32-bit, as on an ESP32 or RP2040. The first run installs it with `npm ci`
into tools/wasm32/node_modules (one package of about 0.5 MB, a few seconds). The same probe,
tools/wasm32_probe.py, runs on the 64-bit unix port for comparison.

mpy-cross compiles the device tree for no architecture, so protocol/cbor_viper.py is left out
(viper is native code, which the webassembly port cannot run) and cbor.py takes its plain
functions, as its import fallback intends. "unix x64+viper" is the tree a unix-port deploy
gets (march x64, viper included), for reference.

Datagrams are sealed here on CPython beforehand, bound to a boot id the probe gives the node;
the node's sealed replies are opened and checked here too. Heap figures are the node's share:
what the interpreter and the probe held before the firmware was imported is taken off.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servomesh.host import mpy, sim, upy
from servomesh.protocol import cbor, datagram, messages

ROOT = Path(__file__).resolve().parents[1]
WASM_DIR = ROOT / "tools" / "wasm32"
PROBE = Path(__file__).with_name("wasm32_probe.py")
WORK = ROOT / ".build" / "wasm32"
NPM_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300
HOST_SENDER_ID = 9
KEY_ID = 1
BOOT_ID = 0x2BAD5EED  # the probe gives it to the node, as a host learns it from INFO
FIRST_SEQ = 1
NODE_SENDER_ID = 1  # sim.default_config(1, ...)
NATIVE_ONLY = ("cbor_viper.py",)  # left out of a build for no architecture
BOOT_ONLY = ("main.py", "boot.py")  # a board's entry points: the node never imports them
SEARCH_KIB = (16, 512)  # the smallest working heap is searched for in this range

Run = Callable[[str, bool], dict[str, Any]]


def install_wasm() -> float | None:
    """`npm ci` when node_modules lacks the package: the seconds it took, else None."""
    if (WASM_DIR / "node_modules" / "@micropython").is_dir():
        return None
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js 20 or later")
    started = time.monotonic()
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=WASM_DIR, check=True, timeout=NPM_TIMEOUT_S
    )
    return time.monotonic() - started


def build_lib(lib: Path, march: str | None) -> None:
    """The device tree as a deploy lays it out (lib/servomesh/...), and the probe beside it."""
    staging = lib.with_name(lib.name + "-src")
    for path in (lib, staging):
        if path.exists():
            shutil.rmtree(path)
    skipped = BOOT_ONLY + (() if march else NATIVE_ONLY)
    for name in upy.DEVICE_PACKAGES:
        shutil.copytree(
            upy.package_dir(name),
            staging / name,
            ignore=shutil.ignore_patterns("__pycache__", *skipped),
        )
        mpy.compile_tree(staging / name, lib / "servomesh" / name, march=march)
    mpy.compile_file(PROBE, lib / "wasm32_probe.mpy", None)
    shutil.rmtree(staging)


def write_run_folder(run: Path, warmup: int, sets: int) -> bytes:
    """servomesh.json and packets.bin (format in the probe's docstring); returns the key."""
    run.mkdir(parents=True, exist_ok=True)
    config = sim.default_config(1, 47001, False)  # a simulated board's, with a fresh key
    key = bytes.fromhex(config["key"])
    (run / "servomesh.json").write_text(json.dumps(config), encoding="utf-8")
    host = datagram.Sender(HOST_SENDER_ID, key, KEY_ID)
    with (run / "packets.bin").open("wb") as out:
        out.write(b"".join(n.to_bytes(4, "big") for n in (BOOT_ID, FIRST_SEQ, warmup, sets)))
        for seq in range(FIRST_SEQ, FIRST_SEQ + warmup + sets):
            body = cbor.dumps([messages.SET, seq, seq % 6, 1000 + seq % 1000, 0])
            packet = host.seal(body, bound_to=BOOT_ID)
            out.write(len(packet).to_bytes(2, "big") + packet)
    return key


def check_replies(path: Path, key: bytes, expected: int) -> str:
    """Open the sealed replies as the host would: '' when every SET got its ACK, in order."""
    receiver = datagram.Receiver({KEY_ID: key})
    data = path.read_bytes()
    acked = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 2], "big")
        packet = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
        try:
            sender, body = receiver.open(packet)
        except datagram.DatagramError as error:
            return "reply %d rejected: %s" % (len(acked) + 1, error.reason)
        if sender != NODE_SENDER_ID:
            return "a reply from sender %d" % sender
        message = cbor.loads(body)
        if message[0] == messages.ACK:
            acked.append(message[1])
        elif message[0] != messages.LOG:
            return "reply %r is neither ACK nor LOG" % (message,)
    if acked != list(range(FIRST_SEQ, FIRST_SEQ + expected)):
        return "%d ACKs for %d SETs" % (len(acked), expected)
    return ""


def run_wasm(lib: Path, run: Path, heap: str, stop_early: bool) -> dict[str, Any]:
    node = shutil.which("node") or "/usr/bin/node"
    argv = [node, str(WASM_DIR / "run.mjs"), "--heap", heap, "--lib", str(lib), "--run", str(run)]
    if stop_early:
        argv += ["--stop-on-growth", "1"]
    return _run(argv, run, None)


def run_unix(lib: Path, run: Path, heap: str, warmup: int, sets: int) -> dict[str, Any]:
    code = "import gc; gc.collect(); s = gc.mem_alloc(); import wasm32_probe; "
    code += "wasm32_probe.main(%d, %d, s)"
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(lib))
    return _run(upy.command("-c", code % (warmup, sets), heap=heap), run, env)


def _run(argv: list[str], run: Path, env: dict[str, str] | None) -> dict[str, Any]:
    (run / "replies.bin").unlink(missing_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=run, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        result = {"ok": False, "crash": " | ".join(tail) or "exit %d" % done.returncode}
        if "MemoryError" in result["crash"]:
            result["memory_error"] = "outside the probe's steps"
    result["seconds"] = time.monotonic() - started
    return result


def smallest(run_at: Run, tried: dict[int, dict[str, Any]]) -> int | None:
    """Smallest heap in KiB that works, by bisection from the runs `tried` (KiB -> result),
    assuming more heap never hurts."""

    def works(kib: int) -> bool:
        if kib not in tried:
            tried[kib] = run_at("%dk" % kib, True)
        return bool(tried[kib]["ok"])

    good = [kib for kib, result in tried.items() if result["ok"]]
    high = min(good) if good else max([SEARCH_KIB[0], *tried])
    while not works(high):
        if high >= SEARCH_KIB[1]:
            return None
        high = min(high * 2, SEARCH_KIB[1])
    low = max([SEARCH_KIB[0], *(kib for kib in tried if kib < high and not tried[kib]["ok"])])
    while high - low > 1:
        middle = (low + high) // 2
        if works(middle):
            high = middle
        else:
            low = middle
    return high


def kib_of(heap: str) -> int:
    """KiB in a heap size written like "64k" (or "64")."""
    return int(heap.lower().removesuffix("k"))


def _kib(value: float | None) -> str:
    return "-" if value is None else "%.1f" % (value / 1024)


def verdict(result: dict[str, Any]) -> str:
    if result.get("ok"):
        return "ok"
    if result.get("memory_error"):
        return "MemoryError: %s" % result["memory_error"]
    if result.get("heap_grown_calls"):
        return "heap grew: %s" % result["heap_first_growth"]
    if result.get("crash"):
        return "CRASH: %s" % result["crash"]
    return "FAIL: %s" % (result.get("failure") or result.get("replies") or result)


HEADINGS = ("port", "heap", "probe", "boot", "peak", "ready", "end", "growth", "dgram", "low")
LEGEND = """\
probe: KiB the interpreter and the probe held before the firmware was imported. The node's
share, in KiB after a collection: boot (main() up to asyncio.run), peak (Node() built, config
still loaded), ready (UDP link built), end (after the last SET). growth: bytes from warm-up to
end. dgram: bytes one datagram allocated, mean/most (exact on wasm32, where no collection
runs inside a call; the first datagram also logs the boot). low: least KiB free after a
datagram, garbage included. On wasm32 a step runs without a collection inside it, where a
board would collect, so "heap grew" may be pessimistic for a step that makes much garbage;
"peak" is live data alone."""


def row(port: str, heap: str, result: dict[str, Any]) -> list[str]:
    """The table's cells for one run (see LEGEND)."""
    marks = result.get("marks", {})
    base = marks.get("baseline", [None])[0]

    def share(used: int | None) -> str:
        return "-" if used is None or base is None else _kib(used - base)

    used = {name: value[0] for name, value in marks.items()}
    growth = "-"
    if "warm" in used and "end" in used:
        growth = "%+d" % (used["end"] - used["warm"])
    steps = [step for step in result.get("steps", []) if step]
    return [
        port,
        heap,
        _kib(base),
        share(used.get("boot")),
        share(max(steps) if steps and "boot" in used else None),
        share(used.get("ready")),
        share(used.get("end")),
        growth,
        "%s/%s" % (result.get("per_datagram_mean", "-"), result.get("per_datagram_max", "-"))
        if result.get("handled")
        else "-",
        "-" if result.get("heap_grown_calls") else _kib(result.get("lowest_free")),
        verdict(result),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heaps", default="48k,56k,64k,80k", help="heaps for every port")
    parser.add_argument("--unix-heaps", default="128k,144k", help="more, for the unix port")
    parser.add_argument("--warmup", type=int, default=500, help="SETs before the first figures")
    parser.add_argument("--sets", type=int, default=10000, help="SETs measured after warm-up")
    parser.add_argument("--no-find-min", action="store_true", help="skip the 1 KiB search")
    parser.add_argument("--no-unix", action="store_true", help="the webassembly port only")
    args = parser.parse_args()

    try:
        installed_s = install_wasm()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print("cannot install the webassembly port: %s" % error)
        return 1
    if installed_s is not None:
        print("npm ci: %.1f s" % installed_s)
    started = time.monotonic()
    lib, lib_x64, run = WORK / "lib", WORK / "lib-x64", WORK / "run"
    build_lib(lib, None)
    ports: dict[str, Run] = {"wasm32": lambda heap, stop: run_wasm(lib, run, heap, stop)}
    if not args.no_unix:
        build_lib(lib_x64, upy.HOST_MARCH)
        ports["unix x64"] = lambda heap, _: run_unix(lib, run, heap, args.warmup, args.sets)
        ports["unix x64+viper"] = lambda heap, _: run_unix(
            lib_x64, run, heap, args.warmup, args.sets
        )
    key = write_run_folder(run, args.warmup, args.sets)
    built_s = time.monotonic() - started
    print("built in %.1f s; %d + %d SETs a run" % (built_s, args.warmup, args.sets))

    def checked(port: str) -> Run:
        def run_at(heap: str, stop_early: bool) -> dict[str, Any]:
            result = ports[port](heap, stop_early)
            if result.get("ok"):
                problem = check_replies(run / "replies.bin", key, args.warmup + args.sets)
                if problem:
                    result["ok"] = False
                    result["replies"] = problem
            print("  %-15s %5s  %s  (%.1f s)" % (port, heap, verdict(result), result["seconds"]))
            return result

        return run_at

    heaps = ["%dk" % kib_of(h) for h in args.heaps.split(",") if h]
    rows = []
    tried: dict[str, dict[int, dict[str, Any]]] = {port: {} for port in ports}
    for port in ports:
        extra = [h for h in args.unix_heaps.split(",") if h] if port != "wasm32" else []
        extra = ["%dk" % kib_of(h) for h in extra]
        for heap in heaps + extra:
            result = checked(port)(heap, False)
            tried[port][kib_of(heap)] = result
            rows.append(row(port, heap, result))
    print()
    print(LEGEND)
    table = [[*HEADINGS, "result"], *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADINGS))]
    for line in table:
        cells = [cell.rjust(width) for cell, width in zip(line, widths, strict=False)]
        print("  " + "  ".join(cells) + "  " + line[-1])
    if not args.no_find_min:
        print()
        for port in ports:
            kib = smallest(checked(port), tried[port])
            if kib is None:
                print("  smallest heap that works, %s: none up to %d KiB" % (port, SEARCH_KIB[1]))
                continue
            base = tried[port][kib]["marks"]["baseline"][0]
            print(
                "  smallest heap that works, %s: %d KiB, of which %s KiB held before the"
                " firmware was imported (interpreter and probe)" % (port, kib, _kib(base))
            )
    could_not_run = [
        r for results in tried.values() for r in results.values() if verdict(r).startswith("CRASH")
    ]
    return 1 if could_not_run else 0


if __name__ == "__main__":
    sys.exit(main())
