"""Allocation checks that only MicroPython can make: hot paths under micropython.heap_lock()."""

import micropython

from servomesh.protocol import cbor

SET = [3, 300, 2, 1500, 400]
STATE = [48, 9, 123456789, 1, 78, 10000, 350, 40000, 0, 0, 2, 0, 1, 3, 4, 5000]
STATE += [0, 1500, 1480, 1500, 1, 1, 1210, 1210, 1400, 0]


def locked(call):
    # Returns None when `call()` allocated nothing, else the error text. `call` takes no
    # arguments because building a *args tuple would itself allocate.
    micropython.heap_lock()
    try:
        call()
        error = None
    except MemoryError:
        error = "allocated"
    finally:
        micropython.heap_unlock()
    return error


def _checks(values, buf, out):
    count = len(values)
    end = cbor.encode_ints_into(buf, 0, values, count)
    return {
        "encode": lambda: cbor.encode_ints_into(buf, 0, values, count),
        "decode": lambda: cbor.decode_ints_into(buf, 0, end, out),
        "plain encode": lambda: cbor.plain_encode_ints_into(buf, 0, values, count),
        "plain decode": lambda: cbor.plain_decode_ints_into(buf, 0, end, out),
    }


def run():
    buf = bytearray(128)
    out = [0] * 32
    results = {}
    for name, values in (("SET", SET), ("STATE", STATE)):
        for check, call in _checks(values, buf, out).items():
            call()  # warm up outside the lock
            results["%s %s" % (check, name)] = locked(call)
        assert out[: len(values)] == values
    results["fast path is viper"] = None if cbor.FAST_PATH == "viper" else cbor.FAST_PATH
    return results
