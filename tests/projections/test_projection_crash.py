"""The projection half of the crash test: a writer killed with -9 mid-stream leaves tables that
equal a rebuild of what the log committed, because they commit in the log's transaction."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import duckdb
import pytest

from events.duckdb_log import DuckDBLog
from projection_scenarios import start_writer, sums_disagree, tables
from projections import Projector, rebuild
from projections.projector import position


def kill_after(proc: subprocess.Popen, appends: int) -> int:
    """Let the writer commit ``appends`` appends, then kill it at once; the last seq it saw."""
    last = 0
    for _ in range(appends):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer died early: {proc.stderr.read()}")
        last = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    return last


@pytest.mark.slow
def test_projections_survive_kill_minus_nine_equal_to_rebuild(tmp_path):
    path = tmp_path / "events.duckdb"
    for round_, appends in enumerate((150, 60, 250)):
        acknowledged = kill_after(start_writer(path, seed=round_), appends)
        assert Path(f"{path}.wal").exists()  # killed before any checkpoint: recovery replays it
        con = duckdb.connect(str(path))  # replays the write-ahead log
        try:
            committed = con.execute("SELECT max(seq) FROM events").fetchone()[0]
            assert committed >= acknowledged  # nothing acknowledged was lost
            # The tables reflect every committed event that changes a row (all but deltas).
            assert position(con) == con.execute(
                "SELECT max(seq) FROM events WHERE kind <> 'output_delta'"
            ).fetchone()[0]
            live = tables(con)
            assert sums_disagree(con) == []
            result = rebuild(con)
            assert result.last_seq == committed
            assert tables(con) == live
        finally:
            con.close()
    # And the log reopens with its projector on the recovered file without changing a row.
    with DuckDBLog(path, projector=Projector()) as log:
        with log.reader() as cur:
            assert tables(cur) == live
