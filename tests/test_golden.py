"""Golden vectors under CPython: the device codec, the host codec and the framings."""

from typing import Any

import cbor2
import pytest
from conftest import load_golden
from tagged import from_json, same

from servomesh.host import codec
from servomesh.protocol import catalogue, cbor, datagram, messages, stream

GOLDEN = load_golden()


def vectors(section: str) -> Any:
    return pytest.mark.parametrize(
        "vector", GOLDEN[section], ids=[vector["name"] for vector in GOLDEN[section]]
    )


@vectors("cbor")
def test_cbor_vector(vector: dict[str, Any]) -> None:
    value = from_json(vector["value"])
    raw = bytes.fromhex(vector["hex"])
    assert cbor.dumps(value) == raw
    assert same(cbor.loads(raw), value)
    assert same(codec.loads(raw), value)
    assert cbor2.dumps(value) == raw  # the file agrees with its reference


@vectors("cbor_invalid")
def test_invalid_cbor_vector(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    with pytest.raises(cbor.DecodeError):
        cbor.loads(raw)
    with pytest.raises(cbor.DecodeError):
        codec.loads(raw)


@vectors("messages")
def test_message_vector(vector: dict[str, Any]) -> None:
    value = from_json(vector["value"])
    raw = bytes.fromhex(vector["hex"])
    assert codec.encode(*value) == raw
    message = codec.decode(raw)
    assert [message.kind, message.seq, *message.fields] == value
    assert message.name == catalogue.KINDS[value[0]][0]
    assert cbor.dumps(value) == raw


@vectors("serial")
def test_serial_vector(vector: dict[str, Any]) -> None:
    body = bytes.fromhex(vector["body"])
    raw = bytes.fromhex(vector["hex"])
    assert stream.encode_frame(body) == raw
    assert stream.FrameDecoder().feed(raw) == [(True, body)]


@vectors("datagram")
def test_datagram_vector(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["key"]) if vector["key"] else None
    body = bytes.fromhex(vector["body"])
    sender = datagram.Sender(vector["sender_id"], key, vector["key_id"], vector["counter"] - 1)
    assert sender.seal(body) == bytes.fromhex(vector["hex"])
    keys = {vector["key_id"]: key} if key else {}
    receiver = datagram.Receiver(keys, allow_unsigned=key is None)
    assert receiver.open(bytes.fromhex(vector["hex"])) == (vector["sender_id"], body)


def test_every_kind_has_a_vector() -> None:
    kinds = {from_json(vector["value"])[0] for vector in GOLDEN["messages"]}
    assert kinds == set(catalogue.KINDS)


def test_the_catalogue_names_exactly_the_shapes_a_node_checks() -> None:
    for kind in range(256):
        spec = catalogue.KINDS.get(kind)
        assert messages.known(kind) == (spec is not None), kind
        if spec is not None:
            _, required, optional, group = spec
            shape = messages.SHAPES[3 * kind : 3 * kind + 3]
            assert tuple(shape) == (1 + len(required), len(optional), len(group)), spec[0]
    assert set(catalogue.ERROR_NAMES) == {
        value for name, value in vars(messages).items() if name.startswith("E_")
    }
    assert set(catalogue.LOG_NAMES) == {
        value
        for name, value in vars(messages).items()
        if name.startswith("LOG_")
        and name not in ("LOG_DEBUG", "LOG_INFO", "LOG_WARNING", "LOG_ERROR")
    }
