"""The node firmware on simulated boards: every message kind over UDP and a pty serial link,
hostile traffic, the reply cache, and the unconfigured state."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from nodeclient import Client, NoReplyError, SerialClient, UdpClient
from nodetest import channel, info, serial_client, udp_client, wait_ready

from servomesh.host.sim import Simulator
from servomesh.protocol import catalogue, cbor, datagram, messages, stream

E = messages


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    configs: list[dict[str, Any] | None] = [
        {"channels": [channel(pin) for pin in range(4)]},
        {"channels": [channel(pin) for pin in range(4)]},
    ]
    with Simulator(nodes=2, serial=1, configs=configs) as simulator:
        simulator.wait_all_running(10)
        yield simulator


@pytest.fixture(params=["udp", "serial"])
def client(request: pytest.FixtureRequest, sim: Simulator) -> Iterator[Client]:
    link: Client = (
        serial_client(sim.boards[0]) if request.param == "serial" else udp_client(sim.boards[1])
    )
    link.request(E.CLEAR)  # whatever an earlier test left latched
    yield link
    link.close()  # type: ignore[attr-defined]


def test_hello_reports_identity(client: Client, sim: Simulator) -> None:
    identity = info(client)
    assert identity["protocol_version"] == E.PROTOCOL_VERSION
    assert identity["node_id"] in {"sim-1", "sim-2"}
    assert identity["firmware"] == "0.1.0"
    assert identity["board"] == "sim"
    assert identity["channels"] == 4
    assert identity["configured"] is True
    assert identity["reset_cause"] == "power_on"
    assert 0 <= identity["boot_id"] < 2**30
    assert set(identity["kinds"]) == {k for k in catalogue.KINDS if k < E.ACK}


def test_wrong_protocol_version_is_refused(client: Client) -> None:
    assert client.request(E.HELLO, E.PROTOCOL_VERSION + 1)[:4] == [
        E.ERROR,
        client.seq,
        E.E_VERSION,
        E.PROTOCOL_VERSION,
    ]


def test_ping_samples_the_node_clock(client: Client) -> None:
    first = client.request(E.PING)
    second = client.request(E.PING)
    assert first[0] == second[0] == E.PONG
    assert 0 < (second[2] - first[2]) % E.TICKS_PERIOD < 1_000_000


def test_motion_requests_are_acknowledged(client: Client) -> None:
    assert client.request(E.SET, 0, 1600, 200)[0] == E.ACK
    assert client.request(E.SET, 1, 1400, 0, 1000, 42)[0] == E.ACK
    assert client.request(E.MOVE, 300, 0, 7, 0, 1500, 1, 1500)[0] == E.ACK
    assert client.request(E.SEGMENT, 0, 100, E.EASE_LINEAR, 8, 2, 1700)[0] == E.ACK
    assert client.request(E.SEGMENT, 0, 100, E.EASE_IN_OUT, 8, 2, 1500)[0] == E.ACK


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ((E.SET, 9, 1500, 0), E.E_BAD_CHANNEL),
        ((E.SET, 0, 2600, 0), E.E_OUT_OF_LIMITS),
        ((E.SET, 0, 499, 0), E.E_OUT_OF_LIMITS),
        ((E.STOP, 5), E.E_BAD_FIELDS),
        ((E.REBOOT, 60_001), E.E_BAD_FIELDS),
        ((E.TELEMETRY, 5), E.E_BAD_FIELDS),
        ((30,), E.E_UNKNOWN_KIND),
    ],
)
def test_bad_requests_get_one_error(client: Client, fields: tuple[int, ...], code: int) -> None:
    reply = client.request(*fields)
    assert reply[:3] == [E.ERROR, client.seq, code]


def test_stop_latches_until_clear(client: Client) -> None:
    assert client.request(E.STOP, E.STOP_HOLD)[0] == E.ACK
    assert client.request(E.SET, 0, 1500, 0)[:3] == [E.ERROR, client.seq, E.E_STOPPED]
    assert client.request(E.MOVE, 100, 0, 0, 0, 1500)[:3] == [E.ERROR, client.seq, E.E_STOPPED]
    assert client.request(E.CLEAR)[0] == E.ACK
    assert client.request(E.SET, 0, 1500, 0)[0] == E.ACK


def test_config_get_hides_the_key(client: Client, sim: Simulator) -> None:
    reply = client.request(E.CONFIG_GET)
    assert reply[0] == E.CONFIG
    config = reply[2]
    assert config["key"] == "<hidden>"
    assert config["board"] == "sim"
    assert config["channels"][0] == [0, 500, 2500, 1500, 0, 0, 0]  # CONFIG_CHANNEL_FIELDS
    for board in sim.boards:
        assert board.config["key"] not in repr(reply)


def test_config_set_of_the_same_config_changes_nothing(client: Client) -> None:
    before = info(client)
    config = client.request(E.CONFIG_GET)[2]
    assert client.request(E.CONFIG_SET, config)[:3] == [E.ACK, client.seq, 0]
    assert info(client)["boot_id"] == before["boot_id"]  # no reboot for a no-op


def test_config_set_refuses_invalid_config(client: Client) -> None:
    config = client.request(E.CONFIG_GET)[2]
    config["control_hz"] = 5000
    assert client.request(E.CONFIG_SET, config)[:3] == [E.ERROR, client.seq, E.E_BAD_CONFIG]
    assert "control_hz" in info(client)["config_error"]


def test_telemetry_streams_state(client: Client) -> None:
    assert client.request(E.TELEMETRY, 20)[:3] == [E.ACK, client.seq, 20]
    first = client.wait_event(E.STATE, 1.0)
    second = client.wait_event(E.STATE, 1.0)
    assert second[1] > first[1]
    assert 10_000 <= (second[2] - first[2]) % E.TICKS_PERIOD <= 200_000
    assert messages.check(second, len(second)) == 0
    assert client.request(E.TELEMETRY, 0)[0] == E.ACK


def test_discover_answers_with_identity(client: Client) -> None:
    assert client.request(E.DISCOVER)[0] == E.INFO


def test_a_discover_scan_takes_neither_the_telemetry_nor_the_host_role(sim: Simulator) -> None:
    board = sim.boards[1]
    host = udp_client(board)
    scanner = UdpClient(board.udp_port, board.key)
    scanner.sender = datagram.Sender(0xFFFF, board.key, 1)  # discovery's own sender id
    try:
        assert host.request(E.TELEMETRY, 20)[0] == E.ACK
        host.wait_event(E.STATE, 1.0)
        assert scanner.request(E.DISCOVER)[0] == E.INFO
        host.events.clear()
        time.sleep(0.2)
        assert scanner.events == []  # no STATE, no LOG went to the scanner
        assert scanner.receive_bodies(0.0) == []
        host.wait_event(E.STATE, 0.5)  # the host's stream goes on
        assert host.request(E.TELEMETRY, 0)[0] == E.ACK
    finally:
        host.close()
        scanner.close()


def test_repeated_request_is_answered_not_executed(client: Client) -> None:
    before = info(client)["counters"]
    first = client.request(E.SET, 2, 1800, 0, seq=50_000)
    again = client.request(E.SET, 2, 1800, 0, seq=50_000)  # a retry: same seq
    assert first == again
    after = info(client)["counters"]
    assert after["requests_repeated"] == before["requests_repeated"] + 1
    # The two HELLOs and the SET executed; the repeat did not.
    assert after["requests_executed"] == before["requests_executed"] + 2


def test_reply_kinds_sent_to_a_node_get_no_reply(client: Client) -> None:
    client.send_body(cbor.dumps([E.ACK, 77]))
    with pytest.raises(NoReplyError):
        client.reply_to(77, timeout_s=0.3)


def test_udp_rejects_and_counts_forged_and_replayed_datagrams(sim: Simulator) -> None:
    client = udp_client(sim.boards[1])
    before = info(client)["counters"]
    packet = client.seal(cbor.dumps([E.SET, 60_000, 0, 1500, 0]), E.SET)
    tampered = bytearray(packet)
    tampered[-20] ^= 1
    client.send_raw(bytes(tampered))
    client.send_raw(packet)
    client.send_raw(packet)  # replayed
    client.send_raw(UdpClient(sim.boards[1].udp_port, b"x" * 32).sender.seal(b"\x82\x02\x01"))
    client.send_raw(UdpClient(sim.boards[1].udp_port, None).sender.seal(b"\x82\x02\x01"))
    client.send_raw(b"garbage")
    assert client.reply_to(60_000)[0] == E.ACK
    with pytest.raises(NoReplyError):
        client.reply_to(60_000, timeout_s=0.3)  # exactly one reply
    after = info(client)["counters"]
    assert after["auth_failed"] == before["auth_failed"] + 3  # tampered, wrong key, unsigned
    assert after["replayed"] == before["replayed"] + 1
    assert after["datagrams_malformed"] == before["datagrams_malformed"] + 1
    client.close()


def test_serial_ignores_garbage_and_counts_bad_frames(sim: Simulator) -> None:
    client = serial_client(sim.boards[0])
    before = info(client)["counters"]
    good = stream.encode_frame(cbor.dumps([E.PING, 61_000]))
    corrupt = bytearray(good)
    corrupt[3] ^= 0x40
    client.send_raw(b"noise\x00\xff" + bytes(corrupt) + good[:5] + b"\xc0\x01\xc1" + good)
    assert client.reply_to(61_000)[0] == E.PONG
    after = info(client)["counters"]
    assert after["frames_dropped"] == before["frames_dropped"] + 3  # crc, truncated, short
    client.close()


def test_malformed_bodies_get_an_error_with_seq_zero(sim: Simulator) -> None:
    client = udp_client(sim.boards[1])
    client.send_body(b"\xff")
    assert client.reply_to(0)[:3] == [E.ERROR, 0, E.E_MALFORMED]
    client.send_body(cbor.dumps([E.SET, 62_000, "x", 1500, 0]))
    assert client.reply_to(62_000)[:3] == [E.ERROR, 62_000, E.E_BAD_FIELDS]
    client.close()


def test_unconfigured_node_answers_hello_and_config_over_serial(tmp_path: Any) -> None:
    with Simulator(nodes=1, serial=1, folder=tmp_path) as bad:
        board = bad.boards[0]
        (board.flash / "servomesh.json").write_text('{"node_id": "x", "board": "esp8266"}')
        board.reset()
        board.wait_running(10)
        client = SerialClient(board.serial_url.removeprefix("serial://"))  # type: ignore[union-attr]
        identity = wait_ready(client)[2]
        assert identity["configured"] is False
        assert "esp8266" in identity["config_error"]
        assert client.request(E.CONFIG_GET)[0] == E.CONFIG
        assert client.request(E.SET, 0, 1500, 0)[:3] == [E.ERROR, client.seq, E.E_UNCONFIGURED]
        config = dict(board.config, channels=[channel(0)])
        reply = client.request(E.CONFIG_SET, config)
        assert reply[:3] == [E.ACK, client.seq, 1], info(client).get("config_error")
        board.wait_until(lambda b: b.restarts >= 2, 10)  # CONFIG_SET reboots to apply
        assert wait_ready(client)[2]["configured"] is True
        client.close()


def test_udp_requests_that_change_state_must_be_bound_to_this_boot(sim: Simulator) -> None:
    client = udp_client(sim.boards[1])
    unbound = client.sender.seal(cbor.dumps([E.SET, 63_000, 0, 1500, 0]))
    client.send_raw(unbound)
    assert client.reply_to(63_000)[:3] == [E.ERROR, 63_000, E.E_UNBOUND]
    stale = client.sender.seal(cbor.dumps([E.SET, 63_001, 0, 1500, 0]), bound_to=client.boot_id ^ 1)
    client.send_raw(stale)  # bound to another boot: the tag does not verify
    with pytest.raises(NoReplyError):
        client.reply_to(63_001, timeout_s=0.3)
    assert client.request(E.PING)[0] == E.PONG  # read-only requests need no binding
    client.close()


def test_a_request_recorded_before_a_reboot_is_refused_after_it(sim: Simulator) -> None:
    board = sim.boards[1]
    client = udp_client(board)
    recorded = client.seal(cbor.dumps([E.SET, 64_000, 3, 2000, 0]), E.SET)
    client.send_raw(recorded)
    assert client.reply_to(64_000)[0] == E.ACK
    restarts = board.restarts
    assert client.request(E.REBOOT, 0)[0] == E.ACK
    board.wait_until(lambda b: b.restarts > restarts, 10)
    wait_ready(client)  # the node's replay windows are empty now
    client.send_raw(recorded)  # the attacker's copy
    with pytest.raises(NoReplyError):
        client.reply_to(64_000, timeout_s=0.5)
    assert info(client)["counters"]["auth_failed"] == 1
    client.close()
