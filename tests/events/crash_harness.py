"""Crash trials for the DuckDB log: ``kill -9`` a writer process at random moments, then check
that every append it had acknowledged is in the file, byte for byte, with dense ``seq``s.

Reusable: ``crash_trials(path, trials=10, projector="module:attr", check=fn)``. The writer
process builds the same projector (so batches commit with their projection updates), and after
each crash the file is reopened in this process with it; ``check(log)`` then runs whatever
extra comparison the caller wants (projections: "the tables equal a rebuild"). Import it with
``tests/events`` on ``sys.path``.

Run as a script, this module is the writer:
``python crash_harness.py PATH ACK_FILE TRIAL PROJECTOR|-``. It appends from four threads
and, after each append returns, writes ``seq key`` lines to ACK_FILE (one ``os.write`` per
append, so a line is either whole or absent).
"""

from __future__ import annotations

import importlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
THREADS = 4


def event_for(key: str) -> Any:
    """The event an appender writes under ``key`` (``trial/thread/n``), rebuilt by the checker."""
    from events.types import OutputDelta

    trial, thread, n = key.split("/")
    i = int(n)
    return OutputDelta(
        run_id=f"run-{trial}-{thread}",
        ts=1_700_000_000.0 + i,
        step_id=f"step-{i % 3}",
        text=f"streamed text {i} of thread {thread} in trial {trial}, about 100 bytes long....",
        offset=i * 80,
        tokens=7,
    )


def load(spec: str | None) -> Any:
    if not spec or spec == "-":
        return None
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


# --- the writer process -------------------------------------------------------------------------


def writer(path: str, ack_file: str, trial: str, projector: str) -> None:
    from events.codec import encode
    from events.duckdb_log import DuckDBLog

    log = DuckDBLog(path, load(projector))
    fd = os.open(ack_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def appender(thread: int) -> None:
        rng = random.Random(thread)
        n = 0
        while True:
            size = rng.randint(1, 20)
            keys = [f"{trial}/{thread}/{i}" for i in range(n, n + size)]
            seqs = log.append_encoded([encode(event_for(k)) for k in keys], keys)
            os.write(fd, "".join(f"{s} {k}\n" for s, k in zip(seqs, keys)).encode())
            n += size

    for t in range(THREADS):
        threading.Thread(target=appender, args=(t,), daemon=True).start()
    threading.Event().wait()  # until killed


# --- the trials ---------------------------------------------------------------------------------


def read_acks(ack_file: Path) -> dict[str, int]:
    """Acknowledged ``key -> seq``; a torn last line (killed mid-write) is not an ack."""
    acks: dict[str, int] = {}
    if not ack_file.exists():
        return acks
    text = ack_file.read_text()
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is incomplete
        seq, key = line.split(" ")
        acks[key] = int(seq)
    return acks


def verify(log: Any, acks: dict[str, int]) -> None:
    """Every acknowledged event present and unchanged; seqs dense; keys unique; retries
    of acknowledged keys return their seqs and write nothing."""
    from events.codec import encode

    top = log.max_seq()
    with log.reader() as cur:
        count, low, high, keys = cur.execute(
            "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0), count(DISTINCT key) FROM events"
        ).fetchall()[0]
        assert (count, low, high) == (top, min(top, 1), top), (
            f"seqs not dense: {count=} {low=} {high=} {top=}"
        )
        assert keys == count, f"{count - keys} keys written twice"
        import pyarrow as pa

        acked = pa.table({"seq": list(acks.values()), "key": list(acks.keys())})
        cur.register("acked_batch", acked)
        rows = cur.execute(
            "SELECT a.seq, a.key, e.key, e.body FROM acked_batch a LEFT JOIN events e ON e.seq = a.seq"
        ).fetchall()
        cur.unregister("acked_batch")
    assert len(rows) == len(acks)
    for seq, key, stored_key, body in rows:
        assert stored_key == key, f"acknowledged seq {seq} ({key}) holds {stored_key!r}"
        assert body.encode() == encode(event_for(key)), f"seq {seq} changed"
    sample = random.Random(len(acks)).sample(sorted(acks), min(30, len(acks)))
    if sample:
        seqs = log.append_encoded([encode(event_for(k)) for k in sample], sample)
        assert seqs == [acks[k] for k in sample]
        assert log.max_seq() == top


def crash_trials(
    path: str | os.PathLike[str],
    *,
    trials: int = 10,
    projector: str | None = None,
    check: Callable[[Any], None] | None = None,
    seed: int = 0,
    kill_after: tuple[float, float] = (0.05, 0.5),
) -> dict[str, int]:
    """Run ``trials`` writer processes on ``path`` one after another, each killed with
    SIGKILL at a random moment after its first acknowledged append; reopen and verify after
    each. Returns totals (acknowledged appends, final max seq)."""
    from events.duckdb_log import DuckDBLog

    rng = random.Random(seed)
    path = str(path)
    work = Path(path).parent
    all_acks: dict[str, int] = {}
    for trial in range(trials):
        ack_file = work / f"{Path(path).name}.acks-{trial}"
        ack_file.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "crash_harness.py"),
                path,
                str(ack_file),
                str(trial),
                projector or "-",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not (ack_file.exists() and ack_file.stat().st_size > 0):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"writer exited early: {proc.stderr.read().decode()[-2000:]}"
                    )
                assert time.monotonic() < deadline, "writer acknowledged nothing within 30 s"
                time.sleep(0.01)
            time.sleep(rng.uniform(*kill_after))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        acks = read_acks(ack_file)
        assert acks, "no acknowledged append survived in the ack file"
        all_acks.update(acks)
        with DuckDBLog(path, load(projector)) as log:
            verify(log, all_acks)
            if check is not None:
                check(log)
            top = log.max_seq()
    return {"trials": trials, "acknowledged": len(all_acks), "max_seq": top}


if __name__ == "__main__":
    writer(*sys.argv[1:5])
