"""CBOR (RFC 8949) subset codec that runs unchanged on MicroPython and CPython.

Subset: integers in [-2**64, 2**64), byte and text strings, arrays, maps with integer, text or
byte-string keys, false/true/null, and floats (half, single and double are decoded; doubles are
encoded, except NaN and infinities, which take their 3-byte half form as cbor2 writes them).
Encoding is definite-length with shortest-form heads, so for this subset the bytes equal
`cbor2.dumps` of the same value.

Anything else on the wire (tags, undefined, simple values, indefinite lengths, reserved
additional-info values, a stray break code, duplicate map keys, trailing bytes, invalid UTF-8)
raises `DecodeError`. Every claimed length is checked against the bytes remaining before
anything is allocated, and nesting, item counts and string lengths are capped below.

Hot messages (arrays of integers) have an allocation-free path: `encode_ints_into` and
`decode_ints_into` work on caller-owned buffers. On MicroPython a viper build of both is used
(`cbor_viper`); the plain functions here are the reference and give identical results.
"""

import struct

from .compat import const

# Limits (documented in docs/protocol.md). A frame is at most 1 KiB anyway; these keep a hostile
# body from costing more than a bounded amount of stack and heap.
MAX_DEPTH = const(16)  # nested arrays/maps
MAX_ITEMS = const(1024)  # items in one array, or pairs in one map
MAX_STRING_BYTES = const(4096)  # length of one byte or text string

_UINT_LIMIT = 1 << 64

_MAJOR_UINT = const(0x00)
_MAJOR_NINT = const(0x20)
_MAJOR_BYTES = const(0x40)
_MAJOR_TEXT = const(0x60)
_MAJOR_ARRAY = const(0x80)
_MAJOR_MAP = const(0xA0)

_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)
_FLOAT16 = const(0xF9)
_FLOAT32 = const(0xFA)
_FLOAT64 = const(0xFB)

# NaN and the infinities as cbor2 encodes them (RFC 8949 preferred serialization).
_NAN = b"\xf9\x7e\x00"
_POS_INF = b"\xf9\x7c\x00"
_NEG_INF = b"\xf9\xfc\x00"


class DecodeError(ValueError):
    """The bytes are not a well-formed message of the supported CBOR subset."""


# ---------------------------------------------------------------------------------------------
# Generic encoder


def dumps(value) -> bytes:
    """Encode `value` (see the module docstring for the subset)."""
    out = bytearray()
    _encode(out, value, 0)
    return bytes(out)


def _head(out, major, n):
    if n < 24:
        out.append(major | n)
    elif n < 0x100:
        out.append(major | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(major | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(major | 26)
        out.extend(struct.pack(">I", n))
    else:
        out.append(major | 27)
        out.extend(struct.pack(">Q", n))


def _encode(out, value, depth):
    # bool first: it is an int subclass on both runtimes.
    if value is False:
        out.append(_FALSE)
    elif value is True:
        out.append(_TRUE)
    elif value is None:
        out.append(_NULL)
    elif isinstance(value, int):
        if value >= 0:
            if value >= _UINT_LIMIT:
                raise ValueError("integer out of range: %d" % value)
            _head(out, _MAJOR_UINT, value)
        else:
            if value < -_UINT_LIMIT:
                raise ValueError("integer out of range: %d" % value)
            _head(out, _MAJOR_NINT, -1 - value)
    elif isinstance(value, float):
        if value != value:
            out.extend(_NAN)
        elif value in (float("inf"), float("-inf")):
            out.extend(_POS_INF if value > 0 else _NEG_INF)
        else:
            out.append(_FLOAT64)
            out.extend(struct.pack(">d", value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if not _is_utf8(raw):  # MicroPython str() can hold bytes that are not UTF-8
            raise ValueError("text is not valid UTF-8")
        _encode_string(out, _MAJOR_TEXT, raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _encode_string(out, _MAJOR_BYTES, value)
    else:
        # The decoder's limits hold here too, so nothing encodes that a peer would refuse.
        if depth >= MAX_DEPTH:
            raise ValueError("nesting deeper than %d" % MAX_DEPTH)
        if not isinstance(value, (list, tuple, dict)):
            raise TypeError("cannot encode %s as CBOR" % type(value).__name__)
        if len(value) > MAX_ITEMS:
            raise ValueError("%d items exceed %d" % (len(value), MAX_ITEMS))
        if isinstance(value, dict):
            _head(out, _MAJOR_MAP, len(value))
            for key, item in value.items():
                if not isinstance(key, (int, str, bytes)) or isinstance(key, bool):
                    raise TypeError("map key %r is not an integer or a string" % (key,))
                _encode(out, key, depth + 1)
                _encode(out, item, depth + 1)
        else:
            _head(out, _MAJOR_ARRAY, len(value))
            for item in value:
                _encode(out, item, depth + 1)


def _encode_string(out, major, raw):
    if len(raw) > MAX_STRING_BYTES:
        raise ValueError("string of %d bytes exceeds %d" % (len(raw), MAX_STRING_BYTES))
    _head(out, major, len(raw))
    out.extend(raw)


# ---------------------------------------------------------------------------------------------
# Generic decoder


def loads(data):
    """Decode one complete CBOR item from bytes, bytearray or memoryview."""
    end = len(data)
    if end == 0:
        raise DecodeError("empty input")
    value, pos = _decode(data, 0, end, 0)
    if pos != end:
        raise DecodeError("%d trailing bytes" % (end - pos))
    return value


def _argument(data, pos, end, info):
    """Read the argument of a head whose additional info is `info`; return (n, new_pos)."""
    if info < 24:
        return info, pos
    if info == 24:
        size = 1
    elif info == 25:
        size = 2
    elif info == 26:
        size = 4
    elif info == 27:
        size = 8
    elif info == 31:
        raise DecodeError("indefinite length at offset %d" % (pos - 1))
    else:
        raise DecodeError("reserved additional info %d at offset %d" % (info, pos - 1))
    if end - pos < size:
        raise DecodeError("truncated head at offset %d" % (pos - 1))
    n = 0
    for i in range(pos, pos + size):
        n = (n << 8) | data[i]
    return n, pos + size


def _decode(data, pos, end, depth):
    if pos >= end:
        raise DecodeError("truncated at offset %d" % pos)
    initial = data[pos]
    major = initial & 0xE0
    info = initial & 0x1F
    pos += 1
    if major == 0xE0:
        return _decode_simple(data, pos, end, initial)
    if major == 0xC0:
        raise DecodeError("tags are not supported (offset %d)" % (pos - 1))
    n, pos = _argument(data, pos, end, info)
    if major == _MAJOR_UINT:
        return n, pos
    if major == _MAJOR_NINT:
        return -1 - n, pos
    if major == _MAJOR_BYTES or major == _MAJOR_TEXT:
        if n > MAX_STRING_BYTES:
            raise DecodeError("string of %d bytes exceeds %d" % (n, MAX_STRING_BYTES))
        if n > end - pos:
            raise DecodeError("string of %d bytes but %d remain" % (n, end - pos))
        raw = bytes(data[pos : pos + n])
        if major == _MAJOR_BYTES:
            return raw, pos + n
        # MicroPython's str() lets overlong forms, surrogates and code points past U+10FFFF
        # through, so both runtimes check the bytes the same strict way first.
        if not _is_utf8(raw):
            raise DecodeError("invalid UTF-8 in text string at offset %d" % pos)
        return str(raw, "utf-8"), pos + n
    if depth >= MAX_DEPTH:
        raise DecodeError("nesting deeper than %d" % MAX_DEPTH)
    if n > MAX_ITEMS:
        raise DecodeError("%d items exceed %d" % (n, MAX_ITEMS))
    if major == _MAJOR_ARRAY:
        if n > end - pos:  # every item takes at least one byte
            raise DecodeError("array of %d items but %d bytes remain" % (n, end - pos))
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, end, depth + 1)
            items.append(item)
        return items, pos
    # major == _MAJOR_MAP
    if 2 * n > end - pos:
        raise DecodeError("map of %d pairs but %d bytes remain" % (n, end - pos))
    result = {}
    for _ in range(n):
        key_pos = pos
        key, pos = _decode(data, pos, end, depth + 1)
        if not isinstance(key, (int, str, bytes)) or isinstance(key, bool):
            raise DecodeError("map key at offset %d is not an integer or a string" % key_pos)
        if key in result:
            raise DecodeError("duplicate map key at offset %d" % key_pos)
        result[key], pos = _decode(data, pos, end, depth + 1)
    return result, pos


def _is_utf8(raw):
    """Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF."""
    i = 0
    end = len(raw)
    while i < end:
        lead = raw[i]
        if lead < 0x80:
            i += 1
            continue
        low = 0x80
        high = 0xBF
        if 0xC2 <= lead <= 0xDF:
            extra = 1
        elif 0xE0 <= lead <= 0xEF:
            extra = 2
            if lead == 0xE0:
                low = 0xA0  # shorter forms are overlong
            elif lead == 0xED:
                high = 0x9F  # U+D800..U+DFFF are surrogates
        elif 0xF0 <= lead <= 0xF4:
            extra = 3
            if lead == 0xF0:
                low = 0x90
            elif lead == 0xF4:
                high = 0x8F  # past U+10FFFF
        else:
            return False
        if end - i <= extra or not low <= raw[i + 1] <= high:
            return False
        for k in range(i + 2, i + 1 + extra):
            if not 0x80 <= raw[k] <= 0xBF:
                return False
        i += 1 + extra
    return True


def _decode_simple(data, pos, end, initial):
    if initial == _FALSE:
        return False, pos
    if initial == _TRUE:
        return True, pos
    if initial == _NULL:
        return None, pos
    if initial == _FLOAT16:
        if end - pos < 2:
            raise DecodeError("truncated float at offset %d" % (pos - 1))
        return _half_to_float((data[pos] << 8) | data[pos + 1]), pos + 2
    if initial == _FLOAT32:
        if end - pos < 4:
            raise DecodeError("truncated float at offset %d" % (pos - 1))
        return struct.unpack(">f", bytes(data[pos : pos + 4]))[0], pos + 4
    if initial == _FLOAT64:
        if end - pos < 8:
            raise DecodeError("truncated float at offset %d" % (pos - 1))
        return struct.unpack(">d", bytes(data[pos : pos + 8]))[0], pos + 8
    if initial == 0xFF:
        raise DecodeError("break code out of place at offset %d" % (pos - 1))
    raise DecodeError("unsupported simple value 0x%02x at offset %d" % (initial, pos - 1))


def _half_to_float(half):
    # struct's "e" format is not on every MicroPython port, so decode IEEE 754 binary16 by hand.
    exponent = (half >> 10) & 0x1F
    mantissa = half & 0x3FF
    if exponent == 0:
        value = mantissa * 2.0**-24
    elif exponent == 0x1F:
        value = float("nan") if mantissa else float("inf")
    else:
        value = (1024 + mantissa) * 2.0 ** (exponent - 25)
    return -value if half & 0x8000 else value


# ---------------------------------------------------------------------------------------------
# Hot path: arrays of integers in caller-owned buffers, no allocation.
# These plain versions are the reference; cbor_viper has the same functions for MicroPython.
# Hot integers lie in [HOT_INT_MIN, HOT_INT_MAX], the small-int range of every port (node clock
# values are ticks modulo 2**30 for this reason).

HOT_INT_MIN = const(-0x40000000)
HOT_INT_MAX = const(0x3FFFFFFF)


def encode_ints_into(buf, offset, values, count):
    """Write `values[:count]` as a CBOR array at `buf[offset:]`; return the end offset.

    Raises ValueError if `buf` is too small or a value is outside [HOT_INT_MIN, HOT_INT_MAX].
    """
    # The cheap bound first; the exact size only when the cheap one says it might not fit.
    if offset + 9 * (count + 1) > len(buf) and offset + _ints_size(values, count) > len(buf):
        raise ValueError("buffer too small")
    pos = _head_into(buf, offset, _MAJOR_ARRAY, count)
    for i in range(count):
        v = values[i]
        if v < HOT_INT_MIN or v > HOT_INT_MAX:
            raise ValueError("hot integer out of range: %d" % v)
        if v >= 0:
            pos = _head_into(buf, pos, _MAJOR_UINT, v)
        else:
            pos = _head_into(buf, pos, _MAJOR_NINT, -1 - v)
    return pos


def _ints_size(values, count):
    size = _head_size(count)
    for i in range(count):
        v = values[i]
        size += _head_size(v if v >= 0 else -1 - v)
    return size


def _head_size(n):
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    if n < _UINT_LIMIT:
        return 9
    raise ValueError("integer out of range")


def _head_into(buf, pos, major, n):
    if n < 24:
        buf[pos] = major | n
        return pos + 1
    if n < 0x100:
        buf[pos] = major | 24
        buf[pos + 1] = n
        return pos + 2
    if n < 0x10000:
        buf[pos] = major | 25
        buf[pos + 1] = n >> 8
        buf[pos + 2] = n & 0xFF
        return pos + 3
    if n < 0x100000000:
        size = 4
        buf[pos] = major | 26
    elif n < _UINT_LIMIT:
        size = 8
        buf[pos] = major | 27
    else:
        raise ValueError("integer out of range")
    for i in range(size, 0, -1):
        buf[pos + i] = n & 0xFF
        n >>= 8
    return pos + size + 1


def decode_ints_into(data, start, end, values):
    """Decode a CBOR array of integers from `data[start:end]` into `values`; return the count.

    Returns -1 when the bytes are not an array of integers (use `loads` for such bodies).
    Raises DecodeError when they are malformed, hold more items than `values`, or are followed
    by trailing bytes. Allocates nothing for integers that fit a small int.
    """
    count = -1
    i = 0
    pos = start
    while count < 0 or i < count:
        if pos >= end:
            raise DecodeError("truncated at offset %d" % pos)
        initial = data[pos]
        major = initial & 0xE0
        info = initial & 0x1F
        pos += 1
        # Heads are read inline: a helper returning (n, pos) would allocate a tuple per item.
        if info < 24:
            n = info
        elif info < 28:
            size = 1 << (info - 24)
            if end - pos < size:
                raise DecodeError("truncated head at offset %d" % (pos - 1))
            n = 0
            for k in range(pos, pos + size):
                n = (n << 8) | data[k]
            pos += size
        elif info == 31:
            raise DecodeError("indefinite length at offset %d" % (pos - 1))
        else:
            raise DecodeError("reserved additional info %d at offset %d" % (info, pos - 1))
        if count < 0:
            if major != _MAJOR_ARRAY:
                return -1
            if n > len(values):
                raise DecodeError("array of %d items exceeds %d" % (n, len(values)))
            count = n
        elif major == _MAJOR_UINT:
            values[i] = n
            i += 1
        elif major == _MAJOR_NINT:
            values[i] = -1 - n
            i += 1
        else:
            return -1
    if pos != end:
        raise DecodeError("%d trailing bytes" % (end - pos))
    return count


plain_encode_ints_into = encode_ints_into
plain_decode_ints_into = decode_ints_into
FAST_PATH = "plain"

try:
    from . import cbor_viper

    cbor_viper._plain_decode = plain_decode_ints_into  # type: ignore[assignment]
    encode_ints_into = cbor_viper.encode_ints_into
    decode_ints_into = cbor_viper.decode_ints_into
    FAST_PATH = "viper"
except (ImportError, SyntaxError):  # CPython, or a port built without the native emitter
    pass
