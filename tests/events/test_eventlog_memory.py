"""The contract suite against the in-memory reference log."""

from eventlog_contract import LogContract
from events.memory_log import InMemoryLog


class TestInMemoryLog(LogContract):
    def make_log(self, tmp_path, subscriber_buffer=10_000):
        return InMemoryLog(subscriber_buffer=subscriber_buffer)
