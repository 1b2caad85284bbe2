"""The product's log: one DuckDB file, one committer at a time, group commit.

Appends queue up; whoever holds the connection takes everything pending and commits it in ONE
transaction (a DuckDB commit costs ~2 ms whatever it holds, so batching is the whole game). A
synchronous append that finds nobody committing commits on its own thread (no hand-over to
another thread and back); queued (asynchronous) appends, and what comes in while someone
commits, go to the writer thread, which also checkpoints. So an idle log commits a lone append
at once, and under load batches grow by themselves. The projector folds each batch inside that
same transaction; an append returns only after the commit.

A batch goes in as one Arrow table (``INSERT`` from ``from_arrow``): building seven Arrow
columns from the events measured faster here than handing the Appender one tuple per row.

Idempotency keys are remembered as ``hash(key) -> seq`` in memory (``KeyIndex``: sorted numpy
arrays, ~16 bytes a key, where a dict of Python ints took ~115 MB per million); a hit is
confirmed by reading the stored key, so a hash collision never drops an event.

A checkpoint stalls every commit while it writes the ``events`` table (DuckDB 2.0 holds that
table's lock, even against a checkpoint started from another cursor), and it rewrites the
table's last, partly filled row group whole. With DuckDB's default row groups (122,880 rows) that
was up to ~40 MB of events at every checkpoint: 150-300 ms stalls at 32 MB of write-ahead log,
and longer, not shorter, ones at smaller thresholds. So the file is attached with row groups of
``ROW_GROUP_SIZE`` rows, and a checkpoint costs what was written since the last one: ~20 ms per
24,000 events here (the wide columns in zstd, below), every ~2.5 s at 10,000 events/s
(``CHECKPOINT_THRESHOLD``). The writer also checkpoints when appends pause for ``IDLE_GAP``,
longer than a model's usual pause before its first token, so a checkpoint seldom starts just
as a stream resumes; and once the WAL holds half of ``CHECKPOINT_THRESHOLD``, in any lull of
``LULL``, so a steady stream meets checkpoints of half the size, each a shorter stall. DuckDB's
buffer pool is bounded, so the writer's memory does not grow with the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import re
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from events.codec import decode
from events.errors import EventError, LogClosed, LogLocked, MalformedEvent
from events.log import EventLog, Projector, Record
from events.memory_log import decode_append, encode_append, text_problem
from events.subscription import DEFAULT_BUFFER, Hub, HubSubscription
from events.types import AgentEvent

logger = logging.getLogger(__name__)

MAX_BATCH = 10_000  # events per transaction (one append call is never split)
RECENT_RECORDS = 20_000  # the tail kept in memory for subscribers and polls
RECENT_BYTES = 32 << 20
IDLE_GAP = 1.0  # seconds without an append after which the writer counts as idle
IDLE_CHECKPOINT_BYTES = 64 << 10  # WAL size worth a checkpoint when idle
# From half of DuckDB's own checkpoint threshold of WAL, a short lull is enough for the writer
# to checkpoint: under a steady stream (which leaves the writer such lulls) a checkpoint writes
# half as much and stalls the appends behind it for less (through the actor at 10,000
# events/s, the longest ack 15-23 ms instead of 27-35, measured); under a saturating load there
# is no lull and DuckDB's own threshold applies, so bulk throughput pays no extra checkpoints.
LULL = 0.002  # seconds without an append that count as a lull
# WAL size at which DuckDB checkpoints on its own, inside a commit (its default is 16 MB); the
# stall grows with it. Sustained 10,000 events/s for 40 s, in-process ack p99: 14-18 ms at 4-8 MB
# with ROW_GROUP_SIZE rows, 49 ms at DuckDB's defaults and 32 MB (measured here).
CHECKPOINT_THRESHOLD = "8MB"
# Rows per row group for the row groups this writer adds (DuckDB's default is 122,880; an ATTACH
# option, not kept in the file): what a checkpoint rewrites of the table's unfinished tail.
ROW_GROUP_SIZE = 8192
# DuckDB's buffer pool otherwise grows to 80% of RAM, caching every block the log wrote:
# bounded, the writer's memory no longer grows with the log (it spills to <path>.tmp).
MEMORY_LIMIT = "256MB"

_DDL = """
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT NOT NULL,
    run_id VARCHAR NOT NULL,
    step_id VARCHAR,
    kind VARCHAR NOT NULL,
    ts DOUBLE NOT NULL,
    key VARCHAR USING COMPRESSION zstd NOT NULL,
    body VARCHAR USING COMPRESSION zstd NOT NULL
)
"""
# zstd for the two wide columns: DuckDB's default for strings (dictionary + FSST) spent about
# half of every checkpoint analysing them. A checkpoint of 24,000 streamed-text events went from
# 35-39 to 22 ms on disk, the file to 57% of its size, reads no slower (measured here). A file
# made before keeps its columns as they were (DuckDB cannot change a column's compression).

# No index: seq rises with insertion order, so DuckDB's min/max zone maps already prune
# ``seq > ?``, and a run's events are found by a scan (~10 ms at a million rows, measured)
# which costs less overall than maintaining an ART index on every append.

_ARROW_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("run_id", pa.string()),
        ("step_id", pa.string()),
        ("kind", pa.string()),
        ("ts", pa.float64()),
        ("key", pa.string()),
        ("body", pa.string()),
    ]
)

_QUERYABLE = {"SELECT", "EXPLAIN"}
_CATALOG = "log"  # the name the writer's connection gives the file

_IDLE, _STOP = object(), object()  # the writer thread's jobs besides a group to commit

_open_paths: set[str] = set()  # files open in this process: a second writer on one is refused
_open_lock = threading.Lock()


class QueryResult(msgspec.Struct, frozen=True):
    """Rows of a read-only query, with their column names."""

    columns: list[str]
    rows: list[tuple]


class _Append:
    __slots__ = ("blobs", "keys", "events", "future")

    def __init__(self, blobs: list[bytes], keys: list[str], events: list[AgentEvent]):
        self.blobs = blobs
        self.keys = keys
        self.events = events
        self.future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()


class _Checkpoint:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


class KeyIndex:
    """``hash(key) -> seq`` for every idempotency key in the log, in about 16 bytes a key.

    Most keys sit in two sorted numpy arrays (hashes, seqs); the newest in a dict until it is
    big enough to merge. A hit is only a candidate: the caller confirms it against the stored
    key. A key whose hash another key already holds is kept whole in ``collided``.

    A merge costs time that grows with the log (12 ms at 65,000 keys, 32 ms at a million,
    measured), so it runs on a thread of its own: the writer hands over the full dict, keeps
    answering from it meanwhile, and swaps the merged arrays in when they are ready. Until
    then no commit waits on it.
    """

    MERGE_AT = 65_536

    def __init__(self) -> None:
        self._hashes = np.empty(0, np.int64)
        self._seqs = np.empty(0, np.int64)
        self._fresh: dict[int, int] = {}
        self._merging: dict[int, int] = {}  # handed to the merge in flight; read-only meanwhile
        self._merge: concurrent.futures.Future[tuple[np.ndarray, np.ndarray]] | None = None
        self.collided: dict[str, int] = {}

    def __len__(self) -> int:
        self.settle()
        return self._hashes.size + len(self._merging) + len(self._fresh) + len(self.collided)

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> KeyIndex:
        """The index of every key in the ``events`` table (Python's hash is per process)."""
        index = cls()
        hashes, seqs = [], []
        reader = con.sql("SELECT key, seq FROM events").to_arrow_reader(100_000)
        for chunk in reader:
            keys = chunk.column(0).to_pylist()
            hashes.append(np.fromiter(map(hash, keys), np.int64, len(keys)))
            seqs.append(chunk.column(1).to_numpy())
        if hashes:
            all_hashes, all_seqs = np.concatenate(hashes), np.concatenate(seqs)
            order = np.argsort(all_hashes, kind="stable")
            all_hashes, all_seqs = all_hashes[order], all_seqs[order]
            twice = np.flatnonzero(all_hashes[1:] == all_hashes[:-1]) + 1
            if twice.size:  # keys sharing a hash: keep the first in the arrays, the rest whole
                clashing = [int(s) for s in all_seqs[twice]]
                for key, seq in con.execute(
                    "SELECT key, seq FROM events WHERE seq IN (SELECT unnest(?))", [clashing]
                ).fetchall():
                    index.collided[key] = seq
                keep = np.ones(all_hashes.size, bool)
                keep[twice] = False
                all_hashes, all_seqs = all_hashes[keep], all_seqs[keep]
            index._hashes, index._seqs = all_hashes, all_seqs
        return index

    def find(self, hashes: list[int]) -> dict[int, int]:
        """``{position in hashes: seq}`` for the hashes present."""
        self.settle()
        hits: dict[int, int] = {}
        # A set intersection first: hits are rare, and a Python loop per key is not.
        for recent in (self._fresh, self._merging):
            if recent and not recent.keys().isdisjoint(hashes):
                for i, h in enumerate(hashes):
                    seq = recent.get(h)
                    if seq is not None:
                        hits[i] = seq
        if self._hashes.size:
            wanted = np.fromiter(hashes, np.int64, len(hashes))
            pos = np.searchsorted(self._hashes, wanted)
            np.minimum(pos, self._hashes.size - 1, out=pos)
            for i in np.flatnonzero(self._hashes[pos] == wanted):
                hits[int(i)] = int(self._seqs[pos[i]])
        return hits

    def add_new(self, hashes: list[int], seqs: range) -> None:
        """Add hashes known to be absent and distinct."""
        self._fresh.update(zip(hashes, seqs))
        if len(self._fresh) >= self.MERGE_AT:
            self.settle(wait=True)  # the merge before: done long since, unless appends race it
            self._merging, self._fresh = self._fresh, {}
            self._merge = _MERGER.submit(_merged, self._hashes, self._seqs, self._merging)

    def add(self, key: str, h: int, seq: int) -> None:
        if self.find([h]):
            self.collided[key] = seq
        else:
            self.add_new([h], range(seq, seq + 1))

    def settle(self, *, wait: bool = False) -> None:
        """Swap in the merge in flight if it is done (or, with ``wait``, once it is)."""
        merge = self._merge
        if merge is None or not (wait or merge.done()):
            return
        self._merge = None
        try:
            self._hashes, self._seqs = merge.result()
        except Exception:
            # Lose no key: they go back to the dict, and the next merge takes them along.
            logger.exception("merging the idempotency key index failed; it will try again")
            self._fresh.update(self._merging)
        self._merging = {}


def _merged(
    hashes: np.ndarray, seqs: np.ndarray, fresh: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """New sorted arrays holding ``fresh`` too (the inputs are left as they are)."""
    n = len(fresh)
    new_hashes = np.fromiter(fresh.keys(), np.int64, n)
    new_seqs = np.fromiter(fresh.values(), np.int64, n)
    order = np.argsort(new_hashes)
    new_hashes, new_seqs = new_hashes[order], new_seqs[order]
    pos = np.searchsorted(hashes, new_hashes)
    return np.insert(hashes, pos, new_hashes), np.insert(seqs, pos, new_seqs)


# One thread merges for every log of the process: merges are rare and short.
_MERGER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eventlog-keys")


class DuckDBLog(EventLog):
    """An append-only event log in one DuckDB file, written by one thread at a time of one
    process.

    Parameters
    ----------
    path
        The DuckDB file (created if missing), or ``":memory:"``.
    projector
        Folds each batch into derived tables inside the batch's transaction.
    max_batch
        Events per transaction at most (an append call larger than this goes in whole).
    subscriber_buffer
        Live records a subscriber may hold before it is dropped.
    idle_checkpoint
        WAL bytes worth a checkpoint once no append has come for ``idle_gap`` seconds.
    memory_limit
        DuckDB's buffer pool for this file (shared with reader cursors), or None for
        DuckDB's default; not applied to ``":memory:"``, whose tables live in that pool.
    checkpoint_threshold
        WAL size at which DuckDB checkpoints by itself, stalling the commit that crosses it.
    idle_gap
        Seconds without an append after which the writer checkpoints.
    lull_checkpoint
        WAL bytes from which ``LULL`` seconds without an append are enough to checkpoint
        (None: half of ``checkpoint_threshold``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        projector: Projector | None = None,
        *,
        max_batch: int = MAX_BATCH,
        subscriber_buffer: int = DEFAULT_BUFFER,
        idle_checkpoint: int = IDLE_CHECKPOINT_BYTES,
        memory_limit: str | None = MEMORY_LIMIT,
        checkpoint_threshold: str = CHECKPOINT_THRESHOLD,
        idle_gap: float = IDLE_GAP,
        lull_checkpoint: int | None = None,
    ):
        self.path = str(path)
        self._wal = self.path + ".wal"
        self._idle_checkpoint = idle_checkpoint
        self._idle_gap = idle_gap
        # Sizes are checked before the file is opened: a bad one makes nothing.
        threshold = _size(checkpoint_threshold, "checkpoint_threshold")
        if memory_limit:
            _size(memory_limit, "memory_limit")
        self._lull_checkpoint = (
            _bytes(threshold) // 2 if lull_checkpoint is None else lull_checkpoint
        )
        self._projector = projector
        self._max_batch = max_batch
        self._ident = self.path if self.path == ":memory:" else os.path.realpath(self.path)
        with _open_lock:
            if self._ident != ":memory:" and self._ident in _open_paths:
                raise LogLocked(
                    f"event log {self.path} is already open in this process (PID {os.getpid()}); "
                    "share that DuckDBLog instead of opening the file twice"
                )
            self._con = _connect(self.path)
            if self._ident != ":memory:":
                _open_paths.add(self._ident)
        try:
            if memory_limit and self._ident != ":memory:":
                self._con.execute(f"SET memory_limit = '{memory_limit}'")
            self._con.execute(f"SET checkpoint_threshold = '{threshold}'")
            self._con.execute(_DDL)
            _check_no_table_named_like_the_batch(self._con)
            if projector is not None:
                projector.setup(self._con)
            self._seq = self._con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][
                0
            ]
            self._keys = KeyIndex.load(self._con)
            self._root = self._con.cursor()  # reader cursors are made from this one, under a lock
        except BaseException:
            self._release()
            raise
        self._root_lock = threading.Lock()
        # The committed tail, one chunk per commit: (first seq, events, blobs, bytes), oldest
        # first. Records are made only when read: most commits are never read from here.
        self._recent: list[tuple[int, list[AgentEvent], list[bytes], int]] = []
        self._recent_firsts: list[int] = []  # first seq of each chunk, for bisect
        self._recent_count = 0
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()
        self._hub = Hub(self._read_range, buffer=subscriber_buffer, committed=self._seq)
        self._queue: deque[_Append | _Checkpoint] = deque()
        self._cv = threading.Condition()
        # Who commits: one thread at a time holds the connection (``_committing``), either
        # an appending thread (``_lead``) or the writer thread, which also checkpoints.
        self._committing = False
        self._holder = 0  # ident of the thread inside a job (a commit or checkpoint), else 0
        self._dirty = False  # committed since the last checkpoint
        self._last_commit = 0.0  # time.monotonic() at the end of the last commit
        self._wal_size = 0  # the WAL's size after the last commit or checkpoint
        self._writer_deadline = -math.inf  # until when the writer thread waits, if it does
        self._closing = False
        self._closed = False
        self._close_lock = threading.Lock()
        self.batches = 0  # committed transactions, for benchmarks
        self._writer = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._writer.start()

    # --- appending ---------------------------------------------------------------------------

    def append(self, events: Sequence[AgentEvent], keys: Sequence[str]) -> list[int]:
        return self.append_encoded(encode_append(events, keys), keys)

    def append_encoded(self, blobs: Sequence[bytes], keys: Sequence[str]) -> list[int]:
        """Append already-encoded events (each is decoded to validate it).

        When nobody is committing, the calling thread commits its append itself (with
        whatever else is queued by then): a hand-over to the writer thread and back cost
        ~0.3 ms a call here, two thread wake-ups and the GIL passed between them."""
        item = self._checked(blobs, keys)
        if self._enqueue(item, lead=True):
            self._lead(item)
        return item.future.result()

    async def append_async(self, events: Sequence[AgentEvent], keys: Sequence[str]) -> list[int]:
        """``append`` for an asyncio caller: awaits the commit without holding a thread."""
        return await asyncio.wrap_future(self.submit_encoded(encode_append(events, keys), keys))

    def submit_encoded(
        self, blobs: Sequence[bytes], keys: Sequence[str]
    ) -> concurrent.futures.Future[list[int]]:
        """Queue an append and return at once; the future resolves to the seqs after commit.

        A malformed event raises ``MalformedEvent`` here, before anything is queued. The
        writer thread commits it (or an appending thread that is committing already).
        """
        item = self._checked(blobs, keys)
        self._enqueue(item, lead=False)
        return item.future

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file (runs between batches)."""
        item = _Checkpoint()
        if self._enqueue(item, lead=True):
            self._lead(item)
        item.future.result()

    def _checked(self, blobs: Sequence[bytes], keys: Sequence[str]) -> _Append:
        blobs = [blob if type(blob) is bytes else bytes(blob) for blob in blobs]
        events = decode_append(blobs, keys)
        return _Append(blobs, keys if type(keys) is list else list(keys), events)

    def _enqueue(self, item: _Append | _Checkpoint, *, lead: bool) -> bool:
        """Queue ``item``; True if the caller is to carry it out itself (it asked to lead,
        and nobody holds the connection). Whoever holds it takes what is queued, or hands
        it to the writer thread, before letting go."""
        with self._cv:
            if self._closing:
                raise LogClosed(f"event log {self.path} is closed")
            if lead and self._holder == threading.get_ident():
                # A listener or projector appending: it would wait on the commit it is in.
                raise EventError(
                    f"cannot append to event log {self.path} and wait from the thread that is "
                    "committing to it (a listener or projector): it would wait for itself; "
                    "use submit_encoded, which queues the append and returns at once"
                )
            self._queue.append(item)
            if self._committing:
                return False
            if lead:
                self._committing = True
                return True
            self._cv.notify()
            return False

    def _lead(self, item: _Append | _Checkpoint) -> None:
        """On the calling thread, which holds the connection: commit from the head of the
        queue until ``item`` is done, then let go (the writer thread takes what is left)."""
        group: list[_Append] = []
        try:
            while not item.future.done():
                with self._cv:
                    group, control = self._take_group()
                self._do(group, control)
                group = []
        except BaseException as exc:
            # Interrupted mid-commit (Ctrl-C, say): whether that group reached the log is
            # unknown. Its appenders are told so; the same keys make a retry safe.
            for other in group:
                _fail(
                    other.future,
                    EventError(
                        f"an append to event log {self.path} was interrupted while committing "
                        f"({exc!r}): it may or may not be in the log; append it again with "
                        "the same keys to find out"
                    ),
                )
            raise
        finally:
            with self._cv:
                self._let_go()

    # --- reading -------------------------------------------------------------------------------

    def read(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        recent = self._from_recent(after, run_id, step_id, limit)
        if recent is not None:
            return [record for record, _ in recent]
        return [
            Record(seq, decode(body))
            for seq, body in self._select(after, None, run_id, step_id, limit)
        ]

    def read_encoded(
        self,
        after: int = 0,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, bytes]]:
        """Like ``read`` but the stored bytes, undecoded (for passing on to other processes)."""
        recent = self._from_recent(after, run_id, step_id, limit)
        if recent is not None:
            return [(record.seq, blob) for record, blob in recent]
        return [
            (seq, body.encode()) for seq, body in self._select(after, None, run_id, step_id, limit)
        ]

    def read_recent_encoded(
        self, after: int = 0, *, run_id: str | None = None, limit: int | None = None
    ) -> list[tuple[int, bytes]] | None:
        """``read_encoded`` from the in-memory tail only, or None if the tail does not reach
        back to ``after``. Never touches DuckDB, so an event loop may call it: a live
        subscriber's poll is answered without a hop to a reader thread."""
        recent = self._from_recent(after, run_id, None, limit)
        if recent is None:
            return None
        return [(record.seq, blob) for record, blob in recent]

    def max_seq(self) -> int:
        return self._hub.committed

    def subscribe(self, after: int = 0, *, run_id: str | None = None) -> HubSubscription:
        return self._hub.subscribe(after, run_id=run_id)

    def add_listener(self, listener: Any) -> None:
        """Call ``listener(last_seq)`` after every commit, on the thread that committed (keep it
        quick). It may queue appends (``submit_encoded``) but not wait on one: that thread
        holds the connection, so ``append`` and ``checkpoint`` from it raise ``EventError``."""
        self._hub.add_listener(listener)

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of this process's database for reading (MVCC: it sees committed data only).

        Use it for reads only: only the log's committer may change its tables.
        """
        with self._root_lock:
            if self._closed:
                raise LogClosed(f"event log {self.path} is closed")
            cursor = self._root.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run one SELECT (or EXPLAIN) statement and return its rows.

        A guard against writing the log by mistake, not a sandbox: a SELECT can still read
        files (``read_csv``). Untrusted SQL goes through ``projections.sql.readonly_query``.
        """
        with self.reader() as cur:
            statements = cur.extract_statements(sql)
            if len(statements) != 1:
                raise ValueError(f"expected one SQL statement, got {len(statements)}")
            kind = statements[0].type.name
            if kind not in _QUERYABLE:
                raise ValueError(f"only read-only queries (SELECT) are allowed here, not {kind}")
            result = cur.execute(sql, params)
            columns = [d[0] for d in result.description or ()]
            return QueryResult(columns, result.fetchall())

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, checkpoint, and release the file."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._writer.join()
        with self._close_lock:  # the first closer releases; a writer that failed left it open
            if self._closed:
                return
            self._hub.close()
            with self._root_lock:
                self._closed = True
            self._release()

    def _release(self) -> None:
        try:
            if hasattr(self, "_root"):
                self._root.close()
            self._con.close()
        finally:
            with _open_lock:
                _open_paths.discard(self._ident)

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_loop()
        except BaseException as exc:  # a bug here must fail the waiting appenders, not hang them
            logger.exception("the writer of %s stopped", self.path)
            with self._cv:
                self._closing = True
                pending, self._queue = list(self._queue), deque()
            for item in pending:
                _fail(item.future, LogClosed(f"the writer of event log {self.path} failed: {exc!r}"))

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                job = self._next_job()
            if job is None:
                continue
            if job is _STOP:
                break
            try:
                while job is not None:
                    if job is _IDLE:
                        self._idle_checkpoint_now()
                    else:
                        self._do(*job)
                    with self._cv:
                        job = self._take_group() if self._queue else None
                        if job is None:
                            self._let_go()
            except BaseException:
                with self._cv:
                    self._let_go()
                raise
        try:
            self._checkpoint_now()  # a clean shutdown leaves no WAL to replay
        except duckdb.Error:
            pass

    def _next_job(self) -> Any:
        """The writer thread's next job, waited for (caller holds ``_cv``): a group to commit,
        ``_IDLE``, ``_STOP``, or None to look again. Any but None hands it the connection."""
        if self._committing:
            # An appender commits: when it lets go, it hands over what is queued, or wakes
            # this thread to see whether appends have paused since.
            self._wait(None)
            return None
        if self._queue:
            self._committing = True
            return self._take_group()
        if self._closing:
            self._committing = True
            return _STOP
        if not self._dirty:
            self._wait(None)
            return None
        deadline = self._idle_deadline()
        if time.monotonic() < deadline:
            self._wait(deadline)
            return None
        self._committing = True
        return _IDLE

    def _idle_deadline(self) -> float:
        """When appends will have paused long enough for a checkpoint (caller holds ``_cv``)."""
        gap = LULL if self._wal_size >= self._lull_checkpoint else self._idle_gap
        return self._last_commit + gap

    def _wait(self, deadline: float | None) -> None:
        """The writer thread waits until ``deadline`` (None: until woken); caller holds ``_cv``."""
        self._writer_deadline = math.inf if deadline is None else deadline
        try:
            self._cv.wait(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        finally:
            self._writer_deadline = -math.inf  # awake, it looks at everything again itself

    def _let_go(self) -> None:
        """Give the connection back (caller holds ``_cv``). Wake the writer thread if there is
        something for it: appends queued meanwhile, a close, or an idle checkpoint due sooner
        than it is waiting for (it was waiting with no deadline, or the WAL outgrew the lull
        bound). Otherwise its own deadline wakes it: no wake-up per commit."""
        self._committing = False
        if self._queue or self._closing or (
            self._dirty and self._idle_deadline() < self._writer_deadline
        ):
            self._cv.notify()

    def _do(self, group: list[_Append], control: _Checkpoint | None) -> None:
        """Carry out one job; the caller holds the connection."""
        self._holder = threading.get_ident()
        try:
            if control is not None:
                _settle(control.future, self._checkpoint_now)
                self._dirty = False
            else:
                self._commit_group(group)
                self._dirty = True
                self._last_commit = time.monotonic()
        finally:
            self._holder = 0
        self._wal_size = self._wal_bytes()  # only the holder writes the WAL (DuckDB may checkpoint)

    def _idle_checkpoint_now(self) -> None:
        # A pause after a burst (or a lull once the WAL is big): checkpoint now, while
        # nobody waits, so the next burst does not pay for it (a checkpoint stalls commits,
        # and DuckDB's own, at CHECKPOINT_THRESHOLD of WAL, would stall a burst for 100-300 ms).
        self._dirty = False
        if self._wal_size >= self._idle_checkpoint:
            try:
                self._checkpoint_now()
            except duckdb.Error:
                logger.exception("idle checkpoint of %s failed", self.path)
            self._wal_size = self._wal_bytes()

    def _take_group(self) -> tuple[list[_Append], _Checkpoint | None]:
        """Everything pending, up to ``max_batch`` events (caller holds ``_cv``)."""
        first = self._queue.popleft()
        if isinstance(first, _Checkpoint):
            return [], first
        group, count = [first], len(first.blobs)
        while self._queue and isinstance(self._queue[0], _Append):
            if count + len(self._queue[0].blobs) > self._max_batch:
                break
            item = self._queue.popleft()
            assert isinstance(item, _Append)
            group.append(item)
            count += len(item.blobs)
        return group, None

    def _checkpoint_now(self) -> None:
        self._con.execute("CHECKPOINT")

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:  # no WAL yet, or an in-memory log
            return 0

    def _commit_group(self, group: list[_Append]) -> None:
        try:
            results = self._write(group)
        except Exception as exc:
            if len(group) == 1:
                # DuckDB refuses bytes that are not UTF-8 text: say which, as for any other
                # malformed append (checked only now, since the check costs every append).
                problem = text_problem(group[0].blobs, group[0].keys)
                if not problem and isinstance(exc, duckdb.ConversionException):
                    # msgspec's int has no bound; the projections' BIGINT columns do.
                    problem = (
                        f"an event holds a number its column cannot store "
                        f"({str(exc).splitlines()[0]}); nothing of this append was written"
                    )
                _fail(group[0].future, MalformedEvent(problem) if problem else exc)
                return
            # One bad append (say, a projector error) must not sink the others: retry alone.
            for item in group:
                self._commit_group([item])
            return
        for item, seqs in zip(group, results):
            _deliver(item.future, seqs)

    def _write(self, group: list[_Append]) -> list[list[int]]:
        """Commit one group in one transaction; return each append's seqs."""
        if len(group) == 1:  # one append (an idle log, or a lone appender): no copies
            keys, events, blobs = group[0].keys, group[0].events, group[0].blobs
        else:
            keys = [key for item in group for key in item.keys]
            events = [event for item in group for event in item.events]
            blobs = [blob for item in group for blob in item.blobs]
        hashes = list(map(hash, keys))
        known, clashes = self._known(keys, hashes)
        first = self._seq + 1
        simple = not known and not clashes and len(set(hashes)) == len(hashes)
        if simple:
            # The common case: every key is new and distinct, so seqs simply follow on.
            fresh_keys, fresh_hashes, fresh_events, fresh_blobs = keys, hashes, events, blobs
            results, s = [], first
            for item in group:
                results.append(list(range(s, s + len(item.keys))))
                s += len(item.keys)
        else:
            fresh_keys, fresh_hashes, fresh_events, fresh_blobs = [], [], [], []
            fresh: dict[str, int] = {}
            results, s, i = [], first, 0
            for item in group:
                seqs = []
                for blob, key, event in zip(item.blobs, item.keys, item.events):
                    seq = known.get(key) or fresh.get(key)
                    if seq is None:
                        seq = fresh[key] = s
                        s += 1
                        fresh_keys.append(key)
                        fresh_hashes.append(hashes[i])
                        fresh_events.append(event)
                        fresh_blobs.append(blob)
                    seqs.append(seq)
                    i += 1
                results.append(seqs)
        if not fresh_keys:
            return results
        seqs = range(first, first + len(fresh_keys))
        batch = pa.Table.from_arrays(
            [
                pa.array(np.arange(first, first + len(fresh_keys), dtype=np.int64)),
                pa.array([e.run_id for e in fresh_events], pa.string()),
                pa.array([getattr(e, "step_id", None) for e in fresh_events], pa.string()),
                pa.array([_KIND[type(e)] for e in fresh_events], pa.string()),
                pa.array([e.ts for e in fresh_events], pa.float64()),
                pa.array(fresh_keys, pa.string()),
                # Decoding each blob already proved it UTF-8: reinterpret, do not re-validate.
                pa.array(fresh_blobs, pa.binary()).view(pa.string()),
            ],
            schema=_ARROW_SCHEMA,
        )
        records = list(map(Record, seqs, fresh_events)) if self._projector is not None else None
        con = self._con
        # DuckDB refuses an Arrow scan while an earlier result (say, the projector's last
        # SELECT) is unfinished on the connection: finish it first.
        con.complete()
        if self._projector is None or not self._projector.touches(records):
            # One statement is one transaction: fewer calls into DuckDB, each of which gives
            # up the GIL and must win it back from the appenders' threads.
            _insert(con, batch)
        else:
            con.begin()
            try:
                _insert(con, batch)
                self._projector.apply(con, records)
                con.commit()
            except BaseException:
                try:
                    con.rollback()
                except duckdb.Error:  # the failed statement may have ended the transaction
                    pass
                rollback = getattr(self._projector, "rollback", None)
                if rollback is not None:
                    rollback()
                raise
        self.batches += 1
        self._seq = seqs[-1]
        if simple:
            self._keys.add_new(fresh_hashes, seqs)
        else:
            for key, h, seq in zip(fresh_keys, fresh_hashes, seqs):
                self._keys.add(key, h, seq)
        self._remember(first, fresh_events, fresh_blobs)
        self._hub.publish(seqs[-1], records or (lambda: list(map(Record, seqs, fresh_events))))
        return results

    def _known(self, keys: list[str], hashes: list[int]) -> tuple[dict[str, int], set[str]]:
        """Which of these keys the log already holds (with their seqs), and which new keys
        have a hash some other key already has."""
        index = self._keys
        found = (
            {key: index.collided[key] for key in keys if key in index.collided}
            if index.collided
            else {}
        )
        candidates = {keys[i]: seq for i, seq in index.find(hashes).items() if keys[i] not in found}
        clashes: set[str] = set()
        if candidates:
            stored = dict(
                self._con.execute(
                    "SELECT seq, key FROM events WHERE seq IN (SELECT unnest(?))",
                    [sorted(set(candidates.values()))],
                ).fetchall()
            )
            for key, seq in candidates.items():
                if stored.get(seq) == key:
                    found[key] = seq
                else:
                    clashes.add(key)
        return found, clashes

    # --- the recent tail, and reads from the table ----------------------------------------------

    def _remember(self, first: int, events: list[AgentEvent], blobs: list[bytes]) -> None:
        nbytes = sum(map(len, blobs))
        with self._recent_lock:
            self._recent_firsts.append(first)
            self._recent.append((first, events, blobs, nbytes))
            self._recent_count += len(events)
            self._recent_bytes += nbytes
            drop = 0
            while len(self._recent) - drop > 1 and (
                self._recent_count > RECENT_RECORDS or self._recent_bytes > RECENT_BYTES
            ):
                _, old_events, _, old_bytes = self._recent[drop]
                self._recent_count -= len(old_events)
                self._recent_bytes -= old_bytes
                drop += 1
            if drop:
                del self._recent[:drop], self._recent_firsts[:drop]

    def _from_recent(
        self,
        after: int,
        run_id: str | None,
        step_id: str | None,
        limit: int | None,
        upto: int | None = None,
    ) -> list[tuple[Record, bytes]] | None:
        """The answer from the in-memory tail, or None if it does not reach back to ``after``."""
        if limit is not None and limit <= 0:
            return []  # as the table's LIMIT 0 answers
        with self._recent_lock:
            if not self._recent or after < self._recent_firsts[0] - 1:
                return None
            chunk = max(bisect_right(self._recent_firsts, after + 1) - 1, 0)
            chunks = self._recent[chunk:]
        out: list[tuple[Record, bytes]] = []
        for first, events, blobs, _ in chunks:
            start = max(after + 1 - first, 0)  # seqs within a chunk are dense
            for seq, event, blob in zip(
                range(first + start, first + len(events)), events[start:], blobs[start:]
            ):
                if upto is not None and seq > upto:
                    return out
                if run_id is not None and event.run_id != run_id:
                    continue
                if step_id is not None and getattr(event, "step_id", None) != step_id:
                    continue
                out.append((Record(seq, event), blob))
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def _select(
        self,
        after: int,
        upto: int | None,
        run_id: str | None,
        step_id: str | None,
        limit: int | None,
    ) -> list[tuple[int, str]]:
        where, params = ["seq > ?"], [after]
        if upto is not None:
            where.append("seq <= ?")
            params.append(upto)
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if step_id is not None:
            where.append("step_id = ?")
            params.append(step_id)
        sql = f"SELECT seq, body FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.reader() as cur:
            return cur.execute(sql, params).fetchall()

    def _read_range(self, after: int, upto: int, run_id: str | None, limit: int) -> list[Record]:
        recent = self._from_recent(after, run_id, None, limit, upto)
        if recent is not None:
            return [record for record, _ in recent]
        return [
            Record(seq, decode(body))
            for seq, body in self._select(after, upto, run_id, None, limit)
        ]


_KIND = {t: t.__struct_config__.tag for t in AgentEvent.__args__}  # type: ignore[attr-defined]


def _insert(con: duckdb.DuckDBPyConnection, eventlog_arrow_batch: pa.Table) -> None:
    """Insert an Arrow batch into ``events`` in one call into DuckDB.

    The statement reads the local variable by its name (DuckDB's replacement scan of the
    calling frame; ``_check_no_table_named_like_the_batch`` makes sure no table shadows it).
    ``con.from_arrow(batch).insert_into`` does the same through DuckDB's Python relation
    layer, which cost 0.2-1 ms more CPU a commit here (measured, batches of 10-1000): the
    writer's time under the GIL, paid on every commit.
    """
    con.execute(f"INSERT INTO events SELECT * FROM {_BATCH_NAME}")


_BATCH_NAME = "eventlog_arrow_batch"


def _check_no_table_named_like_the_batch(con: duckdb.DuckDBPyConnection) -> None:
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? "
        "UNION ALL SELECT count(*) FROM duckdb_views() WHERE view_name = ?",
        [_BATCH_NAME, _BATCH_NAME],
    ).fetchall()
    if any(n for (n,) in found):
        raise EventError(
            f"the database holds a table or view named {_BATCH_NAME!r}, which the event log's "
            "inserts would read instead of their own rows; rename or drop it"
        )


def _settle(future: concurrent.futures.Future[Any], fn: Any) -> None:
    try:
        _deliver(future, fn())
    except Exception as exc:
        _fail(future, exc)


# An appender may stop waiting (its task was cancelled, which cancels the future): what was
# committed stays committed, and the thread committing must not die on the settled future.
def _deliver(future: concurrent.futures.Future[Any], result: Any) -> None:
    if not future.done():
        try:
            future.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled between the check and the set


def _fail(future: concurrent.futures.Future[Any], exc: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])(i?)B")


def _size(value: str, name: str) -> str:
    if not _SIZE.fullmatch(value):
        raise ValueError(f"{name} {value!r} should look like '256MB'")
    return value


def _bytes(size: str) -> int:
    """Bytes in a size ``_size`` accepted, read as DuckDB reads it (MB = 1000², MiB = 1024²)."""
    number, unit, binary = _SIZE.fullmatch(size).groups()  # type: ignore[union-attr]
    return int(float(number) * (1024 if binary else 1000) ** (" KMGT".index(unit)))


def _connect(path: str) -> duckdb.DuckDBPyConnection:
    """The writer's connection, with the file attached as ``log`` and in use."""
    # No extension is fetched or loaded behind a query's back (a name like
    # "https://….csv" would install httpfs): what the log needs is built in.
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    if path == ":memory:":
        return duckdb.connect(path, config=config)
    con = duckdb.connect(config=config)
    try:
        con.execute(f"SET temp_directory = '{_quoted(path + '.tmp')}'")  # as for a file opened directly
        con.execute(f"ATTACH '{_quoted(path)}' AS {_CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        con.execute(f"USE {_CATALOG}")
        # Without the in-memory catalog, every cursor starts in the file (USE costs ~0.15 ms).
        con.execute("DETACH memory")
        return con
    except duckdb.IOException as exc:
        con.close()
        text = str(exc)
        if "lock" not in text.lower():
            raise
        raise LogLocked(_lock_message(path, text)) from None
    except BaseException:
        con.close()
        raise


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def _lock_message(path: str, text: str) -> str:
    """DuckDB's lock error, said plainly: which process holds the file and what to do."""
    pid = re.search(r"PID (\d+)", text)
    holder = re.search(r"held in (.+?) \(PID", text)
    who = f"process {pid.group(1)}" if pid else "another process"
    if holder:
        who += f" ({holder.group(1)})"
    return (
        f"event log {path} is held by {who}; DuckDB lets one process write a file, so stop that "
        "process or go through it (the 'eventlog' Ray actor) instead of opening the file again"
    )


__all__ = ["DuckDBLog", "QueryResult"]
