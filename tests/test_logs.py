"""Host logs: the node's name in every record, node LOG records with their trace, JSON lines."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from servomesh.host import fleet_config, logs
from servomesh.protocol import messages


@pytest.fixture
def records() -> "list[logging.LogRecord]":
    caught: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record)

    logger = logging.getLogger("servomesh.test_logs")
    handler = Catch()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield caught
    logger.removeHandler(handler)


def test_a_node_logger_names_the_node_in_text_and_record(
    records: "list[logging.LogRecord]",
) -> None:
    log = logs.NodeLog(logging.getLogger("servomesh.test_logs"), "elbow-board")
    log.warning("offline: %s", "3 heartbeats unanswered")
    assert records[0].getMessage() == "elbow-board: offline: 3 heartbeats unanswered"
    assert records[0].__dict__["node"] == "elbow-board"


def test_node_log_records_keep_level_code_args_and_trace(
    records: "list[logging.LogRecord]",
) -> None:
    log = logs.NodeLog(logging.getLogger("servomesh.test_logs"), "head")
    logs.node_log(log, messages.LOG_WARNING, messages.LOG_STOPPED, (messages.STOP_HOLD, 77))
    logs.node_log(log, messages.LOG_DEBUG, messages.LOG_MOVE, (78, 123456))
    logs.node_log(log, messages.LOG_INFO, 200, ())  # a code this host does not know yet
    stopped, moved, unknown = records
    assert stopped.levelno == logging.WARNING
    assert stopped.getMessage() == "head: node log stopped [0, 77]"
    assert (stopped.__dict__["log_code"], stopped.__dict__["trace"]) == ("stopped", 77)
    assert (moved.levelno, moved.__dict__["trace"]) == (logging.DEBUG, 78)
    assert unknown.getMessage() == "head: node log code 200"
    assert "trace" not in unknown.__dict__


def test_json_lines_carry_the_node_and_trace() -> None:
    record = logging.LogRecord(
        "servomesh.host.session", logging.WARNING, "f", 1, "m %d", (1,), None
    )
    record.__dict__.update(node="head", trace=77)
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "m 1"
    assert (entry["level"], entry["node"], entry["trace"]) == ("warning", "head", 77)
    assert entry["time"].endswith("Z")


def test_the_cli_logs_json_lines_with_the_node_name(tmp_path: Path) -> None:
    # A node nobody answers for: the warning that it is not ready names it, as JSON.
    config = tmp_path / "one.toml"
    config.write_text(fleet_config.sim_fleet_toml(["udp://127.0.0.1:9"], channels=1))
    result = subprocess.run(
        [sys.executable, "-m", "servomesh.host.cli", "--log-json", "nodes", "--config", config],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(e.get("node") == "sim-1" and e["level"] == "warning" for e in entries), entries
