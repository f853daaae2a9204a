"""Free ports on 127.0.0.1 for a process that binds them later: simulated boards, test servers.

Such a port is chosen now and bound a moment later by someone else. Inside the kernel's
ephemeral range, a socket that sends or connects before it binds (a test client, the fleet's
hub) may be given that very port in the meantime. The process that should bind it then fails,
and the client talks to itself: a UDP client reads its own datagrams back as replies, a TCP
connect to the port succeeds as a simultaneous open with itself. Outside the range only an
explicit bind can take a port, so these helpers choose there, at random, so that two callers
rarely choose alike.
"""

import logging
import random
import socket
from pathlib import Path
from typing import Final

_log = logging.getLogger(__name__)

EPHEMERAL_RANGE_FILE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
IANA_EPHEMERAL: Final = (49152, 65535)  # the default where that file is missing: BSD, macOS
LOWEST_PORT: Final = 1024  # below it only root may bind
_TRIES: Final = 64  # ports tried per port wanted before giving up


def ephemeral_range() -> tuple[int, int]:
    """First and last port the kernel hands to a socket that sends before it binds."""
    try:
        low, high = (int(word) for word in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return IANA_EPHEMERAL
    return low, high


def free_ports(count: int, kind: socket.SocketKind = socket.SOCK_DGRAM) -> list[int]:
    """`count` distinct ports of `kind` (UDP or TCP) free on 127.0.0.1 now, outside the
    ephemeral range; OSError when too few are free."""
    low, high = ephemeral_range()
    # Above the range first: still IANA's dynamic ports, where no service has a fixed one.
    spans = [range(max(LOWEST_PORT, high + 1), 65536), range(LOWEST_PORT, max(LOWEST_PORT, low))]
    if len(spans[0]) + len(spans[1]) < count:
        _log.warning("ephemeral ports %d-%d leave none outside: ports may collide", low, high)
        return _kernel_chosen(count, kind)
    ports: list[int] = []
    for span in spans:
        for port in random.sample(span, min(len(span), count * _TRIES)):
            if _bindable(port, kind):
                ports.append(port)
                if len(ports) == count:
                    return ports
    raise OSError("only %d of %d ports free on 127.0.0.1" % (len(ports), count))


def _bindable(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False  # in use
    return True


def _kernel_chosen(count: int, kind: socket.SocketKind) -> list[int]:
    probes = [socket.socket(socket.AF_INET, kind) for _ in range(count)]
    try:
        for probe in probes:  # all bound at once, so no two are alike
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()
