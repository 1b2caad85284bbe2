"""The projector inside the real DuckDB log: its tables, its tracking row, setup and rebuild,
the query helpers and the analytics views, on DuckDB files."""

from __future__ import annotations

import json

import duckdb
import pytest

from events.codec import encode
from events.duckdb_log import DuckDBLog
from events.log import Record
from events.types import (
    OutputDelta,
    RunFailed,
    RunRequested,
    ToolCalled,
    ToolDenied,
    ToolResult,
    ValidatorVerdict,
    Verdict,
)
from projection_scenarios import interleave, review_run, run_events, sums_disagree, tables
from projections import Projector, analytics, get_run, get_steps, list_runs, rebuild
from projections.analytics import ALL_VIEWS
from projections.projector import TRACKING_TABLE, position, read_log


def append_all(log, events, size=7, prefix="k"):
    for start in range(0, len(events), size):
        chunk = events[start:start + size]
        log.append(chunk, [f"{prefix}{start + i}" for i in range(len(chunk))])


@pytest.fixture
def path(tmp_path):
    return tmp_path / "events.duckdb"


def test_runs_and_steps_as_the_api_reads_them(path):
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, review_run("r1", 1000.0) + review_run(
            "r2", 2000.0, flow="investigate", repo="/src/lib", band="large", fail_second=False))
        with log.reader() as cur:
            run = get_run(cur, "r1")
            steps = get_steps(cur, "r1")
            assert get_run(cur, "nope") is None and get_steps(cur, "nope") == []
    assert (run.status, run.flow, run.band, run.recommendation) == (
        "finished", "code-review", "small", "do not merge")
    assert (run.created_ts, run.started_ts, run.ended_ts) == (1000.0, 1002.0, 1012.0)
    assert (run.steps_total, run.steps_finished, run.steps_failed) == (2, 1, 1)
    assert (run.tokens_in, run.tokens_out) == (100, 20)
    assert run.findings_by_severity == {"CRIT": 1, "WARN": 1}
    assert [(s.step_id, s.status, s.persona) for s in steps] == [
        ("a", "finished", "junior-developer"), ("b", "failed", "risk-analyst")]
    assert steps[1].error == "timed out"
    # The run's last_seq is its last event in the log (that run's run_finished).
    with duckdb.connect(str(path), read_only=True) as con:
        last = con.execute("SELECT max(seq) FROM events WHERE run_id = 'r1'").fetchone()[0]
    assert run.last_seq == last


def test_list_runs_filters_and_pages(path):
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, review_run("r1", 1000.0))
        append_all(log, review_run("r2", 2000.0, flow="investigate", repo="/src/lib"), prefix="b")
        log.append([RunRequested(run_id="r3", ts=3000.0, flow="investigate", repo="/src/lib",
                                 text="Why does LOGIN fail?")], ["c"])
        log.append([RunFailed(run_id="r3", ts=3001.0, error="no such commit")], ["d"])
        log.append([RunRequested(run_id="r4", ts=4000.0, flow="code-review", repo="/src/app")],
                   ["e"])
        with log.reader() as cur:
            ids = lambda **kw: [r.run_id for r in list_runs(cur, **kw)]  # noqa: E731
            assert ids() == ["r4", "r3", "r2", "r1"]  # newest first
            assert ids(flow="investigate") == ["r3", "r2"]
            assert ids(status="failed") == ["r3"]
            assert ids(status=("requested", "failed")) == ["r4", "r3"]
            assert ids(status=()) == []
            assert ids(repo="/src/app") == ["r4", "r1"]
            assert ids(since=2000.0, until=4000.0) == ["r3", "r2"]
            assert ids(text="login") == ["r3"]  # case-insensitive, in the request text
            assert ids(text="no such COMMIT") == ["r3"]  # and in the error
            assert ids(text="%") == []  # no wildcards
            assert ids(limit=2) == ["r4", "r3"] and ids(limit=2, offset=2) == ["r2", "r1"]
            with pytest.raises(ValueError):
                list_runs(cur, limit=-1)
            with pytest.raises(ValueError):
                list_runs(cur, offset=-5)


def test_analytics_views_sum_what_the_runs_did(path):
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, review_run("r1", 1000.0, tokens=(100, 20), severities=("CRIT",)))
        append_all(log, review_run("r2", 2000.0, tokens=(300, 60), severities=("CRIT", "SUGG"),
                                   fail_second=False, band="medium"), prefix="b")
        log.append([ValidatorVerdict(run_id="r2", ts=2010.5, step_id="b", verdicts=(
            Verdict(finding_id="F0", result="confirmed"),
            Verdict(finding_id="F1", result="refuted"),
        ))], ["v"])
        log.append([
            ToolCalled(run_id="r2", ts=2009.0, step_id="b", call_id="c1", tool="read"),
            ToolResult(run_id="r2", ts=2009.1, step_id="b", call_id="c1", tool="read",
                       content="no such file", ok=False),
            ToolCalled(run_id="r2", ts=2009.2, step_id="b", call_id="c2", tool="read"),
            ToolResult(run_id="r2", ts=2009.3, step_id="b", call_id="c2", tool="read",
                       content="x = 1"),
            ToolDenied(run_id="r2", ts=2009.4, step_id="b", call_id="c3", tool="write",
                       reason="not a read tool"),
        ], ["t1", "t2", "t3", "t4", "t5"])
        with log.reader() as cur:
            out = analytics(cur)
            one = analytics(cur, ["analytics_flow"])
            with pytest.raises(KeyError):
                analytics(cur, ["analytics_nope"])
    assert set(out) == set(ALL_VIEWS) and set(one) == {"analytics_flow"}
    json.dumps(out)  # the API serves these as they are

    persona = {r["persona"]: r for r in out["analytics_persona"]}
    jd = persona["junior-developer"]
    assert (jd["steps"], jd["finished"], jd["tokens_in"], jd["tokens_out"]) == (2, 2, 400, 80)
    assert jd["avg_duration_s"] == 4.0  # started at t+2, ended at t+6
    assert jd["findings"] == 3
    risk = persona["risk-analyst"]
    assert (risk["steps"], risk["finished"], risk["failed"]) == (2, 1, 1)

    (flow,) = out["analytics_flow"]
    assert (flow["flow"], flow["runs"], flow["finished"], flow["steps"], flow["failed_steps"]) == (
        "code-review", 2, 2, 4, 1)
    assert flow["avg_duration_s"] == 12.0 and flow["failure_rate"] == 0.0
    assert (flow["findings"], flow["report_findings"]) == (3, 3)
    bands = {r["band"]: r["runs"] for r in out["analytics_band"]}
    assert bands == {"small": 1, "medium": 1}

    findings = {(r["persona"], r["severity"]): (r["findings"], r["runs"])
                for r in out["analytics_findings"]}
    assert findings == {("junior-developer", "CRIT"): (2, 2), ("junior-developer", "SUGG"): (1, 1)}

    (validator,) = out["analytics_validator"]
    assert (validator["confirmed"], validator["refuted"], validator["refuted_rate"]) == (1, 1, 0.5)

    tools = {(r["persona"], r["tool"]): (r["calls"], r["errors"], r["denied"], r["runs"])
             for r in out["analytics_tools"]}
    assert tools == {("risk-analyst", "read"): (2, 1, 0, 1), ("risk-analyst", "write"): (0, 0, 1, 1)}
    kinds = {r["kind"]: r["events"] for r in out["analytics_events"]}
    assert kinds["output_delta"] == 60 and kinds["run_finished"] == 2 and kinds["tool_called"] == 2

    failures = {r["persona"]: r for r in out["analytics_failures"]}
    assert failures["risk-analyst"]["failed_steps"] == 1
    assert failures["risk-analyst"]["step_failure_rate"] == 0.5
    assert failures["junior-developer"]["failed_attempts"] == 0


def test_reapplying_applied_records_changes_nothing(path):
    events = review_run("r1", 1000.0)
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, events)
    con = duckdb.connect(str(path))
    try:
        before = tables(con)
        records = list(read_log(con))
        for projector in (Projector(), Projector()):
            con.execute("BEGIN TRANSACTION")
            projector.apply(con, records[:10])
            projector.apply(con, records)
            con.execute("COMMIT")
        assert tables(con) == before
    finally:
        con.close()


def test_a_rolled_back_batch_is_forgotten_when_its_seqs_are_reused(path):
    # The log rolls a failed batch back and gives the same seqs to the next one: the projector
    # must not keep what it folded from the batch that never committed.
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE events (seq BIGINT, run_id VARCHAR, step_id VARCHAR, kind VARCHAR, "
            "ts DOUBLE, key VARCHAR, body VARCHAR)"
        )
        projector = Projector()
        projector.setup(con)
        seq = [0]

        def write(events, commit=True):
            batch = [Record(seq[0] + i + 1, e) for i, e in enumerate(events)]
            con.execute("BEGIN TRANSACTION")
            for r in batch:
                con.execute("INSERT INTO events (seq, run_id, kind, ts, key, body) "
                            "VALUES (?, ?, 'k', ?, ?, ?)",
                            [r.seq, r.event.run_id, r.event.ts, str(r.seq), encode(r.event).decode()])
            projector.apply(con, batch)
            if commit:
                con.execute("COMMIT")
                seq[0] += len(batch)
            else:
                con.execute("ROLLBACK")
                projector.rollback()  # as the log does after a rollback

        events = review_run("r1", 1000.0)
        write(events[:5])
        write(events[5:20], commit=False)  # never happened
        write([RunRequested(run_id="other", ts=5.0, flow="investigate", repo="/x")] + events[5:9])
        live = tables(con)
        # The third write reused the seqs of the second: its run is there, and r1 is as the
        # first write left it (the deltas that follow change no row).
        assert get_run(con, "other").flow == "investigate"
        assert (get_run(con, "r1").status, get_run(con, "r1").last_seq) == ("running", 4)
        assert sums_disagree(con) == []
        rebuild(con)
        assert tables(con) == live
    finally:
        con.close()


def poisoned(records) -> bool:
    return any(getattr(r.event, "text", None) == "poison" for r in records)


class PoisonedProjector(Projector):
    """Fails a batch holding a delta whose text is 'poison', after folding it."""

    def touches(self, records):
        return super().touches(records) or poisoned(records)

    def apply(self, con, records):
        super().apply(con, records)
        if poisoned(records):
            raise RuntimeError("refused")


def test_a_failed_batch_in_the_real_log_leaves_tables_equal_to_rebuild(path):
    events = review_run("r1", 1000.0)
    with DuckDBLog(path, projector=PoisonedProjector()) as log:
        append_all(log, events[:10])
        with pytest.raises(RuntimeError):
            log.append([OutputDelta(run_id="r1", ts=1003.5, step_id="a", text="poison",
                                    offset=0, tokens=50)], ["poison"])
        append_all(log, events[10:], prefix="after")
        with log.reader() as cur:
            live = tables(cur)
            assert get_run(cur, "r1").status == "finished"
    with duckdb.connect(str(path)) as con:
        rebuild(con)
        assert tables(con) == live


def test_a_number_too_big_for_its_column_is_a_malformed_event_and_writes_nothing(path):
    # msgspec's int has no bound, the projections' BIGINT columns do: DuckDB's own
    # ConversionException came out of the append instead of the log's refusal.
    from events.errors import MalformedEvent
    from events.types import StepFinished

    events = review_run("r1", 1000.0)
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, events)
        before = log.max_seq()
        huge = StepFinished(run_id="r9", ts=1010.0, step_id="s9", output="", tokens_in=2**63)
        with pytest.raises(MalformedEvent, match="a number its column cannot store"):
            log.append([huge], ["huge"])
        with pytest.raises(MalformedEvent, match="the idempotency keys are one string"):
            log.append([huge], "k")  # its one character would have passed for a key
        assert log.max_seq() == before


def test_setup_catches_up_a_log_written_without_the_projector(path):
    events = interleave([review_run("r1", 1000.0), review_run("r2", 1500.0)],
                        lambda lo, hi: lo)
    with DuckDBLog(path) as log:
        append_all(log, events[:20])
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, events[20:], prefix="later")
        with log.reader() as cur:
            live = tables(cur)
            assert {r.run_id for r in list_runs(cur)} == {"r1", "r2"}
    with duckdb.connect(str(path)) as con:
        assert position(con) == con.execute(
            "SELECT max(seq) FROM events WHERE kind <> 'output_delta'"
        ).fetchone()[0]
        rebuild(con)
        assert tables(con) == live


def test_setup_rebuilds_tables_left_by_another_version(path):
    with DuckDBLog(path, projector=Projector()) as log:
        append_all(log, review_run("r1", 1000.0))
        with log.reader() as cur:
            good = tables(cur)
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM flow_steps")
        con.execute("UPDATE flow_runs SET status = 'bogus'")
        con.execute(f"UPDATE {TRACKING_TABLE} SET version = 'an older projector'")
    with DuckDBLog(path, projector=Projector()) as log:
        with log.reader() as cur:
            assert tables(cur) == good


def test_many_runs_through_the_log_keep_sums_and_equal_rebuild(path):
    import random

    rng = random.Random(7)
    runs = [run_events(f"run-{i}", rng.randint, t0=1000.0 * i) for i in range(40)]
    events = interleave(runs, rng.randint)
    # A small memory makes the projector evict and reload runs from its tables.
    with DuckDBLog(path, projector=Projector(cached_runs=3)) as log:
        start = 0
        while start < len(events):
            size = rng.randint(1, 60)
            chunk = events[start:start + size]
            log.append(chunk, [f"k{start + i}" for i in range(len(chunk))])
            start += size
        with log.reader() as cur:
            live = tables(cur)
            assert sums_disagree(cur) == []
    assert len(live["flow_runs"]) == 40
    with duckdb.connect(str(path)) as con:
        result = rebuild(con)
        assert (result.events, result.runs) == (len(events), 40)
        assert tables(con) == live
