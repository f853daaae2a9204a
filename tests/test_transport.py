"""The host's transports count what they refuse from a node's link, by reason."""

import asyncio
import hashlib
import hmac
import os
import socket

import cbor2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from servomesh.host import codec, transport
from servomesh.host.transport import SerialTransport, UdpHub, UdpTransport
from servomesh.protocol import datagram, messages, stream

KEY = bytes(range(32))
PONG = codec.encode(messages.PONG, 7, 1234)


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


async def settle(check: object) -> None:
    for _ in range(200):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not in 2 s")


def test_udp_counts_forged_and_replayed_datagrams_and_passes_the_good_one() -> None:
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.bind(("127.0.0.1", 0))
    received: list[bytes] = []

    async def main() -> dict[str, int]:
        hub = UdpHub(("127.0.0.1", 0))
        port = node.getsockname()[1]
        transport = UdpTransport(hub, "127.0.0.1", port, KEY)
        await transport.open(received.append, lambda why: None)
        to_host = hub.address()
        good = datagram.Sender(5, KEY, 1, counter=100).seal(PONG)
        forged = datagram.Sender(5, bytes(32), 1, counter=200).seal(PONG)
        for packet in (good, good, forged, b"garbage"):  # the second is a replay
            node.sendto(packet, to_host)
        await settle(lambda: sum(transport.rejected().values()) == 3)
        hub.close()
        return transport.rejected()

    try:
        rejected = run(main())
    finally:
        node.close()
    assert received == [PONG]
    assert rejected == {"replay": 1, "bad_tag": 1, "malformed": 1}


def test_serial_counts_bad_frames_across_reopenings() -> None:
    master, slave = os.openpty()
    received: list[bytes] = []
    good = stream.encode_frame(PONG)
    bad = bytearray(good)
    bad[-3] ^= 0xFF  # inside the CRC

    async def main() -> dict[str, int]:
        transport = SerialTransport(os.ttyname(slave))
        for _ in range(2):  # the count goes on across a reconnect
            await transport.open(received.append, lambda why: None)
            os.write(master, bytes(bad) + b"console text\n" + good)
            count = len(received) + 1
            await settle(lambda n=count: len(received) == n)  # type: ignore[misc]
            transport.close()
        return transport.rejected()

    try:
        rejected = run(main())
    finally:
        os.close(master)
        os.close(slave)
    assert received == [PONG, PONG]
    assert rejected == {"crc": 2}


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=150), parts=st.lists(st.binary(max_size=200), max_size=4))
def test_the_pad_state_key_digests_as_hmac_sha256_and_verifies_as_the_node_does(
    key: bytes, parts: list[bytes]
) -> None:
    expected = hmac.new(key, b"".join(parts), hashlib.sha256).digest()
    fast = transport.PadStateKey(key)
    assert fast.digest(*parts) == expected
    packet = b"".join(parts) + expected[:12]
    end = len(packet) - 12
    forged = packet[:-1] + bytes([packet[-1] ^ 1])
    for key_type in (transport.PadStateKey, datagram.HmacKey):  # the node's, for comparison
        assert key_type(key).verify(packet, end)
        assert not key_type(key).verify(forged, end)


def _state_body(seq: int) -> bytes:
    """A STATE as a node sends it (24+ items: the array header takes two bytes)."""
    fields = [0] * (len(messages.STATE_COUNTERS) + 6) + [0, 1500, 1500, 1500, 0]
    return codec.encode(messages.STATE, seq, *fields)


def test_is_state_tells_state_from_replies_by_the_kind_after_the_array_header() -> None:
    assert transport.is_state(_state_body(1))
    assert transport.is_state(cbor2.dumps([messages.STATE, 1, 2, 3]))  # one-byte array header
    for body in (PONG, codec.encode(messages.ACK, 3), codec.encode(messages.LOG, 0, 1, 1)):
        assert not transport.is_state(body)
    assert not transport.is_state(b"\x98")  # too short to tell: handled (and refused) at once


def _queue_then_read(bodies: list[bytes], state_backlog: int) -> tuple[list[bytes], UdpHub]:
    """Everything in `bodies` waits in the hub's socket before the event loop first reads it;
    returns the bodies in the order the hub handed them on."""
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.bind(("127.0.0.1", 0))
    received: list[bytes] = []

    async def main() -> UdpHub:
        hub = UdpHub(("127.0.0.1", 0), state_backlog=state_backlog)
        link = UdpTransport(hub, "127.0.0.1", node.getsockname()[1], KEY)
        await link.open(received.append, lambda why: None)
        sender = datagram.Sender(5, KEY, 1, counter=100)
        for body in bodies:  # no await in between: the hub reads none of them yet
            node.sendto(sender.seal(body), hub.address())
        await settle(lambda: len(received) + hub.shed == len(bodies))
        assert link.rejected() == {}  # authenticated in arrival order: no replay window trips
        hub.close()
        return hub

    try:
        hub = run(main())
    finally:
        node.close()
    return received, hub  # type: ignore[return-value]


def test_a_reply_is_handled_before_the_telemetry_queued_ahead_of_it() -> None:
    states = [_state_body(seq) for seq in range(1, 601)]
    received, hub = _queue_then_read([*states, PONG], transport.STATE_BACKLOG)
    assert hub.shed == 0
    # Handled in arrival order, the PONG would come 601st. It waits for the socket's drains
    # before it, and a batch of STATE after each.
    position = received.index(PONG)
    drains = -(-600 // transport.RECV_DRAIN)
    assert position <= drains * transport.RECV_BATCH, position
    assert [body for body in received if body != PONG] == states  # every STATE, in order


def test_telemetry_beyond_the_backlog_drops_the_oldest_and_counts_it() -> None:
    states = [_state_body(seq) for seq in range(1, 301)]
    received, hub = _queue_then_read([*states, PONG], state_backlog=50)
    assert PONG in received
    kept = [body for body in received if body != PONG]
    assert hub.shed == 300 - len(kept) > 0
    assert kept == sorted(kept, key=states.index)  # in order, gaps where the oldest went
    assert kept[-50:] == states[-50:]  # the newest are never the ones dropped


def _answer(receiver: datagram.Receiver, packet: bytes) -> tuple[str, int]:
    try:
        return "accepted", receiver.accept(packet)
    except datagram.DatagramError as error:
        return error.reason, 0


@settings(max_examples=300, deadline=None)
@example(steps=[(0, 1, "good"), (0, 1, "good"), (0, 0, "good")])  # the next, then its replay
@example(steps=[(2, 1, "good"), (2, 1, "good"), (2, 1, "good"), (2, -1, "good")])  # 32-bit carry
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),  # sender
            # the counter's step from that sender's last: in order mostly, and repeats,
            # reorders and jumps past the window
            st.one_of(st.sampled_from([1, 1, 1, 0, -1, 2]), st.integers(-70, 70)),
            st.sampled_from(
                ["good"] * 6 + ["forged", "key id", "bound", "unsigned", "short", "magic"]
            ),
        ),
        max_size=60,
    )
)
def test_the_host_receiver_answers_every_datagram_as_the_shared_one(
    steps: list[tuple[int, int, str]],
) -> None:
    shared = datagram.Receiver({1: KEY}, key_type=transport.PadStateKey, max_peers=2)
    host = transport.HostReceiver({1: KEY}, key_type=transport.PadStateKey, max_peers=2)
    counters = [1 << 32, 5, (1 << 32) - 2]  # one sender crosses the counter's 32-bit boundary
    for sender, step, variant in steps:
        counters[sender] = max(1, counters[sender] + step)
        key = bytes(32) if variant == "forged" else KEY
        seal = datagram.Sender(sender + 1, key, 2 if variant == "key id" else 1)
        seal.counter = counters[sender] - 1
        packet = seal.seal(PONG, bound_to=7 if variant == "bound" else None)
        if variant == "unsigned":
            packet = datagram.Sender(sender + 1, None, counter=counters[sender] - 1).seal(PONG)
        elif variant == "short":
            packet = packet[:20]
        elif variant == "magic":
            packet = b"SN" + packet[2:]
        assert _answer(host, packet) == _answer(shared, packet)
        assert (host.sender_id, host.bound) == (shared.sender_id, shared.bound)
    assert host.rejected == shared.rejected
    assert host.accepted == shared.accepted
