"""The contract suite against DuckDB (a file and ``:memory:``), and what only DuckDB has: the
file (reopen, lock, checkpoint), group commit, and the projector in the batch transaction."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import duckdb
import pytest

from eventlog_contract import LogContract
from eventlog_helpers import CountingProjector, PoisonProjector, batch, blob, delta, started
from events.codec import encode_all
from events.duckdb_log import DuckDBLog
from events.errors import LogLocked
from events.types import OutputDelta


class TestDuckDBFileLog(LogContract):
    def make_log(self, tmp_path, subscriber_buffer=10_000):
        return DuckDBLog(tmp_path / "events.duckdb", subscriber_buffer=subscriber_buffer)


class TestDuckDBMemoryLog(LogContract):
    def make_log(self, tmp_path, subscriber_buffer=10_000):
        return DuckDBLog(":memory:", subscriber_buffer=subscriber_buffer)


def encoded(run: str, start: int, n: int) -> tuple[list[bytes], list[str]]:
    events, keys = batch(run, "s", start, n)
    return encode_all(events), keys


def kind_counts(con) -> dict[str, int]:
    return dict(con.execute("SELECT kind, n FROM kind_counts").fetchall())


def log_counts(con) -> dict[str, int]:
    return dict(con.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())


# --- the file ------------------------------------------------------------------------------


def test_reopen_keeps_records_bytes_and_keys(tmp_path):
    path = tmp_path / "events.duckdb"
    data = [blob(delta("r1", "s1", i)) for i in range(5)]
    keys = [f"k{i}" for i in range(5)]
    with DuckDBLog(path) as log:
        assert log.append_encoded(data, keys) == [1, 2, 3, 4, 5]
    with DuckDBLog(path) as log:
        assert log.max_seq() == 5
        # The same keys after a restart: the original seqs, nothing written.
        assert log.append_encoded(data[:2], keys[:2]) == [1, 2]
        assert log.append([delta("r1", "s1", 9)], ["k9"]) == [6]
        assert log.read_encoded(0, limit=5) == list(zip(range(1, 6), data))
    with DuckDBLog(path) as log:
        assert [r.seq for r in log.read()] == [1, 2, 3, 4, 5, 6]


def test_reads_from_the_table_and_from_the_recent_tail_agree(tmp_path, monkeypatch):
    import events.duckdb_log as module

    monkeypatch.setattr(module, "RECENT_RECORDS", 50)
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        for c in range(20):
            log.append(*batch(f"r{c % 3}", f"s{c % 2}", c * 10, 10))
        assert log._from_recent(100, None, None, None) is None  # seq 101 left the tail
        tail = log._from_recent(160, "r1", None, None)
        assert tail is not None
        assert [r for r, _ in tail] == [
            r for r in log.read(0, run_id="r1") if r.seq > 160
        ]  # the tail answer equals the table's
        everything = log.read()
        assert [r.seq for r in everything] == list(range(1, 201))
        assert (
            log.read(0, run_id="r2", step_id="s0", limit=7)
            == [r for r in everything if r.event.run_id == "r2" and r.event.step_id == "s0"][:7]
        )


def test_read_recent_encoded_answers_from_the_tail_or_not_at_all(tmp_path, monkeypatch):
    import events.duckdb_log as module

    monkeypatch.setattr(module, "RECENT_RECORDS", 50)
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        for c in range(20):
            log.append(*batch(f"r{c % 3}", "s", c * 10, 10))
        assert log.read_recent_encoded(100) is None  # seq 101 left the tail: ask the table
        assert log.read_recent_encoded(160, run_id="r1") == log.read_encoded(160, run_id="r1")
        assert log.read_recent_encoded(190, limit=3) == log.read_encoded(190, limit=3)
        assert log.read_recent_encoded(200) == []


def test_second_process_gets_log_locked_naming_the_holder(tmp_path):
    path = tmp_path / "events.duckdb"
    with DuckDBLog(path) as log:
        log.append(*batch("r", "s", 0, 1))
        code = textwrap.dedent(
            f"""
            from events.duckdb_log import DuckDBLog
            from events.errors import LogLocked
            try:
                DuckDBLog({str(path)!r})
            except LogLocked as exc:
                print("LogLocked:", exc)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0, out.stderr
    assert "LogLocked:" in out.stdout
    assert f"is held by process {os.getpid()}" in out.stdout
    assert str(path) in out.stdout


def test_same_file_twice_in_one_process_is_refused(tmp_path):
    path = tmp_path / "events.duckdb"
    with DuckDBLog(path):
        with pytest.raises(LogLocked, match="already open in this process"):
            DuckDBLog(path)
    DuckDBLog(path).close()  # released on close


def test_close_checkpoints_the_wal_away(tmp_path):
    path = tmp_path / "events.duckdb"
    log = DuckDBLog(path)
    log.append(*batch("r", "s", 0, 100))
    wal = tmp_path / "events.duckdb.wal"
    assert wal.exists() and wal.stat().st_size > 0
    log.close()
    assert not wal.exists() or wal.stat().st_size == 0
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 100
    con.close()


def test_the_file_gets_small_row_groups_so_a_checkpoint_rewrites_little(tmp_path):
    # A checkpoint rewrites the table's unfinished last row group whole: with DuckDB's default
    # (122,880 rows) that stalled every append for 150-300 ms under sustained load.
    from events.duckdb_log import ROW_GROUP_SIZE

    path = tmp_path / "it's here.duckdb"  # a quote in the path is no trouble either
    with DuckDBLog(path) as log:
        for c in range(5):
            log.append(*batch("r1", "s1", c * 5000, 5000))
        with log.reader() as cursor:  # readers see the file's tables, not the empty in-memory ones
            assert cursor.execute("SELECT count(*) FROM events").fetchone() == (25_000,)
    con = duckdb.connect(str(path), read_only=True)
    try:
        groups = [n for (n,) in con.execute(
            "SELECT sum(count) FROM pragma_storage_info('events') WHERE column_path = '[0]' GROUP BY row_group_id"
        ).fetchall()]
    finally:
        con.close()
    assert sum(groups) == 25_000
    assert max(groups) <= ROW_GROUP_SIZE < 25_000
    assert not (tmp_path / "it's here.duckdb.wal").exists()


def test_the_wide_columns_are_checkpointed_with_zstd(tmp_path):
    # DuckDB's default string compression spent half of each checkpoint (which every commit
    # waits for) analysing the bodies; zstd is cheaper to write and smaller.
    path = tmp_path / "events.duckdb"
    with DuckDBLog(path) as log:
        log.append(*batch("r1", "s1", 0, 3000))
    con = duckdb.connect(str(path), read_only=True)
    try:
        methods = dict(con.execute(
            "SELECT column_name, list(DISTINCT compression) FROM pragma_storage_info('events') "
            "WHERE segment_type = 'VARCHAR' AND column_name IN ('key', 'body') GROUP BY ALL"
        ).fetchall())
    finally:
        con.close()
    assert methods == {"key": ["ZSTD"], "body": ["ZSTD"]}


def test_a_log_made_before_zstd_still_opens_and_appends(tmp_path):
    path = tmp_path / "events.duckdb"
    old_ddl = (
        "CREATE TABLE events (seq BIGINT NOT NULL, run_id VARCHAR NOT NULL, step_id VARCHAR, "
        "kind VARCHAR NOT NULL, ts DOUBLE NOT NULL, key VARCHAR NOT NULL, body VARCHAR NOT NULL)"
    )
    first = [blob(delta("r1", "s1", i)) for i in range(3)]
    con = duckdb.connect(str(path))
    con.execute(old_ddl)
    con.executemany(
        "INSERT INTO events VALUES (?, 'r1', 's1', 'output_delta', 0, ?, ?)",
        [(i + 1, f"k{i}", b.decode()) for i, b in enumerate(first)],
    )
    con.close()
    with DuckDBLog(path) as log:
        assert log.append_encoded(first[:1], ["k0"]) == [1]  # its keys are known
        assert log.append([delta("r1", "s1", 7)], ["k7"]) == [4]
        assert [seq for seq, _ in log.read_encoded(0)] == [1, 2, 3, 4]
        assert log.read_encoded(0, limit=3) == list(zip(range(1, 4), first))


def test_buffer_pool_is_bounded_and_a_bad_limit_is_refused(tmp_path):
    path = tmp_path / "events.duckdb"
    with pytest.raises(ValueError, match="should look like '256MB'"):
        DuckDBLog(path, memory_limit="lots")
    with DuckDBLog(path, memory_limit="64MB") as log:  # the refused open released the file
        assert log.query("SELECT current_setting('memory_limit')").rows == [("61.0 MiB",)]
    with DuckDBLog(path) as log:  # bounded by default
        assert log.query("SELECT current_setting('memory_limit')").rows == [("244.1 MiB",)]


def test_a_table_that_would_shadow_the_insert_batch_is_refused(tmp_path):
    from events.errors import EventError

    path = tmp_path / "events.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE eventlog_arrow_batch AS SELECT 1 AS x")
    con.close()
    with pytest.raises(EventError, match="named 'eventlog_arrow_batch'"):
        DuckDBLog(path)
    with DuckDBLog(tmp_path / "other.duckdb") as log:  # the usual case: the insert reads its rows
        assert log.append(*batch("r", "s", 0, 3)) == [1, 2, 3]
        assert log.query("SELECT count(*) FROM events").rows == [(3,)]


def test_duckdbs_own_checkpoint_threshold_is_set_and_a_bad_one_refused(tmp_path):
    path = tmp_path / "events.duckdb"
    with pytest.raises(ValueError, match="checkpoint_threshold 'often' should look like"):
        DuckDBLog(path, checkpoint_threshold="often")
    with pytest.raises(ValueError, match="memory_limit 'lots' should look like"):
        DuckDBLog(path, memory_limit="lots")
    assert not path.exists()  # refused before the file was made
    with DuckDBLog(path, checkpoint_threshold="8MB") as log:
        assert log.query("SELECT current_setting('checkpoint_threshold')").rows == [("7.6 MiB",)]


def test_an_idle_writer_checkpoints_after_a_burst(tmp_path):
    import time

    wal = tmp_path / "events.duckdb.wal"
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        for c in range(10):
            log.append(*batch("r", "s", c * 100, 100))
        assert wal.stat().st_size > 64 << 10
        deadline = time.monotonic() + 10
        while wal.exists() and wal.stat().st_size > 0:
            assert time.monotonic() < deadline, "no checkpoint after the burst"
            time.sleep(0.05)
        assert log.append(*batch("r", "s", 1000, 1)) == [1001]


def _steady_stream(log, wal, appends: int) -> list[int]:
    """Append 20 events (~5 KB of WAL) every 20 ms; the WAL's size after each append."""
    import time

    sizes = []
    for c in range(appends):
        log.append(*batch("r", "s", c * 20, 20))
        sizes.append(wal.stat().st_size if wal.exists() else 0)
        time.sleep(0.02)
    return sizes


def test_a_big_wal_is_checkpointed_in_a_short_lull_of_a_steady_stream(tmp_path):
    wal = tmp_path / "events.duckdb.wal"
    # The idle gap is out of reach: only the lull rule can checkpoint here.
    with DuckDBLog(tmp_path / "events.duckdb", idle_gap=600, lull_checkpoint=64 << 10) as log:
        sizes = _steady_stream(log, wal, 40)
        # The WAL was folded into the file over and over while the stream went on, never
        # left to grow to DuckDB's own threshold.
        drops = sum(1 for a, b in zip(sizes, sizes[1:]) if b < a)
        assert drops >= 2 and max(sizes) < 1 << 20, sizes
        assert log.query("SELECT count(*), max(seq) FROM events").rows == [(800, 800)]


def test_a_smaller_checkpoint_threshold_brings_the_lull_checkpoint_down_with_it(tmp_path):
    wal = tmp_path / "events.duckdb.wal"
    # DuckDB checkpoints by itself at 400 KB of WAL; the writer, in a lull, from half of that.
    with DuckDBLog(tmp_path / "events.duckdb", idle_gap=600, checkpoint_threshold="400KB") as log:
        sizes = _steady_stream(log, wal, 120)
        drops = sum(1 for a, b in zip(sizes, sizes[1:]) if b < a)
        assert drops >= 2 and max(sizes) < 250_000, sizes
        assert log.query("SELECT count(*), max(seq) FROM events").rows == [(2400, 2400)]


def test_a_small_wal_waits_for_the_idle_gap(tmp_path):
    import time

    wal = tmp_path / "events.duckdb.wal"
    with DuckDBLog(tmp_path / "events.duckdb", idle_gap=600) as log:
        for c in range(10):
            log.append(*batch("r", "s", c * 100, 100))
        size = wal.stat().st_size
        assert 64 << 10 < size < 4 << 20
        time.sleep(0.5)  # many lulls long, but the WAL is under the lull bound
        assert wal.stat().st_size == size


def test_a_failing_writer_fails_its_appenders_instead_of_hanging_them(tmp_path, monkeypatch):
    from events.errors import LogClosed

    log = DuckDBLog(tmp_path / "events.duckdb")
    log.append(*batch("r", "s", 0, 1))

    def broken(self):
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(DuckDBLog, "_take_group", broken)
    with pytest.raises(LogClosed, match="a bug in the writer"):
        log.submit_encoded([blob(delta("r", "s", 1))], ["k1"]).result(10)
    with pytest.raises(LogClosed):
        log.append(*batch("r", "s", 2, 1))
    log.close()
    monkeypatch.undo()
    with DuckDBLog(tmp_path / "events.duckdb") as again:  # close released the file
        assert again.max_seq() == 1


def test_checkpoint_between_appends(tmp_path):
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        log.append(*batch("r", "s", 0, 10))
        log.checkpoint()
        assert (
            not (tmp_path / "events.duckdb.wal").exists()
            or (tmp_path / "events.duckdb.wal").stat().st_size == 0
        )
        assert log.append(*batch("r", "s", 10, 10)) == list(range(11, 21))


def test_query_reads_and_refuses_writes(tmp_path):
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        log.append(*batch("r1", "s", 0, 3))
        log.append(*batch("r2", "s", 0, 2))
        result = log.query(
            "SELECT run_id, count(*) AS n FROM events GROUP BY run_id ORDER BY run_id"
        )
        assert result.columns == ["run_id", "n"]
        assert result.rows == [("r1", 3), ("r2", 2)]
        assert log.query("SELECT max(seq) FROM events WHERE run_id = ?", ["r1"]).rows == [(3,)]
        for sql in (
            "DELETE FROM events",
            "INSERT INTO events SELECT * FROM events",
            "DROP TABLE events",
        ):
            with pytest.raises(ValueError, match="only read-only queries"):
                log.query(sql)
        with pytest.raises(ValueError, match="one SQL statement"):
            log.query("SELECT 1; DELETE FROM events")
        assert log.max_seq() == 5
        assert log.query("SELECT count(*) FROM events").rows == [(5,)]


def test_a_hash_collision_does_not_lose_an_event(tmp_path):
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        log.append([delta("r", "s", 0)], ["first"])
        # Make "second" look, by its hash, like a key the log holds (seq 1).
        log._keys.add_new([hash("second")], range(1, 2))
        assert log.append([delta("r", "s", 1)], ["second"]) == [2]
        assert log.append([delta("r", "s", 1)], ["second"]) == [2]
        assert log.append([delta("r", "s", 0)], ["first"]) == [1]
        assert log.max_seq() == 2


def test_key_index_merges_and_reloads_without_losing_a_key(tmp_path, monkeypatch):
    from events.duckdb_log import KeyIndex

    monkeypatch.setattr(KeyIndex, "MERGE_AT", 64)  # merge into the sorted arrays often
    path = tmp_path / "events.duckdb"
    with DuckDBLog(path) as log:
        for c in range(20):
            log.append(*batch(f"r{c % 4}", "s", c * 25, 25))
        log._keys.settle(wait=True)
        assert log._keys._hashes.size >= 448  # most keys now live in the sorted arrays
        for c in range(20):  # every key, merged or fresh, is still recognised
            assert log.append(*batch(f"r{c % 4}", "s", c * 25, 25)) == list(
                range(c * 25 + 1, c * 25 + 26)
            )
    with DuckDBLog(path) as log:
        assert len(log._keys) == 500
        assert log.append(*batch("r3", "s", 475, 25)) == list(range(476, 501))
        assert log.append(*batch("r0", "s", 500, 1)) == [501]
        assert log.max_seq() == 501


def test_appends_do_not_wait_for_the_key_index_merge(tmp_path, monkeypatch):
    import events.duckdb_log as duckdb_log

    gate, started = threading.Event(), threading.Event()
    merged = duckdb_log._merged

    def slow_merge(*args):
        started.set()
        gate.wait(30)
        return merged(*args)

    monkeypatch.setattr(duckdb_log.KeyIndex, "MERGE_AT", 64)
    monkeypatch.setattr(duckdb_log, "_merged", slow_merge)
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        for c in range(3):  # the third append fills the dict: a merge starts and hangs
            log.append(*batch("r", "s", c * 25, 25))
        assert started.wait(10)
        try:
            # Commits go on while it hangs, and every key, merging or not, is still known.
            new = log.submit_encoded(*encoded("r", 75, 25))
            assert new.result(timeout=10) == list(range(76, 101))
            again = log.submit_encoded(*encoded("r", 0, 100))
            assert again.result(timeout=10) == list(range(1, 101))
        finally:
            gate.set()
        log._keys.settle(wait=True)
        assert log._keys._hashes.size == 75 and len(log._keys) == 100
        assert log.append(*batch("r", "s", 0, 101)) == list(range(1, 102))


def test_a_failed_key_index_merge_loses_no_key(tmp_path, monkeypatch):
    import events.duckdb_log as duckdb_log

    merged, calls = duckdb_log._merged, []

    def failing_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("no room for the merged arrays")
        return merged(*args)

    monkeypatch.setattr(duckdb_log.KeyIndex, "MERGE_AT", 64)
    monkeypatch.setattr(duckdb_log, "_merged", failing_once)
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        for c in range(3):  # the third append starts the merge that fails
            log.append(*batch("r", "s", c * 25, 25))
        # The writer takes the failure in whenever the merge thread has finished; wait for it
        # here so the merges that follow hold a known number of keys.
        log._keys.settle(wait=True)
        assert len(calls) == 1 and log._keys._hashes.size == 0 and len(log._keys) == 75
        assert log.append(*batch("r", "s", 0, 75)) == list(range(1, 76))
        for c in range(3, 6):  # the next merge takes the returned keys along
            log.append(*batch("r", "s", c * 25, 25))
        log._keys.settle(wait=True)
        assert len(calls) == 2 and log._keys._hashes.size == 100 and len(log._keys) == 150
        assert log.append(*batch("r", "s", 0, 151)) == list(range(1, 152))


# --- group commit and the projector ----------------------------------------------------------


def test_projector_runs_in_the_batch_transaction(tmp_path):
    path = tmp_path / "events.duckdb"
    with DuckDBLog(path, CountingProjector()) as log:
        log.append([delta("r", "s", 0), delta("r", "s", 1)], ["a", "b"])
        log.append(*batch("r", "s", 2, 5))
        log.append([delta("r", "s", 0)], ["a"])  # a duplicate is not projected again
        with log.reader() as cur:
            assert kind_counts(cur) == {"output_delta": 7} == log_counts(cur)
    with DuckDBLog(path, CountingProjector()) as log:  # setup again on a reopen is fine
        log.append(*batch("r", "s", 7, 1))
        with log.reader() as cur:
            assert kind_counts(cur) == {"output_delta": 8}


class StartsProjector(CountingProjector):
    """Counts only what is not an output delta, and says so: batches of deltas alone are not
    its business."""

    def __init__(self) -> None:
        self.applied: list[list[int]] = []

    def touches(self, records):
        return any(type(r.event) is not OutputDelta for r in records)

    def apply(self, con, records):
        self.applied.append([r.seq for r in records])
        super().apply(con, [r for r in records if type(r.event) is not OutputDelta])


def test_a_batch_the_projector_does_not_touch_is_committed_without_it(tmp_path):
    path = tmp_path / "events.duckdb"
    projector = StartsProjector()
    with DuckDBLog(path, projector) as log:
        assert log.append(*batch("r", "s", 0, 3)) == [1, 2, 3]
        assert log.append([started("r", "s"), delta("r", "s", 3)], ["go", "d3"]) == [4, 5]
        assert log.append(*batch("r", "s", 4, 2)) == [6, 7]
        assert projector.applied == [[4, 5]]  # the whole batch that touched it, once
        with log.reader() as cur:
            assert kind_counts(cur) == {"step_started": 1}
            assert log_counts(cur) == {"output_delta": 6, "step_started": 1}
    with DuckDBLog(path) as log:  # the untouched batches are as durable as the others
        assert [r.seq for r in log.read(after=0)] == list(range(1, 8))


def test_readers_see_a_batch_and_its_projection_together_or_not_at_all(tmp_path):
    with DuckDBLog(tmp_path / "events.duckdb", CountingProjector()) as log:
        stop = threading.Event()
        seen: list[tuple[int, int]] = []

        def reader() -> None:
            while not stop.is_set():
                with log.reader() as cur:  # one statement, one snapshot
                    seen.append(
                        cur.execute(
                            "SELECT (SELECT count(*) FROM events), "
                            "(SELECT coalesce(sum(n), 0) FROM kind_counts)"
                        ).fetchall()[0]
                    )

        thread = threading.Thread(target=reader)
        thread.start()
        for c in range(60):
            log.append(*batch("r", "s", c * 7, 7))
        stop.set()
        thread.join()
    assert len(seen) > 10
    assert all(logged == projected for logged, projected in seen)
    assert {logged % 7 for logged, _ in seen} == {0}  # whole batches only


def test_projector_failure_commits_nothing_of_that_append_and_spares_the_rest(tmp_path):
    projector = PoisonProjector()
    with DuckDBLog(tmp_path / "events.duckdb", projector) as log:
        log.append(*batch("r", "s", 0, 2))
        # Hold the writer in its projector so the next appends queue up as one group.
        projector.gate = threading.Event()
        projector.entered.clear()
        first = log.submit_encoded([blob(delta("r", "s", 2))], ["held"])
        assert projector.entered.wait(5)
        queued = [
            log.submit_encoded(
                [blob(delta("g", "s", i)) for i in range(3)], [f"g{c}/{i}" for i in range(3)]
            )
            for c in range(3)
        ]
        poisoned = log.submit_encoded([blob(delta("p", "s", 0, text="poison"))], ["poison"])
        queued.append(log.submit_encoded([blob(delta("g", "s", 9))], ["last"]))
        projector.gate.set()
        assert first.result(10) == [3]
        with pytest.raises(RuntimeError, match="poisoned batch"):
            poisoned.result(10)
        seqs = [f.result(10) for f in queued]
        # The five queued appends (11 events) went in as one batch first, which was rolled
        # back; then each was retried alone.
        assert projector.batch_sizes[2:] == [11, 3, 3, 3, 1, 1]
        assert sorted(s for call in seqs for s in call) == list(range(4, 14))
        assert log.max_seq() == 13
        with log.reader() as cur:
            assert (
                cur.execute("SELECT count(*) FROM events WHERE key = 'poison'").fetchone()[0] == 0
            )
            assert kind_counts(cur) == {"output_delta": 13} == log_counts(cur)
            assert [
                r[0] for r in cur.execute("SELECT seq FROM events ORDER BY seq").fetchall()
            ] == list(range(1, 14))


def test_group_commit_batches_under_load(tmp_path):
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        calls = 200
        threads = [
            threading.Thread(
                target=lambda t=t: [
                    log.append(*batch(f"r{t}", "s", i, 1)) for i in range(calls // 8)
                ]
            )
            for t in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.max_seq() == calls
        # Eight appenders at once: transactions hold several appends each.
        assert log.batches < calls


def test_appends_sync_async_and_checkpoints_at_once_lose_nothing(tmp_path):
    # Synchronous appends commit on their own thread when nobody else is committing, the
    # rest on the writer thread; mixed with queued appends and checkpoints, none is lost.
    with DuckDBLog(tmp_path / "events.duckdb") as log:
        acked: list[int] = []
        lock = threading.Lock()

        def sync(t):
            for i in range(30):
                seqs = log.append(*batch(f"sync{t}", "s", i * 3, 3))
                with lock:
                    acked.extend(seqs)

        def queued(t):
            futures = [log.submit_encoded(*encoded(f"queued{t}", i * 2, 2)) for i in range(30)]
            seqs = [s for f in futures for s in f.result(timeout=30)]
            with lock:
                acked.extend(seqs)

        def checkpoints():
            for _ in range(5):
                log.checkpoint()

        workers = [threading.Thread(target=sync, args=(t,)) for t in range(3)]
        workers += [threading.Thread(target=queued, args=(t,)) for t in range(3)]
        workers.append(threading.Thread(target=checkpoints))
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not any(w.is_alive() for w in workers), "an appender hung"
        assert sorted(acked) == list(range(1, 3 * 30 * 3 + 3 * 30 * 2 + 1))
        assert [r.seq for r in log.read()] == sorted(acked)


def test_an_appender_committing_for_others_returns_once_its_own_append_is_in(
    tmp_path, monkeypatch
):
    import time

    import events.duckdb_log as duckdb_log

    with DuckDBLog(tmp_path / "events.duckdb") as log:
        committers: list[str] = []
        log.add_listener(lambda seq: committers.append(threading.current_thread().name))
        gate, inside = threading.Event(), threading.Event()
        real = duckdb_log._insert

        def held_once(con, table):
            if not inside.is_set():
                inside.set()
                assert gate.wait(30)
            real(con, table)

        monkeypatch.setattr(duckdb_log, "_insert", held_once)
        first = threading.Thread(
            target=lambda: log.append(*batch("lead", "s", 0, 2)), name="the-appender"
        )
        first.start()
        assert inside.wait(30)  # the appender holds the connection, mid-commit
        later = [log.submit_encoded(*encoded("later", i * 2, 2)) for i in range(5)]
        gate.set()
        first.join(30)
        assert not first.is_alive()
        assert [f.result(timeout=30) for f in later] == [[3 + 2 * i, 4 + 2 * i] for i in range(5)]
        deadline = time.monotonic() + 10
        while len(committers) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # It committed its own append and left what came in meanwhile to the writer thread.
        assert committers[0] == "the-appender"
        assert set(committers[1:]) == {"eventlog-writer"}


def test_an_interrupted_commit_tells_the_other_appenders_of_its_group(tmp_path, monkeypatch):
    import events.duckdb_log as duckdb_log
    from events.errors import EventError

    with DuckDBLog(tmp_path / "events.duckdb") as log:
        neighbour_append = encoded("n", 0, 2)
        neighbour = log._checked(*neighbour_append)
        with log._cv:  # queued by another thread a moment ago, the writer not yet awake
            log._queue.append(neighbour)

        def interrupted(con, table):
            raise KeyboardInterrupt  # Ctrl-C, mid-commit

        monkeypatch.setattr(duckdb_log, "_insert", interrupted)
        with pytest.raises(KeyboardInterrupt):  # it leads, and its group holds the neighbour
            log.append(*batch("r", "s", 0, 1))
        with pytest.raises(EventError, match="may or may not be in the log"):
            neighbour.future.result(timeout=10)
        monkeypatch.undo()
        # The log goes on; the same keys again find out, and commit what is missing.
        assert log.max_seq() == 0
        assert log.append_encoded(*neighbour_append) == [1, 2]
        assert log.append_encoded(*neighbour_append) == [1, 2]
        assert log.append(*batch("r", "s", 0, 1)) == [3]


@pytest.mark.parametrize("first_by", ["append", "submit_encoded"])
def test_a_listener_that_waits_on_an_append_gets_an_error_not_a_hung_log(tmp_path, first_by):
    from events.errors import EventError

    log = DuckDBLog(tmp_path / "events.duckdb")
    errors: list[str] = []
    queued = []

    def listener(seq: int) -> None:
        if seq != 1:
            return
        for call in (lambda: log.append(*batch("l", "s", 0, 1)), log.checkpoint):
            try:
                call()
            except EventError as exc:
                errors.append(str(exc))
        queued.append(log.submit_encoded(*encoded("q", 0, 1)))  # queueing is fine

    log.add_listener(listener)
    # The first commit runs the listener on the thread that commits it: the appending one,
    # or the writer thread for a queued append. Before the guard, the listener's append
    # waited forever on the commit it was called from (and so would close()).
    first: list[list[int]] = []
    if first_by == "append":
        def commit_first() -> None:
            first.append(log.append(*batch("r", "s", 0, 1)))
    else:
        def commit_first() -> None:
            first.append(log.submit_encoded(*encoded("r", 0, 1)).result())
    appender = threading.Thread(target=commit_first, daemon=True)
    appender.start()
    appender.join(30)
    assert not appender.is_alive(), "the listener's append hung the log"
    with log:
        assert first == [[1]]
        assert len(errors) == 2
        assert all("would wait for itself" in e for e in errors)
        assert queued[0].result(timeout=30) == [2]
        # Nothing of the refused append was written, and the log goes on.
        assert [r.event.run_id for r in log.read()] == ["r", "q"]
        assert log.append(*batch("r", "s", 1, 1)) == [3]


def test_async_append_awaits_the_commit(tmp_path):
    import asyncio

    async def main(log):
        return await asyncio.gather(
            *(log.append_async(*batch(f"r{i}", "s", 0, 3)) for i in range(5))
        )

    with DuckDBLog(tmp_path / "events.duckdb") as log:
        results = asyncio.run(main(log))
        assert sorted(s for seqs in results for s in seqs) == list(range(1, 16))
        assert log.max_seq() == 15


def test_an_appender_that_stops_waiting_does_not_stop_the_writer(tmp_path):
    import asyncio

    async def main(log):
        waiting = asyncio.ensure_future(log.append_async(*batch("r", "s", 0, 3)))
        await asyncio.sleep(0)
        waiting.cancel()  # cancels the future the writer will settle
        return await asyncio.wait_for(log.append_async(*batch("r", "s", 3, 2)), 30)

    with DuckDBLog(tmp_path / "events.duckdb") as log:
        later = asyncio.run(main(log))
        # What the cancelled call queued is committed (retrying its keys finds it).
        assert later == [4, 5]
        assert log.append(*batch("r", "s", 0, 3)) == [1, 2, 3]


def test_a_lone_append_is_committed_at_once(tmp_path):
    import time

    with DuckDBLog(tmp_path / "events.duckdb") as log:
        log.append(*batch("r", "s", 0, 1))  # warm up
        t0 = time.perf_counter()
        for i in range(1, 21):
            log.append(*batch("r", "s", i, 1))
        per_append = (time.perf_counter() - t0) / 20
    # No batching window: an idle writer commits straight away (a commit costs ~2 ms here).
    assert per_append < 0.05
