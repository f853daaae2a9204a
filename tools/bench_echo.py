"""Floors for tools/bench_node.py, run on the MicroPython unix port: what answering costs when a
node does nothing but answer, and what each step of the node's UDP path costs on its own.

    micropython tools/bench_echo.py udp PORT        # echo every datagram back to its sender
    micropython tools/bench_echo.py steps ROUNDS REPEATS PORT PORT PORT NODE_CPU_US  # a table
    (a simulated board's main.py) import bench_echo; bench_echo.pty(SIZE)

The pty echo reads fixed-size messages from stdin (the board's serial port) and writes each
back: `readinto` blocks until the whole buffer has arrived, so no poll and no per-byte reads.

`steps` times the node's own code one step at a time, on a real Node (simulated board): SET
after SET with distinct seqs and counters, prepared before each timed loop in two compact
buffers, then a collection, so each case starts on a clean heap as the node does after one
(gc stays on). The cases run in a rotating order within each repeat; medians over repeats.
"""

import asyncio
import gc
import socket
import sys
import time


def udp(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    print("echo: udp port %d" % port)
    while True:
        data, address = sock.recvfrom(2048)
        sock.sendto(data, address)


def pty(size):
    buf = bytearray(size)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    while True:
        stdin.readinto(buf)
        stdout.write(buf)


def _address(port):
    return socket.getaddrinfo("127.0.0.1", port)[0][-1]


class _Trusted:
    """A link whose requests count as bound (what a verified BOUND datagram gives)."""

    def bound_to_boot(self):
        return True

    def send(self, body, size):
        pass


_TRUSTED = _Trusted()


def _udp_socket(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(_address(port))
    sock.setblocking(False)
    return sock


def steps(rounds, repeats, ports):
    from asyncio import core

    from servomesh.firmware import config, links
    from servomesh.firmware.node import Node
    from servomesh.protocol import cbor, datagram, messages

    key = b"\x11" * 32
    channels = [{"pin": pin, "min_us": 500, "max_us": 2500} for pin in range(6)]
    raw = {"node_id": "steps", "sender_id": 1, "board": "sim", "serial": False, "key": key.hex()}
    raw["channels"] = channels
    node = Node(config.validate(raw), None, "power_on", 1)
    dispatcher, motion = node.dispatcher, node.motion
    sender, reply_sender = datagram.Sender(0, key, 1), datagram.Sender(1, key, 1)
    receiver = datagram.Receiver({1: key}, boot_id=node.boot_id)
    link_receiver = datagram.Receiver({1: key}, boot_id=node.boot_id)
    link = links.UdpLink(node, "127.0.0.1", ports[2], link_receiver, reply_sender)
    a, b = _udp_socket(ports[0]), _udp_socket(ports[1])
    a_address, b_address = _address(ports[0]), _address(ports[1])
    values = [0] * messages.MAX_FIELDS
    buf = bytearray(32)
    # Seqs from 100000 on all take 5 bytes: every SET body is 12 bytes, every datagram 37.
    state = {"seq": 100000, "at": 0, "bodies": b"", "packets": b""}

    def prepare(n):  # outside the timed loops, then collected: a compact heap, as in the node
        bodies, packets = [], []
        for _ in range(n):
            seq = state["seq"] = state["seq"] + 1
            fields = [messages.SET, seq, 2, 1400 + 200 * (seq & 1), 20]
            bodies.append(bytes(buf[: cbor.encode_ints_into(buf, 0, fields, 5)]))
            packets.append(sender.seal(bodies[-1], bound_to=node.boot_id))
        state["bodies"], state["packets"], state["at"] = b"".join(bodies), b"".join(packets), 0

    def take():
        i = state["at"]
        state["at"] = i + 1
        return i

    def packet():  # a new bytes object, as recvfrom gives the node
        i = take() * 37
        return state["packets"][i : i + 37]

    def socket_pair():  # what an echo does per message, less its reply's sendto
        b.sendto(buf, a_address)
        a.recvfrom(2048)

    def decode_check():
        messages.check(values, cbor.decode_ints_into(state["bodies"], 0, 12, values))

    def handle():
        i = take() * 12
        dispatcher.handle(_TRUSTED, 0, state["bodies"], i, i + 12)

    cases = {
        "socket": socket_pair,
        "open": lambda: receiver.open(packet()),
        "decode_check": decode_check,
        "cache": lambda: dispatcher._cached(0, 0x3FFFFFFF, messages.SET),  # a miss: full scan
        "motion": lambda: motion.set(2, 1400 + 200 * (take() & 1), 20, 0, 0, node.now_us()),
        "handle": handle,
        "seal": lambda: reply_sender.seal(memoryview(dispatcher.reply)[:4]),
        "link": lambda: link._datagram(packet(), b_address),  # open, handle, seal, sendto
    }

    async def wake(n):  # socket_pair, waiting for the datagram through asyncio's poller
        others = [asyncio.create_task(_sleeper(ms)) for ms in (10, 20, 50)]  # the node's others
        start = time.ticks_us()
        for _ in range(n):
            b.sendto(buf, a_address)
            yield core._io_queue.queue_read(a)
            a.recvfrom(2048)
        result[0] = time.ticks_diff(time.ticks_us(), start) / n
        for task in others:
            task.cancel()

    result = [0.0]
    names = list(cases) + ["wake", "collect"]
    samples = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            prepare(rounds)
            _drain(a)
            _drain(b)  # the link's replies land there
            gc.collect()
            start = time.ticks_us()
            if name == "wake":
                asyncio.run(wake(rounds))
                samples[name].append(result[0])
                continue
            if name == "collect":  # one collection with the node's live objects
                gc.collect()
            else:
                fn = cases[name]
                for _ in range(rounds):
                    fn()
            elapsed = time.ticks_diff(time.ticks_us(), start)
            samples[name].append(elapsed / (1 if name == "collect" else rounds))
    alloc = {}
    for name in ("open", "handle", "seal", "link", "socket"):
        prepare(16)
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        for _ in range(16):
            cases[name]()
        alloc[name] = (gc.mem_alloc() - before) // 16
        gc.enable()
    _drain(b)
    us = {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
    return us, alloc, gc.mem_free() + gc.mem_alloc()


def _row(label, value, extra=""):
    print("  %-46s %10s  %s" % (label, value, extra))


def print_steps(rounds, repeats, us, alloc, heap, node_cpu_us):
    print()
    print("Where the node's CPU goes: each step of its UDP path timed alone on MicroPython")
    print(
        "(bench_echo.py steps, a real Node on a simulated board), %d SETs x %d" % (rounds, repeats)
    )
    _row("step", "us/SET", "B allocated")
    _row("recvfrom (+ the sender's sendto)", "%.1f" % us["socket"], alloc["socket"])
    _row("asyncio wake-up (queue_read), net", "%.1f" % (us["wake"] - us["socket"]))
    _row("datagram Receiver.open (HMAC, replay window)", "%.1f" % us["open"], alloc["open"])
    _row("Dispatcher.handle (SET), all of it", "%.1f" % us["handle"], alloc["handle"])
    _row("  cbor.decode_ints_into + messages.check", "%.1f" % us["decode_check"])
    _row("  reply-cache scan (32 slots, a miss)", "%.1f" % us["cache"])
    _row("  motion.set", "%.1f" % us["motion"])
    _row("datagram Sender.seal (the ACK)", "%.1f" % us["seal"], alloc["seal"])
    _row("UdpLink._datagram: open+handle+seal+sendto", "%.1f" % us["link"], alloc["link"])
    # node.main sets gc.threshold to a quarter of the free heap: a collection per heap/4 bytes.
    per_set = (alloc["link"] + alloc["socket"]) * 4 / heap
    extra = "%d us per collection" % us["collect"]
    _row("gc.collect(), amortized", "%.1f" % (us["collect"] * per_set), extra)
    total = us["link"] + us["wake"] - us["socket"] / 2 + us["collect"] * per_set
    _row("sum: link, recvfrom + wake-up, gc", "%.1f" % total, "node CPU measured: %s" % node_cpu_us)


async def _sleeper(ms):
    while True:
        await asyncio.sleep_ms(ms)


def _drain(sock):
    while True:
        try:
            sock.recvfrom(2048)
        except OSError:
            return


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "udp":
        udp(int(sys.argv[2]))
    elif len(sys.argv) == 8 and sys.argv[1] == "steps":
        rounds, repeats = int(sys.argv[2]), int(sys.argv[3])
        us, alloc, heap = steps(rounds, repeats, [int(p) for p in sys.argv[4:7]])
        print_steps(rounds, repeats, us, alloc, heap, sys.argv[7])
    else:
        print("usage: micropython bench_echo.py udp PORT | steps ROUNDS REPEATS P P P CPU_US")
        sys.exit(2)
