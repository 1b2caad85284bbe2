"""kill -9 of a writer process at random moments loses nothing it acknowledged."""

from __future__ import annotations

import pytest

from crash_harness import crash_trials


def counts_match(log) -> None:
    """The projector's table agrees with the log after every crash (same transaction)."""
    with log.reader() as cur:
        projected = dict(cur.execute("SELECT kind, n FROM kind_counts").fetchall())
        logged = dict(cur.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    assert projected == logged


@pytest.mark.slow
def test_acknowledged_appends_survive_kill_9(tmp_path):
    result = crash_trials(
        tmp_path / "events.duckdb",
        trials=10,
        projector="eventlog_helpers:CountingProjector",
        check=counts_match,
    )
    assert result["acknowledged"] > 100
    assert result["max_seq"] >= result["acknowledged"]
