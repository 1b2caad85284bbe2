"""``orchestrator sql`` and ``orchestrator rebuild`` on DuckDB files, and the read-only guard
they share with the server: a refused statement runs nothing and leaves the file as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from api.cli import main
from events.duckdb_log import DuckDBLog
from projection_scenarios import review_run, start_writer, tables
from projections import Projector, ReadOnlyViolation, readonly_query
from projections.sql import QueryTimedOut

WRITER_APPENDS = 40


@pytest.fixture
def logged(data_dir):
    """A data dir whose log holds two runs, cleanly closed (no write-ahead log)."""
    with DuckDBLog(data_dir / "events.duckdb", projector=Projector()) as log:
        events = review_run("r1", 1000.0) + review_run("r2", 2000.0, flow="investigate")
        log.append(events, [f"k{i}" for i in range(len(events))])
    return data_dir


@pytest.fixture(scope="module")
def crashed_template(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crashed")
    proc = start_writer(directory / "events.duckdb", 3, str(WRITER_APPENDS))
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert (directory / "events.duckdb.wal").exists()
    return directory


@pytest.fixture
def crashed(crashed_template, data_dir):
    """A data dir whose writer died before checkpointing: the file plus its write-ahead log."""
    for name in ("events.duckdb", "events.duckdb.wal"):
        shutil.copyfile(crashed_template / name, data_dir / name)
    return data_dir


def fingerprint(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def sql(data_dir, *args) -> int:
    return main(["--data-dir", str(data_dir), "sql", *args])


# --- the guard -----------------------------------------------------------------------------

REFUSED = [
    "INSERT INTO flow_runs (run_id) VALUES ('x')",
    "UPDATE flow_runs SET status = 'failed'",
    "DELETE FROM events",
    "DROP TABLE flow_steps",
    "CREATE TABLE notes AS SELECT 1",
    "ALTER TABLE flow_runs ADD COLUMN x INT",
    "TRUNCATE events",
    "COPY flow_runs TO '{out}/runs.csv'",
    "COPY (SELECT * FROM events) TO '{out}/events.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{out}/export'",
    "ATTACH '{out}/other.duckdb' AS other",
    "DETACH events",
    "INSTALL httpfs",
    "LOAD json",
    "SET threads = 1",
    "PRAGMA enable_profiling",
    "PRAGMA import_database('{out}/export')",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "SELECT 1; DELETE FROM flow_runs",
    "SELECT 1; SELECT 2",
    "EXPLAIN ANALYZE DELETE FROM flow_runs",
    # A comment before EXPLAIN once moved what was checked (the SELECT inside the comment)
    # away from what ran.
    "/*xxxxxSELECT 1 --*/ EXPLAIN ANALYZE CHECKPOINT",
    "/*xxxxxSELECT 1 --*/ EXPLAIN ANALYZE SET threads = 1",
    "/*xxxxxSELECT 1 --*/ EXPLAIN ANALYZE COPY flow_runs TO '{out}/runs.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM checkpoint()",
    "SELECT nextval('s')",
    "WITH x AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM x",
    "SELECT setval('s', 1000)",
    "SELECT setseed(0.5)",
    "SELECT sleep_ms(20000)",
    "SELECT pg_sleep(20)",
    "SELECT write_log('x')",
    "SELECT * FROM \"{out}/e\".csv",
    "",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_a_refused_statement_changes_nothing_in_the_file(crashed, tmp_path, capsys, statement):
    out = tmp_path / "out"
    out.mkdir()
    before = fingerprint(crashed)
    assert sql(crashed, statement.format(out=out)) == 1
    err = capsys.readouterr().err
    assert "refused" in err and err.count("\n") == 1  # one clear line, no traceback
    assert fingerprint(crashed) == before  # the file and its write-ahead log, byte for byte
    assert list(out.iterdir()) == []  # nothing written elsewhere either


def test_reading_queries_pass_the_guard(logged):
    with duckdb.connect(str(logged / "events.duckdb"), read_only=True) as con:
        for query in (
            "SELECT count(*) FROM events",
            "FROM flow_runs ORDER BY run_id",
            "WITH r AS (SELECT * FROM flow_runs) SELECT run_id FROM r",
            "DESCRIBE flow_steps",
            "SUMMARIZE flow_runs",
            "SHOW TABLES",
            "PRAGMA table_info('flow_runs')",
            "EXPLAIN SELECT * FROM flow_steps",
            "-- how the steps are read\n/* a plan */ EXPLAIN ANALYZE SELECT * FROM flow_steps",
            "SELECT * FROM duckdb_tables()",
            "SELECT * FROM range(3)",
            "SELECT * FROM analytics_persona",
        ):
            result = readonly_query(con, query)
            assert result.columns, query
        with pytest.raises(ReadOnlyViolation):
            readonly_query(con, "DELETE FROM flow_runs")
        assert con.execute("SELECT count(*) FROM flow_runs").fetchone()[0] == 2


def hostile_files(directory: Path) -> None:
    """Files a query through the server must not read: one of each kind DuckDB scans."""
    (directory / "secret.csv").write_text("password\nhunter2\n")
    (directory / "secret.ndjson").write_text('{"password": "hunter2"}\n')
    with duckdb.connect(str(directory / "other.duckdb")) as other:
        other.execute("CREATE TABLE t AS SELECT 'hunter2' AS password")
        other.execute(f"COPY t TO '{directory}/secret.parquet' (FORMAT parquet)")


FILE_READS = [
    'SELECT * FROM "{d}/secret".csv',
    'SELECT * FROM "{d}/*".csv',
    'SELECT * FROM "{d}/secret".parquet',
    'SELECT * FROM "{d}/secret".ndjson',
    'SELECT * FROM "{d}/other".duckdb',
    'SELECT (SELECT password FROM "{d}/secret".csv) AS p',
    'SELECT * FROM flow_runs WHERE run_id IN (SELECT password FROM "{d}/secret".csv)',
    'WITH c AS (SELECT 1) SELECT * FROM c, "{d}/secret".csv',
    'DESCRIBE "{d}/secret".csv',
    'SUMMARIZE "{d}/secret".csv',
    'SHOW "{d}/secret".csv',
    'EXPLAIN ANALYZE SELECT * FROM "{d}/secret".csv',
    "/*xxxxxSELECT 1 --*/ EXPLAIN ANALYZE COPY (SELECT * FROM events) TO '{d}/copied.csv'",
    "/*xxxxxSELECT 1 --*/ EXPLAIN ANALYZE SET GLOBAL memory_limit = '3MB'",
    'SELECT * FROM main."secret.csv"',
    'SELECT * FROM "https://example.invalid/x".csv',
]


@pytest.mark.parametrize("query", FILE_READS)
def test_a_query_on_the_servers_connection_reads_no_file(data_dir, tmp_path, query):
    # The server's connection can write and reach files (the log needs both), so the guard
    # alone keeps a query to the database's own tables.
    hostile_files(tmp_path)
    with DuckDBLog(data_dir / "events.duckdb", projector=Projector()) as log:
        events = review_run("r1", 1000.0)
        log.append(events, [f"k{i}" for i in range(len(events))])
        with log.reader() as cur, pytest.raises(ReadOnlyViolation, match="refused"):
            readonly_query(cur, query.format(d=tmp_path))
        with log.reader() as cur:  # the cursor is left usable, outside any transaction
            assert readonly_query(cur, "SELECT count(*) FROM flow_runs").rows == [[1]]
        assert not (tmp_path / "copied.csv").exists()
        log.append(events[:1], ["one-more"])  # the writer's settings are as they were


def test_tables_views_and_with_names_are_read_however_they_are_named(data_dir):
    with DuckDBLog(data_dir / "events.duckdb", projector=Projector()) as log:
        events = review_run("r1", 1000.0)
        log.append(events, [f"k{i}" for i in range(len(events))])
        with log.reader() as cur:
            for query in (
                "SELECT count(*) FROM log.main.flow_runs",
                "SELECT count(*) FROM main.flow_runs",
                "SELECT count(*) FROM log.flow_runs",
                'SELECT count(*) FROM "FLOW_RUNS"',
                "SELECT count(*) FROM analytics_persona",
                "WITH recent AS (SELECT * FROM flow_runs) SELECT count(*) FROM recent",
                "SHOW flow_runs",
                "SHOW TABLES",
                "SELECT random() < 2, currval IS NULL FROM (SELECT NULL AS currval)",
            ):
                assert readonly_query(cur, query).rows, query
            with pytest.raises(ReadOnlyViolation, match="not a table or view"):
                readonly_query(cur, "SELECT * FROM no_such_table")


def test_a_query_past_its_time_is_stopped_and_its_cursor_stays_usable(logged):
    with duckdb.connect(str(logged / "events.duckdb"), read_only=True) as con:
        started = time.monotonic()
        with pytest.raises(QueryTimedOut, match="longer than 0.5 s"):
            readonly_query(
                con,
                "SELECT sum(hash(a.range * b.range)) FROM range(100000000) a, range(100000000) b",
                timeout=0.5,
            )
        assert time.monotonic() - started < 10
        # Rolled back and not left interrupted: the next query runs (and a quick one is not
        # cut short by a timer that outlived its query).
        assert readonly_query(con, "SELECT count(*) FROM flow_runs", timeout=0.5).rows == [[2]]
        time.sleep(0.6)
        assert readonly_query(con, "SELECT count(*) FROM flow_runs").rows == [[2]]


def test_max_rows_truncates_and_says_so(logged):
    with duckdb.connect(str(logged / "events.duckdb"), read_only=True) as con:
        total = con.execute("SELECT count(*) FROM events").fetchone()[0]
        result = readonly_query(con, "SELECT seq FROM events ORDER BY seq", max_rows=5)
        assert [r[0] for r in result.rows] == [1, 2, 3, 4, 5] and result.truncated
        assert not readonly_query(con, "SELECT seq FROM events", max_rows=total).truncated


# --- orchestrator sql ----------------------------------------------------------------------


def test_sql_json_is_valid_and_matches_the_tables(logged, capsys):
    assert sql(logged, "SELECT run_id, status, findings_by_severity, created_ts FROM flow_runs "
                       "ORDER BY run_id", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["columns"] == ["run_id", "status", "findings_by_severity", "created_ts"]
    assert answer["types"][0] == "VARCHAR"
    assert answer["rows"] == [
        ["r1", "finished", {"CRIT": 1, "WARN": 1}, 1000.0],
        ["r2", "finished", {"CRIT": 1, "WARN": 1}, 2000.0],
    ]
    assert answer["truncated"] is False


def test_sql_json_carries_values_json_has_no_type_for(logged, capsys):
    assert sql(logged, "SELECT to_timestamp(0) AS t, 1.5::DECIMAL(4,2) AS d, "
                       "'\\x01'::BLOB AS b, NULL AS n", "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row[0].startswith("1970-01-01") and row[1] == "1.50" and row[3] is None


def test_sql_prints_a_table(logged, capsys):
    assert sql(logged, "SELECT flow, runs FROM analytics_flow ORDER BY flow") == 0
    out = capsys.readouterr().out
    assert "code-review" in out and "investigate" in out and "2 rows" in out


def test_sql_reads_a_log_whose_writer_crashed(crashed, capsys):
    before = fingerprint(crashed)
    assert sql(crashed, "SELECT count(*) = max(seq) FROM events", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rows"] == [[True]]
    assert fingerprint(crashed) == before


def test_sql_reports_a_bad_query_and_a_missing_log(logged, data_dir, tmp_path, capsys):
    assert sql(logged, "SELEC 1") == 1
    assert "query failed" in capsys.readouterr().err
    assert sql(logged, "SELECT * FROM no_such_table") == 1
    assert "no_such_table" in capsys.readouterr().err
    assert sql(tmp_path / "empty", "SELECT 1") == 1
    assert "no event log" in capsys.readouterr().err


def test_arguments_no_query_can_take_are_one_clear_line(logged, capsys):
    # Both once ended in a TypeError's traceback: a row count DuckDB's fetch cannot hold, and
    # a shell argument of bytes that are not UTF-8 (Python hands them on as lone surrogates).
    with pytest.raises(SystemExit) as done:
        sql(logged, "SELECT 1", "--max-rows", "99999999999999999999")
    assert done.value.code == 2
    assert "argument --max-rows: must be a whole number from 0 to 100000000" in capsys.readouterr().err
    assert sql(logged, "SELECT 'caf\udce9'") == 1
    err = capsys.readouterr().err
    assert err == "orchestrator: refused: the query is not UTF-8 text\n"


def test_tables_of_an_earlier_version_are_named_until_a_writer_rebuilds_them(logged, capsys):
    path = logged / "events.duckdb"
    assert sql(logged, "SELEC 1") == 1
    assert "earlier version" not in capsys.readouterr().err  # a plain mistake is just that
    with duckdb.connect(str(path)) as con:  # as a file from before report_findings was a column
        con.execute("ALTER TABLE flow_runs DROP COLUMN report_findings")
        con.execute("UPDATE projection_tracking SET version = '0:older'")
    assert sql(logged, "SELECT report_findings FROM flow_runs") == 1
    err = capsys.readouterr().err
    assert "report_findings" in err and "orchestrator rebuild" in err
    DuckDBLog(path, projector=Projector()).close()  # a writer opening the file rebuilds them
    assert sql(logged, "--json", "SELECT run_id, report_findings FROM flow_runs ORDER BY 1") == 0
    assert json.loads(capsys.readouterr().out)["rows"] == [["r1", 2], ["r2", 2]]


# --- orchestrator rebuild ------------------------------------------------------------------


def test_rebuild_restores_damaged_projections(logged, capsys):
    path = logged / "events.duckdb"
    with duckdb.connect(str(path)) as con:
        good = tables(con)
        con.execute("DELETE FROM flow_steps WHERE step_id = 'a'")
        con.execute("UPDATE flow_runs SET tokens_in = 0, status = 'running'")
        assert tables(con) != good
    assert main(["--data-dir", str(logged), "rebuild", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["runs"], result["steps"]) == (2, 4)
    with duckdb.connect(str(path), read_only=True) as con:
        assert result["events"] == result["last_seq"] == con.execute(
            "SELECT max(seq) FROM events").fetchone()[0]
        assert tables(con) == good
    assert main(["--data-dir", str(logged), "rebuild"]) == 0
    assert "rebuilt flow_runs (2 runs) and flow_steps (4 steps)" in capsys.readouterr().out


def test_rebuild_refuses_a_file_held_by_a_server(data_dir, capsys):
    proc = start_writer(data_dir / "events.duckdb", 5)
    try:
        proc.stdout.readline()  # it holds the file now
        (data_dir / "server.json").write_text(json.dumps({"pid": proc.pid}))
        assert main(["--data-dir", str(data_dir), "rebuild"]) == 1
        err = capsys.readouterr().err
        assert f"held by the Orchestrator server (pid {proc.pid})" in err
        assert "Stop it" in err
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_rebuild_refuses_a_file_that_is_not_a_log(data_dir, capsys):
    duckdb.connect(str(data_dir / "events.duckdb")).close()
    assert main(["--data-dir", str(data_dir), "rebuild"]) == 1
    assert "holds no event log" in capsys.readouterr().err


# --- through the server ----------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_sql_goes_through_the_server_that_holds_the_file(
    ray_session, data_dir, tmp_path, capsys, monkeypatch
):
    import ray

    from projections.queries import list_runs

    from actors.config import Settings
    from actors.eventlog import LogClient, start_event_log, stop_event_log
    from actors.runtime import names_for

    settings = Settings.load({}, data_dir=str(data_dir))
    namespace = ray.get_runtime_context().namespace
    handle = start_event_log(
        str(settings.events_path), name=names_for(settings, namespace).eventlog,
        namespace=namespace,
    )
    try:
        events = review_run("r1", 1000.0) + review_run("r2", 2000.0, flow="investigate")
        LogClient(handle).append(events, [f"k{i}" for i in range(len(events))])
        with pytest.raises(duckdb.IOException):  # the actor's process holds the file
            duckdb.connect(str(settings.events_path), read_only=True)

        query = "SELECT run_id, flow, status FROM flow_runs ORDER BY run_id"
        assert sql(data_dir, query, "--json") == 0
        assert json.loads(capsys.readouterr().out)["rows"] == [
            ["r1", "code-review", "finished"], ["r2", "investigate", "finished"]]

        out = tmp_path / "out"
        out.mkdir()
        for statement in ("DELETE FROM flow_runs", f"COPY events TO '{out}/e.csv'",
                          "SELECT * FROM read_csv('/etc/passwd')", "SELECT 1; DROP TABLE events",
                          "CHECKPOINT"):
            assert sql(data_dir, statement) == 1, statement
            assert "refused" in capsys.readouterr().err
        assert list(out.iterdir()) == []
        assert sql(data_dir, "SELECT * FROM no_such_table") == 1
        assert "not a table or view" in capsys.readouterr().err
        assert sql(data_dir, "SELECT 1 FROM flow_runs WHERE false AND sum(1) > 0") == 1
        assert "query failed" in capsys.readouterr().err
        hostile_files(tmp_path)
        assert sql(data_dir, f'SELECT * FROM "{tmp_path}/secret".csv') == 1
        assert "refused" in capsys.readouterr().err

        # A server's answer is bounded, and a long query is stopped without holding the
        # reads that runs and the API need.
        assert sql(data_dir, "SELECT * FROM range(150000)", "--json") == 0
        answer = json.loads(capsys.readouterr().out)
        assert len(answer["rows"]) == 100_000 and answer["truncated"]
        endless = "SELECT sum(hash(a.range * b.range)) FROM range(100000000) a, range(100000000) b"
        running = handle.sql.remote(endless, timeout=8.0)
        time.sleep(1.0)
        started = time.monotonic()
        assert LogClient(handle).query_rows(list_runs) and time.monotonic() - started < 3.0
        monkeypatch.setenv("ORCH_SQL_TIMEOUT", "1")
        assert sql(data_dir, endless) == 1  # queued behind the first, then stopped itself
        assert "was stopped" in capsys.readouterr().err
        with pytest.raises(Exception, match="longer than 8 s"):
            ray.get(running)
        assert sql(data_dir, "SELECT count(*) FROM flow_runs", "--json") == 0
        assert json.loads(capsys.readouterr().out)["rows"] == [[2]]

        # Another process finds the server from server.json (as `orchestrator serve` writes it).
        (data_dir / "server.json").write_text(json.dumps({
            "pid": os.getpid(), "url": "",
            "ray_address": ray.get_runtime_context().gcs_address, "namespace": namespace,
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "RAY_"))}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", "--data-dir", str(data_dir), "sql", "--json",
             "SELECT count(*) AS runs FROM flow_runs"],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rows"] == [[2]], time.monotonic() - started
    finally:
        stop_event_log(handle)
