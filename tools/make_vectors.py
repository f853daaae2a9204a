"""Write tests/vectors/golden.json from reference implementations, not from servomesh's own code.

CBOR bytes come from cbor2, serial frames from zlib.crc32 and the escaping rule as stated in
docs/protocol.md, datagram tags from the standard library's hmac. Run it only when the protocol
changes on purpose, and review the diff: the file is the contract both codecs are held to.

    .venv/bin/python tools/make_vectors.py
"""

import hashlib
import hmac
import json
import struct
import sys
import zlib
from pathlib import Path

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "shared"))
from tagged import to_json

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "golden.json"

CBOR_VALUES = {
    "uint 0": 0,
    "uint 23": 23,
    "uint 24": 24,
    "uint 255": 255,
    "uint 256": 256,
    "uint 65535": 65535,
    "uint 65536": 65536,
    "uint 2^32-1": 2**32 - 1,
    "uint 2^32": 2**32,
    "uint 2^64-1": 2**64 - 1,
    "nint -1": -1,
    "nint -24": -24,
    "nint -25": -25,
    "nint -256": -256,
    "nint -257": -257,
    "nint -2^64": -(2**64),
    "false": False,
    "true": True,
    "null": None,
    "float 0.0": 0.0,
    "float -0.0": -0.0,
    "float 1.5": 1.5,
    "float -4.1": -4.1,
    "float 1e300": 1e300,
    "float 5e-324": 5e-324,
    "float nan": float("nan"),
    "float inf": float("inf"),
    "float -inf": float("-inf"),
    "bytes empty": b"",
    "bytes 4": b"\x01\x02\x03\x04",
    "bytes 24": bytes(range(24)),
    "bytes 300": bytes(300),
    "text empty": "",
    "text a": "a",
    "text utf-8": "ü水🌍",
    "text 24": "x" * 24,
    "array empty": [],
    "array 1 2 3": [1, 2, 3],
    "array 25": list(range(25)),
    "array nested": [1, [2, 3], [4, [5]]],
    "map empty": {},
    "map int key": {1: 2},
    "map text key": {"pulse_us": 1500},
    "map bytes key": {b"k": [True, None]},
    "map nested": {"a": {"b": [1.5, "c"]}},
}

# (name, hex, why): each must raise DecodeError on both runtimes and in the host codec.
CBOR_INVALID = [
    ("empty", "", "no item"),
    ("truncated uint16", "19 01", "head claims 2 bytes, 1 present"),
    ("truncated text", "63 61 62", "text claims 3 bytes, 2 present"),
    ("truncated array", "83 01 02", "array claims 3 items, 2 present"),
    ("huge byte string", "5b ffffffffffffffff", "claims 2^64-1 bytes"),
    ("huge array", "9b 0000000100000000", "claims 2^32 items"),
    ("huge map", "bb 0000000000001000", "claims 4096 pairs"),
    ("reserved info 28", "1c", "additional info 28 is reserved"),
    ("reserved info 30", "5e", "additional info 30 is reserved"),
    ("indefinite bytes", "5f 41 01 ff", "indefinite lengths are not in the subset"),
    ("indefinite array", "9f 01 ff", "indefinite lengths are not in the subset"),
    ("indefinite map", "bf 01 02 ff", "indefinite lengths are not in the subset"),
    ("break alone", "ff", "break code out of place"),
    ("break in array", "82 01 ff", "break code out of place"),
    ("tag 0", "c0 74 323031332d30332d32315432303a30343a30305a", "tags are not in the subset"),
    ("tag 2 bignum", "c2 49 010000000000000000", "tags are not in the subset"),
    ("tag 55799", "d9 d9f7 00", "tags are not in the subset"),
    ("undefined", "f7", "undefined is not in the subset"),
    ("simple 16", "f0", "simple values are not in the subset"),
    ("simple one-byte", "f8 20", "simple values are not in the subset"),
    ("invalid utf-8", "62 c3 28", "text must be valid UTF-8"),
    ("overlong utf-8", "62 c0 80", "overlong forms are not UTF-8"),
    ("surrogate utf-8", "63 ed a0 80", "surrogates are not UTF-8"),
    ("past U+10FFFF", "64 f4 90 80 80", "code points stop at U+10FFFF"),
    ("duplicate key", "a2 01 02 01 03", "duplicate map keys"),
    ("array key", "a1 80 01", "map keys are integers or strings"),
    ("float key", "a1 fb 3ff8000000000000 01", "map keys are integers or strings"),
    ("trailing bytes", "01 02", "one item per input"),
    ("deep nesting", "81" * 40 + "01", "nesting deeper than the limit"),
]

MESSAGES = {
    "HELLO": [1, 1, 1],
    "PING": [2, 2],
    "SET": [3, 300, 2, 1500, 400],
    "SET speed trace": [3, 301, 2, 1500, 0, 2000, 77],
    "MOVE": [4, 302, 400, 123456789, 78, 0, 1500, 1, 1200, 2, 1800],
    "SEGMENT": [5, 303, 123456789, 250, 1, 79, 0, 1600, 1, 1400],
    "STOP": [6, 304, 1],
    "CLEAR": [7, 305],
    "CONFIG_GET": [8, 306],
    "CONFIG_SET": [9, 307, {"node_id": "arm-a", "udp_port": 5683}],
    "TELEMETRY": [10, 308, 50, 2],
    "REBOOT": [11, 309, 100],
    "DISCOVER": [12, 1],
    "KEEPALIVE": [16, 310],
    "ACK": [32, 300],
    "ACK result": [32, 300, 7],
    "ERROR": [33, 300, 5, 2],
    "INFO": [34, 1, {"protocol_version": 1}],
    "PONG": [35, 2, 987654321],
    "CONFIG": [36, 306, {"node_id": "arm-a"}],
    "STATE": [48, 9, 123456789, 1, 78, 10000, 350, 40000]  # node fields
    + [0, 0, 2, 0, 1, 3, 4, 5000]  # STATE_COUNTERS
    + [0, 1500, 1480, 1500, 1, 1, 1210, 1210, 1400, 0],  # two channels
    "LOG": [49, 10, 3, 17, -1, 2],
}

SERIAL_BODIES = {
    "SET": MESSAGES["SET"],
    "STATE": MESSAGES["STATE"],
    "escapes": [3, 0xC0, 0xC1, 0xDB, 0x03],
}

KEY = bytes(range(32))
DATAGRAMS = [
    # name, message, sender id, key id, key, counter
    ("SET signed", MESSAGES["SET"], 0, 1, KEY, 1),
    ("STATE signed", MESSAGES["STATE"], 7, 200, b"k" * 70, 2**48 - 1),
    ("PING unsigned", MESSAGES["PING"], 65535, 0, None, 12345),
]

_SPECIAL = {0xC0, 0xC1, 0xDB, 0x03}


def serial_frame(body: bytes) -> bytes:
    raw = body + struct.pack("<I", zlib.crc32(body))
    escaped = b"".join(bytes([0xDB, b ^ 0x20]) if b in _SPECIAL else bytes([b]) for b in raw)
    return b"\xc0" + escaped + b"\xc1"


def datagram(body: bytes, sender: int, key_id: int, key: bytes | None, counter: int) -> bytes:
    flags = 1 if key is not None else 0
    header = b"SM" + struct.pack(">BBHB", 1, flags, sender, key_id) + counter.to_bytes(6, "big")
    if key is None:
        return header + body
    return header + body + hmac.new(key, header + body, hashlib.sha256).digest()[:12]


def main() -> None:
    golden = {
        "cbor": [
            {"name": n, "value": to_json(v), "hex": cbor2.dumps(v).hex()}
            for n, v in CBOR_VALUES.items()
        ],
        "cbor_invalid": [
            {"name": n, "hex": h.replace(" ", ""), "why": why} for n, h, why in CBOR_INVALID
        ],
        "messages": [
            {"name": n, "value": to_json(v), "hex": cbor2.dumps(v).hex()}
            for n, v in MESSAGES.items()
        ],
        "serial": [
            {"name": n, "body": cbor2.dumps(v).hex(), "hex": serial_frame(cbor2.dumps(v)).hex()}
            for n, v in SERIAL_BODIES.items()
        ],
        "datagram": [
            {
                "name": n,
                "body": cbor2.dumps(v).hex(),
                "sender_id": s,
                "key_id": k,
                "key": key.hex() if key is not None else None,
                "counter": c,
                "hex": datagram(cbor2.dumps(v), s, k, key, c).hex(),
            }
            for n, v, s, k, key, c in DATAGRAMS
        ],
    }
    # One vector per line keeps diffs readable; raw UTF-8 because MicroPython's json does not
    # join \u surrogate pairs.
    sections = [
        "%s: [\n%s\n]"
        % (json.dumps(name), ",\n".join(json.dumps(v, ensure_ascii=False) for v in vectors))
        for name, vectors in golden.items()
    ]
    OUT.write_text("{\n" + ",\n".join(sections) + "\n}\n", encoding="utf-8")
    print("wrote %s" % OUT)


if __name__ == "__main__":
    main()
