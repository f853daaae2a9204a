"""Operation log: every command the host sends, kept in SQLite in the data folder.

    with OperationLog(data_dir) as oplog:
        oplog.append(Operation(time_s=t, source="api", action="move", joints={"elbow": 45.0},
                               trace_id=7, result="ok", latency_ms=3.2))
        oplog.query(joint="elbow", result="timeout", limit=50)

`append` only queues the record (safe on the event loop); one writer thread batches records into
transactions and prunes old rows. `query` and `count` read on the caller's thread: from async
code call them through `asyncio.to_thread`. The constructor opens the database (disk I/O): build
the log at start-up, before the event loop's hot path.
"""

import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

__all__ = [
    "DB_NAME",
    "MAX_QUERY_LIMIT",
    "SCHEMA_VERSION",
    "Operation",
    "OperationLog",
    "OperationLogClosedError",
    "OperationLogError",
    "OperationLogFullError",
    "OperationLogTimeoutError",
]

_log = logging.getLogger(__name__)

DB_NAME: Final = "oplog.sqlite3"
SCHEMA_VERSION: Final = 1
MAX_QUERY_LIMIT: Final = 1000
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

_SCHEMA_V1: Final = (
    # AUTOINCREMENT: an id is never reused, even after pruning empties the table, so an id held
    # as a paging cursor keeps meaning the same place in the log.
    "CREATE TABLE operations ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " time_s REAL NOT NULL,"
    " source TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " trace_id INTEGER NOT NULL,"
    " result TEXT NOT NULL,"
    " detail TEXT NOT NULL,"
    " latency_ms REAL NOT NULL)",
    "CREATE INDEX operations_time ON operations (time_s)",
    # Failures are the rows people look for and they are rare: scanning for them would read the
    # whole table. source and action are common values and go without an index.
    "CREATE INDEX operations_result ON operations (result, id)",
    # A row per (operation, joint) rather than a JSON column: "by joint" walks this index in id
    # order and stops after one page; no foreign key, the writer deletes both tables together.
    "CREATE TABLE operation_joints ("
    " op_id INTEGER NOT NULL,"
    " joint TEXT NOT NULL,"
    " target_deg REAL NOT NULL,"
    " PRIMARY KEY (op_id, joint)) WITHOUT ROWID",
    "CREATE INDEX operation_joints_joint ON operation_joints (joint, op_id)",
)

_COLUMNS: Final = "o.id, o.time_s, o.source, o.action, o.trace_id, o.result, o.detail, o.latency_ms"
# One page of operations, then every joint of each: one query however many joints.
_WITH_JOINTS: Final = (
    "SELECT p.*, j.joint, j.target_deg FROM (%s LIMIT ?) AS p"
    " LEFT JOIN operation_joints AS j ON j.op_id = p.id ORDER BY p.id DESC"
)
_INSERT_OPERATION: Final = (
    "INSERT INTO operations (time_s, source, action, trace_id, result, detail, latency_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_JOINT: Final = "INSERT INTO operation_joints (op_id, joint, target_deg) VALUES (?, ?, ?)"

# What the writer thread inserts: the Operation's fields with joints frozen at append time.
_Row = tuple[float, str, str, int, str, str, float, tuple[tuple[str, float], ...]]


class OperationLogError(RuntimeError):
    """The operation log could not open, write or read its database."""


class OperationLogClosedError(OperationLogError):
    """The log is closed."""


class OperationLogFullError(OperationLogError):
    """`max_pending_records` records already wait for the writer; the record was refused."""


class OperationLogTimeoutError(OperationLogError, TimeoutError):
    """The writer did not catch up within the time given to `flush` or `close`."""


def _check_finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("%s must be a finite number, not %r" % (name, value))


def _check_text(name: str, value: object, *, empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty):
        kind = "a string" if empty else "a non-empty string"
        raise ValueError("%s must be %s, not %r" % (name, kind, value))


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One command the host sent; `id` is assigned by the log (None until it is read back)."""

    time_s: float  # unix time the command was issued
    source: str  # "api", "cli", "python", "sequence", ...
    action: str  # "move", "set", "stop", "clear", "pose", "sequence", "reboot", "config"
    joints: dict[str, float]  # joint name -> target degrees; empty for e.g. stop
    trace_id: int
    result: str  # "ok" or an error code name: "timeout", "out_of_limits", "offline", ...
    latency_ms: float
    detail: str = ""
    id: int | None = None

    def __post_init__(self) -> None:
        # Checked here, on the caller's thread: a bad record found by the writer would cost the
        # whole batch it sits in. SQLite would also store NaN as NULL.
        _check_finite("time_s", self.time_s)
        _check_finite("latency_ms", self.latency_ms)
        _check_text("source", self.source)
        _check_text("action", self.action)
        _check_text("result", self.result)
        _check_text("detail", self.detail, empty=True)
        if not isinstance(self.trace_id, int) or isinstance(self.trace_id, bool):
            raise ValueError("trace_id must be an int, not %r" % (self.trace_id,))
        if not _INT64_MIN <= self.trace_id <= _INT64_MAX:
            raise ValueError("trace_id %d does not fit in 64 bits" % self.trace_id)
        if not isinstance(self.joints, dict):
            raise ValueError("joints must be a dict, not %r" % (self.joints,))
        for joint, target_deg in self.joints.items():
            _check_text("joint name", joint)
            _check_finite("target of joint %r" % joint, target_deg)


class OperationLog:
    """Append-only log of operations in `<data_dir>/oplog.sqlite3`, pruned to the newest
    `max_rows` rows and to rows younger than `max_age_s`.

    When more than `max_pending_records` records wait for the writer (the disk stalls),
    `append` raises `OperationLogFullError` and does not queue the record: the caller learns of
    the loss, memory stays bounded and the event loop never blocks. When the writer fails to
    write a batch, the next `append` or `flush` raises `OperationLogError` saying how many
    records were lost and why (that `append` does not queue its record either); the writer
    then carries on with the records after that batch.
    """

    max_pending_records = 10_000
    batch_max_records = 256
    commit_interval_s = 0.05  # at most one commit per interval, unless a batch is full
    prune_interval_s = 60.0  # pruning while idle; after a batch it prunes at once
    busy_timeout_s = 5.0  # how long a connection waits for another process's lock

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        max_rows: int = 100_000,
        max_age_s: float = 30 * 86400,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ValueError("max_rows must be an int of at least 1, not %r" % (max_rows,))
        _check_finite("max_age_s", max_age_s)
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive, not %r" % (max_age_s,))
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        folder = Path(data_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationLogError("cannot create the data folder %s: %s" % (folder, exc)) from exc
        self.path = folder.absolute() / DB_NAME  # absolute: readers open it by URI
        writer_db = self._open_writer_db()

        self._cond = threading.Condition()
        self._pending: deque[_Row] = deque()
        self._appended = 0  # records ever accepted
        self._done = 0  # records written or lost; FIFO, so done >= n means the first n are
        self._in_flight = 0  # records taken by the writer and not yet counted in _done
        self._urgent = 0  # flush calls waiting: the writer commits without waiting to batch
        self._closing = False
        self._stopped = False  # the writer thread has ended
        self._failure: BaseException | None = None  # first failure not yet reported
        self._failed_records = 0  # records lost since the last report
        self.lost_records = 0  # records lost since the log was opened (for monitoring)
        self._thread = threading.Thread(
            target=self._run, args=(writer_db,), name="servomesh-oplog", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the caller's side ------------------------------------------------------------------

    def append(self, op: Operation) -> None:
        """Queue `op` for writing; never touches the disk. Its `id` is ignored."""
        row: _Row = (
            op.time_s,
            op.source,
            op.action,
            op.trace_id,
            op.result,
            op.detail,
            op.latency_ms,
            tuple(op.joints.items()),  # a snapshot: the caller may reuse its dict
        )
        with self._cond:
            if self._closing:
                raise OperationLogClosedError("operation log %s is closed" % self.path)
            self._raise_failure()
            if self._stopped:
                raise OperationLogError("operation log %s: the writer has stopped" % self.path)
            waiting = len(self._pending)
            if waiting >= self.max_pending_records:
                raise OperationLogFullError(
                    "operation log %s: %d operations already wait for the disk; %s (trace %d)"
                    " refused" % (self.path, waiting, op.action, op.trace_id)
                )
            self._pending.append(row)
            self._appended += 1
            # Wake the writer only when it has something new to do: it sleeps while idle and
            # while a batch is filling.
            if waiting == 0 or waiting + 1 >= self.batch_max_records:
                self._cond.notify()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every operation appended so far is written; raise a writer failure."""
        with self._cond:
            if self._closing:
                return  # close() already wrote or reported everything
            target = self._appended
            self._urgent += 1
            self._cond.notify_all()
            try:
                caught_up = self._cond.wait_for(
                    lambda: self._done >= target or self._stopped, timeout_s
                )
            finally:
                self._urgent -= 1
            self._raise_failure()
            if self._done < target:
                if not caught_up:
                    raise OperationLogTimeoutError(
                        "operation log %s: %d operation(s) still unwritten after %.3g s"
                        % (self.path, target - self._done, timeout_s)
                    )
                raise OperationLogError("operation log %s: the writer has stopped" % self.path)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, stop the writer; later calls do nothing."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            if self._thread.is_alive():
                # The daemon thread keeps trying; the process may still exit.
                raise OperationLogTimeoutError(
                    "operation log %s: the writer did not finish within %.3g s,"
                    " %d operation(s) unwritten"
                    % (self.path, timeout_s, self._appended - self._done)
                )
            self._raise_failure()

    def query(
        self,
        *,
        since_s: float | None = None,
        until_s: float | None = None,
        joint: str | None = None,
        result: str | None = None,
        source: str | None = None,
        action: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Operation]:
        """Written operations, newest (highest id) first; `since_s` <= time_s < `until_s`.

        Page with `before_id=<last id of the previous page>`: pages stay stable while rows are
        appended. `limit` is capped at MAX_QUERY_LIMIT.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError("limit must be a positive int, not %r" % (limit,))
        joins, where, params, key = self._filters(
            since_s, until_s, joint, result, source, action, before_id
        )
        params.append(min(limit, MAX_QUERY_LIMIT))
        # S608: only fixed fragments go into the SQL text; every value is a parameter.
        page = "SELECT %s FROM operations AS o%s%s ORDER BY %s DESC" % (  # noqa: S608
            _COLUMNS,
            joins,
            where,
            key,
        )
        sql = _WITH_JOINTS % page
        operations: list[Operation] = []
        current: dict[str, float] | None = None
        last_id = None
        for row in self._read(sql, params):
            if row[0] != last_id:
                last_id = row[0]
                current = {}
                operations.append(
                    Operation(
                        id=row[0],
                        time_s=row[1],
                        source=row[2],
                        action=row[3],
                        trace_id=row[4],
                        result=row[5],
                        detail=row[6],
                        latency_ms=row[7],
                        joints=current,
                    )
                )
            if row[8] is not None and current is not None:
                current[row[8]] = row[9]
        return operations

    def count(
        self,
        *,
        since_s: float | None = None,
        until_s: float | None = None,
        joint: str | None = None,
        result: str | None = None,
        source: str | None = None,
        action: str | None = None,
        before_id: int | None = None,
    ) -> int:
        """How many written operations match; the filters are those of `query`."""
        joins, where, params, _ = self._filters(
            since_s, until_s, joint, result, source, action, before_id
        )
        sql = "SELECT count(*) FROM operations AS o%s%s" % (joins, where)  # noqa: S608 (as in query)
        rows = self._read(sql, params)
        return int(rows[0][0])

    def _filters(
        self,
        since_s: float | None,
        until_s: float | None,
        joint: str | None,
        result: str | None,
        source: str | None,
        action: str | None,
        before_id: int | None,
    ) -> tuple[str, str, list[object], str]:
        """The JOIN and WHERE clauses for a query, their parameters, and the id to order by."""
        joins = ""
        # By joint, order by the joint index's own column: SQLite then walks that index newest
        # first and stops at the limit, where o.id would make it sort every match.
        key = "o.id"
        terms: list[str] = []
        params: list[object] = []
        if joint is not None:
            _check_text("joint", joint)
            joins = " JOIN operation_joints AS f ON f.op_id = o.id AND f.joint = ?"
            key = "f.op_id"
            params.append(joint)
        if since_s is not None:
            _check_finite("since_s", since_s)
            terms.append("o.time_s >= ?")
            params.append(since_s)
        if until_s is not None:
            _check_finite("until_s", until_s)
            if since_s is not None and until_s < since_s:
                raise ValueError("until_s %r is before since_s %r" % (until_s, since_s))
            terms.append("o.time_s < ?")
            params.append(until_s)
        for column, value in (("result", result), ("source", source), ("action", action)):
            if value is not None:
                _check_text(column, value)
                terms.append("o.%s = ?" % column)
                params.append(value)
        if before_id is not None:
            if not isinstance(before_id, int) or isinstance(before_id, bool) or before_id < 1:
                raise ValueError("before_id must be a positive int, not %r" % (before_id,))
            terms.append(key + " < ?")
            params.append(before_id)
        where = " WHERE " + " AND ".join(terms) if terms else ""
        return joins, where, params, key

    def _read(self, sql: str, params: list[object]) -> list[Any]:
        if self._closing:
            raise OperationLogClosedError("operation log %s is closed" % self.path)
        # A connection per call: sqlite connections belong to one thread, and readers come from
        # any thread (a web server's pool); opening one costs far less than a page of rows.
        uri = self.path.as_uri() + "?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s)) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise OperationLogError(
                "operation log %s: reading failed: %s" % (self.path, exc)
            ) from exc

    def _raise_failure(self) -> None:
        """Raise the writer's first unreported failure, once. Call with the lock held."""
        failure = self._failure
        if failure is None:
            return
        lost = self._failed_records
        self._failure = None
        self._failed_records = 0
        if lost:
            text = "%d operation(s) could not be written" % lost
        else:
            text = "pruning old operations failed"
        raise OperationLogError(
            "operation log %s: %s (first error: %s)" % (self.path, text, failure)
        ) from failure

    # -- the writer thread ------------------------------------------------------------------

    def _open_writer_db(self) -> sqlite3.Connection:
        """Open the database, check or create the schema; the writer thread then owns it."""
        try:
            # check_same_thread=False: opened here so that a bad file fails the constructor,
            # then used by the writer thread alone.
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise OperationLogError("cannot open %s: %s" % (self.path, exc)) from exc
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OperationLogError(
                    "%s: the filesystem refuses WAL mode (journal mode %s)" % (self.path, mode)
                )
            # A log survives an application crash in WAL with NORMAL; a power cut may lose the
            # last commits, which is the trade for not waiting on fsync.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")  # two processes creating the schema at once: one wins
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in _SCHEMA_V1:
                        db.execute(statement)
                    db.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
                elif version != SCHEMA_VERSION:
                    raise OperationLogError(
                        "%s has schema version %d; this servomesh reads version %d%s"
                        % (
                            self.path,
                            version,
                            SCHEMA_VERSION,
                            " (written by a newer servomesh?)" if version > SCHEMA_VERSION else "",
                        )
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            db.close()
            raise OperationLogError("cannot open %s: %s" % (self.path, exc)) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _run(self, db: sqlite3.Connection) -> None:
        try:
            self._write_until_closed(db)
        except BaseException as exc:  # the writer must not die unnoticed, whatever happened
            _log.critical("operation log %s: the writer stopped: %r", self.path, exc)
            with self._cond:
                if self._failure is None:
                    self._failure = exc
        finally:
            with self._cond:
                lost = len(self._pending) + self._in_flight
                self._pending.clear()
                self._in_flight = 0
                self._done += lost
                self._failed_records += lost
                self.lost_records += lost
                self._stopped = True
                self._cond.notify_all()
            db.close()

    def _write_until_closed(self, db: sqlite3.Connection) -> None:
        next_commit = 0.0
        next_prune = time.monotonic() + self.prune_interval_s
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    idle_s = next_prune - time.monotonic()
                    if idle_s <= 0:
                        break
                    self._cond.wait(idle_s)
                if not self._pending and self._closing:
                    return
                while (
                    0 < len(self._pending) < self.batch_max_records
                    and not self._closing
                    and not self._urgent
                ):
                    fill_s = next_commit - time.monotonic()
                    if fill_s <= 0:
                        break
                    self._cond.wait(fill_s)
                count = min(len(self._pending), self.batch_max_records)
                batch = [self._pending.popleft() for _ in range(count)]
                self._in_flight = count
            failure = None
            try:
                self._write_batch(db, batch)
            except Exception as exc:  # reported to the caller; the next batch may succeed
                failure = exc
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        _log.debug("operation log %s: rollback failed", self.path, exc_info=True)
            now = time.monotonic()
            next_commit = now + self.commit_interval_s
            next_prune = now + self.prune_interval_s
            with self._cond:
                self._done += len(batch)
                self._in_flight = 0
                if failure is not None:
                    first = self._failure is None
                    _log.log(
                        logging.WARNING if first else logging.DEBUG,
                        "operation log %s: %s failed: %s",
                        self.path,
                        "writing %d operations" % len(batch) if batch else "pruning",
                        failure,
                    )
                    if first:
                        self._failure = failure
                    self._failed_records += len(batch)
                    self.lost_records += len(batch)
                self._cond.notify_all()

    def _write_batch(self, db: sqlite3.Connection, batch: list[_Row]) -> None:
        """Insert `batch` (may be empty) and prune, in one transaction."""
        db.execute("BEGIN")
        for row in batch:
            op_id = db.execute(_INSERT_OPERATION, row[:7]).lastrowid
            if row[7]:
                db.executemany(_INSERT_JOINT, [(op_id, name, deg) for name, deg in row[7]])
        # Row count: ids only grow and pruning removes the oldest, so the newest max_rows
        # rows are an id range: a seek, not a count.
        newest = db.execute("SELECT max(id) FROM operations").fetchone()[0]
        if newest is not None and newest > self.max_rows:
            cutoff = newest - self.max_rows
            db.execute("DELETE FROM operation_joints WHERE op_id <= ?", (cutoff,))
            db.execute("DELETE FROM operations WHERE id <= ?", (cutoff,))
        # Age: a seek on the time index that finds nothing on most batches.
        oldest_s = self._clock() - self.max_age_s
        db.execute(
            "DELETE FROM operation_joints WHERE op_id IN"
            " (SELECT id FROM operations WHERE time_s < ?)",
            (oldest_s,),
        )
        db.execute("DELETE FROM operations WHERE time_s < ?", (oldest_s,))
        db.execute("COMMIT")
