"""The device codec against cbor2 in both directions, over generated values of the subset,
under CPython and (in batches, one interpreter for the session) under the MicroPython unix port.
"""

from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from tagged import has_multikey_map, same, to_json
from upy_device import Device

from servomesh.protocol import cbor

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
LEAVES = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
    | st.binary(max_size=12)
    | st.booleans()
    | st.none()
)
KEYS = st.integers(min_value=-(2**64), max_value=2**64 - 1) | TEXT | st.binary(max_size=6)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=16,
)
BATCH = 50


@settings(max_examples=1500, deadline=None)
@given(VALUES)
def test_cpython_device_codec_matches_cbor2(value: Any) -> None:
    ours = cbor.dumps(value)
    assert ours == cbor2.dumps(value)
    assert same(cbor2.loads(ours), value)
    assert same(cbor.loads(cbor2.dumps(value)), value)


@settings(max_examples=80, deadline=None)
@given(st.lists(VALUES, min_size=BATCH, max_size=BATCH))
def test_micropython_device_codec_matches_cbor2(device: Device, batch: list[Any]) -> None:
    # 80 batches x 50 values = 4,000 cases in one interpreter per `make test`.
    cases = [{"value": to_json(value), "cbor2": cbor2.dumps(value).hex()} for value in batch]
    answers = device.request("cases", cases=cases)
    assert len(answers) == len(batch)
    for value, (device_hex, decoded_same) in zip(batch, answers, strict=True):
        assert not device_hex.startswith("!"), device_hex
        device_bytes = bytes.fromhex(device_hex)
        if not has_multikey_map(value):  # MicroPython dicts iterate in their own order
            assert device_bytes == cbor2.dumps(value)
        assert same(cbor2.loads(device_bytes), value)
        assert decoded_same, "device loads(cbor2.dumps(%r)) differs" % (value,)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=cbor.HOT_INT_MIN, max_value=cbor.HOT_INT_MAX), max_size=40))
def test_hot_path_matches_cbor2(values: list[int]) -> None:
    buf = bytearray(8 + 5 * len(values))
    end = cbor.encode_ints_into(buf, 0, values, len(values))
    assert bytes(buf[:end]) == cbor2.dumps(values)
    out = [0] * 40
    assert cbor.decode_ints_into(cbor2.dumps(values), 0, end, out) == len(values)
    assert out[: len(values)] == values
