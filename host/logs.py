"""Host logging: every record about a node names it, as text or as one JSON object per line.

    servomesh --log-json nodes --config arm.toml

A node's own LOG records come through `node_log`, with their level, code name, args and (for
codes that carry one) the trace id of the command that caused them, so a command can be
followed from the operation log into the node's records.
"""

import json
import logging
import sys
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

from servomesh.protocol import catalogue, messages

# Fields a record may carry beyond the standard ones, copied into JSON output when present.
EXTRA_FIELDS = ("node", "log_code", "log_args", "trace")
# A node's LOG levels are Python's divided by ten.
_NODE_LEVELS = {
    messages.LOG_DEBUG: logging.DEBUG,
    messages.LOG_INFO: logging.INFO,
    messages.LOG_WARNING: logging.WARNING,
    messages.LOG_ERROR: logging.ERROR,
}
# Where a LOG code's args hold the trace id of the command behind the record.
_TRACE_ARG = {messages.LOG_STOPPED: 1, messages.LOG_MOVE: 0}


class NodeLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for one node: its name starts every message and rides in the record."""

    def __init__(self, logger: logging.Logger, node: str) -> None:
        super().__init__(logger, {"node": node})
        self.node = node

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {"node": self.node, **kwargs.get("extra", {})}
        return "%s: %s" % (self.node, msg), kwargs


def node_log(log: NodeLog, level: int, code: int, args: Sequence[Any]) -> None:
    """Log one LOG record a node sent."""
    name = catalogue.LOG_NAMES.get(code, "code %d" % code)
    args = list(args)
    extra: dict[str, Any] = {"log_code": name, "log_args": args}
    trace_at = _TRACE_ARG.get(code)
    if trace_at is not None and trace_at < len(args) and args[trace_at]:
        extra["trace"] = args[trace_at]
    text = "node log %s%s" % (name, " %s" % args if args else "")
    log.log(_NODE_LEVELS.get(level, logging.INFO), text, extra=extra)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the node,
    log_code, log_args and trace when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + ".%03dZ" % record.msecs,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in EXTRA_FIELDS:
            if key in record.__dict__:
                entry[key] = record.__dict__[key]
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(*, json_lines: bool = False, level: int = logging.WARNING, prefix: str = "") -> None:
    """Send log records to stderr, as text (`prefix` first) or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
