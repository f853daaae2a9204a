"""Datagram auth: HMAC against RFC 4231, replay window, rejection counters; on both runtimes."""

from expect import raises

from servomesh.protocol import datagram, hmac_sha256

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
BODY = b"\x85\x03\x19\x01\x2c\x02\x19\x05\xdc\x19\x01\x90"


def receiver(**options):
    return datagram.Receiver({1: KEY}, **options)


def test_hmac_matches_rfc_4231():
    # RFC 4231 test cases 1, 2 and 6 (key longer than a block).
    cases = [
        (
            b"\x0b" * 20,
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ]
    for key, message, expected in cases:
        assert hmac_sha256.HmacKey(key).digest(message).hex() == expected
        half = len(message) // 2
        assert hmac_sha256.HmacKey(key).digest(message[:half], message[half:]).hex() == expected


def test_key_never_shows_in_repr():
    assert KEY.hex() not in repr(hmac_sha256.HmacKey(KEY))


def test_round_trip_and_sizes():
    sender = datagram.Sender(7, KEY, 1, counter=41)
    packet = sender.seal(BODY)
    assert len(packet) == datagram.HEADER_BYTES + len(BODY) + datagram.TAG_BYTES
    assert sender.counter == 42
    r = receiver()
    assert r.open(packet) == (7, BODY)
    assert r.accepted == 1


def test_tampered_datagram_is_rejected():
    packet = datagram.Sender(7, KEY, 1).seal(BODY)
    r = receiver()
    # magic, sender id, key id, counter, body, tag
    for index in (0, 5, 6, 9, datagram.HEADER_BYTES + 2, len(packet) - 1):
        bad = bytearray(packet)
        bad[index] ^= 0x01
        raises(datagram.DatagramError, r.open, bytes(bad))
    assert r.rejected["bad_tag"] == 4
    assert r.rejected["malformed"] == 1
    assert r.rejected["unknown_key"] == 1
    assert r.accepted == 0


def test_wrong_key_is_rejected():
    r = receiver()
    error = raises(datagram.DatagramError, r.open, datagram.Sender(7, OTHER_KEY, 1).seal(BODY))
    assert error.reason == "bad_tag"
    raises(datagram.DatagramError, r.open, datagram.Sender(7, KEY, 2).seal(BODY))
    assert r.rejected["bad_tag"] == 1 and r.rejected["unknown_key"] == 1


def test_replay_is_rejected():
    sender = datagram.Sender(7, KEY, 1)
    first = sender.seal(BODY)
    second = sender.seal(BODY)
    r = receiver()
    r.open(first)
    r.open(second)
    assert raises(datagram.DatagramError, r.open, first).reason == "replay"
    assert raises(datagram.DatagramError, r.open, second).reason == "replay"
    assert r.rejected["replay"] == 2


def test_window_takes_reordering_and_refuses_too_old():
    sender = datagram.Sender(7, KEY, 1)
    packets = [sender.seal(BODY) for _ in range(datagram.WINDOW + 2)]
    r = receiver()
    r.open(packets[-1])  # the newest arrives first
    for packet in packets[2:-1]:  # all within the window, out of order
        r.open(packet)
    assert raises(datagram.DatagramError, r.open, packets[0]).reason == "too_old"
    assert raises(datagram.DatagramError, r.open, packets[1]).reason == "too_old"
    assert r.accepted == datagram.WINDOW


def test_windows_are_per_sender():
    r = receiver()
    r.open(datagram.Sender(1, KEY, 1, counter=1000).seal(BODY))
    r.open(datagram.Sender(2, KEY, 1, counter=5).seal(BODY))
    assert r.accepted == 2


def test_unsigned_only_when_allowed():
    packet = datagram.Sender(7).seal(BODY)
    strict = receiver()
    assert raises(datagram.DatagramError, strict.open, packet).reason == "unsigned"
    assert strict.rejected["unsigned"] == 1
    lenient = datagram.Receiver(allow_unsigned=True)
    assert lenient.open(packet) == (7, BODY)
    raises(ValueError, datagram.Receiver, {1: KEY}, True)  # keys and unsigned never mix


def test_malformed_and_version():
    r = receiver()
    good = datagram.Sender(7, KEY, 1).seal(BODY)
    header = datagram.Sender(7).seal(b"\x80")[: datagram.HEADER_BYTES]
    unsigned_too_long = header + bytes(datagram.MAX_BODY_BYTES + 1)
    for bad in (b"", b"SM", good[: datagram.HEADER_BYTES], b"XX" + good[2:], good + bytes(2000)):
        raises(datagram.DatagramError, r.open, bad)
    assert r.rejected["malformed"] == 5
    future = bytearray(good)
    future[2] = 2
    assert raises(datagram.DatagramError, r.open, bytes(future)).reason == "version"
    flagged = bytearray(good)
    flagged[3] |= 0x80
    assert raises(datagram.DatagramError, r.open, bytes(flagged)).reason == "malformed"
    lenient = datagram.Receiver(allow_unsigned=True)
    assert raises(datagram.DatagramError, lenient.open, unsigned_too_long).reason == "malformed"


def test_peer_windows_are_bounded():
    r = datagram.Receiver({1: KEY}, max_peers=2)
    r.open(datagram.Sender(1, KEY, 1).seal(BODY))
    r.open(datagram.Sender(2, KEY, 1).seal(BODY))
    assert (
        raises(datagram.DatagramError, r.open, datagram.Sender(3, KEY, 1).seal(BODY)).reason
        == "peers"
    )
    r.forget(1)
    r.open(datagram.Sender(3, KEY, 1).seal(BODY))


def test_sender_checks_its_ranges():
    raises(ValueError, datagram.Sender(70000, KEY, 1).seal, BODY)
    exhausted = datagram.Sender(1, KEY, 1, counter=datagram.COUNTER_MAX)
    raises(ValueError, exhausted.seal, BODY)
    assert exhausted.counter == datagram.COUNTER_MAX  # a refused seal uses no counter
    raises(ValueError, datagram.Sender(1, KEY, 1).seal, b"")
    raises(ValueError, datagram.Sender(1, KEY, 1).seal, bytes(datagram.MAX_BODY_BYTES + 1))
    assert len(datagram.Sender(1, KEY, 1).seal(bytes(datagram.MAX_BODY_BYTES))) == (
        datagram.MAX_DATAGRAM
    )
    raises(ValueError, datagram.Sender, 1, KEY, 0)
    raises(ValueError, datagram.Receiver, {0: KEY})


def test_default_key_id_is_one():
    assert receiver().open(datagram.Sender(7, KEY).seal(BODY)) == (7, BODY)


def test_bound_datagrams_verify_only_for_their_boot():
    node = datagram.Receiver({1: KEY}, boot_id=4242)
    sender = datagram.Sender(7, KEY, 1)
    packet = sender.seal(BODY, bound_to=4242)
    assert packet[3] == datagram.FLAG_SIGNED | datagram.FLAG_BOUND
    assert node.open(packet) == (7, BODY)
    assert node.bound
    assert node.open(sender.seal(BODY)) == (7, BODY)  # plain signed still opens...
    assert not node.bound  # ...but is not bound: the node refuses it for state changes
    rebooted = datagram.Receiver({1: KEY}, boot_id=4243)  # same key, empty windows
    assert raises(datagram.DatagramError, rebooted.open, packet).reason == "bad_tag"


def test_bound_needs_a_signature_and_a_node():
    packet = bytearray(datagram.Sender(7, KEY, 1).seal(BODY, bound_to=1))
    host = datagram.Receiver({1: KEY})  # no boot id: a host never takes BOUND datagrams
    assert raises(datagram.DatagramError, host.open, bytes(packet)).reason == "malformed"
    packet[3] = datagram.FLAG_BOUND  # bound but unsigned
    node = datagram.Receiver(allow_unsigned=True, boot_id=1)
    assert raises(datagram.DatagramError, node.open, bytes(packet)).reason == "malformed"
    raises(ValueError, datagram.Sender(7, KEY, 1).seal, BODY, 2**32)
