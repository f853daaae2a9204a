"""Shared helpers for tests that run the real node firmware on simulated boards."""

import time
from collections.abc import Iterator
from typing import Any

from nodeclient import Client, NoReplyError, SerialClient, UdpClient

from servomesh.host.sim import Board
from servomesh.protocol import messages

READY_TIMEOUT_S = 10.0
TICKS_MASK = messages.TICKS_PERIOD - 1


def channel(pin: int, **limits: Any) -> dict[str, Any]:
    return {"pin": pin, "min_us": 500, "max_us": 2500, "home_us": 1500, **limits}


def wait_ready(client: Client, timeout_s: float = READY_TIMEOUT_S) -> list[Any]:
    """HELLO until the node answers (it binds its socket a little after the process starts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.request(messages.HELLO, messages.PROTOCOL_VERSION)
        except NoReplyError:
            if time.monotonic() > deadline:
                raise


def udp_client(board: Board) -> UdpClient:
    client = UdpClient(board.udp_port, board.key)
    wait_ready(client)
    return client


def serial_client(board: Board) -> SerialClient:
    assert board.serial_url is not None
    client = SerialClient(board.serial_url.removeprefix("serial://"))
    wait_ready(client)
    return client


def info(client: Client) -> dict[str, Any]:
    reply = client.request(messages.HELLO, messages.PROTOCOL_VERSION)
    assert reply[0] == messages.INFO, reply
    return reply[2]  # type: ignore[no-any-return]


def states(client: Client, seconds: float) -> Iterator[list[Any]]:
    """STATE events for `seconds` (telemetry must be on)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            yield client.wait_event(messages.STATE, max(0.01, deadline - time.monotonic()))
        except NoReplyError:
            return


FIXED = 2 + 6 + len(messages.STATE_COUNTERS)  # where the per-channel groups start


def channel_state(values: list[Any], ch: int) -> dict[str, int]:
    """setpoint_us, position_us, target_us and flags of channel `ch` in a STATE."""
    base = FIXED + 5 * ch
    assert values[base] == ch
    names = ("setpoint_us", "position_us", "target_us", "flags")
    return dict(zip(names, values[base + 1 : base + 5], strict=True))


def counters(values: list[Any]) -> dict[str, int]:
    return dict(zip(messages.STATE_COUNTERS, values[8:FIXED], strict=True))


def node_now_us() -> int:
    """The node clock, read on the host: the unix port's ticks are CLOCK_MONOTONIC µs."""
    return (time.monotonic_ns() // 1000) & TICKS_MASK


def ticks_diff(a: int, b: int) -> int:
    d = (a - b) & TICKS_MASK
    return d - messages.TICKS_PERIOD if d >= messages.TICKS_PERIOD // 2 else d
