"""Ports chosen now and bound later, by a board or a server: never one the kernel may hand out."""

import logging
import socket
from pathlib import Path

import pytest

from servomesh.host import ports


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_free_ports_are_free_distinct_and_outside_the_ephemeral_range(
    kind: socket.SocketKind,
) -> None:
    # A client that sends before the board has bound its port must not be given that port: it
    # would read its own requests back as replies (CI once saw DISCOVER "answered" by DISCOVER).
    low, high = ports.ephemeral_range()
    chosen = ports.free_ports(200, kind)
    assert len(set(chosen)) == 200
    assert all(1024 <= port < low or high < port <= 65535 for port in chosen)
    for port in chosen:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"x", ("127.0.0.1", chosen[0]))  # the kernel binds it now
        assert low <= client.getsockname()[1] <= high


def test_a_port_in_use_is_never_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", range_file)
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            monkeypatch.setattr(ports, "LOWEST_PORT", port)
            range_file.write_text("%d 65535\n" % (port + 1))  # leaves `port` alone outside
            with pytest.raises(OSError, match="only 0 of 1 ports free"):
                ports.free_ports(1, kind)
        assert ports.free_ports(1, kind) == [port]


def test_the_range_comes_from_the_kernel_and_a_full_one_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    range_file = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", range_file)
    assert ports.ephemeral_range() == (49152, 65535)  # no such file: the IANA range
    range_file.write_text("1024\t65000\n")
    assert ports.ephemeral_range() == (1024, 65000)
    assert all(65000 < port <= 65535 for port in ports.free_ports(20))
    range_file.write_text("32768 60999\n")  # above it first: no service has a fixed port there
    assert all(60999 < port <= 65535 for port in ports.free_ports(20))
    range_file.write_text("1024 65535\n")  # nothing left outside: the kernel chooses, and says so
    with caplog.at_level(logging.WARNING, logger="servomesh.host.ports"):
        assert len(set(ports.free_ports(3))) == 3
    assert "ephemeral ports 1024-65535 leave none outside" in caplog.text
