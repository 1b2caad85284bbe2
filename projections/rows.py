"""The rows of ``flow_runs`` and ``flow_steps``: one frozen Struct each, the single definition.

The tables' DDL and their Arrow schemas are derived from these Structs, so a column is added in
one place. Counts of findings keep the persona's own severity words (``findings_by_severity``
maps each raw severity string to a count): the mapping to report levels belongs to the
conductor, and a projection must not lose what the agent said.

Timestamps are the events' ``ts`` (seconds since the epoch, as floats); NULL until they happen.

Output deltas, the bulk of the log, change no row: a step's streamed text and its token count
while it streams are the events' to tell (the WebSocket, ``GET /api/runs/{id}/events``), and its
usage is counted when it ends. A row therefore moves a handful of times in a step's life, and a
commit of streamed text writes only the log's own table (an UPDATE here costs DuckDB ~1.5 ms of
the one writer's time, several times what inserting the events costs).
"""

from __future__ import annotations

import functools
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import msgspec


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """One run, as its events have left it (a row of ``flow_runs``)."""

    run_id: str
    flow: str = ""
    repository: str = ""
    origin: str = ""
    focus: str = ""
    request_text: str = ""  # the request's free text and symptom, for history search
    band: str = ""
    band_reason: str = ""
    band_source: str = ""
    commit: str = ""
    model: str = ""
    engine: str = ""
    status: str = "requested"  # one of events.types.RUN_STATUSES
    error: str = ""  # why it failed, or the reason it was cancelled
    recommendation: str = ""
    created_ts: float | None = None
    planned_ts: float | None = None
    started_ts: float | None = None  # the first step started
    ended_ts: float | None = None
    resumes: int = 0
    # Sums over the run's steps (kept in step with them by ``fold.tally``).
    steps_total: int = 0
    steps_finished: int = 0
    steps_failed: int = 0
    steps_running: int = 0  # queued or running
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    tools_denied: int = 0
    findings: int = 0
    findings_by_severity: dict[str, int] = {}
    evidence_verified: int = 0
    evidence_unverified: int = 0
    confirmed: int = 0
    partially_refuted: int = 0
    refuted: int = 0
    # What the report kept, from its counts: findings that passed the evidence check and the
    # validator, and claims listed apart as unverified (``findings`` above counts all raised).
    report_findings: int = 0
    report_unverified: int = 0
    last_seq: int = 0  # the last event that changed this row


class StepRow(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a run (a row of ``flow_steps``)."""

    run_id: str
    step_id: str
    position: int = -1  # order in the plan; -1 for a step the plan did not name
    persona: str = ""
    phase: str = ""
    wave: int = 0
    role: str = ""
    status: str = "planned"  # one of events.types.StepStatus
    attempt: int = 0
    pickup: int = 0  # the agent now writing the attempt: 0 its first, n its n-th pickup
    failures: int = 0  # failed attempts so far
    queued_ts: float | None = None  # the latest attempt was queued
    started_ts: float | None = None  # the first attempt started
    ended_ts: float | None = None  # the latest attempt ended (NULL while one is in flight)
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    tools_denied: int = 0
    findings: int = 0
    findings_by_severity: dict[str, int] = {}
    parse_error: str = ""
    # Citations that passed the evidence check (the quote verified at its lines, or moved
    # within its file) and those that did not, from the step's latest check.
    evidence_verified: int = 0
    evidence_unverified: int = 0
    confirmed: int = 0
    partially_refuted: int = 0
    refuted: int = 0
    error: str = ""
    retryable: bool = False
    last_seq: int = 0  # the last event that changed this row


LOG_TABLE = "events"  # the log's own table (events.duckdb_log): seq, run_id, step_id, kind, body
RUNS_TABLE = "flow_runs"
STEPS_TABLE = "flow_steps"
TABLES: dict[str, tuple[type[msgspec.Struct], tuple[str, ...]]] = {
    RUNS_TABLE: (RunRow, ("run_id",)),
    STEPS_TABLE: (StepRow, ("run_id", "step_id")),
}


def columns(row_type: type[msgspec.Struct]) -> tuple[str, ...]:
    return row_type.__struct_fields__


def _sql_type(tp: Any) -> tuple[str, bool]:
    """The DuckDB type of a field annotation, and whether it may be NULL."""
    nullable = False
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        nullable, tp = True, args[0]
    if tp is str:
        return "VARCHAR", nullable
    if tp is bool:
        return "BOOLEAN", nullable
    if tp is int:
        return "BIGINT", nullable
    if tp is float:
        return "DOUBLE", nullable
    if get_origin(tp) is dict and get_args(tp) == (str, int):
        return "MAP(VARCHAR, BIGINT)", nullable
    raise TypeError(f"no column type for {tp!r}")


@functools.cache
def column_types(row_type: type[msgspec.Struct]) -> dict[str, str]:
    """Each column's DuckDB type."""
    hints = get_type_hints(row_type)
    return {name: _sql_type(hints[name])[0] for name in columns(row_type)}


def ddl(table: str) -> str:
    """``CREATE TABLE`` for one projection table, from its row Struct."""
    row_type, key = TABLES[table]
    hints = get_type_hints(row_type)
    cols = []
    for name in columns(row_type):
        sql_type, nullable = _sql_type(hints[name])
        cols.append(f"{name} {sql_type}{'' if nullable else ' NOT NULL'}")
    cols.append(f"PRIMARY KEY ({', '.join(key)})")
    return f"CREATE TABLE {table} (\n  " + ",\n  ".join(cols) + "\n)"


@functools.cache
def arrow_schema(row_type: type[msgspec.Struct]):
    """The Arrow schema matching the table, for bulk writes."""
    import pyarrow as pa

    kinds = {
        "VARCHAR": pa.string(),
        "BOOLEAN": pa.bool_(),
        "BIGINT": pa.int64(),
        "DOUBLE": pa.float64(),
        "MAP(VARCHAR, BIGINT)": pa.map_(pa.string(), pa.int64()),
    }
    hints = get_type_hints(row_type)
    return pa.schema(
        [pa.field(name, kinds[_sql_type(hints[name])[0]]) for name in columns(row_type)]
    )


def from_db(row_type: type[msgspec.Struct], values: tuple) -> Any:
    """A row Struct from a fetched tuple (columns in Struct order)."""
    return row_type(**dict(zip(columns(row_type), values)))
