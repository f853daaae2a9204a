"""The seeded UDP proxy that stands in for `tc netem`, against an echo server on loopback."""

import asyncio
import itertools
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from udp_proxy import Address, LossyUdpProxy

SEQ = struct.Struct("!I")
# Generous, as a bound on a loaded machine, never a sleep: waits end as soon as they can.
WAIT_S = 5.0
# Bursts this size fit every loopback socket buffer, so only the proxy loses datagrams.
BURST = 50


class EchoServer:
    """Sends every datagram back to its sender and records what arrived, in order."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.02)
        self.address: Address = self.sock.getsockname()
        self.received: list[tuple[bytes, Address]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload, sender = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received.append((payload, sender))
            self.sock.sendto(payload, sender)

    def seqs(self) -> list[int]:
        return [SEQ.unpack_from(payload)[0] for payload, _ in self.received]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_proxy_left_running() -> Iterator[None]:
    yield
    assert not [t for t in threading.enumerate() if t.name.startswith("udp-proxy-")]


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met within %.1f s" % timeout_s
        time.sleep(0.001)


def receive(sock: socket.socket, count: int, timeout_s: float = WAIT_S) -> list[int]:
    """Sequence numbers of up to `count` datagrams, stopping at the deadline."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(seqs) < count:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        sock.settimeout(remaining_s)
        try:
            payload = sock.recv(65535)
        except TimeoutError:
            break
        seqs.append(SEQ.unpack_from(payload)[0])
    return seqs


def taken_in(proxy: LossyUdpProxy, count: int) -> Callable[[], bool]:
    """Whether the proxy has read `count` datagrams from its clients."""
    return lambda: proxy.counters["to_upstream"].received >= count


def send_seqs(sock: socket.socket, proxy: LossyUdpProxy, seqs: range) -> None:
    """Send in bursts, each taken in by the proxy before the next, so no socket buffer drops."""
    for start in range(0, len(seqs), BURST):
        for seq in seqs[start : start + BURST]:
            sock.sendto(SEQ.pack(seq) + b"payload", proxy.address)
        sent = min(start + BURST, len(seqs))
        wait_until(taken_in(proxy, sent))


def test_clean_link_echoes_every_datagram_in_order(echo: EchoServer, client: socket.socket) -> None:
    with LossyUdpProxy(echo.address, seed=1) as proxy:
        send_seqs(client, proxy, range(100))
        assert receive(client, 100) == list(range(100))
        wait_until(lambda: proxy.counters["to_client"].forwarded >= 100)
        counters = proxy.counters
    for direction in ("to_upstream", "to_client"):
        assert counters[direction].received == counters[direction].forwarded == 100
        assert counters[direction].dropped == counters[direction].errors == 0


def lost_seqs(seed: int, count: int) -> tuple[set[int], int]:
    echo = EchoServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with LossyUdpProxy(echo.address, seed=seed, loss=0.3, directions="to_upstream") as proxy:
            send_seqs(sock, proxy, range(count))
            forwarded = count - proxy.counters["to_upstream"].dropped
            wait_until(lambda: len(echo.received) >= forwarded)
            dropped = proxy.counters["to_upstream"].dropped
    finally:
        sock.close()
        echo.close()
    return set(range(count)) - set(echo.seqs()), dropped


def test_loss_drops_a_binomial_share_and_repeats_with_the_seed() -> None:
    count = 300
    lost, dropped = lost_seqs(seed=7, count=count)
    assert len(lost) == dropped
    # Binomial(300, 0.3): mean 90, sd 7.9; five sd either side.
    assert 50 <= dropped <= 130
    assert lost_seqs(seed=7, count=count)[0] == lost
    assert lost_seqs(seed=8, count=count)[0] != lost


def test_duplicate_sends_a_second_copy(echo: EchoServer, client: socket.socket) -> None:
    with LossyUdpProxy(echo.address, seed=2, duplicate=1.0, directions="to_client") as proxy:
        send_seqs(client, proxy, range(20))
        arrived = receive(client, 40)
        wait_until(lambda: proxy.counters["to_client"].forwarded >= 40)
        counters = proxy.counters
    assert Counter(arrived) == dict.fromkeys(range(20), 2)
    assert echo.seqs() == list(range(20))  # the upstream direction is left alone
    assert counters["to_client"].duplicated == 20
    assert counters["to_client"].forwarded == 40
    assert counters["to_upstream"].duplicated == 0


def test_reorder_delivers_out_of_order(echo: EchoServer, client: socket.socket) -> None:
    with LossyUdpProxy(echo.address, seed=3, reorder=0.3, directions="to_upstream") as proxy:
        send_seqs(client, proxy, range(100))
        wait_until(lambda: len(echo.received) >= 100)
        reordered = proxy.counters["to_upstream"].reordered
    order = echo.seqs()
    assert sorted(order) == list(range(100))
    inversions = sum(1 for before, after in itertools.pairwise(order) if before > after)
    assert inversions >= 1
    assert reordered >= inversions


def test_held_datagram_goes_out_when_nothing_overtakes_it(
    echo: EchoServer, client: socket.socket
) -> None:
    with LossyUdpProxy(echo.address, seed=4, reorder=1.0, directions="to_upstream") as proxy:
        started = time.monotonic()
        client.sendto(SEQ.pack(0), proxy.address)
        assert receive(client, 1) == [0]
        elapsed_ms = (time.monotonic() - started) * 1000
        assert elapsed_ms >= proxy.reorder_hold_ms
        assert proxy.counters["to_upstream"].reordered == 0


def test_delay_adds_at_least_the_minimum(echo: EchoServer, client: socket.socket) -> None:
    with LossyUdpProxy(echo.address, seed=5, delay_ms=(15.0, 20.0)) as proxy:
        for seq in range(3):
            started = time.monotonic()
            client.sendto(SEQ.pack(seq), proxy.address)
            assert receive(client, 1) == [seq]
            # delayed both ways
            assert time.monotonic() - started >= 0.030


def test_set_cuts_the_link_and_restores_it(echo: EchoServer, client: socket.socket) -> None:
    with LossyUdpProxy(echo.address, seed=6) as proxy:
        client.sendto(SEQ.pack(0), proxy.address)
        assert receive(client, 1) == [0]
        assert proxy.set(loss=1.0).loss == 1.0
        for seq in range(1, 6):
            client.sendto(SEQ.pack(seq), proxy.address)
        wait_until(lambda: proxy.counters["to_upstream"].dropped == 5)
        assert receive(client, 1, timeout_s=0.05) == []
        proxy.set(loss=0.0)
        client.sendto(SEQ.pack(6), proxy.address)
        assert receive(client, 1) == [6]
    assert echo.seqs() == [0, 6]


def test_reflect_sends_a_clients_datagrams_back_to_it_not_upstream(
    echo: EchoServer, client: socket.socket
) -> None:
    with LossyUdpProxy(echo.address, seed=8, loss=1.0, directions="to_client") as proxy:
        client.sendto(SEQ.pack(0), proxy.address)  # reaches the echo; its answer is lost
        wait_until(lambda: echo.seqs() == [0])
        assert proxy.set(reflect=True).reflect
        for seq in range(1, 6):
            client.sendto(SEQ.pack(seq), proxy.address)
        assert receive(client, 5) == [1, 2, 3, 4, 5]  # no loss: reflection bypasses the rest
        assert proxy.counters["to_upstream"].reflected == 5
        proxy.set(reflect=False, loss=0.0)
        client.sendto(SEQ.pack(6), proxy.address)
        assert receive(client, 1) == [6]
    assert echo.seqs() == [0, 6]


def test_each_client_gets_its_own_replies_from_its_own_port(echo: EchoServer) -> None:
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        with LossyUdpProxy(echo.address, seed=7) as proxy:
            for index, sock in enumerate(clients):
                for round_ in range(5):
                    sock.sendto(SEQ.pack(index * 100 + round_), proxy.address)
            for index, sock in enumerate(clients):
                assert receive(sock, 5) == [index * 100 + round_ for round_ in range(5)]
            readable, _, _ = select.select(clients, [], [], 0.02)
            assert readable == []  # no stray replies to anyone
    finally:
        for sock in clients:
            sock.close()
    sources = {sender for _, sender in echo.received}
    assert len(sources) == len(clients)


def test_clients_over_the_limit_are_refused(echo: EchoServer) -> None:
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        with LossyUdpProxy(echo.address, seed=8) as proxy:
            proxy.max_clients = 2
            for index, sock in enumerate(clients):
                sock.sendto(SEQ.pack(index), proxy.address)
                wait_until(taken_in(proxy, index + 1))
            assert [receive(sock, 1) for sock in clients[:2]] == [[0], [1]]
            assert receive(clients[2], 1, timeout_s=0.05) == []
            assert proxy.counters["to_upstream"].errors == 1
    finally:
        for sock in clients:
            sock.close()


def test_upstream_not_listening_yet_is_survived(client: socket.socket) -> None:
    absent = EchoServer()
    absent.close()
    with LossyUdpProxy(absent.address, seed=9) as proxy:
        client.sendto(SEQ.pack(0), proxy.address)
        wait_until(lambda: proxy.counters["to_client"].errors >= 1)
        late = EchoServer(port=absent.address[1])
        try:
            client.sendto(SEQ.pack(1), proxy.address)
            assert receive(client, 1) == [1]
        finally:
            late.close()


def test_asyncio_client_through_the_proxy(echo: EchoServer) -> None:
    async def exchange(target: Address) -> list[int]:
        arrived: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Address) -> None:
                arrived.put_nowait(data)

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=target)
        try:
            for seq in range(10):
                transport.sendto(SEQ.pack(seq))
            return [
                SEQ.unpack_from(await asyncio.wait_for(arrived.get(), WAIT_S))[0] for _ in range(10)
            ]
        finally:
            transport.close()

    with LossyUdpProxy(echo.address, seed=10, delay_ms=(1.0, 1.0)) as proxy:
        assert asyncio.run(exchange(proxy.address)) == list(range(10))


def test_close_stops_the_thread_and_is_idempotent(echo: EchoServer) -> None:
    proxy = LossyUdpProxy(echo.address, seed=11)
    assert proxy.thread.is_alive()
    proxy.close()
    assert not proxy.thread.is_alive()
    proxy.close()
    # the listening port is free again: its socket is closed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rebound:
        rebound.bind(proxy.address)


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": -0.1},
        {"loss": 1.5},
        {"duplicate": float("nan")},
        {"reorder": 2.0},
        {"delay_ms": (5.0, 1.0)},
        {"delay_ms": (-1.0, 1.0)},
        {"directions": "sideways"},
    ],
)
def test_invalid_impairments_are_refused(echo: EchoServer, settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        LossyUdpProxy(echo.address, seed=0, **settings)  # type: ignore[arg-type]
    with LossyUdpProxy(echo.address, seed=0) as proxy:
        with pytest.raises(ValueError):  # noqa: PT011
            proxy.set(**settings)  # type: ignore[arg-type]
        assert proxy.impairment.loss == 0.0


def test_bounds_are_accepted(echo: EchoServer) -> None:
    with LossyUdpProxy(
        echo.address, seed=0, loss=1.0, duplicate=1.0, reorder=1.0, delay_ms=(0.0, 0.0)
    ) as proxy:
        changed = proxy.set(loss=0.0, delay_ms=(3.0, 3.0), directions="to_client")
    assert (changed.loss, changed.delay_ms, changed.directions) == (0.0, (3.0, 3.0), "to_client")
    assert changed.duplicate == changed.reorder == 1.0
