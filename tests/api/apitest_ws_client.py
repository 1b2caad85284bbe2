"""An independent WebSocket client, run in its own process by ``test_api_ws.py``.

It knows nothing of the server's code: it speaks the documented frames with the
``websockets`` library. It launches a run over the socket, follows it (and every run) from a
seq, drops the connection abruptly part-way, reconnects and resubscribes from the last seq it
saw, and prints everything it received as one JSON document.

    python apitest_ws_client.py WS_URL REPO DROP_AFTER
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import websockets


async def frames(ws, timeout: float = 60.0):
    """Every frame, in order; a ``batch`` message carries several."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        for frame in message["frames"] if message["type"] == "batch" else [message]:
            yield frame


async def main(url: str, repo: str, drop_after: int) -> dict:
    out = {"run_frames": [], "all_frames": [], "snapshots": [], "errors": [], "other": [], "connections": 0}
    last = {"run": 0, "all": None}
    run_id = None
    done = False

    async def session(first: bool):
        nonlocal run_id, done
        async with websockets.connect(url, max_size=None) as ws:
            out["connections"] += 1
            if first:
                await ws.send(json.dumps({"type": "launch", "flow": "no-such-flow", "repo": repo, "request_id": "bad"}))
                await ws.send(json.dumps({"type": "launch", "flow": "code-review", "repo": repo, "request_id": "L1", "text": "over the socket"}))
                async for f in frames(ws):
                    if f["type"] == "error":
                        out["errors"].append(f)
                    elif f["type"] == "launched" and f["request_id"] == "L1":
                        run_id = f["run_id"]
                        out["launched"] = f
                        break
                    else:
                        out["other"].append(f)
                # All runs, live from now; the run itself, from the start.
                await ws.send(json.dumps({"type": "subscribe", "run_id": None}))
                await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": 0}))
            else:
                await ws.send(json.dumps({"type": "subscribe", "run_id": None, "after": last["all"]}))
                await ws.send(json.dumps({"type": "subscribe", "run_id": run_id, "after": last["run"]}))
                await ws.send(json.dumps({"type": "ping", "id": "after-reconnect"}))
            seen_here = 0
            async for f in frames(ws):
                kind = f["type"]
                if kind == "snapshot":
                    out["snapshots"].append(f)
                    if f["sub"] is None and last["all"] is None:
                        last["all"] = f["after"]
                elif kind == "event":
                    if f["sub"] is None:
                        out["all_frames"].append(f)
                        last["all"] = f["seq"]
                    else:
                        out["run_frames"].append(f)
                        last["run"] = f["seq"]
                        seen_here += 1
                        if f["event"]["kind"] in ("run_finished", "run_failed", "run_cancelled"):
                            done = True
                            return
                        if first and seen_here == drop_after:
                            ws.transport.abort()  # no close handshake: the connection just dies
                            return
                elif kind == "error":
                    out["errors"].append(f)
                else:
                    out["other"].append(f)

    async def guarded(first: bool) -> None:
        try:
            await session(first)
        except websockets.ConnectionClosed:
            pass  # the connection we just killed ourselves

    await guarded(first=True)
    deadline = time.monotonic() + 120
    while not done and time.monotonic() < deadline:
        await guarded(first=False)
    out["run_id"] = run_id
    return out


if __name__ == "__main__":
    url, repo, drop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, repo, drop_after))))
