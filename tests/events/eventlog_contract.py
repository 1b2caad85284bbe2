"""The ``EventLog`` contract, written once and run against every backend.

Subclass ``LogContract`` (its name has no ``Test`` prefix, so pytest does not collect it on its
own) and give it ``make_log(tmp_path, subscriber_buffer)``; the subclass may also set
``encoded`` to False if its log has no ``append_encoded``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from eventlog_helpers import batch, blob, delta, requested, started
from events.errors import LogClosed, MalformedEvent, SubscriberDropped
from events.log import EventLog, Record
from events.types import SCHEMA_VERSION, OutputDelta, RunCancelled


def drain(sub: Any, until_seq: int, timeout: float = 20.0) -> list[Record]:
    """Read a subscription until it has handed out ``until_seq``."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while not got or got[-1].seq < until_seq:
        assert time.monotonic() < deadline, (
            f"subscription stalled at {got[-1].seq if got else None}"
        )
        got.extend(sub.get(timeout=0.5))
    return got


class LogContract:
    def make_log(self, tmp_path: Any, subscriber_buffer: int = 10_000) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def log(self, tmp_path):
        log = self.make_log(tmp_path)
        yield log
        log.close()

    # --- appending and reading -------------------------------------------------------------

    def test_empty_log(self, log):
        assert log.max_seq() == 0
        assert log.read() == []

    def test_append_gives_dense_increasing_seqs(self, log):
        events, keys = batch("r1", "s1", 0, 3)
        assert log.append(events, keys) == [1, 2, 3]
        events, keys = batch("r1", "s1", 3, 2)
        assert log.append(events, keys) == [4, 5]
        assert log.max_seq() == 5
        records = log.read()
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        assert [r.event.offset for r in records] == [0, 64, 128, 192, 256]

    def test_read_after_by_run_by_step_with_limit(self, log):
        log.append([requested("r1"), requested("r2")], ["r1/req", "r2/req"])
        log.append([started("r1", "a"), started("r2", "a"), started("r1", "b")], ["1a", "2a", "1b"])
        log.append([delta("r1", "a", 0), delta("r1", "b", 0)], ["1a0", "1b0"])
        assert [r.seq for r in log.read(2)] == [3, 4, 5, 6, 7]
        assert [r.seq for r in log.read(run_id="r1")] == [1, 3, 5, 6, 7]
        assert [r.seq for r in log.read(run_id="r1", step_id="b")] == [5, 7]
        assert [r.seq for r in log.read(3, run_id="r1", limit=2)] == [5, 6]
        assert log.read(run_id="nope") == []
        assert log.read(7) == []

    def test_same_key_again_returns_original_seq_and_writes_nothing(self, log):
        events, keys = batch("r1", "s1", 0, 3)
        assert log.append(events, keys) == [1, 2, 3]
        # A retry of the whole append, then one that repeats a key next to a new one.
        assert log.append(events, keys) == [1, 2, 3]
        assert log.append([delta("r1", "s1", 99), delta("r1", "s1", 3)], [keys[1], "new"]) == [2, 4]
        assert log.max_seq() == 4
        assert [r.event.offset for r in log.read()] == [0, 64, 128, 192]

    def test_same_key_twice_in_one_append_is_written_once(self, log):
        seqs = log.append([delta("r1", "s1", 0), delta("r1", "s1", 1)], ["k", "k"])
        assert seqs == [1, 1]
        assert log.max_seq() == 1

    def test_malformed_event_refuses_its_append_and_writes_nothing(self, log):
        log.append(*batch("r1", "s1", 0, 2))
        bad = OutputDelta(run_id="r1", ts=1.0, step_id="s1", text=123, offset=0)  # type: ignore[arg-type]
        with pytest.raises(MalformedEvent, match=r"event 1 \(key 'b'\).*text"):
            log.append([delta("r1", "s1", 5), bad], ["a", "b"])
        assert log.max_seq() == 2
        # The good event of the refused append was not written: its key is still free.
        assert log.append([delta("r1", "s1", 5)], ["a"]) == [3]

    def test_typed_events_are_checked_like_encoded_ones(self, log):
        # Text that looks like the seams of a JSON array stays text; a typed event claiming a
        # newer schema version is refused by name, as its bytes would be.
        seams = OutputDelta(run_id="r1", ts=1.0, step_id="s1", text='"},{"kind":"x"}],[', offset=0)
        assert log.append([seams, delta("r1", "s1", 1)], ["a", "b"]) == [1, 2]
        assert log.read()[0].event == seams
        newer = RunCancelled(run_id="r1", ts=1.0, v=SCHEMA_VERSION + 1)
        with pytest.raises(MalformedEvent, match=r"event 1 \(key 'n'\).*newer than this build reads"):
            log.append([delta("r1", "s1", 2), newer], ["c", "n"])
        assert log.max_seq() == 2

    def test_keys_must_match_events(self, log):
        with pytest.raises(MalformedEvent, match="2 events but 1 idempotency keys"):
            log.append([delta("r", "s", 0), delta("r", "s", 1)], ["k"])
        with pytest.raises(MalformedEvent, match="non-empty strings"):
            log.append([delta("r", "s", 0)], [""])
        assert log.max_seq() == 0

    def test_encoded_events_keep_their_bytes(self, log):
        data = [blob(delta("r1", "s1", i)) for i in range(3)]
        assert log.append_encoded(data, ["a", "b", "c"]) == [1, 2, 3]
        assert [r.event for r in log.read()] == [delta("r1", "s1", i) for i in range(3)]

    def test_bytes_that_are_not_text_refuse_their_append_by_name(self, log):
        # The decoder reads no unknown field, so its bytes are checked apart, as is a key
        # holding a lone surrogate: each is a malformed append, not a storage error.
        good = blob(delta("r", "s", 0))
        not_utf8 = good[:-1] + b',"later_field":"\xff"}'
        with pytest.raises(MalformedEvent, match=r"event 1 \(key 'b'\) is not UTF-8 text"):
            log.append_encoded([good, not_utf8], ["a", "b"])
        with pytest.raises(MalformedEvent, match=r"idempotency key 0 .* is not UTF-8 text"):
            log.append_encoded([good], ["k\ud800"])
        with pytest.raises(MalformedEvent, match=r"unknown event kind \[1\]"):
            log.append_encoded([b'{"kind":[1],"run_id":"r","ts":1.0}'], ["x"])
        assert log.max_seq() == 0
        assert log.append_encoded([good], ["a"]) == [1]  # the refused keys were never taken

    def test_a_limit_of_nothing_reads_nothing(self, log):
        log.append(*batch("r", "s", 0, 3))
        assert log.read(limit=0) == []
        assert [r.seq for r in log.read(limit=2)] == [1, 2]

    def test_unknown_kind_and_newer_version_are_named(self, log):
        unknown = b'{"kind":"step_teleported","run_id":"r","ts":1.0}'
        with pytest.raises(MalformedEvent, match="unknown event kind 'step_teleported'"):
            log.append_encoded([unknown], ["u"])
        newer = b'{"kind":"run_cancelled","run_id":"r","ts":1.0,"v":%d}' % (SCHEMA_VERSION + 1)
        with pytest.raises(MalformedEvent, match="newer than this build reads"):
            log.append_encoded([newer], ["n"])
        with pytest.raises(MalformedEvent, match="not a JSON event object"):
            log.append_encoded([b"\xff\xfe"], ["x"])
        assert log.max_seq() == 0

    # --- concurrency ------------------------------------------------------------------------

    def test_concurrent_appenders_get_dense_ordered_seqs(self, log):
        threads, calls, size = 8, 25, 4
        results: dict[int, list[list[int]]] = {}

        def appender(t: int) -> None:
            mine = results.setdefault(t, [])
            for c in range(calls):
                mine.append(log.append(*batch(f"run{t}", "s", c * size, size)))

        workers = [threading.Thread(target=appender, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        total = threads * calls * size
        all_seqs = sorted(s for seqs in results.values() for call in seqs for s in call)
        assert all_seqs == list(range(1, total + 1))
        records = log.read()
        assert [r.seq for r in records] == list(range(1, total + 1))
        by_seq = {r.seq: r.event for r in records}
        for t, mine in results.items():
            previous = 0
            for c, call in enumerate(mine):
                # One append is atomic: its events sit next to each other, in its order,
                # after the appender's previous append.
                assert call == list(range(call[0], call[0] + size))
                assert call[0] > previous
                previous = call[-1]
                assert [by_seq[s] for s in call] == batch(f"run{t}", "s", c * size, size)[0]

    def test_malformed_append_among_concurrent_ones_does_not_sink_them(self, log):
        errors: list[Exception] = []
        done: list[list[int]] = []
        bad = OutputDelta(run_id="r", ts=1.0, step_id="s", text=None, offset=0)  # type: ignore[arg-type]

        def good(t: int) -> None:
            for c in range(10):
                done.append(log.append(*batch(f"g{t}", "s", c * 3, 3)))

        def malformed() -> None:
            for c in range(10):
                try:
                    log.append([delta("b", "s", c), bad], [f"b{c}", f"bad{c}"])
                except MalformedEvent as exc:
                    errors.append(exc)

        workers = [threading.Thread(target=good, args=(t,)) for t in range(4)]
        workers.append(threading.Thread(target=malformed))
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(errors) == 10
        assert len(done) == 40
        assert log.max_seq() == 120
        assert {r.event.run_id for r in log.read()} == {"g0", "g1", "g2", "g3"}

    # --- subscriptions ----------------------------------------------------------------------

    def test_subscription_catches_up_then_goes_live_without_gap_or_duplicate(self, log):
        for c in range(10):
            log.append(*batch("r1", "s", c * 30, 30))
        total = 300 + 40 * 25

        def writer() -> None:
            for c in range(40):
                log.append(*batch("r2", "s", c * 25, 25))

        sub = log.subscribe(after=100)
        thread = threading.Thread(target=writer)
        thread.start()
        got = drain(sub, total)
        thread.join()
        sub.close()
        assert [r.seq for r in got] == list(range(101, total + 1))
        assert sub.last_seq == total

    def test_subscription_of_one_run(self, log):
        log.append([delta("a", "s", 0), delta("b", "s", 0)], ["a0", "b0"])
        with log.subscribe(run_id="b") as sub:
            assert [r.seq for r in sub.get(timeout=1)] == [2]
            log.append([delta("a", "s", 1), delta("b", "s", 1)], ["a1", "b1"])
            assert [r.seq for r in sub.get(timeout=1)] == [4]
            assert sub.get(timeout=0.05) == []

    def test_subscription_from_beyond_the_end_waits_for_that_seq(self, log):
        log.append(*batch("r", "s", 0, 2))
        with log.subscribe(after=5) as sub:
            log.append(*batch("r", "s", 2, 5))
            assert [r.seq for r in drain(sub, 7)] == [6, 7]

    def test_slow_subscriber_is_dropped_and_can_resume(self, tmp_path):
        log = self.make_log(tmp_path, subscriber_buffer=50)
        try:
            log.append(*batch("r", "s", 0, 10))
            sub = log.subscribe()
            assert [r.seq for r in sub.get(timeout=1)] == list(range(1, 11))
            for c in range(1, 6):  # 100 records arrive while it reads nothing
                log.append(*batch("r", "s", c * 20, 20))
            assert sub.pending == 0  # the writer dropped it rather than buffer on
            with pytest.raises(SubscriberDropped, match="resubscribe from seq 10") as info:
                sub.get(timeout=1)
            assert info.value.last_seq == 10
            with log.subscribe(after=info.value.last_seq) as again:
                assert [r.seq for r in drain(again, 110)] == list(range(11, 111))
        finally:
            log.close()

    def test_subscriber_catching_up_is_not_dropped_for_a_long_history(self, tmp_path):
        log = self.make_log(tmp_path, subscriber_buffer=50)
        try:
            for c in range(25):
                log.append(*batch("r", "s", c * 100, 100))
            with log.subscribe() as sub:
                first = sub.get(timeout=1)  # one page of the catch-up, read from storage
                assert first[-1].seq < 2500
                for c in range(25, 28):  # live traffic meanwhile overflows the buffer
                    log.append(*batch("r", "s", c * 100, 100))
                rest = drain(sub, 2800)
            assert [r.seq for r in first + rest] == list(range(1, 2801))
        finally:
            log.close()

    def test_closing_mid_catch_up_hands_out_nothing_past_the_gap(self, tmp_path):
        # Live records buffered behind an unfinished catch-up are not handed out when the log
        # closes: the subscriber resumes from its last seq and misses nothing.
        log = self.make_log(tmp_path)
        for c in range(3):
            log.append(*batch("r", "s", c * 1000, 1000))
        sub = log.subscribe()
        first = sub.get(timeout=1)
        assert first[-1].seq < 3000
        log.append(*batch("r", "s", 3000, 1))  # live: into the buffer
        log.close()
        with pytest.raises(LogClosed, match=f"resubscribe from seq {first[-1].seq}$"):
            while True:
                assert sub.get(timeout=1)[-1].seq < 3000

    def test_an_async_read_given_up_mid_catch_up_loses_no_page(self, log):
        for c in range(3):
            log.append(*batch("r", "s", c * 1000, 1000))
        sub = log.subscribe()
        hub = sub._hub
        read_range = hub._read_range

        def slow_storage(*args):
            time.sleep(0.3)
            return read_range(*args)

        hub._read_range = slow_storage

        async def main() -> list[Record]:
            with pytest.raises(TimeoutError):  # the caller gives up while a page is read
                async with asyncio.timeout(0.05):
                    await sub.get_async(timeout=5)
            await asyncio.sleep(0.4)  # the abandoned read ends meanwhile
            got: list[Record] = []
            while not got or got[-1].seq < 3000:
                got += await sub.get_async(timeout=5)
            return got

        got = asyncio.run(main())
        sub.close()
        assert [r.seq for r in got] == list(range(1, 3001))

    def test_async_get_wakes_on_commit(self, log):
        sub = log.subscribe()

        async def main() -> tuple[list[Record], list[Record], float]:
            nothing = await sub.get_async(timeout=0.05)
            timer = threading.Timer(0.2, lambda: log.append(*batch("r", "s", 0, 2)))
            timer.start()
            t0 = time.monotonic()
            got = await sub.get_async(timeout=10)
            return nothing, got, time.monotonic() - t0

        nothing, got, waited = asyncio.run(main())
        sub.close()
        assert nothing == []
        assert [r.seq for r in got] == [1, 2]
        assert waited < 5  # woken by the commit, not by the timeout

    def test_close_ends_subscriptions_and_refuses_appends(self, tmp_path):
        log = self.make_log(tmp_path)
        log.append(*batch("r", "s", 0, 1))
        sub = log.subscribe(after=1)
        log.close()
        with pytest.raises(LogClosed):
            sub.get(timeout=1)
        with pytest.raises(LogClosed):
            log.append(*batch("r", "s", 1, 1))
