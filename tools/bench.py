"""Benchmark report: the device codec on the MicroPython unix port, the host codec on CPython,
and wire sizes. A report, not a test: targets print PASS or MISS and the exit status is 0 either
way; it is 1 only when a benchmark could not run.

    .venv/bin/python tools/bench.py [--quick]

These machines are shared and noisy: the alternatives of a section run interleaved within each
repeat, figures are medians over the repeats, and ratios are medians of per-repeat ratios.
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bench_api
import bench_deploy
import bench_ingest
import bench_node
import cbor2

from servomesh.host import codec, upy
from servomesh.protocol import datagram, messages, stream

DEVICE_SCRIPT = Path(__file__).with_name("bench_device.py")
# A board-sized heap: allocating cases then pay for their collections as on a board, and the
# unix port's default 2 MB heap makes allocation slow down as garbage piles up between collections.
DEVICE_HEAP = "128k"
DEVICE_TIMEOUT_S = 120
KEY = bytes(range(32))

SET = (messages.SET, 300, 2, 1500, 400)
MOVE = (messages.MOVE, 301, 500, 123456, 7, 0, 1500, 1, 1600, 2, 1400)
SIX_CHANNELS = tuple(v for ch in range(6) for v in (ch, 1500 + ch, 1490 + ch, 1500 + ch, 1))
COUNTERS = (0, 0, 2, 0, 1, 3, 4, 5000)  # messages.STATE_COUNTERS
STATE = (messages.STATE, 302, 123456, 0, 7, 5000, 40, 61000, *COUNTERS, *SIX_CHANNELS)
INFO = (messages.INFO, 303, {"fw": "0.1.0", "protocol": 1, "channels": 8, "kinds": [1, 2, 3]})
MESSAGES: dict[str, tuple[Any, ...]] = {
    "SET": SET,
    "MOVE (3 ch)": MOVE,
    "STATE (6 ch)": STATE,
    "INFO (map)": INFO,
}

misses: list[str] = []


def verdict(label: str, ok: bool) -> str:
    if not ok:
        misses.append(label)
    return "PASS" if ok else "MISS  <<<"


def row(label: str, value: str, extra: str = "", target: str = "", status: str = "") -> None:
    print("  %-46s %10s  %-24s %-10s %s" % (label, value, extra, target, status))


def section(title: str, run: Callable[[], object]) -> str:
    """Run one section of the report; when something stops it (a process, a timeout), say so
    under its title and return what, "" when it ran: the tables printed before it stand."""
    try:
        run()
    except Exception as error:  # the report names it
        failure = "%s: %s" % (type(error).__name__, error)
        print("\n%s: FAILED, %s" % (title, failure))
        return failure
    return ""


def alone(title: str, run: Callable[[], object]) -> int:
    """A section run from its own file: its tables, then the targets it missed; exit status 1
    when it could not run."""
    if section(title, run):
        return 1
    print("\nMISS: %s" % ", ".join(misses) if misses else "\nAll targets met.")
    return 0


def paired_median(top: list[float], bottom: list[float], base: list[float] | None = None) -> float:
    """Median over repeats of top/bottom, each minus `base` (the loop overhead) when given."""
    zeros = [0.0] * len(top)
    offsets = base if base is not None else zeros
    return statistics.median(
        (t - o) / (b - o) for t, b, o in zip(top, bottom, offsets, strict=True)
    )


def run_device(rounds: int, repeats: int) -> dict[str, Any]:
    argv = upy.command(str(DEVICE_SCRIPT), str(rounds), str(repeats), heap=DEVICE_HEAP)
    done = subprocess.run(
        argv,
        env=upy.environment(),
        capture_output=True,
        text=True,
        timeout=DEVICE_TIMEOUT_S,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        # MicroPython prints an uncaught exception's traceback on stdout
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise RuntimeError("exit %d:\n%s" % (done.returncode, output))
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def print_device(report: dict[str, Any]) -> None:
    res: dict[str, dict[str, Any]] = report["results"]
    print()
    print(
        "MicroPython unix port (device codec): %d rounds (HMAC, framing: %d) x %d repeats, "
        "heap %s" % (report["rounds"], res["seal"]["rounds"], report["repeats"], DEVICE_HEAP)
    )
    row("case", "us/round", "%-17s %8s" % ("range (repeats)", "B/round"), "target", "result")
    labels = {
        "empty": "loop overhead (empty function)",
        "fast": "SET fast path encode+decode_ints_into (%s)" % report["fast_path"],
        "plain": "SET plain_encode+decode_ints_into",
        "generic": "SET cbor.dumps+loads",
        "json_list": "SET json dumps+loads, list",
        "json_dict": "SET json dumps+loads, dict",
        "seal": "datagram Sender.seal (signed SET)",
        "open": "datagram Receiver.open (incl. next())",
        "digest": "HmacKey.digest (25 bytes)",
        "framing": "stream encode_frame+FrameDecoder.feed",
    }
    for name, label in labels.items():
        samples, alloc = res[name]["samples"], res[name]["alloc"]
        extra = "%-17s %8g" % ("%.3f-%.3f" % (min(samples), max(samples)), alloc)
        if name == "fast":
            status = verdict("fast path allocates", alloc == 0)
            row(label, "%.3f" % res[name]["us"], extra, "0 B", status)
        else:
            row(label, "%.3f" % res[name]["us"], extra)
    empty = res["empty"]["samples"]
    for form in ("list", "dict"):
        json_samples = res["json_" + form]["samples"]
        ratio = paired_median(res["fast"]["samples"], json_samples)
        net = "net of loop: %.2f" % paired_median(res["fast"]["samples"], json_samples, empty)
        label = "ratio fast path / json (%s form)" % form
        if form == "list":
            row(label, "%.2f" % ratio, net, "<= 0.50", verdict(label, ratio <= 0.5))
        else:
            row(label, "%.2f" % ratio, net)
    print(
        "  B/round: gc.mem_alloc() delta over %d rounds with gc off; ratios: medians of "
        "per-repeat ratios" % report["alloc_rounds"]
    )


def measure(
    cases: dict[str, Callable[[], object]], rounds: int, repeats: int
) -> dict[str, list[float]]:
    """Per-round microseconds of each case, one sample per repeat, cases interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    items = list(cases.items())
    for repeat in range(repeats):
        shift = repeat % len(items)
        for name, fn in items[shift:] + items[:shift]:
            gc.collect()
            gc.disable()  # as timeit does: a cyclic collection lands on whichever case is running
            start = time.perf_counter_ns()
            for _ in range(rounds):
                fn()
            elapsed = time.perf_counter_ns() - start
            gc.enable()
            samples[name].append(elapsed / rounds / 1000)
    return samples


def bind(fn: Callable[..., object], *args: Any) -> Callable[[], object]:
    return lambda: fn(*args)


def nothing(*args: Any) -> None:
    return None


def print_host(rounds: int, repeats: int) -> None:
    cases: dict[str, Callable[[], object]] = {"loop overhead (empty function)": bind(nothing, *SET)}
    for name, msg in MESSAGES.items():
        body = codec.encode(*msg)
        decoded = codec.decode(body)
        if (decoded.kind, decoded.seq, *decoded.fields) != msg:
            raise RuntimeError("%s does not survive encode and decode" % name)
        cases["%s codec.encode" % name] = bind(codec.encode, *msg)
        cases["%s codec.decode" % name] = bind(codec.decode, body)
    raw_body = cbor2.dumps(list(SET))
    cases["SET cbor2.dumps (raw)"] = bind(cbor2.dumps, list(SET))
    cases["SET cbor2.loads (raw)"] = bind(cbor2.loads, raw_body)
    samples = measure(cases, rounds, repeats)
    print()
    print("CPython host codec: %d rounds x %d repeats" % (rounds, repeats))
    row("case", "us/call", "range (repeats)")
    for name, values in samples.items():
        row(name, "%.3f" % statistics.median(values), "%.3f-%.3f" % (min(values), max(values)))


def print_sizes(device: dict[str, Any] | None) -> None:
    body = codec.encode(*SET)
    frame = stream.encode_frame(body)
    packet = datagram.Sender(0, KEY, 1, counter=299).seal(body)
    print()
    print("Wire sizes (bytes)")
    row("message", "bytes", "", "target", "result")
    row("SET CBOR body", str(len(body)), body.hex(), "<= 12", verdict("SET body", len(body) <= 12))
    escapes = len(frame) - len(body) - 6  # SOF, 4 CRC bytes, EOF
    row("SET serial frame (stream.encode_frame)", str(len(frame)), "escaped bytes: %d" % escapes)
    status = verdict("signed datagram", len(packet) <= 40)
    row("SET signed datagram", str(len(packet)), "13 header + 12 tag", "<= 40", status)
    for name, msg in MESSAGES.items():
        if name != "SET":
            row("%s CBOR body" % name, str(len(codec.encode(*msg))))
    if device is not None:
        same = device["set_body"] == body.hex()
        label = "SET body from the device codec"
        row(label, "same" if same else "DIFFERS", "", "== host", verdict(label, same))
        row("SET as MicroPython json, list", str(device["json_bytes"]["list"]))
        row("SET as MicroPython json, dict", str(device["json_bytes"]["dict"]))


def main() -> int:
    parser = argparse.ArgumentParser(description="servomesh benchmark report")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    args = parser.parse_args()
    device_rounds, host_rounds, repeats = (1000, 1000, 7) if args.quick else (4000, 4000, 21)
    device: dict[str, Any] | None = None
    failure = ""
    try:
        device = run_device(device_rounds, repeats)
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
        failure = "%s: %s" % (type(error).__name__, error)
    print("servomesh bench (%s run)" % ("quick" if args.quick else "full"))
    if device is not None:
        print("MicroPython %s" % device["micropython"])
        print("cbor.FAST_PATH on MicroPython: %s" % device["fast_path"])
    print("CPython %s (cbor2 %s)" % (sys.version.split()[0], version("cbor2")))
    if device is not None:
        print_device(device)
    else:
        print("\nMicroPython unix port (device codec): FAILED, %s" % failure)
    print_host(host_rounds, repeats)
    print_sizes(device)
    failures = [
        section(title, lambda module=module: module.run(args.quick, row, verdict))
        for title, module in (
            ("Node benchmark", bench_node),
            ("Host ingest benchmark", bench_ingest),
            ("HTTP API benchmark", bench_api),
            ("Deploy benchmark", bench_deploy),
        )
    ]
    node_failure = next((failure for failure in failures if failure), "")
    print()
    if misses:
        print("MISS: %s (a report, not a test: exit status 0)" % ", ".join(misses))
    elif device is None:
        print("Host targets met; the device benchmark FAILED, its targets were not checked.")
    elif node_failure:
        print("Codec targets met; a node benchmark FAILED, its targets were not checked.")
    else:
        print("All targets met.")
    return 1 if device is None or node_failure else 0


if __name__ == "__main__":
    sys.exit(main())
