"""Events and tiny projectors for the event log tests (imported by the test modules)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from events.codec import encode
from events.log import Record
from events.types import OutputDelta, RunRequested, StepStarted


def delta(run: str, step: str, i: int, text: str = "") -> OutputDelta:
    """A realistic output delta (~100-byte text)."""
    return OutputDelta(
        run_id=run,
        ts=1_700_000_000.0 + i,
        step_id=step,
        text=text or f"chunk {i} of the model's streamed answer about the repository layout.",
        offset=i * 64,
        tokens=12,
    )


def batch(run: str, step: str, start: int, n: int, prefix: str = "") -> tuple[list, list[str]]:
    """``n`` deltas with their keys (``prefix/run/step/i``)."""
    events = [delta(run, step, i) for i in range(start, start + n)]
    keys = [f"{prefix}{run}/{step}/{i}" for i in range(start, start + n)]
    return events, keys


def requested(run: str) -> RunRequested:
    return RunRequested(run_id=run, ts=time.time(), flow="code-review", repo="/tmp/repo")


def started(run: str, step: str) -> StepStarted:
    return StepStarted(run_id=run, ts=time.time(), step_id=step)


def blob(event: Any) -> bytes:
    return encode(event)


class CountingProjector:
    """Counts committed events per kind into ``kind_counts``, on the log's transaction."""

    def setup(self, con: Any) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS kind_counts (kind VARCHAR PRIMARY KEY, n BIGINT)")

    def touches(self, records: Sequence[Record]) -> bool:
        return True  # every event counts

    def apply(self, con: Any, records: Sequence[Record]) -> None:
        counts = Counter(type(r.event).__struct_config__.tag for r in records)
        for kind, n in sorted(counts.items()):
            con.execute(
                "INSERT INTO kind_counts VALUES (?, ?) "
                "ON CONFLICT (kind) DO UPDATE SET n = kind_counts.n + excluded.n",
                [kind, n],
            )


class PoisonProjector(CountingProjector):
    """Counts like ``CountingProjector`` but refuses a batch holding a delta whose text is
    ``"poison"`` (after writing its counts, so a partial write would show). ``gate``, when
    set, holds the writer in ``apply`` until released, so appends pile up into one group."""

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def apply(self, con: Any, records: Sequence[Record]) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batch_sizes.append(len(records))
        super().apply(con, records)
        if any(getattr(r.event, "text", None) == "poison" for r in records):
            raise RuntimeError("projector refused a poisoned batch")
