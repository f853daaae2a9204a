"""Serial framing: round trips, resynchronisation, limits; under CPython and MicroPython."""

from expect import raises

from servomesh.protocol import cbor, stream

SET = cbor.dumps([3, 300, 2, 1500, 400])
AWKWARD = bytes([0xC0, 0xC1, 0xDB, 0x03, 0x00, 0x20, 0xE0, 0xFB, 0x23])


def frames_of(events):
    return [payload for is_frame, payload in events if is_frame]


def text_of(events):
    return b"".join(payload for is_frame, payload in events if not is_frame)


def test_round_trip():
    decoder = stream.FrameDecoder()
    events = decoder.feed(stream.encode_frame(SET) + stream.encode_frame(AWKWARD))
    assert frames_of(events) == [SET, AWKWARD]
    assert decoder.frames == 2


def test_frames_never_hold_ctrl_c():
    for body in (AWKWARD, bytes(range(256)), b"\x03" * 50):
        frame = stream.encode_frame(body)
        assert 0x03 not in frame
        assert frame[0] == stream.SOF and frame[-1] == stream.EOF
        assert stream.SOF not in frame[1:-1] and stream.EOF not in frame[1:-1]


def test_console_text_between_frames_is_kept():
    decoder = stream.FrameDecoder()
    data = b"boot ok\r\n" + stream.encode_frame(SET) + b"moving \xe2\x9c\x93\n"
    events = decoder.feed(data)
    assert events == [(False, b"boot ok\r\n"), (True, SET), (False, b"moving \xe2\x9c\x93\n")]


def test_split_at_every_byte():
    data = b"hi" + stream.encode_frame(SET) + stream.encode_frame(AWKWARD) + b"!"
    for cut in range(len(data) + 1):
        decoder = stream.FrameDecoder()
        events = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert frames_of(events) == [SET, AWKWARD], cut
        assert text_of(events) == b"hi!", cut


def test_truncated_frame_then_good_frame():
    decoder = stream.FrameDecoder()
    cut = stream.encode_frame(SET)[:7]
    events = decoder.feed(cut + stream.encode_frame(AWKWARD))
    assert frames_of(events) == [AWKWARD]
    assert decoder.errors["truncated"] == 1


def test_corrupted_frame_is_dropped_and_counted():
    frame = bytearray(stream.encode_frame(SET))
    frame[5] ^= 0x04
    decoder = stream.FrameDecoder()
    events = decoder.feed(bytes(frame) + stream.encode_frame(SET))
    assert frames_of(events) == [SET]
    assert decoder.errors["crc"] == 1


def test_garbage_before_and_inside():
    decoder = stream.FrameDecoder()
    garbage = bytes([0x55, 0xC0, 0x01, 0x02, 0xDB])  # opens a frame, then an escape, never closed
    events = decoder.feed(garbage + stream.encode_frame(SET))
    assert frames_of(events) == [SET]
    assert decoder.errors["truncated"] == 1


def test_bad_escape_is_dropped():
    decoder = stream.FrameDecoder()
    events = decoder.feed(b"\xc0\x01\xdb\x41\x02\xc1" + stream.encode_frame(SET))
    assert frames_of(events) == [SET]
    assert decoder.errors["bad_escape"] == 1


def test_short_frame_is_dropped():
    decoder = stream.FrameDecoder()
    assert frames_of(decoder.feed(b"\xc0\x01\x02\xc1")) == []
    assert decoder.errors["short"] == 1


def test_max_body_is_inclusive():
    biggest = bytes(stream.MAX_BODY)
    decoder = stream.FrameDecoder()
    assert frames_of(decoder.feed(stream.encode_frame(biggest))) == [biggest]
    raises(ValueError, stream.encode_frame, biggest + b"x")
    raises(ValueError, stream.encode_frame, b"")


def test_oversized_frame_is_skipped_then_resynchronised():
    small = stream.FrameDecoder(max_body=16)
    events = small.feed(stream.encode_frame(bytes(40)) + b"ok" + stream.encode_frame(SET))
    assert frames_of(events) == [SET]
    assert text_of(events) == b"ok"
    assert small.errors["too_long"] == 1
