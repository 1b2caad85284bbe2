"""A small in-memory stand-in for ``actors.service.Orchestrator``, for routing and validation
tests that need no Ray. It is never the proof of a feature: the real Orchestrator with the
scripted engine is (see the other test modules).

Run it as a dev server for the pane: ``python tests/api/apitest_fake.py [port]``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import msgspec

from actors.service import LaunchError, LaunchRequest, NotFound
from conductor.state import fold
from events.log import Record
from events.types import (
    Evidence,
    Finding,
    OutputDelta,
    PlannedStep,
    ReportRendered,
    RosterEntry,
    RunCancelled,
    RunFinished,
    RunPlanned,
    RunRequested,
    StepFinished,
    StepQueued,
    StepStarted,
    ToolCalled,
    ToolResult,
)

FLOWS = {
    "code-review": "Review the changes on a branch for correctness, security and clarity.",
    "investigate": "Chase a bug from its symptom to a root cause.",
}


class FakeLog:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.keys: dict[str, int] = {}
        self.lock = threading.Lock()

    def append(self, events, keys) -> list[int]:
        out = []
        with self.lock:
            for ev, key in zip(events, keys):
                if key in self.keys:
                    out.append(self.keys[key])
                    continue
                seq = len(self.records) + 1
                self.records.append(Record(seq, ev))
                self.keys[key] = seq
                out.append(seq)
        return out

    def max_seq(self) -> int:
        return len(self.records)


class FakeBackend:
    def __init__(self, delay: float = 0.05, chunks: int = 20):
        self.log = FakeLog()
        self.delay = delay
        self.chunks = chunks
        self.cancelled: set[str] = set()
        self.closed = False

    # -- writes --

    def launch(self, req: LaunchRequest) -> str:
        if req.flow not in FLOWS:
            raise LaunchError(f"unknown flow {req.flow!r}", "unknown_flow")
        if not (Path(req.repo) / ".git").exists():
            raise LaunchError(f"{req.repo} is not a git repository", "bad_repository")
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        now = time.time()
        steps = (
            PlannedStep(step_id="s1", persona="junior-developer", phase="analysis", wave=0),
            PlannedStep(step_id="s2", persona="security-engineer", phase="analysis", wave=0),
            PlannedStep(step_id="s3", persona="adversarial-validator", phase="validation", wave=1, role="validator"),
        )
        self._append(
            RunRequested(run_id=run_id, ts=now, flow=req.flow, repo=req.repo, text=req.text, origin=req.origin, thread=req.thread),
            RunPlanned(
                run_id=run_id, ts=now, band=req.band or "small", band_reason="3 files, one module",
                band_source="explicit" if req.band else "signals",
                roster=tuple(RosterEntry(persona=s.persona, reason="always seated", phase=s.phase) for s in steps),
                steps=steps, commit="0" * 40, model="scripted", engine="scripted",
            ),
        )
        threading.Thread(target=self._drive, args=(run_id, steps), daemon=True).start()
        return run_id

    def _append(self, *events) -> None:
        self.log.append(events, [uuid.uuid4().hex for _ in events])

    def _drive(self, run_id, steps) -> None:
        for wave in (0, 1):
            for st in steps:
                if st.wave == wave:
                    self._append(StepQueued(run_id=run_id, ts=time.time(), step_id=st.step_id, persona=st.persona, phase=st.phase))
                    self._append(StepStarted(run_id=run_id, ts=time.time(), step_id=st.step_id))
            offset = 0
            for i in range(self.chunks):
                if run_id in self.cancelled or self.closed:
                    return
                time.sleep(self.delay)
                for st in steps:
                    if st.wave == wave:
                        text = f"word{i} "
                        self._append(OutputDelta(run_id=run_id, ts=time.time(), step_id=st.step_id, text=text, offset=offset, tokens=1))
                offset += len(f"word{i} ")
                if i == 3:
                    for st in steps:
                        if st.wave == wave:
                            self._append(
                                ToolCalled(run_id=run_id, ts=time.time(), step_id=st.step_id, call_id="c1", tool="read", args={"path": "app.py"}),
                                ToolResult(run_id=run_id, ts=time.time(), step_id=st.step_id, call_id="c1", tool="read", content="print('hi')"),
                            )
            for st in steps:
                if st.wave == wave:
                    finding = Finding(
                        id=f"{st.step_id}-f1", persona=st.persona, severity="high", title="A thing",
                        claim="It is wrong", evidence=(Evidence(path="app.py", line_start=1, line_end=1, quote="print"),),
                    )
                    self._append(StepFinished(run_id=run_id, ts=time.time(), step_id=st.step_id, output="done", findings=(finding,), tokens_in=10, tokens_out=self.chunks))
        self._append(ReportRendered(run_id=run_id, ts=time.time(), recommendation="Fix the high finding", counts={"high": 2}))
        self._append(RunFinished(run_id=run_id, ts=time.time()))

    def cancel(self, run_id: str, reason: str = "") -> bool:
        state = self.state(run_id)
        if state.terminal:
            return False
        self.cancelled.add(run_id)
        self._append(RunCancelled(run_id=run_id, ts=time.time(), reason=reason))
        return True

    # -- reads --

    def state(self, run_id: str):
        evs = [r.event for r in self.log.records if r.event.run_id == run_id]
        if not evs:
            raise NotFound(f"no run {run_id!r}")
        return fold(evs, run_id=run_id)

    def _row(self, run_id: str) -> dict:
        st = self.state(run_id)
        # As the projection: the last event that changed the row (streamed text changes none).
        last = max(
            r.seq for r in self.log.records if r.event.run_id == run_id and r.event.__struct_config__.tag != "output_delta"
        )
        return {
            "run_id": run_id, "flow": st.request.flow, "repository": st.request.repo, "status": st.status,
            "band": st.plan.band if st.plan else "", "band_reason": st.plan.band_reason if st.plan else "",
            "commit": st.plan.commit if st.plan else "", "model": st.plan.model if st.plan else "",
            "created_ts": st.created_ts, "ended_ts": st.ended_ts, "steps_total": len(st.steps),
            "last_seq": last, "request_text": st.request.text,
        }

    def runs(self, *, flow=None, status=None, repo=None, since=None, until=None, text=None, limit=50, offset=0):
        ids = list(dict.fromkeys(r.event.run_id for r in self.log.records))[::-1]
        rows = [self._row(i) for i in ids]
        rows = [
            r for r in rows
            if (flow is None or r["flow"] == flow) and (status is None or r["status"] == status)
            and (text is None or text.lower() in (r["request_text"] + r["flow"]).lower())
        ]
        return rows[offset : offset + limit]

    def run(self, run_id: str) -> dict:
        st = self.state(run_id)
        steps = [
            {"run_id": run_id, "step_id": s.step_id, "persona": s.persona, "status": s.status, "tokens_out": s.tokens_out}
            for s in st.steps.values()
        ]
        return {"run": self._row(run_id), "steps": steps, "seq": self.log.max_seq()}

    def events(self, run_id, after=0, limit=1000):
        if run_id is not None:
            self.state(run_id)
        out = [r for r in self.log.records if r.seq > after and (run_id is None or r.event.run_id == run_id)]
        return out[:limit]

    async def subscribe(self, run_id, after=0):
        last = after
        while True:
            batch = [r for r in self.log.records[last:] if run_id is None or r.event.run_id == run_id]
            if len(self.log.records) > last:
                last = len(self.log.records)
            if batch:
                yield batch
            await asyncio.sleep(0.01)

    def report(self, run_id: str, fmt: str) -> str:
        st = self.state(run_id)
        if st.report is None:
            raise LaunchError(f"run {run_id} has no report yet", "not_ready")
        findings = [f for s in st.steps.values() for f in s.findings]
        if fmt == "md":
            return f"# {st.request.flow} report\n\n" + "\n".join(f"- **{f.severity}** {f.title}" for f in findings)
        if fmt == "json":
            return json.dumps({"run_id": run_id, "findings": [msgspec.to_builtins(f) for f in findings]})
        items = "".join(f"<li><strong>{f.severity}</strong> {f.title}</li>" for f in findings)
        return f"<!doctype html><html><body><h1>{st.request.flow} report</h1><ul>{items}</ul><script>alert(1)</script></body></html>"

    def flows(self):
        return [{"name": k, "description": v, "inputs": [{"name": "focus", "field": "focus", "required": False}]} for k, v in FLOWS.items()]

    def personas(self):
        return [{"name": "junior-developer", "description": "Reads like a newcomer"}]

    def analytics(self):
        return {"by_flow": [{"flow": "code-review", "runs": 1, "tokens": 20, "duration_s": 3.0}]}

    def send_report(self, run_id, request_id):
        raise LaunchError("sending to chat is served by the API layer", "not_supported")

    def resume_all(self):
        return []

    def close(self):
        self.closed = True


if __name__ == "__main__":  # a dev server for the pane
    import sys
    import tempfile

    import uvicorn

    from actors.config import Settings
    from api.app import create_app

    root = Path(tempfile.mkdtemp())
    (root / "demo" / ".git").mkdir(parents=True)
    settings = Settings(repo_roots=(str(root / "demo"), str(root)), data_dir=str(root / "data"))
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8799
    print(f"repo root {root}; http://127.0.0.1:{port}/")
    uvicorn.run(create_app(FakeBackend(delay=0.2), settings, heartbeat=5), host="127.0.0.1", port=port)
