"""A call over the log's wire that is cancelled just as its answer arrives stays cancelled.

``orchestrator serve`` once hung on SIGTERM: the API's live feed was cancelled in the same
loop turn as its long-poll's answer came in, ``asyncio.wait_for`` (Python 3.11) returned the
answer instead of raising, and the feed polled on, so shutdown waited for it for ever.
"""

from __future__ import annotations

import asyncio

import pytest

from actors.log_wire import WireConnection


async def _silent_peer() -> tuple[asyncio.Server, int]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads what comes, answers nothing
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_call_cancelled_as_its_answer_arrives_is_cancelled():
    async def main() -> object:
        server, port = await _silent_peer()
        async with server:
            conn = await WireConnection.open("127.0.0.1", port, b"token", timeout=5)
            try:
                call = asyncio.create_task(conn.call("poll", [0], timeout=30))
                while not conn._pending:  # the request is out, the call awaits its answer
                    await asyncio.sleep(0)
                await asyncio.sleep(0)
                # The answer lands and the caller is cancelled in the same turn of the loop.
                (answer,) = conn._pending.values()
                answer.set_result((True, "an answer"))
                call.cancel()
                try:
                    return await call
                except asyncio.CancelledError:
                    return "cancelled"
            finally:
                conn.close()

    assert asyncio.run(main()) == "cancelled"


def test_a_call_with_no_answer_times_out_and_closes_the_connection():
    async def main() -> bool:
        server, port = await _silent_peer()
        async with server:
            conn = await WireConnection.open("127.0.0.1", port, b"token", timeout=5)
            with pytest.raises(ConnectionResetError, match="no answer from the event log"):
                await conn.call("poll", [0], timeout=0.2)
            return conn.closed

    assert asyncio.run(main()) is True
