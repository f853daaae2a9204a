"""Message catalogue: kinds, their fields, error codes and the protocol version.

Every message is a CBOR array `[kind, seq, field...]`. Hot messages hold only integers in the
hot range (see `cbor.HOT_INT_MIN`), so the node encodes and decodes them without allocating;
the few rare, extensible payloads (node info, config) are one CBOR map in the last field.

Versioning: PROTOCOL_VERSION changes whenever an existing kind's fields change meaning, count
or order. New kinds can be added without a version change: a node that does not know a kind
answers ERROR with E_UNKNOWN_KIND, and INFO lists the kinds a node takes. Kind numbers and error
codes are never reused.

Units are in the field names: `_us` microseconds, `_ms` milliseconds, `pulse_us` is the servo
pulse width. Node clock values (`*_ticks_us`) are the node's `time.ticks_us()` modulo 2**30
(TICKS_PERIOD); subtract them modulo that period.
"""

from .cbor import HOT_INT_MAX, HOT_INT_MIN
from .compat import const

PROTOCOL_VERSION = const(1)
TICKS_PERIOD = const(0x40000000)
MAX_BODY_BYTES = const(1024)  # one encoded message, in either framing

# Requests, host -> node. Each gets exactly one reply: its success reply (below) or ERROR.
HELLO = const(1)
PING = const(2)
SET = const(3)
MOVE = const(4)
SEGMENT = const(5)
STOP = const(6)
CLEAR = const(7)
CONFIG_GET = const(8)
CONFIG_SET = const(9)
TELEMETRY = const(10)
REBOOT = const(11)
DISCOVER = const(12)

# Notices, host -> node, never answered.
KEEPALIVE = const(16)  # the host is there: feeds the link-loss failsafe; over UDP only BOUND

# Replies, node -> host; `seq` echoes the request's.
ACK = const(32)
ERROR = const(33)
INFO = const(34)
PONG = const(35)
CONFIG = const(36)

# Events, node -> host, unsolicited; `seq` counts the node's events of that kind so the host
# can see what it missed.
STATE = const(48)
LOG = const(49)

# STOP modes
STOP_HOLD = const(0)
STOP_RELEASE = const(1)

# SEGMENT easing
EASE_LINEAR = const(0)
EASE_IN_OUT = const(1)

# TELEMETRY links
LINK_REQUESTER = const(0)  # the link the TELEMETRY request came in on
LINK_SERIAL = const(1)
LINK_UDP = const(2)

# LOG levels (as Python's logging levels divided by 10)
LOG_DEBUG = const(1)
LOG_INFO = const(2)
LOG_WARNING = const(3)
LOG_ERROR = const(4)

# Error codes carried by ERROR; 0 is never sent.
E_MALFORMED = const(1)  # body is not a well-formed message
E_UNKNOWN_KIND = const(2)
E_BAD_FIELDS = const(3)  # wrong field count or field type for the kind
E_BAD_CHANNEL = const(4)
E_OUT_OF_LIMITS = const(5)  # a target outside the channel's pulse limits; never clamped
E_STOPPED = const(6)  # motion refused while the latched STOP is set
E_QUEUE_FULL = const(7)
E_UNCONFIGURED = const(8)  # the node booted without a valid config
E_BAD_CONFIG = const(9)
E_LATE = const(10)  # a scheduled start already in the past
E_VERSION = const(11)  # protocol version not supported
E_BUSY = const(12)
E_INTERNAL = const(13)
E_UNBOUND = const(14)  # over UDP, a request that changes state must be BOUND (datagram.py)

# Counters a node reports in every STATE, by reason, in this order (totals since boot).
STATE_COUNTERS = (
    "frames_dropped",  # serial frames with a bad CRC, escape or length, or truncated
    "datagrams_malformed",  # bad magic, header version, flags or size
    "auth_failed",  # unsigned where a key is set, unknown key id, bad tag, too many peers
    "replayed",  # counter replayed or too old
    "bodies_malformed",  # not CBOR, or not a message of the catalogue
    "requests_refused",  # answered with ERROR; or an unbound KEEPALIVE over UDP, dropped
    "requests_repeated",  # answered from the reply cache, not executed again
    "requests_executed",
)

# Numeric LOG codes; args are small integers whose meaning each code gives.
LOG_BOOT = const(1)  # at the first host contact; args: index in RESET_CAUSES, boot count
LOG_CONFIG_INVALID = const(2)  # a CONFIG_SET refused (reason in INFO); args: 1 = secrets over UDP
LOG_LINK_LOST = const(3)  # failsafe started; args: silence in ms
LOG_LINK_RESTORED = const(4)
LOG_STOPPED = const(5)  # args: mode, trace
LOG_CLEARED = const(6)
LOG_LOOP_OVERRUN = const(7)  # a tick came a whole period late; args: lateness in us
LOG_REBOOTING = const(8)  # args: delay in ms
LOG_CONFIG_SAVED = const(9)
LOG_HARDWARE_ERROR = const(10)  # a servo write failed (I2C); once until a tick succeeds
LOG_WIFI = const(11)  # args: 1 joined / 0 lost, connection attempts so far
LOG_MOVE = const(12)  # a MOVE accepted (debug); args: trace, its start in node ticks_us

# CONFIG and CONFIG_SET carry the node config as one map. Its "channels" travel as arrays of
# these fields, in this order, with failsafe as an index into FAILSAFES: a 16-channel config
# then fits one body (as maps it would not).
CONFIG_CHANNEL_FIELDS = (
    "pin",
    "min_us",
    "max_us",
    "home_us",
    "speed_us_per_s",
    "accel_us_per_s2",
    "failsafe",
)
FAILSAFES = ("hold", "home", "release")

# Reset causes as INFO reports them (and LOG_BOOT's first arg).
RESET_CAUSES = ("power_on", "soft", "watchdog", "hard", "deep_sleep", "unknown")

# Field layouts, after [kind, seq]: per kind, how many required fields, optional trailing
# fields and fields in a repeated group it has (their names are in catalogue.py, which a node
# never loads: every name a board imports costs heap). An optional field that is absent reads
# as 0; a repeated group follows the fixed fields zero or more times.
# Zero means "none" or "default" wherever a field allows it: trace 0 is no trace,
# speed_us_per_s 0 the channel's configured speed, duration_ms 0 "as fast as the limits allow",
# period_ms 0 telemetry off, start_ticks_us 0 "at once" (a host that means tick 0 sends 1).
# Requests number their seq from 1: seq 0 is reserved for the ERROR that answers a request
# whose seq could not be read. Events number theirs from 0, one count per kind.
# `MAX_FIELDS` bounds a whole message; a node keeps a values buffer of that size.
MAX_FIELDS = const(96)

# SHAPES[3 * kind] is 1 + the required count (0: no such kind), then the optional count and
# the group width. Filled once at import; the loop's code is freed with the module's.
SHAPES = bytearray(3 * (LOG + 1))
for _kind, _required, _optional, _group in (
    (HELLO, 1, 0, 0),
    (PING, 0, 0, 0),
    (SET, 3, 2, 0),
    (MOVE, 3, 0, 2),
    (SEGMENT, 4, 0, 2),
    (STOP, 1, 1, 0),
    (CLEAR, 0, 1, 0),
    (CONFIG_GET, 0, 0, 0),
    (CONFIG_SET, 1, 0, 0),
    (TELEMETRY, 1, 1, 0),
    (REBOOT, 1, 0, 0),
    (DISCOVER, 0, 0, 0),
    (KEEPALIVE, 0, 0, 0),
    (ACK, 0, 1, 0),
    (ERROR, 1, 1, 0),
    (INFO, 1, 0, 0),
    (PONG, 1, 0, 0),
    (CONFIG, 1, 0, 0),
    (STATE, 14, 0, 5),
    (LOG, 2, 0, 1),
):
    SHAPES[3 * _kind] = 1 + _required
    SHAPES[3 * _kind + 1] = _optional
    SHAPES[3 * _kind + 2] = _group
del _kind, _required, _optional, _group


def known(kind):
    """Whether `kind` (any value) is a kind of the catalogue."""
    return type(kind) is int and 0 <= kind <= LOG and SHAPES[3 * kind] != 0


# STATE: setpoint_us is what the motion engine commands now, position_us what the hardware
# reports (the simulation's modelled position; a board's last written pulse; 0 when released),
# target_us where the current motion ends.
# STATE flags (node) and channel_flags (per channel)
STATE_STOPPED = const(1)
STATE_FAILSAFE = const(2)  # link lost: channels are doing their failsafe
STATE_UNCONFIGURED = const(4)
CHANNEL_MOVING = const(1)
CHANNEL_RELEASED = const(2)
CHANNEL_QUEUED = const(4)  # segments are waiting


# Requests that change nothing: the only ones a node takes over UDP without BOUND (a host
# learns the boot id to bind to from their INFO).
READ_ONLY_KINDS = (HELLO, PING, CONFIG_GET, DISCOVER)

MAP_KINDS = (CONFIG_SET, INFO, CONFIG)  # their one field (after seq) is a map


def check(values, count):
    """Return 0 if `values[:count]`, a decoded `[kind, seq, ...]`, fits the catalogue, else the
    error code to answer with. Value ranges (channels, pulse limits) are the receiver's to check.
    """
    if count < 2 or count > MAX_FIELDS:
        return E_MALFORMED
    kind = values[0]
    if not known(kind):
        return E_UNKNOWN_KIND
    fields = count - 2
    required = SHAPES[3 * kind] - 1
    group = SHAPES[3 * kind + 2]
    if fields < required:
        return E_BAD_FIELDS
    if group:
        if (fields - required) % group:
            return E_BAD_FIELDS
    elif fields > required + SHAPES[3 * kind + 1]:
        return E_BAD_FIELDS
    map_index = 2 if kind in MAP_KINDS else -1
    for i in range(1, count):
        value = values[i]
        if i == map_index:
            if not isinstance(value, dict):
                return E_BAD_FIELDS
        elif (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < HOT_INT_MIN
            or value > HOT_INT_MAX
        ):
            return E_BAD_FIELDS
    if values[1] < (1 if kind < ACK else 0):  # seq 0 is the reply to an unreadable request
        return E_BAD_FIELDS
    if kind == ERROR and values[2] < 1:  # error codes start at 1
        return E_BAD_FIELDS
    return 0
