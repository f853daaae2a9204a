"""Hostile input: only the codec's own error, in bounded time and memory, on both runtimes."""

import contextlib
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import load_golden
from upy_device import Device

from servomesh.host import codec
from servomesh.protocol import cbor, datagram, messages, stream

SEED = 20261130


# Long repetitive inputs, as (pattern, times, tail): they travel to the device compressed.
REPEATED = [
    (b"\x81", 10_000, b""),
    (b"\xa1\x01", 5_000, b""),
    (b"\x9f", 100, b""),
    (b"\xc0", 1000, b"\x00"),
    (b"\xd9\xd9\xf7", 100, b"\x00"),
]


def hostile_inputs() -> list[bytes]:
    rng = random.Random(SEED)
    golden = load_golden()
    samples = [bytes.fromhex(v["hex"]) for section in golden.values() for v in section]
    inputs = [pattern * times + tail for pattern, times, tail in REPEATED]
    inputs += [
        b"\x5b" + b"\xff" * 8,
        b"\x7b" + b"\x00\x00\x00\x01\x00\x00\x00\x00" + b"a",
        b"\x9b" + b"\xff" * 8,
        b"\xbb" + b"\xff" * 8,
        b"\x5f\x41\x00\xff",
        b"\xff" * 10,
    ]
    for sample in samples:
        inputs += [sample[:cut] for cut in range(len(sample))]
        for _ in range(4):
            flipped = bytearray(sample)
            if flipped:
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            inputs.append(bytes(flipped))
    inputs += [rng.randbytes(rng.randrange(1, 64)) for _ in range(1500)]
    return inputs


INPUTS = hostile_inputs()


def _outcome(function: Callable[[bytes], Any], raw: bytes, allowed: type[Exception]) -> None:
    with contextlib.suppress(allowed):
        function(raw)


CPYTHON_TARGETS: dict[str, tuple[Callable[[bytes], Any], type[Exception]]] = {
    "device loads": (cbor.loads, cbor.DecodeError),
    "device hot decode": (
        lambda raw: cbor.decode_ints_into(raw, 0, len(raw), [0] * messages.MAX_FIELDS),
        cbor.DecodeError,
    ),
    "host loads": (codec.loads, cbor.DecodeError),
    "host decode": (codec.decode, cbor.DecodeError),
    "frame decoder": (lambda raw: stream.FrameDecoder().feed(raw), Exception),
    "datagram": (datagram.Receiver({1: b"k" * 32}).open, datagram.DatagramError),
}


@pytest.mark.parametrize("target", CPYTHON_TARGETS)
def test_cpython_raises_only_its_own_error(target: str) -> None:
    function, allowed = CPYTHON_TARGETS[target]
    if target == "frame decoder":
        for raw in INPUTS:
            function(raw)  # a stream decoder never raises: it counts and resynchronises
        return
    for raw in INPUTS:
        _outcome(function, raw, allowed)


@pytest.mark.parametrize("target", ["device loads", "host decode"])
def test_cpython_memory_stays_bounded(target: str) -> None:
    function, allowed = CPYTHON_TARGETS[target]
    tracemalloc.start()
    try:
        for raw in INPUTS[:11]:  # the huge claims and deep nests
            _outcome(function, raw, allowed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def _run_on_device(
    device: Device, target: str, inputs: list[bytes], folder: Path
) -> dict[str, Any]:
    path = folder / ("%s.bin" % target)
    path.write_bytes(b"".join(len(raw).to_bytes(4, "big") + raw for raw in inputs))
    result: dict[str, Any] = device.request(
        "decode", target=target, path=str(path), max_bytes=max(map(len, inputs)), timeout_s=120
    )
    assert sum(result["counts"].values()) + len(result["others"]) == len(inputs)
    return result


@pytest.mark.parametrize("target", ["cbor", "hot", "frame", "datagram"])
def test_micropython_raises_only_its_own_error(device: Device, target: str, tmp_path: Path) -> None:
    result = _run_on_device(device, target, INPUTS, tmp_path)
    assert result["others"] == []
    if target in ("cbor", "datagram"):
        assert result["counts"]["ok"] < len(INPUTS) // 2  # the inputs really are hostile


@pytest.mark.parametrize("target", ["cbor", "hot", "frame", "datagram"])
def test_micropython_small_heap(small_device: Device, target: str, tmp_path: Path) -> None:
    # A 64 KiB heap, like a small board, with inputs no longer than one datagram (a link never
    # delivers more): a decoder that believed a claimed length would die of MemoryError.
    fitting = [raw for raw in INPUTS if len(raw) <= datagram.MAX_DATAGRAM]
    assert _run_on_device(small_device, target, fitting, tmp_path)["others"] == []
