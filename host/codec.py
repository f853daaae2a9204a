"""Host side of the message codec: cbor2, hardened, checked against the catalogue.

The node uses `servomesh.protocol.cbor`; golden vectors hold both codecs to the same bytes.
"""

import functools
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import cbor2

from servomesh.protocol import catalogue, messages
from servomesh.protocol.cbor import (
    HOT_INT_MAX,
    HOT_INT_MIN,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING_BYTES,
    DecodeError,
)

_UINT_LIMIT = 1 << 64


class MessageError(DecodeError):
    """Well-formed CBOR that is not a message of the catalogue; `code` is the E_* to answer."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def _reject_tag(decoder: object) -> NoReturn:
    raise cbor2.CBORDecodeError("tags are not supported")


class _EveryTag(Mapping[int, Any]):
    """cbor2 decodes some tags itself; overriding every tag number makes them all errors."""

    def __getitem__(self, tag: int) -> Any:
        return _reject_tag

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_EVERY_TAG = _EveryTag()


def _tag_hook(decoder: object, tag: object) -> NoReturn:
    _reject_tag(decoder)


@dataclass(slots=True)
class Message:
    """A decoded message: `values` as decoded, [kind, seq, *fields]. Not frozen, and the list
    kept as it is: a frozen dataclass with a tuple of the fields cost 2 us per STATE, a tenth of
    the host's work on one."""

    kind: int
    seq: int
    values: list[Any] = field(repr=False)

    @property
    def fields(self) -> tuple[Any, ...]:
        """The items after kind and seq."""
        return tuple(self.values[2:])

    @property
    def name(self) -> str:
        return str(catalogue.KINDS[self.kind][0])

    def named(self) -> dict[str, Any]:
        """Fields by catalogue name; repeated groups as a list of dicts under "items"."""
        _, required, optional, group = catalogue.KINDS[self.kind]
        fixed = (*required, *optional)
        result: dict[str, Any] = dict.fromkeys(optional, 0)
        count = len(required) if group else len(self.fields)
        result.update(zip(fixed, self.fields[:count], strict=False))
        if group:
            rest = self.fields[count:]
            width = len(group)
            result["items"] = [
                dict(zip(group, rest[i : i + width], strict=True))
                for i in range(0, len(rest), width)
            ]
        return result


def loads(body: bytes) -> Any:
    """Decode any CBOR value of the protocol's subset; raise DecodeError otherwise."""
    value = _decode_item(body)
    if not _hot_ints(value):
        _check_subset(value, 0)
    return value


def _decode_item(body: bytes) -> Any:
    stream = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(
            stream,
            max_depth=MAX_DEPTH + 1,  # cbor2 as a backstop; _check_subset holds the exact bound
            allow_indefinite=False,
            allow_duplicate_keys=False,
            semantic_decoders=_EVERY_TAG,
            tag_hook=_tag_hook,
        ).decode()
    except (cbor2.CBORDecodeError, RecursionError) as error:
        raise DecodeError(str(error)) from None
    if stream.tell() != len(body):  # cbor2.loads ignores what follows the first item
        raise DecodeError("%d trailing bytes" % (len(body) - stream.tell()))
    return value


def _hot_ints(value: Any) -> bool:
    """Whether `value` has the hot messages' shape: a list of 2 to MAX_FIELDS ints (no bools),
    all in the hot range. _check_subset accepts such a list, and so do the per-item rules of
    messages.check; C builtins tell it several times faster than their walks (hot path)."""
    return (
        type(value) is list
        and 2 <= len(value) <= messages.MAX_FIELDS
        and list(map(type, value)).count(int) == len(value)
        and min(value) >= HOT_INT_MIN
        and max(value) <= HOT_INT_MAX
    )


def _hot_check(kind: int, count: int, seq: int, third: int) -> int:
    """messages.check of a `_hot_ints` list: then its result depends only on the kind, the
    count, whether seq is below 0 or 1 and whether the third item (ERROR's code) is below 1.
    Call with seq clamped to -1 .. 1 and third to 0 .. 1: a stand-in with those values is
    checked once per combination."""
    stand_in = [kind, seq, third][:count] + [0] * (count - 3)
    return int(messages.check(stand_in, count))


_HOT_CODES: dict[tuple[int, int, int, bool], int] = {}  # _check_hot's answers
_HOT_CODES_KEPT = 1024  # a few dozen in use; unknown kinds from a peer must not grow it


def _check_hot(values: list[Any]) -> int:
    """messages.check(values, len(values)) of a `_hot_ints` list, through _hot_check once per
    combination (a dict: lru_cache's wrapper and clamping cost more, per STATE)."""
    seq = values[1]
    third = len(values) > 2 and values[2] > 0
    key = (values[0], len(values), (seq > 0) - (seq < 0), third)
    code = _HOT_CODES.get(key)
    if code is None:
        code = _hot_check(key[0], key[1], key[2], int(third))
        if len(_HOT_CODES) < _HOT_CODES_KEPT:
            _HOT_CODES[key] = code
    return code


def _check_subset(value: Any, depth: int) -> None:
    """The node codec's limits, so host and node accept exactly the same bodies."""
    if value is None or isinstance(value, bool | float):
        return
    if isinstance(value, int):
        if not -_UINT_LIMIT <= value < _UINT_LIMIT:
            raise DecodeError("integer out of range")
    elif isinstance(value, str | bytes):
        size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
        if size > MAX_STRING_BYTES:
            raise DecodeError("string of %d bytes exceeds %d" % (size, MAX_STRING_BYTES))
    elif isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            raise DecodeError("nesting deeper than %d" % MAX_DEPTH)
        if len(value) > MAX_ITEMS:
            raise DecodeError("%d items exceed %d" % (len(value), MAX_ITEMS))
        if isinstance(value, list):
            for item in value:
                _check_subset(item, depth + 1)
            return
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int | str | bytes):
                raise DecodeError("map key is not an integer or a string")
            _check_subset(key, depth + 1)
            _check_subset(item, depth + 1)
    else:
        raise DecodeError("%s is outside the protocol's CBOR subset" % type(value).__name__)


# A body that is one array of hot integers and nothing else, as STATE, PONG and ACK are: told
# by a regex over its bytes, in one C pass. One pattern per item count, so that it matches the
# array's header and exactly that many items, with nothing after them: no tag, float, bool,
# string or nesting can hide in such a body, so cbor2's plain `loads` is safe for it and its
# items need no walk (`_hot_ints` holds for it). Integers of 4 bytes start below 0x40: within
# [HOT_INT_MIN, HOT_INT_MAX], as on the node.
_HOT_ITEM = rb"(?:[\x00-\x17\x20-\x37]|[\x18\x38].|[\x19\x39]..|[\x1a\x3a][\x00-\x3f]...)"


@functools.cache
def _hot_body(first: int, second: int) -> "re.Pattern[bytes] | None":
    """The pattern for bodies that start with these two bytes (an array header and what
    follows), or None when they do not start an array of 2 to MAX_FIELDS items."""
    if 0x82 <= first <= 0x97:
        count, header = first - 0x80, bytes([first])
    elif first == 0x98 and 24 <= second <= messages.MAX_FIELDS:
        count, header = second, bytes([first, second])  # canonical: 24 and up only
    else:
        return None
    # Spelt out item by item: sre matches that a fifth faster than a counted repeat.
    return re.compile(re.escape(header) + _HOT_ITEM * count, re.DOTALL)


def _decode_hot(body: bytes) -> list[int] | None:
    """The items of a body of hot integers, or None for any other (the general path)."""
    if len(body) < 3:
        return None
    pattern = _hot_body(body[0], body[1])
    if pattern is None or pattern.fullmatch(body) is None:
        return None
    value: list[int] = cbor2.loads(body)
    return value


def decode(body: bytes) -> Message:
    """Decode a message body and check it against the catalogue."""
    value: Any = _decode_hot(body)
    if value is not None:
        code = _check_hot(value)
    else:
        value = _decode_item(body)
        if _hot_ints(value):
            code = _check_hot(value)
        else:
            _check_subset(value, 0)
            if not isinstance(value, list):
                raise MessageError(messages.E_MALFORMED, "a message is a CBOR array")
            code = messages.check(value, len(value))
    if code:
        raise MessageError(code, "not a valid message: %s" % catalogue.ERROR_NAMES[code])
    return Message(value[0], value[1], value)


def encode(kind: int, seq: int, *fields: Any) -> bytes:
    """Encode `[kind, seq, *fields]` after checking it against the catalogue and the limits a
    node's decoder holds it to, so the host never sends what a node must refuse."""
    values: list[Any] = [kind, seq, *fields]
    hot = _hot_ints(values)
    code = _check_hot(values) if hot else messages.check(values, len(values))
    if code:
        raise ValueError("not a valid message: %s" % catalogue.ERROR_NAMES[code])
    try:
        if not hot:
            _check_subset(values, 0)
    except DecodeError as error:
        raise ValueError("not encodable: %s" % error) from None
    body = cbor2.dumps(values)
    if len(body) > messages.MAX_BODY_BYTES:
        raise ValueError("body of %d bytes exceeds %d" % (len(body), messages.MAX_BODY_BYTES))
    return body
