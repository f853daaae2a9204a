"""Names for the message catalogue: kinds, their fields, error and log codes.

The numbers and field counts live in messages.py, which a node imports; these names are for
hosts, tools and docs, and a node never loads them (each name costs heap on a board).
tests/test_golden.py checks that the two agree.
"""

from . import messages as M  # noqa: N812

ERROR_NAMES: dict[int, str] = {
    M.E_MALFORMED: "malformed",
    M.E_UNKNOWN_KIND: "unknown_kind",
    M.E_BAD_FIELDS: "bad_fields",
    M.E_BAD_CHANNEL: "bad_channel",
    M.E_OUT_OF_LIMITS: "out_of_limits",
    M.E_STOPPED: "stopped",
    M.E_QUEUE_FULL: "queue_full",
    M.E_UNCONFIGURED: "unconfigured",
    M.E_BAD_CONFIG: "bad_config",
    M.E_LATE: "late",
    M.E_VERSION: "version",
    M.E_BUSY: "busy",
    M.E_INTERNAL: "internal",
    M.E_UNBOUND: "unbound",
}
LOG_NAMES: dict[int, str] = {
    M.LOG_BOOT: "boot",
    M.LOG_CONFIG_INVALID: "config_invalid",
    M.LOG_LINK_LOST: "link_lost",
    M.LOG_LINK_RESTORED: "link_restored",
    M.LOG_STOPPED: "stopped",
    M.LOG_CLEARED: "cleared",
    M.LOG_LOOP_OVERRUN: "loop_overrun",
    M.LOG_REBOOTING: "rebooting",
    M.LOG_CONFIG_SAVED: "config_saved",
    M.LOG_HARDWARE_ERROR: "hardware_error",
    M.LOG_WIFI: "wifi",
    M.LOG_MOVE: "move",
}
KINDS: dict[int, tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    M.HELLO: ("HELLO", ("protocol_version",), (), ()),
    M.PING: ("PING", (), (), ()),
    M.SET: ("SET", ("channel", "pulse_us", "duration_ms"), ("speed_us_per_s", "trace"), ()),
    M.MOVE: ("MOVE", ("duration_ms", "start_ticks_us", "trace"), (), ("channel", "pulse_us")),
    M.SEGMENT: (
        "SEGMENT",
        ("start_ticks_us", "duration_ms", "easing", "trace"),
        (),
        ("channel", "pulse_us"),
    ),
    M.STOP: ("STOP", ("mode",), ("trace",), ()),
    M.CLEAR: ("CLEAR", (), ("trace",), ()),
    M.CONFIG_GET: ("CONFIG_GET", (), (), ()),
    M.CONFIG_SET: ("CONFIG_SET", ("config_map",), (), ()),
    M.TELEMETRY: ("TELEMETRY", ("period_ms",), ("link",), ()),
    M.REBOOT: ("REBOOT", ("delay_ms",), (), ()),
    M.DISCOVER: ("DISCOVER", (), (), ()),
    M.KEEPALIVE: ("KEEPALIVE", (), (), ()),
    M.ACK: ("ACK", (), ("result",), ()),
    M.ERROR: ("ERROR", ("code",), ("detail",), ()),
    M.INFO: ("INFO", ("info_map",), (), ()),
    M.PONG: ("PONG", ("node_ticks_us",), (), ()),
    M.CONFIG: ("CONFIG", ("config_map",), (), ()),
    M.STATE: (
        "STATE",
        (
            "node_ticks_us",
            "flags",
            "trace",
            "loop_period_us",
            "loop_late_max_us",
            "free_heap_bytes",
        )
        + M.STATE_COUNTERS,
        (),
        ("channel", "setpoint_us", "position_us", "target_us", "channel_flags"),
    ),
    M.LOG: ("LOG", ("level", "code"), (), ("arg",)),
}
