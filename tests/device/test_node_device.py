"""The node's hot paths inside the MicroPython unix port: SET handling and the control tick
allocate nothing (micropython.heap_lock); a repeated SET is answered, not executed."""

from heap_checks import locked

from servomesh.firmware import clock, config
from servomesh.firmware.node import Node
from servomesh.protocol import cbor, messages

SETTINGS = {
    "node_id": "heap",
    "sender_id": 1,
    "board": "sim",
    "channels": [{"pin": pin, "min_us": 500, "max_us": 2500} for pin in range(6)],
    "allow_unsigned": True,
}


class FakeLink:
    name = "udp"

    def __init__(self):
        self.sent = []

    def bound_to_boot(self):
        return True

    def send(self, body, size):  # LOG records (the first contact logs the boot)
        self.sent.append(bytes(body[:size]))


def _node():
    return Node(config.validate(SETTINGS), None, "power_on", 1)


def test_set_handling_allocates_nothing():
    node = _node()
    link = FakeLink()
    bodies = [cbor.dumps([messages.SET, seq, seq % 6, 1000 + seq, 200]) for seq in range(1, 40)]
    dispatcher = node.dispatcher
    dispatcher.handle(link, 7, bodies[0], 0, len(bodies[0]))  # warm-up
    sizes = [0]
    index = [1]

    def one_set():
        body = bodies[index[0]]
        sizes[0] = dispatcher.handle(link, 7, body, 0, len(body))
        index[0] += 1

    for _ in range(30):
        assert locked(one_set) is None
        reply = cbor.loads(bytes(dispatcher.out[: sizes[0]]))
        assert reply[0] == messages.ACK, reply
        assert reply[1] == index[0], reply  # bodies[k] has seq k + 1


def test_repeat_is_answered_without_allocating_or_executing():
    node = _node()
    link = FakeLink()
    body = cbor.dumps([messages.SET, 9, 1, 1700, 0])
    dispatcher = node.dispatcher
    first = dispatcher.handle(link, 7, body, 0, len(body))
    first_reply = bytes(dispatcher.out[:first])
    executed = node.counters[7]
    assert locked(lambda: dispatcher.handle(link, 7, body, 0, len(body))) is None
    assert bytes(dispatcher.out[:first]) == first_reply
    assert node.counters[7] == executed  # requests_executed
    assert node.counters[6] == 1  # requests_repeated


def test_errors_allocate_nothing():
    node = _node()
    link = FakeLink()
    dispatcher = node.dispatcher
    out_of_limits = cbor.dumps([messages.SET, 11, 0, 2600, 0])
    bad_channel = cbor.dumps([messages.SET, 12, 9, 1500, 0])
    for body in (out_of_limits, bad_channel):
        dispatcher.handle(link, 7, body, 0, len(body))
    for refused in (out_of_limits, bad_channel):
        assert locked(lambda body=refused: dispatcher.handle(link, 8, body, 0, len(body))) is None


def test_control_tick_allocates_nothing():
    node = _node()
    motion = node.motion
    now = clock.now_us()
    values = [0, 0, 0, 0, 0, 1000, 1, 2000, 2, 1200, 3, 1800, 4, 900, 5, 2100]
    motion.move(values, 4, 6, 500, 0, 0, now)
    assert motion.set(0, 1500, 0, 0, 0, now) == 0
    times = [now]

    def tick():
        times[0] = clock.add_us(times[0], 10000)
        motion.tick(times[0])

    for _ in range(60):
        assert locked(tick) is None
    assert motion.setpoint_us[1] == 2000


def test_state_report_matches_the_catalogue():
    node = _node()
    size = node.state()
    values = cbor.loads(bytes(node._state_buf[:size]))
    assert values[0] == messages.STATE
    assert messages.check(values, len(values)) == 0
    assert len(values) == 16 + 5 * 6
