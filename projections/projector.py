"""The projector: keeps ``flow_runs`` and ``flow_steps`` in step with the log, in its transaction.

``apply`` folds a committed batch with ``projections.fold.fold`` and writes only the rows the
batch changed, in the log's transaction, so the tables and the log cannot disagree after a
crash. Where the tables stand needs no row of its own: every event other than an output delta
moves its run's ``last_seq``, so the greatest ``last_seq`` of ``flow_runs`` is the last event
that changed a row, and no later event that changes one has been folded (``position``). A
``seq`` already folded is skipped: applying a batch twice changes nothing.

Output deltas change no row (see ``projections.rows``): a batch of nothing else costs no
statement at all. Rows of recently active runs stay in memory between batches, so a batch that
does change rows costs its updates, with no reads. The log is the tables' only writer; the
memory is dropped and reloaded from the tables when the log rolls a batch back
(``rollback``) or the tables are rebuilt.

The tracking row holds the version of the tables (a change of columns or of the fold's meaning
rebuilds them at start-up) and the log's last ``seq`` when they were last rebuilt.

``rebuild`` folds the whole log from ``seq`` 0 into fresh tables with the same fold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgspec
from msgspec.structs import astuple

from events.codec import decode
from events.log import Record
from events.types import TERMINAL_RUN, OutputDelta
from projections.analytics import create_views
from projections.fold import Runs, Steps, fold
from projections.rows import (
    LOG_TABLE,
    RUNS_TABLE,
    STEPS_TABLE,
    TABLES,
    RunRow,
    StepRow,
    column_types,
    columns,
    ddl,
    from_db,
)

TRACKING_TABLE = "projection_tracking"
NAME = "flow"
# Bump when the fold changes meaning without a column changing: setup then rebuilds.
# 2: a step event set aside moves nothing of its run, an attempt an agent opens after its step
# ended is set aside, a moved quote counts as verified evidence, and a run ends once.
FOLD_VERSION = 2
VERSION = f"{FOLD_VERSION}:" + hashlib.sha256(
    "\n".join(ddl(t) for t in TABLES).encode()
).hexdigest()[:16]

_TRACKING_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
  name VARCHAR PRIMARY KEY,
  last_seq BIGINT NOT NULL,
  version VARCHAR NOT NULL
)"""

_READ_CHUNK = 10_000


class Projector:
    """``events.log.Projector`` for ``flow_runs``, ``flow_steps`` and the analytics views."""

    def __init__(self, *, cached_runs: int = 512):
        self._cached_runs = cached_runs
        self._forget(None)

    # --- the Projector protocol --------------------------------------------------------------

    def setup(self, con: Any) -> None:
        """Create the tables and views; rebuild if they are from another version; catch up.

        Runs its own transaction, so call it outside one (the log does, at start-up).
        """
        con.execute(_TRACKING_DDL)
        if not is_current(con):
            rebuild(con)
        else:
            create_views(con)
            self._catch_up(con, position(con))
        self._forget(None)

    def touches(self, records: Sequence[Record]) -> bool:
        """Output deltas change no row (the tables do not track streamed text), and they are
        most batches while agents stream: the log commits those without a transaction of
        its own (~0.4 ms of the writer's CPU less per commit here)."""
        return any(type(r.event) is not OutputDelta for r in records)

    def apply(self, con: Any, records: Sequence[Record]) -> None:
        """Fold a committed batch into the tables, on the caller's transaction.

        A batch that changes no row writes nothing: folding those events again after a
        restart changes nothing either.
        """
        if not records:
            return
        top = max(r.seq for r in records)
        seen = self._seen
        if seen is not None and not self.touches([r for r in records if r.seq > seen]):
            self._seen = max(top, seen)
            return
        if seen is None:  # nothing in memory: start from what the tables hold
            seen = position(con)
        fresh = [r for r in records if r.seq > seen]
        self._seen = max(top, seen)
        self._load(con, {r.event.run_id for r in fresh if type(r.event) is not OutputDelta})
        runs, steps = self._runs, self._steps
        # The rows as the tables hold them now (None: not there yet), taken before a record
        # of the batch first changes them.
        old_runs: dict[str, RunRow | None] = {}
        old_steps: dict[tuple[str, str], StepRow | None] = {}
        for record in fresh:
            run_id = record.event.run_id
            if type(record.event) is OutputDelta:
                continue
            if run_id not in old_runs:
                old_runs[run_id] = runs.get(run_id)
                for step_id, row in steps.get(run_id, {}).items():
                    old_steps[(run_id, step_id)] = row
            for step_id in fold(runs, steps, record) or ():
                old_steps.setdefault((run_id, step_id), None)
        _write_changes(con, RUNS_TABLE, {(r,): (old, runs[r]) for r, old in old_runs.items()})
        _write_changes(
            con,
            STEPS_TABLE,
            {key: (old, steps[key[0]][key[1]]) for key, old in old_steps.items()},
        )
        self._evict()

    def rollback(self) -> None:
        """The log rolled back the transaction of the last ``apply``: forget it all."""
        self._forget(None)

    # --- rebuild -----------------------------------------------------------------------------

    def rebuild(self, con: Any) -> RebuildResult:
        """``projections.rebuild``, and forget what this projector held in memory."""
        try:
            return rebuild(con)
        finally:
            self._forget(None)

    # --- the memory --------------------------------------------------------------------------

    def _forget(self, seen: int | None) -> None:
        self._runs: Runs = {}
        self._steps: Steps = {}
        self._known: set[str] = set()  # run ids whose rows (or absence) are in memory
        self._seen: int | None = seen  # the last seq folded

    def _load(self, con: Any, run_ids: set[str]) -> None:
        missing = sorted(run_ids - self._known)
        if not missing:
            return
        for values in con.execute(
            f"SELECT * FROM {RUNS_TABLE} WHERE run_id IN (SELECT unnest(?))", [missing]
        ).fetchall():
            run = from_db(RunRow, values)
            self._runs[run.run_id] = run
        for values in con.execute(
            f"SELECT * FROM {STEPS_TABLE} WHERE run_id IN (SELECT unnest(?))", [missing]
        ).fetchall():
            step = from_db(StepRow, values)
            self._steps.setdefault(step.run_id, {})[step.step_id] = step
        self._known.update(missing)

    def _evict(self) -> None:
        if len(self._known) <= self._cached_runs:
            return
        done = [r for r, run in self._runs.items() if run.status in TERMINAL_RUN]
        for run_id in done:
            self._known.discard(run_id)
            self._runs.pop(run_id, None)
            self._steps.pop(run_id, None)
        if len(self._known) > self._cached_runs:
            self._forget(self._seen)

    def _catch_up(self, con: Any, position: int) -> None:
        """Fold log records the tables have not seen (a log written without this projector)."""
        if not _has_log(con) or _max_log_seq(con) <= position:
            return
        con.execute("BEGIN TRANSACTION")
        try:
            self._forget(position)
            batch: list[Record] = []
            for record in read_log(con, after=position):
                batch.append(record)
                if len(batch) >= _READ_CHUNK:
                    self.apply(con, batch)
                    batch = []
            self.apply(con, batch)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


class RebuildResult(msgspec.Struct, frozen=True):
    """What a rebuild folded and wrote."""

    events: int
    runs: int
    steps: int
    last_seq: int


def rebuild(con: Any) -> RebuildResult:
    """Drop both tables and fold every event of the log from ``seq`` 0 into fresh ones.

    One transaction: readers see the old tables or the new ones, never a half-built state.
    Call it outside a transaction, with no other writer on the file.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(_TRACKING_DDL)
        for table in TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(ddl(table))
        runs: Runs = {}
        steps: Steps = {}
        events = last = 0
        if _has_log(con):
            for record in read_log(con):
                fold(runs, steps, record)
                events += 1
                last = record.seq
        run_rows = [runs[r] for r in sorted(runs)]
        step_rows = [s[k] for r in sorted(steps) for s in [steps[r]] for k in sorted(s)]
        _upsert(con, RUNS_TABLE, RunRow, run_rows)
        _upsert(con, STEPS_TABLE, StepRow, step_rows)
        con.execute(
            f"INSERT OR REPLACE INTO {TRACKING_TABLE} VALUES (?, ?, ?)", [NAME, last, VERSION]
        )
        create_views(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return RebuildResult(events=events, runs=len(run_rows), steps=len(step_rows), last_seq=last)


def read_log(con: Any, after: int = 0) -> Iterator[Record]:
    """The log's records with ``seq > after``, decoded, in order.

    Read in pages of ``seq``, each fetched whole, so the caller may run statements on ``con``
    between records and memory stays bounded on a long log.
    """
    while True:
        page = con.execute(
            f"SELECT seq, body FROM {LOG_TABLE} WHERE seq > ? ORDER BY seq LIMIT ?",
            [after, _READ_CHUNK],
        ).fetchall()
        for seq, body in page:
            yield Record(seq, decode(body))
        if len(page) < _READ_CHUNK:
            return
        after = page[-1][0]


def _upsert(con: Any, table: str, row_type: type, rows: Iterable[Any]) -> None:
    """Write whole rows: delete those keys, then append (cheaper here than INSERT OR REPLACE)."""
    rows = list(rows)
    if not rows:
        return
    key = TABLES[table][1]
    con.execute(
        f"DELETE FROM {table} USING (SELECT "
        + ", ".join(f"unnest(?::VARCHAR[]) AS {k}" for k in key)
        + ") AS b WHERE "
        + " AND ".join(f"{table}.{k} = b.{k}" for k in key),
        [[getattr(r, k) for r in rows] for k in key],
    )
    appender = con.appender(table)
    appender.append_rows([astuple(r) for r in rows])
    appender.flush()


def _write_changes(con: Any, table: str, rows: dict[tuple[str, ...], tuple[Any, Any]]) -> None:
    """Bring ``table`` from each row's old value to its new one (old None: a new row).

    DuckDB stores columns: rewriting a whole row costs several times an UPDATE of the few
    columns an event moves (measured: ~11 ms against ~3 ms a commit for a run and a step),
    so new rows are inserted and changed ones get the columns that changed, one statement
    for each set of rows whose changed columns are the same.
    """
    row_type, key = TABLES[table]
    fields = [c for c in columns(row_type) if c not in key]
    new_rows = [new for old, new in rows.values() if old is None]
    if new_rows:
        _insert_rows(con, table, row_type, new_rows)
    by_columns: dict[tuple[str, ...], list[Any]] = {}
    for old, new in rows.values():
        if old is not None and old != new:
            changed = tuple(c for c in fields if getattr(old, c) != getattr(new, c))
            by_columns.setdefault(changed, []).append(new)
    sql_types = column_types(row_type)
    for changed, group in by_columns.items():
        if len(group) == 1:  # a point update: half the cost of the join below
            (row,) = group
            con.execute(
                f"UPDATE {table} SET "
                + ", ".join(f"{c} = ?::{sql_types[c]}" for c in changed)
                + " WHERE "
                + " AND ".join(f"{k} = ?" for k in key),
                [*(_param(getattr(row, c)) for c in changed), *(getattr(row, k) for k in key)],
            )
            continue
        names = [*key, *changed]
        source = ", ".join(f"unnest(?::{sql_types[c]}[]) AS {c}" for c in names)
        con.execute(
            f"UPDATE {table} SET "
            + ", ".join(f"{c} = b.{c}" for c in changed)
            + f" FROM (SELECT {source}) AS b WHERE "
            + " AND ".join(f"{table}.{k} = b.{k}" for k in key),
            [[_param(getattr(r, c)) for r in group] for c in names],
        )


def _param(value: Any) -> Any:
    # A Python dict goes to DuckDB as a STRUCT; a MAP is given as its keys and values.
    if isinstance(value, dict):
        return {"key": list(value), "value": list(value.values())}
    return value


def _insert_rows(con: Any, table: str, row_type: type, rows: list[Any]) -> None:
    appender = con.appender(table)
    appender.append_rows([astuple(r) for r in rows])
    appender.flush()


def is_current(con: Any) -> bool:
    """Whether the file's tables are this version's (an older file's are rebuilt when a writer
    next opens it; until then a read-only reader sees the old columns)."""
    try:
        row = con.execute(
            f"SELECT version FROM {TRACKING_TABLE} WHERE name = ?", [NAME]
        ).fetchone()
    except Exception:  # no tracking table: a file no writer of ours has set up
        return False
    return row is not None and row[0] == VERSION and _tables_exist(con)


def _tables_exist(con: Any) -> bool:
    names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return all(t in names for t in TABLES)


def position(con: Any) -> int:
    """The last ``seq`` the tables reflect that changed a row. Every event but an output delta
    moves its run's ``last_seq`` (in the same transaction as the event), so every event up to
    this one is folded, and every later one that changes a row is still to be."""
    return con.execute(f"SELECT coalesce(max(last_seq), 0) FROM {RUNS_TABLE}").fetchone()[0]


def _has_log(con: Any) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [LOG_TABLE]
        ).fetchone()[0]
    )


def _max_log_seq(con: Any) -> int:
    return con.execute(f"SELECT coalesce(max(seq), 0) FROM {LOG_TABLE}").fetchone()[0]
