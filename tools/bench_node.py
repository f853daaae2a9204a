"""Node benchmark: the node firmware on simulated boards (MicroPython unix port), next to bare
echo floors and the usual alternatives. A report: no timing is asserted. tools/bench.py runs it
last; `python tools/bench_node.py [--quick]` runs it alone. Sections: SET round trips, all cases
interleaved in one run (serial boards sit behind the Simulator's pty relay, a thread of this
process, the pty echo too); node CPU per signed SET from /proc/<pid>/stat, less the idle CPU
over the same wall time; pipelined SET/s checked against INFO's counters; control-loop lateness
from INFO on a board reset just before (the target: during SETs at PACED_HZ, 1000 ticks in a
full run); bench_echo.py `steps`: where the node's CPU goes. Flash folders live on tmpfs.
With 2+ CPUs this process runs on one CPU and every MicroPython process on another, so every
case pays the same cross-CPU wake-ups.
"""

import contextlib
import gc
import http.client
import logging
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import children
import serial
from mpremote.transport_serial import SerialTransport

from servomesh.host import codec, upy
from servomesh.host.ports import free_ports
from servomesh.host.sim import DEFAULT_MAIN, Board, Simulator
from servomesh.protocol import datagram, messages, stream

ECHO_SCRIPT = Path(__file__).with_name("bench_echo.py")
START_S, REPLY_S = 15.0, 2.0  # start-up of any process; any single answer
STALL_S = 0.2  # a pipelined run with nothing back for this long counts what it waits for lost
WINDOW = 64  # outstanding pipelined requests (the node's replay window is 64 counters too)
CHANNEL, DURATION_MS = 2, 20
PACED_HZ = 1000  # SETs per second, one at a time, while the control loop's lateness is taken
SCRIPT = "import sys\nsys.path.append(%r)\nimport %s\n%s\n"  # a stand-in main.py
IDLE = "import time\nwhile True:\n    time.sleep_ms(10)"
DUTY = "servo.duty(1500)"
FAKE_SERVO = "class Servo:\n    def duty(self, v):\n        self.v = v\nservo = Servo()\n"
TMPFS = "/dev/shm"  # noqa: S108 - only mkdtemp creates anything there
Row = Callable[..., None]
Verdict = Callable[[str, bool], str]
Once = Callable[[], int]  # one round trip; returns its nanoseconds


class Host:
    """The host's SET sender (id 0), INFO sender (id 1) and seq stream: counters and seqs only
    ever increase as the node sees them, whichever socket sends them."""

    def __init__(self, key: bytes) -> None:
        self.key, self.seq, counter = key, 0, time.time_ns() // 10_000
        self.senders = [datagram.Sender(i, key, 1, counter=counter) for i in (0, 1)]
        self.boot_id: int | None = None  # from INFO: SETs are BOUND to the node's boot

    def body(self, kind: int, *fields: int) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, codec.encode(kind, self.seq, *fields)

    def set_body(self) -> tuple[int, bytes]:
        return self.body(messages.SET, CHANNEL, 1400 + 200 * (self.seq & 1), DURATION_MS)

    def packet(self, body: bytes, admin: bool = False) -> bytes:
        bound_to = None if admin else self.boot_id
        return bytes(self.senders[admin].seal(body, bound_to=bound_to))

    def socket(self, port: int, timeout_s: float = REPLY_S) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(timeout_s)
        return sock


def answers(body: bytes, seq: int) -> bool:
    """Whether `body` is the ACK to seq: events and late ACKs to earlier seqs are skipped."""
    values = list(codec.loads(body))
    if values[0] == messages.ERROR:
        raise RuntimeError("request seq %d answered %r" % (seq, values))
    return values[0] == messages.ACK and values[1] == seq


def udp_set(host: Host, sock: socket.socket, receiver: datagram.Receiver) -> Once:
    def once() -> int:
        seq, body = host.set_body()
        packet = host.packet(body)
        start = time.perf_counter_ns()
        sock.send(packet)
        while True:  # the reply is timed on arrival; a LOG event may come first
            reply = sock.recv(datagram.MAX_DATAGRAM)
            end = time.perf_counter_ns()
            if answers(receiver.open(reply)[1], seq):
                return end - start

    return once


def read_until(fd: int, done: Callable[[bytes], bool]) -> tuple[bytes, int]:
    """Read `fd` until done(data); return the data and when the last read returned."""
    data, deadline = b"", time.monotonic() + REPLY_S
    while not done(data):
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError("no answer within %.1f s" % REPLY_S)
        data += os.read(fd, 4096)
    return data, time.perf_counter_ns()


def echo(send: Callable[[bytes], object], fd: int, message: bytes) -> Once:
    def once() -> int:
        start = time.perf_counter_ns()
        send(message)
        data, end = read_until(fd, lambda d: len(d) >= len(message))
        if data != message:
            raise RuntimeError("the echo answered %r" % data)
        return end - start

    return once


def serial_set(host: Host, port: serial.Serial) -> Once:
    decoder = stream.FrameDecoder()

    def once() -> int:
        seq, body = host.set_body()
        frame = stream.encode_frame(body)
        start = time.perf_counter_ns()
        port.write(frame)
        while True:  # until the frame that answers seq (LOG frames and text may come first)
            data, end = read_until(port.fileno(), lambda d: bytes([stream.EOF]) in d)
            for is_frame, payload in decoder.feed(data):
                if is_frame and answers(bytes(payload), seq):
                    return end - start

    return once


def timed(call: Callable[[], object]) -> Once:
    def once() -> int:
        start = time.perf_counter_ns()
        call()
        return time.perf_counter_ns() - start

    return once


def http_put(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REPLY_S)
    try:
        connection.request("PUT", "/servo/%d" % CHANNEL, body=b"1500")
        response = connection.getresponse()
        if response.status != 200 or response.read() != b"ok":
            raise RuntimeError("Microdot answered %d" % response.status)
    finally:
        connection.close()
    return True


def interleave(cases: dict[str, Once], samples: int, batch: int) -> dict[str, list[float]]:
    """Microseconds per round trip: each case runs `batch` in turn, in a rotating order."""
    result: dict[str, list[float]] = {name: [] for name in cases}
    items = list(cases.items())
    for _, once in items:  # warm-up: connections, caches, the node's first requests
        for _ in range(max(batch, 20)):
            once()
    deadline = time.monotonic() + 600
    for repeat in range(samples // batch):
        gc.collect()
        gc.disable()  # a cyclic collection would land on whichever case runs
        try:
            for name, once in items[repeat % len(items) :] + items[: repeat % len(items)]:
                result[name] += [once() / 1000 for _ in range(batch)]
        finally:
            gc.enable()
        if time.monotonic() > deadline:
            raise TimeoutError("the round trips took over 600 s")
    return result


def blast(
    sock: socket.socket, packets: list[bytes], seconds: float
) -> tuple[list[bytes], float, int]:
    """Send `packets`, at most WINDOW unanswered, for at most `seconds`: (replies, seconds from
    the first send to the last reply, packets sent). A stall of STALL_S writes off the rest."""
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while sock.recv(datagram.MAX_DATAGRAM):  # late replies and events from before
            pass
    replies: list[bytes] = []
    sent = lost = 0
    start = last = time.perf_counter()
    try:
        while sent < len(packets) and last - start < seconds:
            while sent - len(replies) - lost < WINDOW and sent < len(packets):
                sock.send(packets[sent])
                sent += 1
            if not select.select([sock], [], [], STALL_S)[0]:
                lost = sent - len(replies)  # the node's counters tell where they went
            with contextlib.suppress(BlockingIOError):
                while True:
                    replies.append(sock.recv(datagram.MAX_DATAGRAM))
                    last = time.perf_counter()
        while select.select([sock], [], [], STALL_S / 4)[0]:  # until quiet: events come too
            replies.append(sock.recv(datagram.MAX_DATAGRAM))
            last = time.perf_counter()
    finally:
        sock.settimeout(REPLY_S)
    return replies, last - start, sent


def acks(replies: list[bytes], key: bytes, seqs: range) -> int:
    receiver = datagram.Receiver({1: key})
    bodies = (codec.loads(receiver.open(reply)[1]) for reply in replies)
    return sum(values[0] == messages.ACK and values[1] in seqs for values in bodies)


def cpu_per_message(board: Board, sock: socket.socket, packets: list[bytes], answered: Any) -> Any:
    """(CPU us per answered message less the idle CPU over the same wall time, busy share,
    idle share) of `board` over one pipelined run of `packets`."""

    def cpu_ticks() -> int:  # utime + stime
        fields = Path("/proc/%d/stat" % (board.pid or 0)).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = cpu_ticks()
    replies, wall, _ = blast(sock, packets, 600)
    busy, before = cpu_ticks() - before, cpu_ticks()
    time.sleep(wall)
    idle, tick_s = cpu_ticks() - before, 1 / os.sysconf("SC_CLK_TCK")
    per_message = (busy - idle) * tick_s * 1e6 / answered(replies)
    return per_message, busy * tick_s / wall, idle * tick_s / wall


def info(host: Host, port: int, timeout_s: float = REPLY_S) -> dict[str, Any]:
    """The node's INFO map (DISCOVER, from the INFO sender), asking until it answers."""
    deadline = time.monotonic() + timeout_s
    with host.socket(port, 0.2) as sock:
        receiver = datagram.Receiver({1: host.key})
        while time.monotonic() < deadline:
            seq, body = host.body(messages.DISCOVER)
            sock.send(host.packet(body, admin=True))
            with contextlib.suppress(TimeoutError, ConnectionRefusedError):  # not up yet
                while True:
                    values = codec.loads(receiver.open(sock.recv(datagram.MAX_DATAGRAM))[1])
                    if values[0] == messages.INFO and values[1] == seq:
                        host.boot_id = values[2]["boot_id"]
                        return dict(values[2])
    raise TimeoutError("no INFO from the node within %.1f s" % timeout_s)


def wait_for(what: str, ready: Callable[[], object]) -> None:
    """Call ready() until it returns true without raising OSError, for up to START_S."""
    deadline = time.monotonic() + START_S
    while True:
        with contextlib.suppress(OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise TimeoutError("%s not ready within %.0f s" % (what, START_S))
        time.sleep(0.01)


def attach(board: Board) -> serial.Serial:
    """Open a serial board's pty path; wait until the relay forwards its output to us."""
    port = serial.Serial(str(board.serial_url).removeprefix("serial://"), 115200, timeout=0)
    wait_for(board.node_id + " serial relay", lambda: board.relay and board.relay.attached)
    return port


def pin(pids: list[int | None], cpus: set[int]) -> None:
    """Put every thread of these processes on `cpus` (children start where we run)."""
    for pid in pids if cpus else []:
        for task in Path("/proc/%d/task" % pid).iterdir() if pid else ():
            with contextlib.suppress(OSError):  # gone meanwhile
                os.sched_setaffinity(int(task.name), cpus)


def fresh(node: Board, host: Host, cpus: set[int], work: Callable[[], Any]) -> list[Any]:
    """Reset the node and run `work` once it answers: [INFO before, INFO after, work()]."""
    node.reset()
    before = info(host, node.udp_port, START_S)
    pin([node.pid], cpus)
    result = work()
    return [before, info(host, node.udp_port), result]


def paced(once: Once, seconds: float, hz: int) -> int:
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        once()
        count += 1
        time.sleep(max(0.0, start + count / hz - time.monotonic()))
    return count


def start(argv: list[str], env: dict[str, str], stack: contextlib.ExitStack) -> int:
    """A child process (children.spawn), silent, that `stack` kills; returns its pid."""
    null = subprocess.DEVNULL
    return children.spawn(argv, None, stack, stdin=null, stdout=null, stderr=null, env=env).pid


def run(quick: bool, row: Row, verdict: Verdict) -> None:
    samples, batch = (300, 10) if quick else (2000, 20)
    cpu_sets, repeats, blast_s, paced_s = (5000, 1, 1.0, 2.0) if quick else (20000, 3, 2.0, 10.0)
    logging.getLogger("servomesh.host").setLevel(logging.ERROR)  # the Ctrl-C below is expected
    spec = find_spec("microdot")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("microdot is not installed: run `make install`")
    env = upy.environment()
    env["MICROPYPATH"] += ":%s" % Path(next(iter(spec.submodule_search_locations))).parent
    body = codec.encode(messages.SET, 3000, CHANNEL, 1500, DURATION_MS)  # echoed as is:
    frame, signed = stream.encode_frame(body), datagram.Sender(0, bytes(32), 1).seal(body)
    (echo_port,), (http_port,) = free_ports(1), free_ports(1, socket.SOCK_STREAM)
    tools = str(ECHO_SCRIPT.parent)
    mains = [DEFAULT_MAIN, SCRIPT % (tools, "bench_echo", "bench_echo.pty(%d)" % len(frame))]
    mains += [IDLE, SCRIPT % (tools, "bench_echo", "bench_echo.udp(%d)" % echo_port)]
    cpus = sorted(os.sched_getaffinity(0))
    with contextlib.ExitStack() as stack:
        if len(cpus) >= 2:  # before any thread or child starts: they inherit it
            os.sched_setaffinity(0, {cpus[0]})
            stack.callback(os.sched_setaffinity, 0, cpus)
        device = {cpus[-1]} if len(cpus) >= 2 else set()
        # Flash on tmpfs: the emulated watchdog rewrites a file every 20 ms, which on this disk
        # blocks the node for up to tens of ms (a board's WDT feed is a register write).
        shm = TMPFS if os.path.isdir(TMPFS) else None
        flash = stack.enter_context(tempfile.TemporaryDirectory(prefix="servomesh-", dir=shm))
        sim = stack.enter_context(Simulator(nodes=4, serial=3, main=mains, folder=flash))
        argv = upy.command(str(ECHO_SCRIPT.with_name("bench_microdot.py")), str(http_port))
        microdot = start(argv, env, stack)
        sim.wait_all_running(START_S)
        node, pty_board, repl_board, echo_board = sim.boards
        host = Host(node.key or b"")
        info(host, node.udp_port, START_S)
        echo_sock = stack.enter_context(host.socket(echo_port, 0.1))
        wait_for("UDP echo", echo(echo_sock.send, echo_sock.fileno(), b"x"))
        wait_for("Microdot", lambda: http_put(http_port))
        node_tty = stack.enter_context(attach(node))
        pty_tty = stack.enter_context(attach(pty_board))
        transport = SerialTransport(str(repl_board.serial_url)[len("serial://") :], timeout=REPLY_S)
        stack.callback(transport.close)
        transport.enter_raw_repl(soft_reset=False)  # Ctrl-C: the stand-in main.py gives way
        transport.exec(FAKE_SERVO)
        pin([board.pid for board in sim.boards] + [microdot], device)
        node_sock = stack.enter_context(host.socket(node.udp_port))
        receiver = datagram.Receiver({1: host.key})
        cases = {
            "UDP echo floor (bare MicroPython)": echo(echo_sock.send, echo_sock.fileno(), signed),
            "UDP SET, signed (real node)": udp_set(host, node_sock, receiver),
            "pty echo floor (bare MicroPython)": echo(pty_tty.write, pty_tty.fileno(), frame),
            "serial SET (real node, pyserial)": serial_set(host, node_tty),
            "mpremote raw-REPL exec servo.duty()": timed(lambda: transport.exec(DUTY)),
            "HTTP PUT, Microdot (HTTP/1.0, new conn.)": timed(lambda: http_put(http_port)),
        }
        rtt = interleave(cases, samples, batch)
        if transport.eval("servo.v") != 1500:
            raise RuntimeError("the raw-REPL servo was not set")
        where = "CPU %d, MicroPython on CPU %d" % (cpus[0], cpus[-1]) if device else "not pinned"
        title = (
            "\nNode round trips, SET -> ACK (us): %d per case, batches of %d interleaved, one run;"
        )
        print(title % (samples, batch))
        print("  this process on %s; flash folders in %s" % (where, flash))
        print_round_trips(rtt, row, verdict)

        def node_sets(n: int) -> tuple[list[bytes], Callable[[list[bytes]], int]]:
            bodies = [host.set_body() for _ in range(n)]
            seqs = range(bodies[0][0], bodies[-1][0] + 1)
            return [host.packet(b) for _, b in bodies], lambda r: acks(r, host.key, seqs)

        def echoed(replies: list[bytes]) -> int:
            return sum(reply == signed for reply in replies)

        cpu: dict[str, list[tuple[float, float, float]]] = {"node": [], "echo": []}
        for _ in range(repeats):
            cpu["node"].append(cpu_per_message(node, node_sock, *node_sets(cpu_sets)))
            cpu["echo"].append(cpu_per_message(echo_board, echo_sock, [signed] * cpu_sets, echoed))
        title = "\nCPU from /proc/<pid>/stat: %d pipelined messages x %d, window %d, less the idle"
        print(title % (cpu_sets, repeats, WINDOW) + " CPU over the same wall time")
        row("case", "us/msg", "CPU busy, idle", "target", "result")
        for name in ("node", "echo"):
            us, busy, idle = (statistics.median(r[i] for r in cpu[name]) for i in range(3))
            ok = verdict("node CPU per SET", us <= 20) if name == "node" else ""
            label = "node CPU per signed SET" if ok else "UDP echo CPU per datagram (floor)"
            row(label, "%.1f" % us, "%.0f%%, %.1f%%" % (busy * 100, idle * 100), ok and "<= 20", ok)
        echo_replies, echo_wall, _ = blast(echo_sock, [signed] * int(blast_s * 200_000), blast_s)
        built: dict[str, Any] = {}

        def work() -> Any:  # after the reset: SETs are BOUND to the boot the reset starts
            packets, built["answered"] = node_sets(int(blast_s * 60_000))
            return blast(node_sock, packets, blast_s)

        before, after, (replies, wall, sent) = fresh(node, host, device, work)
        answered = built["answered"]
        once = udp_set(host, node_sock, receiver)
        paced_start, paced_end, count = fresh(
            node, host, device, lambda: paced(once, paced_s, PACED_HZ)
        )
    acked = answered(replies)
    delta = {k: v - before["counters"][k] for k, v in after["counters"].items()}
    executed = delta.pop("requests_executed") - 1  # less the DISCOVER that read `after`
    title = "\nPipelined SETs, window %d, %.1f s, one client; control-loop lateness (100 Hz,"
    print(title % (WINDOW, blast_s) + " 64-us buckets) from INFO, the board reset before each run")
    row("case", "value", "", "target", "result")
    ok = verdict("pipelined SET/s", acked / wall >= 30000)
    row("pipelined SET/s per node (signed, ACKed)", "%.0f" % (acked / wall), "", ">= 30000", ok)
    row("pipelined echo/s (bare MicroPython)", "%.0f" % (len(echo_replies) / echo_wall))
    row("SETs sent / executed (INFO) / ACKed", "%d/%d/%d" % (sent, executed, acked))
    other = ", ".join("%s %d" % kv for kv in delta.items() if kv[1]) or "none"
    row("  other INFO counter deltas", "", other)
    paced_label = "%d SETs at %d/s" % (count, PACED_HZ)
    for label, first, last in [
        ("pipelined SETs", before, after),
        (paced_label, paced_start, paced_end),
    ]:
        late, ticks = last["loop_late_us"], first["loop_late_us"]["ticks"]
        ok = verdict("loop lateness p99", late["p99"] < 1000) if first is paced_start else ""
        extra = "p50 %d, ticks %d (%d before)" % (late["p50"], late["ticks"], ticks)
        row("lateness p99 (us) during %s" % label, str(late["p99"]), extra, ok and "< 1000", ok)
    row("zero allocation per control tick", "see tests")
    steps(quick, statistics.median(r[0] for r in cpu["node"]))


def print_round_trips(rtt: dict[str, list[float]], row: Row, verdict: Verdict) -> None:
    names = list(rtt)
    p50 = {name: statistics.median(values) for name, values in rtt.items()}
    row("case", "p50", "p99, p50 vs", "target", "result")
    for name, floor in zip(names, [None, 0, None, 2, 3, 1], strict=True):
        p99 = sorted(rtt[name])[round(0.99 * (len(rtt[name]) - 1))]
        vs = floor is not None and ", %.2fx %s" % (p50[name] / p50[names[floor]], names[floor])
        row(name, "%.0f" % p50[name], "%.0f%s" % (p99, (vs or "").split(" (")[0]))
    ratio = p50[names[1]] / p50[names[0]]
    ok = verdict("UDP SET vs echo", ratio <= 1.5)
    row("ratio UDP SET / UDP echo floor, p50", "%.2f" % ratio, "", "<= 1.50", ok)


def steps(quick: bool, node_cpu_us: float) -> None:
    """bench_echo.py steps prints the per-step table itself, in this report's format."""
    ports = [str(port) for port in free_ports(3)]
    args = ["200", "5"] if quick else ["500", "15"]
    argv = upy.command(str(ECHO_SCRIPT), "steps", *args, *ports, "%.1f" % node_cpu_us)
    done = subprocess.run(
        argv, env=upy.environment(), capture_output=True, timeout=300, check=False
    )
    if done.returncode:
        raise RuntimeError("bench_echo.py steps: %s" % (done.stdout + done.stderr)[-800:])
    print(done.stdout.decode())


if __name__ == "__main__":  # this section alone, in bench.py's table format
    import bench

    sys.exit(
        bench.alone("Node benchmark", lambda: run("--quick" in sys.argv, bench.row, bench.verdict))
    )
