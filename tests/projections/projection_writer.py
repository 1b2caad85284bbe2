"""A writer process for the crash tests: appends random runs through ``DuckDBLog`` with the
``Projector`` until it is killed, printing the last committed ``seq`` after every append.

    python projection_writer.py PATH SEED [EXIT_AFTER]

With ``EXIT_AFTER`` it leaves with ``os._exit`` after that many appends: the log is not closed,
so no checkpoint runs and the write-ahead log stays next to the file.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from projection_scenarios import interleave, run_events  # noqa: E402

from events.duckdb_log import DuckDBLog  # noqa: E402
from projections import Projector  # noqa: E402


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    exit_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
    rng = random.Random(seed)
    log = DuckDBLog(path, projector=Projector())
    appends = 0
    generation = 0
    while True:
        runs = [run_events(f"w{seed}-{generation}-{i}", rng.randint) for i in range(5)]
        events = interleave(runs, rng.randint)
        start = 0
        while start < len(events):
            chunk = events[start : start + rng.randint(1, 40)]
            keys = [f"{seed}/{generation}/{start + i}" for i in range(len(chunk))]
            seqs = log.append(chunk, keys)
            start += len(chunk)
            appends += 1
            print(seqs[-1], flush=True)
            if exit_after is not None and appends >= exit_after:
                os._exit(0)
        generation += 1


if __name__ == "__main__":
    main()
