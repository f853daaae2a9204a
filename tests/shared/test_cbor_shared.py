"""Codec bounds, errors and the hot path; runs under CPython and the MicroPython unix port."""

from expect import raises

from servomesh.protocol import cbor

HOT_SAMPLES = [
    0,
    1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    -1,
    -24,
    -25,
    -256,
    -257,
    -65536,
    -65537,
    cbor.HOT_INT_MAX,
    cbor.HOT_INT_MIN,
]


def nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def test_depth_limit_is_inclusive():
    inside = cbor.dumps(nested(cbor.MAX_DEPTH))
    assert cbor.loads(inside) == nested(cbor.MAX_DEPTH)
    raises(cbor.DecodeError, cbor.loads, b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x00")
    raises(ValueError, cbor.dumps, nested(cbor.MAX_DEPTH + 1))


def test_string_limit_is_inclusive():
    longest = b"x" * cbor.MAX_STRING_BYTES
    assert cbor.loads(cbor.dumps(longest)) == longest
    assert cbor.loads(cbor.dumps("y" * cbor.MAX_STRING_BYTES)) == "y" * cbor.MAX_STRING_BYTES
    too_long = cbor.MAX_STRING_BYTES + 1  # built by hand: the encoder refuses it too
    raises(cbor.DecodeError, cbor.loads, b"\x59" + too_long.to_bytes(2, "big") + longest + b"x")
    raises(cbor.DecodeError, cbor.loads, b"\x79" + too_long.to_bytes(2, "big") + longest + b"y")


def test_item_limit_is_inclusive():
    most = [0] * cbor.MAX_ITEMS
    assert cbor.loads(cbor.dumps(most)) == most
    too_many = (cbor.MAX_ITEMS + 1).to_bytes(2, "big")  # built by hand: the encoder refuses it
    raises(cbor.DecodeError, cbor.loads, b"\x99" + too_many + bytes(cbor.MAX_ITEMS + 1))
    raises(cbor.DecodeError, cbor.loads, b"\xb9" + too_many + bytes(2 * cbor.MAX_ITEMS + 2))


def test_encoder_refuses_what_a_decoder_would_refuse():
    raises(ValueError, cbor.dumps, [0] * (cbor.MAX_ITEMS + 1))
    raises(ValueError, cbor.dumps, b"x" * (cbor.MAX_STRING_BYTES + 1))
    raises(ValueError, cbor.dumps, "\u20ac" * (cbor.MAX_STRING_BYTES // 3 + 1))  # bytes count
    raises(TypeError, cbor.dumps, {1.5: 0})
    raises(TypeError, cbor.dumps, {True: 0})
    raises(TypeError, cbor.dumps, {None: 0})


def test_utf8_is_checked_strictly():
    for good in ("\u00fc", "\u20ac", "\U0010ffff", "\ud7ff", "\ue000"):
        assert cbor.loads(cbor.dumps(good)) == good
    for bad in (
        b"\xc0\x80",
        b"\xc1\xbf",
        b"\xe0\x9f\xbf",
        b"\xed\xa0\x80",
        b"\xf0\x8f\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80\x80\x80",
        b"\x80",
        b"\xe2\x82",
        b"\xe2\x28\xa1",
    ):
        raises(cbor.DecodeError, cbor.loads, bytes([0x60 + len(bad)]) + bad)


def test_hostile_lengths_fail_before_allocating():
    raises(cbor.DecodeError, cbor.loads, b"\x81" * 10000)
    raises(cbor.DecodeError, cbor.loads, b"\x5b" + b"\xff" * 8)
    raises(cbor.DecodeError, cbor.loads, b"\x9b" + b"\x7f" + b"\xff" * 7)
    raises(cbor.DecodeError, cbor.loads, b"\xbb" + b"\x00" * 4 + b"\x00\x00\x03\xff" + b"\x00")


def test_decode_error_is_a_value_error():
    assert issubclass(cbor.DecodeError, ValueError)


def test_integer_range_on_encode():
    assert cbor.loads(cbor.dumps(2**64 - 1)) == 2**64 - 1
    assert cbor.loads(cbor.dumps(-(2**64))) == -(2**64)
    raises(ValueError, cbor.dumps, 2**64)
    raises(ValueError, cbor.dumps, -(2**64) - 1)


def test_unsupported_types_are_refused():
    raises(TypeError, cbor.dumps, {1, 2})
    raises(TypeError, cbor.dumps, object())


def test_half_floats_decode():
    assert cbor.loads(b"\xf9\x3c\x00") == 1.0
    assert cbor.loads(b"\xf9\x00\x01") == 2.0**-24  # smallest subnormal
    assert cbor.loads(b"\xf9\x7b\xff") == 65504.0
    assert cbor.loads(b"\xf9\xc4\x00") == -4.0
    assert cbor.loads(b"\xf9\xfc\x00") == float("-inf")
    nan = cbor.loads(b"\xf9\x7e\x00")
    assert nan != nan


def test_single_floats_decode():
    assert cbor.loads(b"\xfa\x47\xc3\x50\x00") == 100000.0
    assert cbor.loads(b"\xfa\x7f\x80\x00\x00") == float("inf")


def test_input_types():
    body = cbor.dumps([1, "a"])
    assert cbor.loads(bytearray(body)) == [1, "a"]
    assert cbor.loads(memoryview(body)) == [1, "a"]


def test_hot_path_matches_plain_and_generic():
    values = HOT_SAMPLES
    for count in (0, 1, 5, len(values)):
        fast = bytearray(200)
        plain = bytearray(200)
        end = cbor.encode_ints_into(fast, 3, values, count)
        assert cbor.plain_encode_ints_into(plain, 3, values, count) == end
        assert fast[3:end] == plain[3:end]
        assert bytes(fast[3:end]) == cbor.dumps(values[:count])
        out = [None] * 20
        assert cbor.decode_ints_into(fast, 3, end, out) == count
        assert out[:count] == values[:count]
        again = [None] * 20
        assert cbor.plain_decode_ints_into(fast, 3, end, again) == count
        assert again == out


def test_hot_path_decodes_any_integer_form():
    # Heads wider than the hot range, or not in shortest form, still decode (via the reference).
    out = [0] * 4
    wide = cbor.dumps([2**40, -(2**40), 2**64 - 1])
    assert cbor.decode_ints_into(wide, 0, len(wide), out) == 3
    assert out[:3] == [2**40, -(2**40), 2**64 - 1]
    long_form = b"\x82\x19\x00\x05\x1a\x00\x00\x00\x06"
    assert cbor.decode_ints_into(long_form, 0, len(long_form), out) == 2
    assert out[:2] == [5, 6]


def test_hot_path_declines_other_bodies():
    out = [0] * 8
    for value in ({1: 2}, [1, "a"], [1, [2]], [1.5], 7, [True]):
        body = cbor.dumps(value)
        assert cbor.decode_ints_into(body, 0, len(body), out) == -1


def test_hot_path_rejects_malformed_bodies():
    out = [0] * 4
    for body in (
        b"",
        b"\x83\x01\x02",
        b"\x82\x01\x02\x03",
        b"\x85\x01\x02\x03\x04\x05",
        b"\x82\x19\x01",
        b"\x9f\x01\xff",
        b"\x82\x1c\x00",
    ):
        raises(cbor.DecodeError, cbor.decode_ints_into, body, 0, len(body), out)
        raises(cbor.DecodeError, cbor.plain_decode_ints_into, body, 0, len(body), out)


def test_hot_path_refuses_what_it_cannot_encode():
    buf = bytearray(8)
    raises(ValueError, cbor.encode_ints_into, buf, 0, [1, 2, 3, 70000], 4)
    raises(ValueError, cbor.plain_encode_ints_into, buf, 0, [1, 2, 3, 70000], 4)
    big = bytearray(32)
    for bad in (cbor.HOT_INT_MAX + 1, cbor.HOT_INT_MIN - 1):
        raises(ValueError, cbor.encode_ints_into, big, 0, [bad], 1)
        raises(ValueError, cbor.plain_encode_ints_into, big, 0, [bad], 1)
    exact = bytearray(6)  # [1500, 400]: 1 + 3 + 3 does not fit, [1500, 4] does
    raises(ValueError, cbor.encode_ints_into, exact, 0, [1500, 400], 2)
    assert cbor.encode_ints_into(exact, 0, [1500, 4], 2) == 5
