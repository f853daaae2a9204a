"""The host's operation log: SQLite in a data folder, one writer thread, keyset paging."""

import asyncio
import dataclasses
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from servomesh.host.oplog import (
    DB_NAME,
    MAX_QUERY_LIMIT,
    SCHEMA_VERSION,
    Operation,
    OperationLog,
    OperationLogClosedError,
    OperationLogError,
    OperationLogFullError,
    OperationLogTimeoutError,
)

pytestmark = pytest.mark.timeout(60)

NOW = 1_700_000_000.0


class Clock:
    """A settable stand-in for time.time, so retention never waits on real time."""

    def __init__(self, now_s: float = NOW) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def make_op(i: int, **changes: Any) -> Operation:
    fields: dict[str, Any] = {
        "time_s": NOW - 1000 + i,
        "source": "api",
        "action": "move",
        "joints": {"elbow": float(i)},
        "trace_id": i,
        "result": "ok",
        "latency_ms": 1.5,
    }
    fields.update(changes)
    return Operation(**fields)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """For the writer's own timers (idle pruning, a failed batch), which no call exposes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached within %s s" % timeout_s
        time.sleep(0.005)


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection: the log's writer cannot commit."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()


@pytest.fixture
def oplog(tmp_path: Path) -> Iterator[OperationLog]:
    with OperationLog(tmp_path / "data", clock=Clock()) as log:
        yield log


def ids(ops: list[Operation]) -> list[int]:
    return [op.id for op in ops if op.id is not None]


# -- round trip and persistence -----------------------------------------------------------------


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    data = tmp_path / "nested" / "data"
    sent = [
        make_op(0, joints={"elbow": 45.25, "wrist": -12.5, "base": 0.0}, detail="", trace_id=7),
        make_op(1, action="stop", joints={}, result="stopped", detail="latched", latency_ms=0.0),
        make_op(2, source="cli", result="timeout", detail="node arm-1 silent", trace_id=1 << 40),
    ]
    with OperationLog(data, clock=Clock()) as log:
        for op in sent:
            log.append(op)
        log.flush()
        got = log.query()
    assert got == [dataclasses.replace(op, id=i + 1) for i, op in reversed(list(enumerate(sent)))]
    assert isinstance(got[0].time_s, float)
    db = sqlite3.connect(data / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_append_snapshots_the_joints(oplog: OperationLog) -> None:
    joints = {"elbow": 10.0}
    oplog.append(make_op(0, joints=joints))
    joints["elbow"] = 99.0
    joints["wrist"] = 1.0
    oplog.flush()
    assert oplog.query()[0].joints == {"elbow": 10.0}


def test_an_id_given_to_append_is_ignored(oplog: OperationLog) -> None:
    oplog.append(make_op(0, id=500))
    oplog.flush()
    assert ids(oplog.query()) == [1]


def test_reopening_the_folder_keeps_rows_and_ids(tmp_path: Path) -> None:
    with OperationLog(tmp_path, clock=Clock()) as log:
        for i in range(3):
            log.append(make_op(i))
    with OperationLog(tmp_path, clock=Clock()) as log:
        assert [op.trace_id for op in log.query()] == [2, 1, 0]
        log.append(make_op(3))
        log.flush()
        assert ids(log.query()) == [4, 3, 2, 1]


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    log = OperationLog(tmp_path, clock=Clock())
    for i in range(1000):
        log.append(make_op(i))
    log.close()
    with OperationLog(tmp_path, clock=Clock()) as log:
        assert log.count() == 1000


# -- queries ------------------------------------------------------------------------------------


@pytest.fixture
def mixed(oplog: OperationLog) -> OperationLog:
    ops = [
        make_op(0, joints={"elbow": 1.0, "wrist": 2.0}),
        make_op(1, joints={"wrist": 3.0}, result="timeout", source="cli"),
        make_op(2, joints={}, action="stop", result="stopped", source="python"),
        make_op(3, joints={"elbow": 4.0}, result="out_of_limits"),
        make_op(4, joints={"base": 5.0}, action="pose", source="sequence"),
        make_op(5, joints={"elbow": 6.0, "base": 7.0}, result="timeout"),
    ]
    for op in ops:
        oplog.append(op)
    oplog.flush()
    return oplog


@pytest.mark.parametrize(
    ("filters", "expected_traces"),
    [
        ({}, [5, 4, 3, 2, 1, 0]),
        ({"joint": "elbow"}, [5, 3, 0]),
        ({"joint": "wrist"}, [1, 0]),
        ({"joint": "shoulder"}, []),
        ({"result": "timeout"}, [5, 1]),
        ({"result": "ok"}, [4, 0]),
        ({"source": "cli"}, [1]),
        ({"action": "stop"}, [2]),
        ({"action": "move", "result": "timeout", "joint": "base"}, [5]),
        # since_s is inclusive, until_s exclusive: [NOW-999, NOW-997) holds ops 1 and 2.
        ({"since_s": NOW - 999, "until_s": NOW - 997}, [2, 1]),
        ({"since_s": NOW - 997}, [5, 4, 3]),
        ({"until_s": NOW - 999}, [0]),
        ({"since_s": NOW - 998, "until_s": NOW - 998}, []),
        ({"joint": "elbow", "since_s": NOW - 999}, [5, 3]),
        ({"before_id": 4}, [2, 1, 0]),
        ({"joint": "elbow", "before_id": 5}, [3, 0]),
    ],
)
def test_filters(mixed: OperationLog, filters: dict[str, Any], expected_traces: list[int]) -> None:
    got = mixed.query(**filters)
    assert [op.trace_id for op in got] == expected_traces
    assert mixed.count(**filters) == len(expected_traces)


def test_a_joint_filter_returns_every_joint_of_the_operation(mixed: OperationLog) -> None:
    assert mixed.query(joint="base", limit=1)[0].joints == {"elbow": 6.0, "base": 7.0}


def test_by_joint_walks_the_joint_index_without_sorting(mixed: OperationLog) -> None:
    joins, where, params, key = mixed._filters(None, None, "elbow", None, None, None, 9)
    sql = "SELECT o.id FROM operations AS o%s%s ORDER BY %s DESC" % (joins, where, key)  # noqa: S608
    with closing(sqlite3.connect(mixed.path)) as db:
        plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "operation_joints_joint" in plan
    assert "TEMP B-TREE" not in plan


@pytest.mark.parametrize(
    "bad",
    [
        {"limit": 0},
        {"limit": -1},
        {"limit": 1.5},
        {"limit": True},
        {"before_id": 0},
        {"before_id": -3},
        {"before_id": "5"},
        {"since_s": math.nan},
        {"until_s": math.inf},
        {"since_s": "yesterday"},
        {"since_s": NOW, "until_s": NOW - 1},
        {"joint": ""},
        {"result": 5},
        {"source": ""},
        {"action": None, "joint": 3},
    ],
)
def test_bad_query_arguments_are_value_errors(oplog: OperationLog, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|before"):
        oplog.query(**bad)


def test_limit_is_capped(oplog: OperationLog) -> None:
    for i in range(MAX_QUERY_LIMIT + 1):
        oplog.append(make_op(i))
    oplog.flush()
    assert len(oplog.query()) == 100
    assert len(oplog.query(limit=1)) == 1
    assert len(oplog.query(limit=MAX_QUERY_LIMIT)) == MAX_QUERY_LIMIT
    newest = oplog.query(limit=MAX_QUERY_LIMIT + 1)
    assert ids(newest) == list(range(MAX_QUERY_LIMIT + 1, 1, -1))


@pytest.mark.parametrize("joint", [None, "elbow"])
def test_paging_returns_every_row_once_while_rows_are_appended(
    oplog: OperationLog, joint: str | None
) -> None:
    for i in range(300):
        oplog.append(make_op(i, joints={"elbow": 1.0} if i % 3 else {"wrist": 1.0}))
    oplog.flush()
    stop = threading.Event()

    def keep_appending() -> None:
        i = 1000
        while not stop.is_set():
            oplog.append(make_op(i, joints={"elbow": 2.0}))
            i += 1
            if i % 10 == 0:
                oplog.flush()

    appender = threading.Thread(target=keep_appending)
    appender.start()
    try:
        pages = [oplog.query(joint=joint, limit=7)]
        while pages[-1]:
            pages.append(oplog.query(joint=joint, limit=7, before_id=pages[-1][-1].id))
    finally:
        stop.set()
        appender.join()
    seen = [op.id for page in pages for op in page]
    top = seen[0]
    assert top is not None
    expected = [
        op_id
        for op_id in range(top, 0, -1)
        # ids 1..300 are the first rows; the appender's rows all name elbow
        if joint is None or op_id > 300 or (op_id - 1) % 3
    ]
    assert seen == expected
    assert all(len(page) == 7 for page in pages[:-2])


# -- retention ----------------------------------------------------------------------------------


def test_retention_keeps_the_newest_max_rows(tmp_path: Path) -> None:
    with OperationLog(tmp_path, max_rows=50, clock=Clock()) as log:
        for i in range(50):
            log.append(make_op(i))
        log.flush()
        assert log.count() == 50  # at the bound: nothing pruned
        log.append(make_op(50))
        log.flush()
        assert ids(log.query(limit=1000)) == list(range(51, 1, -1))
        for i in range(51, 120):
            log.append(make_op(i))
            if i % 16 == 0:
                log.flush()
        log.flush()
        assert ids(log.query(limit=1000)) == list(range(120, 70, -1))
        assert log.count(joint="elbow") == 50  # the joints of pruned rows went with them


def test_retention_drops_rows_older_than_max_age(tmp_path: Path) -> None:
    clock = Clock()
    with OperationLog(tmp_path, max_age_s=100, clock=clock) as log:
        log.append(make_op(0, time_s=NOW - 101))
        log.append(make_op(1, time_s=NOW - 100))  # exactly max_age_s old: kept
        log.append(make_op(2, time_s=NOW))
        log.flush()
        assert [op.trace_id for op in log.query()] == [2, 1]
        assert log.count(joint="elbow") == 2
        clock.now_s += 50
        log.append(make_op(3, time_s=clock.now_s))
        log.flush()
        assert [op.trace_id for op in log.query()] == [3, 2]


def test_an_idle_writer_prunes_now_and_then(tmp_path: Path) -> None:
    class QuickPrune(OperationLog):
        prune_interval_s = 0.01

    clock = Clock()
    with QuickPrune(tmp_path, max_age_s=100, clock=clock) as log:
        log.append(make_op(0, time_s=NOW))
        log.flush()
        assert log.count() == 1
        clock.now_s += 101
        wait_until(lambda: log.count() == 0)


# -- threads, the event loop, closing ---------------------------------------------------------


def test_appends_from_several_threads(oplog: OperationLog) -> None:
    threads_n, each_n = 8, 500
    start = threading.Barrier(threads_n)

    def append_some(t: int) -> None:
        start.wait()
        for i in range(each_n):
            oplog.append(make_op(t * each_n + i))

    threads = [threading.Thread(target=append_some, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    oplog.flush()
    got = oplog.query(limit=MAX_QUERY_LIMIT)
    assert oplog.count() == threads_n * each_n
    assert ids(got) == list(range(threads_n * each_n, threads_n * each_n - 1000, -1))
    traces: set[int] = set()
    before = None
    while page := oplog.query(limit=MAX_QUERY_LIMIT, before_id=before):
        traces.update(op.trace_id for op in page)
        before = page[-1].id
    assert traces == set(range(threads_n * each_n))


def test_append_in_the_event_loop_never_waits_for_the_disk(tmp_path: Path) -> None:
    class Patient(OperationLog):
        busy_timeout_s = 30.0  # a write on the caller's thread would block this long

    count = 1000

    async def append_many(log: OperationLog) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(count):
            log.append(make_op(i))
        return loop.time() - started

    with Patient(tmp_path, clock=Clock()) as log:
        with write_locked(log.path):
            elapsed_s = asyncio.run(append_many(log))
            assert log.count() == 0  # nothing could be written, yet every append returned
        log.flush(timeout_s=30)
        assert log.count() == count
    assert elapsed_s < Patient.busy_timeout_s / 10


def test_close_is_idempotent_and_closes_everything(tmp_path: Path) -> None:
    log = OperationLog(tmp_path, clock=Clock())
    log.append(make_op(0))
    log.close()
    log.close()
    log.flush()  # nothing left to wait for
    with pytest.raises(OperationLogClosedError, match="closed"):
        log.append(make_op(1))
    with pytest.raises(OperationLogClosedError):
        log.query()
    with pytest.raises(OperationLogClosedError):
        log.count()
    with OperationLog(tmp_path, clock=Clock()) as log:
        pass
    with pytest.raises(OperationLogClosedError):
        log.append(make_op(2))


# -- errors -------------------------------------------------------------------------------------


def test_a_newer_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    OperationLog(tmp_path).close()
    with closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        db.execute("PRAGMA user_version=%d" % (SCHEMA_VERSION + 1))
    with pytest.raises(OperationLogError, match=r"schema version 2; .* reads version 1.*newer"):
        OperationLog(tmp_path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"servo positions, definitely not SQLite\n" * 100)
    with pytest.raises(OperationLogError, match=r"cannot open .*oplog\.sqlite3"):
        OperationLog(tmp_path)


def test_a_data_folder_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(OperationLogError, match="data folder"):
        OperationLog(tmp_path / "data")


@pytest.mark.parametrize(
    "bad",
    [
        {"max_rows": 0},
        {"max_rows": 1.5},
        {"max_age_s": 0},
        {"max_age_s": -1},
        {"max_age_s": math.nan},
    ],
)
def test_bad_limits_are_value_errors(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_"):
        OperationLog(tmp_path, **bad)
    assert not (tmp_path / DB_NAME).exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"time_s": math.nan},
        {"time_s": "now"},
        {"latency_ms": math.inf},
        {"latency_ms": None},
        {"source": ""},
        {"action": 3},
        {"result": ""},
        {"detail": None},
        {"trace_id": True},
        {"trace_id": 1.0},
        {"trace_id": 1 << 63},
        {"joints": [("elbow", 1.0)]},
        {"joints": {"": 1.0}},
        {"joints": {"elbow": math.nan}},
        {"joints": {"elbow": "45"}},
    ],
)
def test_bad_operations_are_value_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|64 bits"):
        make_op(0, **bad)


def test_a_write_failure_is_raised_once_from_flush(tmp_path: Path) -> None:
    class Impatient(OperationLog):
        busy_timeout_s = 0.05

    with Impatient(tmp_path, clock=Clock()) as log:
        with write_locked(log.path):
            for i in range(3):
                log.append(make_op(i))
            with pytest.raises(OperationLogError, match=r"3 operation\(s\) could not be written"):
                log.flush()
        assert log.lost_records == 3
        log.flush()  # reported once; the writer carries on
        log.append(make_op(3))
        log.flush()
        assert [op.trace_id for op in log.query()] == [3]


def test_a_write_failure_is_raised_from_the_next_append(tmp_path: Path) -> None:
    class Impatient(OperationLog):
        busy_timeout_s = 0.05

    with Impatient(tmp_path, clock=Clock()) as log:
        with write_locked(log.path):
            log.append(make_op(0))
            wait_until(lambda: log.lost_records == 1)
        with pytest.raises(OperationLogError, match="locked") as caught:
            log.append(make_op(1))  # refused: the caller hears of the loss
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        log.append(make_op(2))
        log.flush()
        assert [op.trace_id for op in log.query()] == [2]


def test_a_full_queue_refuses_appends(tmp_path: Path) -> None:
    class Small(OperationLog):
        max_pending_records = 5
        batch_max_records = 1
        busy_timeout_s = 30.0

    with Small(tmp_path, clock=Clock()) as log:
        accepted: list[int] = []

        def fill() -> None:
            for i in range(100):
                log.append(make_op(i))
                accepted.append(i)

        with write_locked(log.path):
            with pytest.raises(OperationLogFullError, match="5 operations already wait"):
                fill()
            # The queue holds 5; the writer may hold one more, stuck on the lock.
            assert Small.max_pending_records <= len(accepted) <= Small.max_pending_records + 1
        log.flush(timeout_s=30)
        assert log.count() == len(accepted)
        assert log.lost_records == 0
        log.append(make_op(100))  # room again


def test_flush_and_close_time_out_when_the_disk_stalls(tmp_path: Path) -> None:
    class Patient(OperationLog):
        busy_timeout_s = 30.0

    log = Patient(tmp_path, clock=Clock())
    with write_locked(log.path):
        log.append(make_op(0))
        with pytest.raises(OperationLogTimeoutError, match=r"1 operation\(s\) still unwritten"):
            log.flush(timeout_s=0.05)
        with pytest.raises(TimeoutError, match="did not finish"):
            log.close(timeout_s=0.05)
        log.close()  # already closing: returns at once
    # The writer finishes in the background once the lock is gone.
    with OperationLog(tmp_path, clock=Clock()) as later:
        wait_until(lambda: later.count() == 1, timeout_s=30)


def test_a_crashed_writer_is_reported_and_refuses_further_appends(tmp_path: Path) -> None:
    class Crash(BaseException):
        pass

    class Crashing(OperationLog):
        def _write_batch(self, db: sqlite3.Connection, batch: list[Any]) -> None:
            raise Crash("simulated")

    with Crashing(tmp_path, clock=Clock()) as log:
        log.append(make_op(0))
        with pytest.raises(OperationLogError, match=r"1 operation\(s\) could not be written"):
            log.flush()
        with pytest.raises(OperationLogError, match="writer has stopped"):
            log.append(make_op(1))
        log.flush()  # nothing queued, nothing more to report


def test_a_read_failure_is_an_operation_log_error(oplog: OperationLog) -> None:
    oplog.path.unlink()
    with pytest.raises(OperationLogError, match="reading failed"):
        oplog.query()
