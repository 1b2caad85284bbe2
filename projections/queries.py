"""The reads the API needs from the projections: run history, one run, its steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from events.codec import decode
from events.log import Record
from projections.rows import LOG_TABLE, RUNS_TABLE, STEPS_TABLE, RunRow, StepRow, from_db

MAX_LIMIT = 100_000
_SEARCHED = ("run_id", "flow", "repository", "focus", "request_text", "error", "band")


def list_runs(
    con: Any,
    *,
    flow: str | Sequence[str] | None = None,
    status: str | Sequence[str] | None = None,
    repo: str | Sequence[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    text: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[RunRow]:
    """Runs, newest first, filtered by flow, status, repository, creation time and free text.

    ``flow``, ``status`` and ``repo`` take one value or several (any of them matches);
    ``since``/``until`` bound the creation time (seconds since the epoch, ``until`` excluded);
    ``text`` matches, ignoring case, anywhere in the run id, flow, repository, focus, request
    text, error or band.
    """
    if not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 0 and {MAX_LIMIT}")
    if offset < 0:
        raise ValueError("offset must not be negative")
    where, params = [], []
    for column, value in (("flow", flow), ("status", status), ("repository", repo)):
        if value is None:
            continue
        if isinstance(value, str):
            where.append(f"{column} = ?")
            params.append(value)
        elif value:
            where.append(f"list_contains(?::VARCHAR[], {column})")
            params.append(list(value))
        else:
            where.append("FALSE")  # none of no values
    if since is not None:
        where.append("created_ts >= ?")
        params.append(since)
    if until is not None:
        where.append("created_ts < ?")
        params.append(until)
    if text:
        haystack = " || ' ' || ".join(_SEARCHED)
        where.append(f"contains(lower({haystack}), lower(?))")
        params.append(text)
    sql = f"SELECT * FROM {RUNS_TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_ts DESC NULLS LAST, run_id LIMIT ? OFFSET ?"
    rows = con.execute(sql, [*params, limit, offset]).fetchall()
    return [from_db(RunRow, r) for r in rows]


def get_run(con: Any, run_id: str) -> RunRow | None:
    """One run's row, or None if the log has no event of it."""
    row = con.execute(f"SELECT * FROM {RUNS_TABLE} WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None else from_db(RunRow, row)


def get_steps(con: Any, run_id: str) -> list[StepRow]:
    """A run's steps in plan order (steps the plan did not name come last, by id)."""
    rows = con.execute(
        f"SELECT * FROM {STEPS_TABLE} WHERE run_id = ? "
        "ORDER BY position < 0, position, step_id",
        [run_id],
    ).fetchall()
    return [from_db(StepRow, r) for r in rows]


def run_records(con: Any, run_id: str, after: int = 0) -> list[Record]:
    """One run's committed records after ``after``, in ``seq`` order."""
    rows = con.execute(
        f"SELECT seq, body FROM {LOG_TABLE} WHERE run_id = ? AND seq > ? ORDER BY seq",
        [run_id, after],
    ).fetchall()
    return [Record(seq, decode(body)) for seq, body in rows]
