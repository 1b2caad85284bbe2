"""An appender that stops waiting (its task was cancelled) must not stop the writer."""

from __future__ import annotations

from events import encode
from events.duckdb_log import DuckDBLog
from tests.events.eventlog_helpers import delta


def test_cancelled_appends_leave_the_writer_running(tmp_path):
    log = DuckDBLog(str(tmp_path / "events.duckdb"))
    try:
        cancelled = 0
        for i in range(200):
            ev = delta("r1", "s1", i, f"t{i}")
            future = log.submit_encoded([encode(ev)], [f"k{i}"])
            cancelled += future.cancel()  # the caller gives up before the commit
        assert cancelled > 0, "no cancel reached a pending append; the test proves nothing"
        # The writer is still alive: a later append commits and returns.
        seqs = log.append([delta("r1", "s1", 999, "after")], ["after"])
        assert seqs == [log.max_seq()]
        # What was queued was committed, cancelled or not; seqs stay dense.
        records = log.read(0)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        assert records[-1].event.text == "after"
    finally:
        log.close()
