"""Test service inside the MicroPython unix port: one JSON request per stdin line, one JSON
answer per stdout line. Driven by tests/micropython.py; never shipped to a board.

    micropython runner.py SHARED_TESTS_DIR
"""

import gc
import json
import sys

sys.path.append(sys.argv[1])

# Imported before the tagged helpers and collected in between: on a 64 KiB heap (a small board)
# compiling everything from source at once does not fit.
from servomesh.protocol import cbor, messages

gc.collect()
from servomesh.protocol import datagram, stream  # noqa: E402

gc.collect()
from tagged import from_json, has_multikey_map, same  # noqa: E402

gc.collect()


def describe(error):
    return "%s: %s" % (type(error).__name__, error)


def op_shared(request):
    module = __import__(request["module"])
    results = {}
    for name in dir(module):
        if name.startswith("test_"):
            try:
                getattr(module, name)()
                results[name] = None
            except Exception as error:  # report every failure; the host asserts on it
                results[name] = describe(error)
    return results


def _check_golden(section, vector):
    raw = bytes.fromhex(vector["hex"])
    if section == "cbor_invalid":
        try:
            cbor.loads(raw)
        except cbor.DecodeError:
            return
        raise AssertionError("decoded without DecodeError")
    if section in ("cbor", "messages"):
        value = from_json(vector["value"])
        if has_multikey_map(value):
            assert same(cbor.loads(cbor.dumps(value)), value), "dumps does not round-trip"
        else:
            assert cbor.dumps(value) == raw, "dumps gave " + cbor.dumps(value).hex()
        assert same(cbor.loads(raw), value), "loads gave %r" % (cbor.loads(raw),)
        if section == "messages":
            assert messages.check(value, len(value)) == 0, "not in the catalogue"
            out = [0] * messages.MAX_FIELDS
            count = cbor.decode_ints_into(raw, 0, len(raw), out)
            if value[0] in messages.MAP_KINDS:
                assert count == -1, "a map message took the hot path"
            else:
                assert count == len(value) and out[:count] == value, "hot decode differs"
                buf = bytearray(len(raw))
                assert cbor.encode_ints_into(buf, 0, value, len(value)) == len(raw)
                assert bytes(buf) == raw, "hot encode gave " + bytes(buf).hex()
        return
    body = bytes.fromhex(vector["body"])
    if section == "serial":
        assert stream.encode_frame(body) == raw, "frame " + stream.encode_frame(body).hex()
        assert stream.FrameDecoder().feed(raw) == [(True, body)], "frame did not decode"
        return
    key = bytes.fromhex(vector["key"]) if vector["key"] else None
    sender = datagram.Sender(vector["sender_id"], key, vector["key_id"], vector["counter"] - 1)
    sealed = sender.seal(body)
    assert sealed == raw, "sealed " + sealed.hex()
    receiver = datagram.Receiver({vector["key_id"]: key} if key else {}, allow_unsigned=not key)
    assert receiver.open(raw) == (vector["sender_id"], body), "did not open"


def op_golden(request):
    with open(request["path"]) as f:
        golden = json.load(f)
    results = {}
    for section in golden:
        for vector in golden[section]:
            try:
                _check_golden(section, vector)
                results[section + "/" + vector["name"]] = None
            except Exception as error:
                results[section + "/" + vector["name"]] = describe(error)
    return results


def op_cases(request):
    answers = []
    for case in request["cases"]:
        try:
            value = from_json(case["value"])
            decoded = cbor.loads(bytes.fromhex(case["cbor2"]))
            answers.append([cbor.dumps(value).hex(), same(decoded, value)])
        except Exception as error:
            answers.append(["!" + describe(error), False])
    return answers


def _decode_one(target, raw, values):
    if target == "cbor":
        cbor.loads(raw)
    elif target == "hot":
        cbor.decode_ints_into(raw, 0, len(raw), values)
    elif target == "frame":
        stream.FrameDecoder().feed(raw)
    else:
        datagram.Receiver({1: b"k" * 32}).open(raw)


def op_decode(request):
    # Inputs come from a file of (u32 length, bytes) records and are read one at a time into
    # one buffer, as a node reads its link: a small heap holds the run. Only a codec's own
    # error is acceptable; anything else is listed with the input's index.
    target = request["target"]
    values = [0] * messages.MAX_FIELDS
    buf = bytearray(request["max_bytes"])
    view = memoryview(buf)
    head = bytearray(4)
    counts = {"ok": 0, "DecodeError": 0, "DatagramError": 0}
    others = []
    index = 0
    with open(request["path"], "rb") as f:
        while f.readinto(head) == 4:
            size = int.from_bytes(head, "big")
            f.readinto(view[:size])
            try:
                _decode_one(target, view[:size], values)
                counts["ok"] += 1
            except (cbor.DecodeError, datagram.DatagramError) as error:
                counts[type(error).__name__] += 1
            except Exception as error:
                others.append([index, describe(error)])
            index += 1
    return {"counts": counts, "others": others}


def op_heap(request):
    import heap_checks

    return heap_checks.run()


OPS = {
    "shared": op_shared,
    "golden": op_golden,
    "cases": op_cases,
    "decode": op_decode,
    "heap": op_heap,
    "info": lambda request: {"version": list(sys.implementation.version), "fast": cbor.FAST_PATH},
}


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        try:
            request = json.loads(line)
            line = None
            gc.collect()
            answer = {"ok": OPS[request["op"]](request)}
        except Exception as error:
            answer = {"error": describe(error)}
        sys.stdout.write(json.dumps(answer))
        sys.stdout.write("\n")


main()
