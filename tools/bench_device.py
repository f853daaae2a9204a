"""Device-side benchmark, run on MicroPython by tools/bench.py: prints one JSON line at the end.

    .venv/bin/servomesh upy tools/bench_device.py [ROUNDS [REPEATS]]

Every case is a zero-argument function doing one round, called ROUNDS times by the same loop
(`_timed`), so the harness costs the same for all of them; the `empty` case shows that cost.
Within each repeat the cases run one after another in a rotating order, so machine noise
lands on all of them alike; per-round times are reported as medians over the repeats.
"""

import gc
import json
import sys
import time

from servomesh.protocol import cbor, datagram, hmac_sha256, stream

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 21
# HMAC and framing cost 5-25x a fast round; at least enough rounds that a collection lands
# in each timed run of theirs, as it does in the cheaper cases' runs.
SLOW_ROUNDS = max(ROUNDS // 16, 100)
# gc is off while allocation is counted, so this many rounds of the worst case must fit the heap
# (bench.py runs this with a board-sized heap); allocation per round does not vary anyway.
ALLOC_ROUNDS = 16

SET = [3, 300, 2, 1500, 400]
SET_DICT = {"kind": 3, "seq": 300, "channel": 2, "pulse_us": 1500, "duration_ms": 400}
KEY = bytes(range(32))
BODY = cbor.dumps(SET)

# Every callee is bound to a module global, so each case pays one global lookup per call.
_fast_encode = cbor.encode_ints_into
_fast_decode = cbor.decode_ints_into
_plain_encode = cbor.plain_encode_ints_into
_plain_decode = cbor.plain_decode_ints_into
_dumps = cbor.dumps
_loads = cbor.loads
_json_dumps = json.dumps
_json_loads = json.loads
_encode_frame = stream.encode_frame
_buf = bytearray(64)
_values = [0] * 8
_sender = datagram.Sender(0, KEY, 1, counter=299)
_SIGNED = _sender.seal(BODY)[: -datagram.TAG_BYTES]  # the bytes that seal and open hash
_hmac = hmac_sha256.HmacKey(KEY)
_frames = stream.FrameDecoder()
_receiver = None
_packets = None
_PACKETS = [None] * (SLOW_ROUNDS + ALLOC_ROUNDS + 1)


def empty():
    pass


def fast():
    n = _fast_encode(_buf, 0, SET, 5)
    _fast_decode(_buf, 0, n, _values)


def plain():
    n = _plain_encode(_buf, 0, SET, 5)
    _plain_decode(_buf, 0, n, _values)


def generic():
    return _loads(_dumps(SET))


def json_list():
    return _json_loads(_json_dumps(SET))


def json_dict():
    return _json_loads(_json_dumps(SET_DICT))


def seal():
    return _sender.seal(BODY)


def open_():
    return _receiver.open(next(_packets))


def digest():
    return _hmac.digest(_SIGNED)


def framing():
    return _frames.feed(_encode_frame(BODY))


def _fresh_receiver():
    global _receiver, _packets  # noqa: PLW0603
    _receiver = datagram.Receiver({1: KEY})
    _packets = iter(_PACKETS)


def _seal_packets():
    # open() rejects a counter it has seen: it gets pre-sealed packets and a fresh Receiver per
    # run. Each packet lands between garbage from its seal, so a small heap has no big
    # contiguous block left after this: everything long-lived is allocated before it.
    sealer = datagram.Sender(0, KEY, 1, counter=299)
    for i in range(len(_PACKETS)):
        _PACKETS[i] = sealer.seal(BODY)


def _expect(ok, what):
    if not ok:
        raise RuntimeError("wrong result: " + what)


def _check():
    """One round of each case, checked, before anything is timed."""
    for name, case in (("fast", fast), ("plain", plain)):
        _values[:] = [0] * 8
        case()
        _expect(_values[:5] == SET, name)
    _expect(generic() == SET, "generic")
    _expect(json_list() == SET, "json_list")
    _expect(json_dict() == SET_DICT, "json_dict")
    _fresh_receiver()
    _expect(open_() == (0, BODY), "open")
    _expect(datagram.Receiver({1: KEY}).open(seal()) == (0, BODY), "seal")
    _expect(_SIGNED + digest()[: datagram.TAG_BYTES] == _PACKETS[0], "digest")
    _expect(framing() == [(True, BODY)], "framing")


# name, function, rounds, setup run before each measurement (untimed)
CASES = (
    ("empty", empty, ROUNDS, None),
    ("fast", fast, ROUNDS, None),
    ("plain", plain, ROUNDS, None),
    ("generic", generic, ROUNDS, None),
    ("json_list", json_list, ROUNDS, None),
    ("json_dict", json_dict, ROUNDS, None),
    ("seal", seal, SLOW_ROUNDS, None),
    ("open", open_, SLOW_ROUNDS, _fresh_receiver),
    ("digest", digest, SLOW_ROUNDS, None),
    ("framing", framing, SLOW_ROUNDS, None),
)


def _timed(fn, rounds):
    start = time.ticks_us()
    for _ in range(rounds):
        fn()
    return time.ticks_diff(time.ticks_us(), start)


def _allocated(fn, rounds):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(rounds):
        fn()
    after = gc.mem_alloc()
    gc.enable()
    return after - before


def _median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def main():
    samples = {case[0]: [] for case in CASES}
    results = {}
    _seal_packets()
    _check()
    for _, fn, _, setup in CASES:  # warm-up: first calls allocate (e.g. viper entry), fill caches
        if setup:
            setup()
        _timed(fn, 20)
    for repeat in range(REPEATS):
        shift = repeat % len(CASES)
        for name, fn, rounds, setup in CASES[shift:] + CASES[:shift]:
            if setup:
                setup()
            gc.collect()
            samples[name].append(_timed(fn, rounds) / rounds)
    for name, fn, rounds, setup in CASES:
        if setup:
            setup()
        fn()  # one-off allocations (open's first replay window) are not per round
        # samples stay in repeat order so bench.py can pair cases measured side by side
        results[name] = {
            "us": _median(samples[name]),
            "rounds": rounds,
            "samples": samples[name],
            "alloc": _allocated(fn, ALLOC_ROUNDS) / ALLOC_ROUNDS,
        }
    _PACKETS[:] = []  # frees room for the report
    gc.collect()
    impl = sys.implementation
    version = "%d.%d.%d" % impl.version[:3]
    if len(impl.version) > 3 and impl.version[3]:
        version += "-" + impl.version[3]
    report = {
        "micropython": "%s (%s)" % (version, sys.version),
        "fast_path": cbor.FAST_PATH,
        "rounds": ROUNDS,
        "repeats": REPEATS,
        "alloc_rounds": ALLOC_ROUNDS,
        "heap": gc.mem_alloc() + gc.mem_free(),
        "set_body": BODY.hex(),
        "json_bytes": {"list": len(json.dumps(SET)), "dict": len(json.dumps(SET_DICT))},
        "results": results,
    }
    for name, _, _, _ in CASES:
        print(
            "%-10s %8.3f us/round %8.1f B/round"
            % (name, results[name]["us"], results[name]["alloc"])
        )
    print(json.dumps(report))


main()
