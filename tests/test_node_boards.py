"""Boards as a user meets them: mpremote breaking into a running node, twenty nodes at once,
and log records reaching the host."""

import os
import subprocess
import sys
from pathlib import Path

from nodeclient import SerialClient, UdpClient
from nodetest import serial_client, udp_client, wait_ready

from servomesh.host.sim import Simulator
from servomesh.protocol import messages as E  # noqa: N812

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def test_mpremote_interrupts_a_running_node_and_it_restarts() -> None:
    with Simulator(nodes=1, serial=1) as sim:
        sim.wait_all_running(10)
        board = sim.boards[0]
        client = serial_client(board)  # the node is up and serving frames
        client.close()
        assert board.serial_url is not None
        result = subprocess.run(
            [
                MPREMOTE,
                "connect",
                board.serial_url.removeprefix("serial://"),
                "resume",
                "exec",
                "print(6 * 7)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("42")
        board.reset()  # restart the board, as its reset button would
        board.wait_running(10)
        client = SerialClient(board.serial_url.removeprefix("serial://"))
        assert wait_ready(client)[2]["reset_cause"] == "hard"
        client.close()


def test_twenty_nodes_answer_discover_and_leave_nothing_behind() -> None:
    with Simulator(nodes=20) as sim:
        sim.wait_all_running(30)
        pids = [board.pid for board in sim.boards]
        identities = set()
        for board in sim.boards:
            client = UdpClient(board.udp_port, board.key)
            reply = wait_ready(client)
            assert client.request(E.DISCOVER)[0] == E.INFO
            identities.add(reply[2]["node_id"])
            client.close()
        assert len(identities) == 20
    for pid in pids:
        assert pid is not None
        assert not os.path.exists("/proc/%d" % pid) or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path("/proc/%d/stat" % pid).read_text().split()[2] == "Z"
    except OSError:
        return True


def test_log_records_reach_the_host() -> None:
    with Simulator(nodes=1) as sim:
        sim.wait_all_running(10)
        client = udp_client(sim.boards[0])
        boot = client.wait_event(E.LOG, 1.0)  # told at the first contact
        assert boot[1:6] == [0, E.LOG_INFO, E.LOG_BOOT, E.RESET_CAUSES.index("power_on"), 1]
        assert client.request(E.STOP, E.STOP_HOLD, 77)[0] == E.ACK
        record = client.wait_event(E.LOG, 1.0)
        assert record[1:6] == [1, E.LOG_WARNING, E.LOG_STOPPED, E.STOP_HOLD, 77]
        assert client.request(E.CLEAR)[0] == E.ACK
        assert client.wait_event(E.LOG, 1.0)[2:4] == [E.LOG_INFO, E.LOG_CLEARED]
        client.close()
