"""Viper builds of the hot-path functions in `cbor` (MicroPython only).

Same contracts and results as the plain reference functions in `cbor`; `cbor` picks these up
when `micropython.viper` exists. Values are machine words here, which is why the hot path is
limited to integers in [HOT_INT_MIN, HOT_INT_MAX]: they are small ints on every port.
"""

import micropython

_plain_decode = None  # set by cbor: the reference decoder, for what this build does not take

# Plain globals, not const(): viper compares them as objects, not machine words.
_HOT_MIN_OBJ = -0x40000000
_HOT_MAX_OBJ = 0x3FFFFFFF


@micropython.viper
def encode_ints_into(buf, offset: int, values, count: int) -> int:
    size = int(len(buf))
    # Worst case is 5 bytes per head (values fit in 31 bits); check once, write unchecked.
    if offset < 0 or count < 0 or offset + 5 * (count + 1) > size:
        if offset < 0 or offset + int(_ints_size(values, count)) > size:
            raise ValueError("buffer too small")
    out = ptr8(buf)
    highest = _HOT_MAX_OBJ  # locals: no global lookup per item
    lowest = _HOT_MIN_OBJ
    major = 0x80
    n = count
    pos = offset
    i = -1
    while i < count:
        if i >= 0:
            item = values[i]
            # Compared as objects first: int() would truncate a big int to a machine word.
            if item > highest or item < lowest:
                raise ValueError("hot integer out of range")
            v = int(item)
            if v >= 0:
                major = 0x00
                n = v
            else:
                major = 0x20
                n = -1 - v
        if n < 24:
            out[pos] = major | n
            pos += 1
        elif n < 0x100:
            out[pos] = major | 24
            out[pos + 1] = n
            pos += 2
        elif n < 0x10000:
            out[pos] = major | 25
            out[pos + 1] = n >> 8
            out[pos + 2] = n & 0xFF
            pos += 3
        else:
            out[pos] = major | 26
            out[pos + 1] = (n >> 24) & 0xFF
            out[pos + 2] = (n >> 16) & 0xFF
            out[pos + 3] = (n >> 8) & 0xFF
            out[pos + 4] = n & 0xFF
            pos += 5
        i += 1
    return pos


def _ints_size(values, count):
    # Only reached when the quick bound fails: exact size, for a clear error or a tight fit.
    size = _head_size(count)
    for i in range(count):
        v = values[i]
        size += _head_size(v if v >= 0 else -1 - v)
    return size


def _head_size(n):
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5 if n < 0x100000000 else 9


@micropython.viper
def decode_ints_into(data, start: int, end: int, values) -> int:
    # Heads this build does not take (values outside the hot range) and malformed input go to
    # the reference decoder, which gives the exact result or error.
    src = ptr8(data)
    capacity = int(len(values))
    count = -1
    i = 0
    pos = start
    while count < 0 or i < count:
        if pos >= end:
            return int(_plain_decode(data, start, end, values))
        initial = src[pos]
        major = initial & 0xE0
        info = initial & 0x1F
        pos += 1
        if info < 24:
            n = info
        elif info == 24:
            if pos + 1 > end:
                return int(_plain_decode(data, start, end, values))
            n = src[pos]
            pos += 1
        elif info == 25:
            if pos + 2 > end:
                return int(_plain_decode(data, start, end, values))
            n = (src[pos] << 8) | src[pos + 1]
            pos += 2
        elif info == 26:
            if pos + 4 > end:
                return int(_plain_decode(data, start, end, values))
            if src[pos] >= 0x40:
                return int(_plain_decode(data, start, end, values))
            n = (src[pos] << 24) | (src[pos + 1] << 16) | (src[pos + 2] << 8) | src[pos + 3]
            pos += 4
        else:
            return int(_plain_decode(data, start, end, values))
        if count < 0:
            if major != 0x80:
                return -1
            if n > capacity:
                return int(_plain_decode(data, start, end, values))
            count = n
        elif major == 0x00:
            values[i] = n
            i += 1
        elif major == 0x20:
            values[i] = -1 - n
            i += 1
        else:
            return -1
    if pos != end:
        return int(_plain_decode(data, start, end, values))
    return count
