"""Host codec: cbor2 hardened, messages checked against the catalogue."""

import hashlib
import hmac

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servomesh.host import codec
from servomesh.protocol import cbor, hmac_sha256, messages


def test_set_round_trip_and_names() -> None:
    body = codec.encode(messages.SET, 300, 2, 1500, 400)
    assert len(body) <= 12
    message = codec.decode(body)
    assert (message.kind, message.seq, message.fields) == (messages.SET, 300, (2, 1500, 400))
    assert message.name == "SET"
    assert message.named() == {
        "channel": 2,
        "pulse_us": 1500,
        "duration_ms": 400,
        "speed_us_per_s": 0,
        "trace": 0,
    }


def test_repeated_groups_are_named() -> None:
    message = codec.decode(codec.encode(messages.MOVE, 1, 400, 5000, 9, 0, 1500, 3, 1200))
    assert message.named() == {
        "duration_ms": 400,
        "start_ticks_us": 5000,
        "trace": 9,
        "items": [{"channel": 0, "pulse_us": 1500}, {"channel": 3, "pulse_us": 1200}],
    }


def test_map_payloads() -> None:
    info = {"node_id": "arm-a", "channels": 6, "caps": ["segment"]}
    message = codec.decode(codec.encode(messages.INFO, 1, info))
    assert message.fields == (info,)


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ([], messages.E_MALFORMED),
        ([3], messages.E_MALFORMED),
        ([99, 1], messages.E_UNKNOWN_KIND),
        ([True, 1], messages.E_UNKNOWN_KIND),
        ([3, 1, 2, 1500], messages.E_BAD_FIELDS),  # SET lacks duration_ms
        ([3, 1, 2, 1500, 400, 0, 0, 7], messages.E_BAD_FIELDS),  # one field too many
        ([4, 1, 400, 0, 0, 1], messages.E_BAD_FIELDS),  # MOVE with half a (channel, pulse)
        ([3, 1, 2, "1500", 400], messages.E_BAD_FIELDS),
        ([3, 1, 2, 1500.0, 400], messages.E_BAD_FIELDS),
        ([3, 1, 2, True, 400], messages.E_BAD_FIELDS),
        ([3, -1, 2, 1500, 400], messages.E_BAD_FIELDS),
        ([3, 0, 2, 1500, 400], messages.E_BAD_FIELDS),  # request seq starts at 1
        ([3, 1, 2, cbor.HOT_INT_MAX + 1, 400], messages.E_BAD_FIELDS),
        ([9, 1, [1]], messages.E_BAD_FIELDS),  # CONFIG_SET needs a map
        ([2, 1, {}], messages.E_BAD_FIELDS),
        ([2] + [0] * messages.MAX_FIELDS, messages.E_MALFORMED),
        ([33, 1, 0], messages.E_BAD_FIELDS),  # error code 0 is never sent
    ],
)
def test_catalogue_violations(values: list[object], code: int) -> None:
    with pytest.raises(codec.MessageError) as caught:
        codec.decode(cbor2.dumps(values))
    assert caught.value.code == code
    assert isinstance(caught.value, ValueError)
    if len(values) >= 2:  # encode takes kind and seq as arguments
        with pytest.raises(ValueError, match="not a valid message"):
            codec.encode(*values)


def test_a_message_is_an_array() -> None:
    with pytest.raises(codec.MessageError, match="array"):
        codec.decode(cbor2.dumps({"kind": 3}))


@pytest.mark.parametrize(
    "raw",
    [
        "c11a5f5e1000",  # tag 1 (epoch time), which cbor2 would turn into a datetime
        "d9d9f78102",  # tag 55799 (self-described CBOR), which cbor2 would strip silently
        "c249010000000000000000",  # tag 2 bignum
        "81" * 17 + "01",  # deeper than MAX_DEPTH
        "f7",  # undefined
        "8102ff",  # trailing break
        "a20102 0103".replace(" ", ""),  # duplicate key
        "5f4100ff",  # indefinite
    ],
)
def test_hardening(raw: str) -> None:
    with pytest.raises(cbor.DecodeError):
        codec.loads(bytes.fromhex(raw))


# The hot path (codec._decode_hot) is an optimisation: it must decode exactly what the general
# path decodes, take every canonical hot body, and leave everything else to the general path.
_EDGES = [cbor.HOT_INT_MIN, cbor.HOT_INT_MAX, 23, 24, 255, 256, 65535, 65536, -24, -25, -257]
_NEAR_HOT = st.integers(cbor.HOT_INT_MIN - 2, cbor.HOT_INT_MAX + 2) | st.sampled_from(
    [*_EDGES, cbor.HOT_INT_MIN - 1, cbor.HOT_INT_MAX + 1, 1 << 40, True, 1.5]
)


@settings(max_examples=500, deadline=None)
@given(
    values=st.lists(_NEAR_HOT, max_size=messages.MAX_FIELDS + 2),
    cut=st.integers(-3, 3),
    extra=st.binary(min_size=3, max_size=3),
)
def test_the_hot_path_decodes_as_the_general_path(
    values: list[object], cut: int, extra: bytes
) -> None:
    canonical = cbor2.dumps(values)
    body = canonical[: len(canonical) + cut] if cut < 0 else canonical + extra[:cut]
    hot = codec._decode_hot(body)
    try:
        general = codec._decode_item(body)
    except cbor.DecodeError:
        general = None
    if hot is not None:
        assert general == hot
        assert codec._hot_ints(hot)
    elif body == canonical:
        assert not codec._hot_ints(general)


@pytest.mark.parametrize(
    "raw",
    [
        "8201c24105",  # [1, tag 2 bignum 5]: an integer in cbor2, refused by the node
        "830102",  # three items promised, two given
        "82010203",  # a trailing item
        "82011a40000000",  # 2**30: one above HOT_INT_MAX, needs the general path's range check
    ],
)
def test_the_hot_path_leaves_what_it_cannot_prove(raw: str) -> None:
    assert codec._decode_hot(bytes.fromhex(raw)) is None


def test_host_limits_equal_the_node_codec() -> None:
    deepest: object = 0
    for _ in range(cbor.MAX_DEPTH):
        deepest = [deepest]
    assert codec.loads(cbor.dumps(deepest)) == deepest
    with pytest.raises(cbor.DecodeError, match="nesting"):
        codec.loads(b"\x81" + cbor.dumps(deepest))
    euros = "\u20ac" * (cbor.MAX_STRING_BYTES // 3 + 1)  # few characters, too many bytes
    with pytest.raises(cbor.DecodeError, match="bytes exceeds"):
        codec.loads(cbor2.dumps(euros))
    config = {"channels": [{"limits_us": [500, 2500], "home_us": 1500}]}
    assert codec.decode(codec.encode(messages.CONFIG_SET, 1, config)).fields == (config,)


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=150), parts=st.lists(st.binary(max_size=200), max_size=4))
def test_device_hmac_equals_cpython_hmac(key: bytes, parts: list[bytes]) -> None:
    expected = hmac.new(key, b"".join(parts), hashlib.sha256).digest()
    assert hmac_sha256.HmacKey(key).digest(*parts) == expected


@pytest.mark.parametrize(
    "fields",
    [
        [{"deep": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}],  # 18 levels with [kind, seq, {...}]
        [{"text": "x" * (cbor.MAX_STRING_BYTES + 1)}],
        [{(1, 2): 0}],
        [{True: 0}],
        [{"big": [b"x" * 1000, b"y" * 1000]}],  # each string fits, the body does not
    ],
)
def test_encode_refuses_what_a_node_would_refuse(fields: list[object]) -> None:
    with pytest.raises(ValueError, match=r"not encodable|exceeds"):
        codec.encode(messages.CONFIG_SET, 1, *fields)


def test_a_key_fingerprint_is_an_hmac_under_the_key() -> None:
    key = bytes(range(32))
    expected = hmac.new(key, b"servomesh key fingerprint", hashlib.sha256).hexdigest()[:16]
    assert hmac_sha256.fingerprint(key) == expected
    assert hmac_sha256.fingerprint(bytes(32)) != expected
