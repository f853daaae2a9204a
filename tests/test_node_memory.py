"""A node on a small heap, loading its code as .mpy like a deployed board, serves 10,000
signed SETs without MemoryError and without its heap growing.

HEAP is the smallest heap on which the 64-bit unix port boots the whole firmware: serving, a
node keeps about 104 KB, mostly code objects (every pointer and object header is twice its
size on a 32-bit board), and the boot also holds the config module.
"""

import time
from pathlib import Path

from nodeclient import UdpClient
from nodetest import info, wait_ready

from servomesh.host import mpy, upy
from servomesh.host.sim import Simulator
from servomesh.protocol import cbor
from servomesh.protocol import messages as E  # noqa: N812

SETS = 10_000
HEAP = "144k"
WINDOW = 8  # requests in flight


def deploy_mpy(flash: Path) -> None:
    """What a deploy puts in a board's /lib: the device tree compiled for its architecture."""
    for name in upy.DEVICE_PACKAGES:
        mpy.compile_tree(upy.package_dir(name), flash / "lib" / "servomesh" / name, upy.HOST_MARCH)


def blast(client: UdpClient, count: int, first_seq: int) -> int:
    """Send `count` SETs with WINDOW in flight; return how many were acknowledged."""
    acked = 0
    sent = 0
    pending: set[int] = set()
    deadline = time.monotonic() + 120
    while acked < count and time.monotonic() < deadline:
        while sent < count and len(pending) < WINDOW:
            seq = first_seq + sent
            client.send_body(cbor.dumps([E.SET, seq, seq % 6, 1000 + seq % 1000, 0]), E.SET)
            pending.add(seq)
            sent += 1
        for body in client.receive_bodies(1.0):
            reply = cbor.loads(body)
            if reply[0] == E.ACK and reply[1] in pending:
                pending.discard(reply[1])
                acked += 1
        if not pending and sent >= count:
            break
    return acked


def test_ten_thousand_sets_on_a_small_heap(tmp_path: Path) -> None:
    deploy_mpy(tmp_path / "sim-1")
    with Simulator(nodes=1, heap=HEAP, folder=tmp_path) as sim:
        sim.wait_all_running(10)
        board = sim.boards[0]
        client = UdpClient(board.udp_port, board.key, timeout_s=2.0)
        wait_ready(client)
        assert blast(client, 500, 1) == 500  # warm-up: caches, windows, buffers
        warm = info(client)
        assert blast(client, SETS, 1000) == SETS
        after = info(client)
        assert (
            after["counters"]["requests_executed"] - warm["counters"]["requests_executed"] >= SETS
        )
        assert after["boot_id"] == warm["boot_id"]  # no reset on the way
        assert board.restarts == 0
        assert after["heap_used_bytes"] <= warm["heap_used_bytes"]
        client.close()
    assert "MemoryError" not in (tmp_path / "sim-1" / "console.log").read_text()
