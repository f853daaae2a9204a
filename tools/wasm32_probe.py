"""Heap probe (MicroPython): boot the node as main.py does, then feed it signed SET datagrams.

Run by tools/bench_wasm32.py, never shipped. The folder it runs in holds servomesh.json and
packets.bin (written on the host); sealed replies go to replies.bin for the host to open.
packets.bin: a 16-byte header (boot id, first seq, warm-up count, SET count: 4 bytes each,
big-endian), then per datagram a 2-byte big-endian length and the datagram, BOUND to that boot
id. The node's boot id is set to it, as if the host had learnt it from INFO.

The node's own UdpLink handles each datagram (`_datagram`: from received bytes to a sealed
reply), over a stand-in socket: packets.bin plays `recvfrom`, replies.bin `sendto`.

Each step is a call of its own, because the webassembly port (pyscript build) collects only
when control is back in JavaScript: in a call, `gc.collect()` is deferred, and an allocation
that does not fit grows the heap where a board would collect or raise MemoryError.
tools/wasm32/run.mjs calls the steps one by one and reads the heap's size from
`micropython.mem_info()` at the end of each; `main()` runs the same steps on the unix port.
"""

import gc
import json
import sys

import micropython

_HEADER_BYTES = 16
_COUNTER_BITS = 24  # firmware/node.py: datagram counter = boot count << 24 | frames sent
_ADDRESS = ("127.0.0.1", 47000)  # the host, as recvfrom would name it
_TICK_EVERY = 10  # SETs per control tick
_MARKS = ("boot", "ready", "warm", "end")  # mark() takes an index: a str argument allocates
# Imported one per call, leaves first, so the webassembly port collects between them as a
# board does during the one import main.py makes. Node imports them all anyway.
_MODULES = (
    "servomesh.protocol.compat",
    "servomesh.protocol.cbor",
    "servomesh.protocol.messages",
    "servomesh.protocol.hmac_sha256",
    "servomesh.protocol.datagram",
    "servomesh.protocol.stream",
    "servomesh.firmware",
    "servomesh.firmware.clock",
    "servomesh.firmware.watchdog",
    "servomesh.firmware.dispatch",
    "servomesh.firmware.links",
    "servomesh.firmware.node",
    "servomesh.firmware.config",
    "servomesh.firmware.profile",
    "servomesh.firmware.motion",
    "servomesh.firmware.servos",
)


class _Socket:
    """The UDP socket UdpLink opens; `sendto` appends to replies.bin and keeps the datagram."""

    def __init__(self, family=0, kind=0):
        self.out = None
        self.sent = 0
        self.last = None
        self._prefix = bytearray(2)

    def setblocking(self, flag):
        pass

    def bind(self, address):
        pass

    def sendto(self, data, address):
        size = len(data)
        self._prefix[0] = size >> 8
        self._prefix[1] = size & 0xFF
        self.out.write(self._prefix)
        self.out.write(data)
        self.sent += 1
        self.last = data


class _SocketModule:
    """Stands in for `socket`: no port has one this probe may use (wasm has none at all)."""

    AF_INET = 2
    SOCK_DGRAM = 2
    socket = _Socket

    @staticmethod
    def getaddrinfo(host, port):
        return [(2, 2, 0, "", (host, port))]


class _SelectModule:
    """Stands in for a missing `select`: only the serial link polls, and it is not built."""

    POLLIN = 1

    @staticmethod
    def poll():
        raise OSError("no select on this port")


class _Os:
    """`os` with an `urandom` for a port without one (wasm): only the boot id draws on it."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def urandom(self, size):
        return bytes(size)  # the probe sets the boot id itself


class _State:
    pass


_s = _State()


def _free():
    return gc.mem_free() - _s.reserve


def _end(result):
    # The webassembly port's heap size is only printed: run.mjs reads it at each call's end.
    if _s.watch:
        micropython.mem_info()
    return result


def setup(capacity, reserve, watch):
    """Put stand-ins for what this port lacks in sys.modules, open packets.bin and replies.bin.

    `capacity` is the heap's size in bytes (0: read it from gc), `reserve` what the port adds
    to `gc.mem_free()` beyond it (the pyscript build counts the heap it may still grow by), and
    `watch` makes each call end with micropython.mem_info().
    """
    _s.capacity = capacity or gc.mem_alloc() + gc.mem_free()
    _s.reserve = reserve
    _s.watch = watch
    _s.shims = []
    sys.modules["socket"] = _SocketModule  # never a real socket: packets come from a file
    try:
        import select  # noqa: F401
    except ImportError:
        sys.modules["select"] = _SelectModule
        _s.shims.append("select")
    import os

    if not hasattr(os, "urandom"):
        sys.modules["os"] = _Os(os)
        _s.shims.append("os.urandom")
    _s.packets = open("packets.bin", "rb")  # noqa: SIM115 (open for the whole run)
    header = _s.packets.read(_HEADER_BYTES)
    _s.boot_id = int.from_bytes(header[0:4], "big")
    _s.first_seq = int.from_bytes(header[4:8], "big")
    _s.expected = int.from_bytes(header[8:12], "big") + int.from_bytes(header[12:16], "big")
    _s.replies = open("replies.bin", "wb")  # noqa: SIM115
    _s.prefix = bytearray(2)
    _s.values = [0] * 8
    _s.marks = [None] * (2 * len(_MARKS))
    _s.steps = [0] * (len(_MODULES) + 3)
    _s.handled = 0
    _s.acks = 0
    _s.not_ack = 0
    _s.first_bad = None
    _s.events = 0
    _s.memory_error = None
    _s.failure = None
    _s.lowest_free = _s.capacity
    _s.set_max = 0
    _s.set_sum = 0
    _s.set_count = 0
    _s.start_used = None
    _s.node = _s.link = _s.settings = None
    _s.clock = _s.cbor = _s.datagram = _s.messages = None
    gc.collect()
    _s.baseline = (gc.mem_alloc(), _free())
    return _end(0)


_BOOT_STEPS = ("load config", "Node()", "drop config")


def boot(stage):
    """Boot step `stage` (0, 1, ...): 1 while more follow, 0 after the last, -1 on failure."""
    _s.steps[stage] = gc.mem_alloc()  # what the steps before kept (collected since)
    modules = len(_MODULES)
    name = step_name(stage)
    try:
        if stage < modules:
            __import__(name)
            gc.collect()
            return _end(1)
        from servomesh.firmware import node

        if stage == modules:  # main(): settings, error = _config().load()
            _s.settings, _s.error = node._config().load()
            if _s.error:
                return _failed(name, _s.error, "MemoryError" in _s.error)
        elif stage == modules + 1:  # main(): Node(settings, error, reset cause, boot count)
            _s.node = node.Node(_s.settings, _s.error, "power_on", 1)
            if _s.node.motion is None:
                return _failed(name, _s.node.config_error, False)
        else:  # main(): del settings; _drop_config(); gc.collect()
            _s.settings = None
            node._drop_config()
            gc.collect()
            return _end(0)
        gc.collect()
        return _end(1)
    except MemoryError:
        return _failed(name, "MemoryError", True)


def step_name(stage):
    """The name of boot step `stage`."""
    modules = len(_MODULES)
    return _MODULES[stage] if stage < modules else _BOOT_STEPS[stage - modules]


def _failed(step, why, memory):
    if memory:
        _s.memory_error = step
    else:
        _s.failure = "%s: %s" % (step, why)
    return _end(-1)


def collect():
    gc.collect()  # deferred to the end of this call on the webassembly port
    return 0


def mark(index):
    """Record the heap now (after a collect() call) as _MARKS[index]."""
    _s.marks[2 * index] = gc.mem_alloc()  # ints in a list made beforehand: nothing allocated
    _s.marks[2 * index + 1] = _free()
    return _end(0)


def threshold():
    """main(): gc.threshold(gc.mem_free() // 4), with the free heap this port really has."""
    gc.threshold(_free() // 4)
    return _end(0)


def link():
    """What Node.run() builds for UDP: receiver, sender and UdpLink, on the stand-in socket."""
    from servomesh.firmware import clock, links
    from servomesh.protocol import cbor, datagram, messages

    _s.clock = clock
    _s.cbor = cbor
    _s.datagram = datagram
    _s.messages = messages
    try:
        n = _s.node
        n.boot_id = _s.boot_id
        settings = n.config
        key = n._key
        keys = {settings["key_id"]: key} if key else {}
        receiver = datagram.Receiver(
            keys, allow_unsigned=not key and settings["allow_unsigned"], boot_id=n.boot_id
        )
        sender = datagram.Sender(
            settings["sender_id"], key, settings["key_id"], n.boot_count << _COUNTER_BITS
        )
        n.udp = links.UdpLink(n, settings["udp_host"], settings["udp_port"], receiver, sender)
        n.udp.sock.out = _s.replies
        _s.link = n.udp
    except MemoryError:
        return _failed("link", "MemoryError", True)
    gc.collect()
    return _end(0)


def _acked(data, seq):
    """Whether the sealed reply `data` carries ACK for `seq` (decoded in place)."""
    values = _s.values
    datagram = _s.datagram
    end = len(data) - datagram.TAG_BYTES
    count = _s.cbor.decode_ints_into(data, datagram.HEADER_BYTES, end, values)
    return count >= 2 and values[0] == _s.messages.ACK and values[1] == seq


def handle(count):
    """Receive and answer `count` datagrams; return how many, or -1 on MemoryError."""
    now_us = _s.clock.now_us
    packets = _s.packets
    prefix = _s.prefix
    link = _s.link
    sock = link.sock
    n = _s.node
    done = 0
    try:
        while done < count:
            if packets.readinto(prefix) != 2:
                raise RuntimeError("packets.bin ends after %d datagrams" % _s.handled)
            size = prefix[0] << 8 | prefix[1]
            before = gc.mem_alloc()
            packet = packets.read(size)  # recvfrom hands the link a new bytes object too
            sent = sock.sent
            link._datagram(packet, _ADDRESS)
            packet = None
            used = gc.mem_alloc()
            grew = used - before
            if grew >= 0:  # else a collection ran in between (not on the webassembly port)
                _s.set_sum += grew
                _s.set_count += 1
                if grew > _s.set_max:
                    _s.set_max = grew
            seq = _s.first_seq + _s.handled
            _s.handled += 1
            done += 1
            replies = sock.sent - sent
            if replies > 1:
                _s.events += replies - 1  # a LOG before the reply: boot, on the first request
            if replies and _acked(sock.last, seq):
                _s.acks += 1
            else:
                _s.not_ack += 1
                if _s.first_bad is None:
                    _s.first_bad = seq
            sock.last = None
            if _s.handled % _TICK_EVERY == 0:
                n.motion.tick(now_us())
            free = _free()
            if free < _s.lowest_free:
                _s.lowest_free = free
    except MemoryError:
        return _failed("datagram %d" % (_s.handled + 1), "MemoryError", True)
    return _end(done)


def report():
    """The figures, one JSON object; "ok" when every datagram got its ACK, nothing failed."""
    cbor = sys.modules.get("servomesh.protocol.cbor")
    fast_path = cbor.FAST_PATH if cbor else None
    # Room for the report on a heap that ran out: let the node and its modules go.
    cbor = _s.node = _s.link = _s.settings = _s.clock = _s.cbor = None
    _s.datagram = _s.messages = None
    for name in _MODULES + ("servomesh.protocol", "servomesh"):  # a tuple: no allocation
        sys.modules.pop(name, None)
    gc.collect()
    _s.replies.close()
    _s.packets.close()
    marks = {"baseline": _s.baseline}
    for i in range(len(_MARKS)):
        if _s.marks[2 * i] is not None:
            marks[_MARKS[i]] = (_s.marks[2 * i], _s.marks[2 * i + 1])
    result = {
        "implementation": "%s %s" % (sys.implementation.name, sys.platform),
        "version": ".".join(str(part) for part in sys.implementation.version[:3]),
        "small_int_max": sys.maxsize,
        "cbor_fast_path": fast_path,
        "shims": _s.shims,
        "capacity": _s.capacity,
        "start_used": _s.start_used,
        "marks": marks,
        "steps": _s.steps,
        "handled": _s.handled,
        "acks": _s.acks,
        "not_ack": _s.not_ack,
        "first_bad_seq": _s.first_bad,
        "events": _s.events,
        "memory_error": _s.memory_error,
        "failure": _s.failure,
        "lowest_free": _s.lowest_free if _s.handled else None,
        "per_datagram_max": _s.set_max,
        "per_datagram_mean": _s.set_sum // _s.set_count if _s.set_count else 0,
    }
    result["ok"] = (
        _s.memory_error is None and _s.failure is None and _s.acks == _s.handled == _s.expected
    )
    return json.dumps(result)


def main(warmup, sets, start_used=None):
    """The whole run in one process (the unix port, whose gc.collect() is immediate);
    `start_used` is gc.mem_alloc() before this module was imported."""
    setup(0, 0, False)
    _s.start_used = start_used
    stage = 0
    while True:
        step = boot(stage)
        stage += 1
        if step <= 0:
            break
    if step == 0:
        collect()
        mark(0)
        threshold()
        if link() == 0:
            collect()
            mark(1)
            if handle(warmup) == warmup:
                collect()
                mark(2)
                if handle(sets) == sets:
                    collect()
                    mark(3)
    print(report())
