"""Values of the CBOR subset as JSON, identically on CPython and MicroPython.

JSON lacks bytes, non-string keys and exact floats, so those travel tagged:
{"$bytes": hex}, {"$float": hex of the IEEE double}, {"$map": [[key, value], ...]}.
"""

import struct


def to_json(value):
    if isinstance(value, float):
        return {"$float": struct.pack(">d", value).hex()}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    return value


def from_json(obj):
    if isinstance(obj, list):
        return [from_json(item) for item in obj]
    if isinstance(obj, dict):
        if "$float" in obj:
            return struct.unpack(">d", bytes.fromhex(obj["$float"]))[0]
        if "$bytes" in obj:
            return bytes.fromhex(obj["$bytes"])
        result = {}
        for key, value in obj["$map"]:
            result[from_json(key)] = from_json(value)
        return result
    return obj


def same(a, b):
    """Equal in value and type (True is not 1, 1 is not 1.0, NaN is NaN, -0.0 is not 0.0)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        both = isinstance(a, float) and isinstance(b, float)
        if both and a != a and b != b:
            return True  # every NaN encodes as the one canonical NaN
        return both and struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if not same(x, y):
                return False
        return True
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        for key in a:
            if key not in b or not same(a[key], b[key]):
                return False
        return True
    return type(a) is type(b) and a == b


def has_multikey_map(value):
    """MicroPython dicts do not keep insertion order: such values compare by decoded value."""
    if isinstance(value, dict):
        if len(value) > 1:
            return True
        value = list(value.keys()) + list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            if has_multikey_map(item):
                return True
    return False
