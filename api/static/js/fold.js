// A run's state, folded from its events in seq order: the same rules as conductor/state.py,
// kept to what the pane shows (header, roster, each agent's live stream, the thread).

export const TERMINAL = new Set(["finished", "failed", "cancelled"]);
const ENDED = new Set(["finished", "failed"]);
const STEP_KINDS = new Set([
  "step_queued", "step_started", "output_delta", "tool_called",
  "tool_result", "tool_denied", "step_finished", "step_failed",
]);

export function newRun(runId) {
  return {
    run_id: runId,
    status: "requested",
    request: null,
    plan: null,
    steps: new Map(),
    report: null,
    error: "",
    cancel_reason: "",
    created_ts: null,
    ended_ts: null,
    resumes: 0,
    sent: [],
    lastSeq: 0,
  };
}

function newStep(planned) {
  return {
    step: planned,
    status: "planned",
    attempt: 0,
    pickup: 0,
    text: "",
    superseded: [],
    tools: [],
    findings: [],
    tokens_in: 0,
    tokens_out: 0,
    streamed_tokens: 0,
    error: "",
    failures: [],
    parse_error: "",
    left_out: [],
    queued_ts: null,
    started_ts: null,
    ended_ts: null,
  };
}

/** Apply one event; returns the step id it touched (or null for run-level events). */
export function apply(run, ev, seq = 0) {
  if (seq) run.lastSeq = Math.max(run.lastSeq, seq);
  const st = ev.step_id ? run.steps.get(ev.step_id) : null;
  const attempt = ev.attempt ?? 1;
  const pickup = ev.pickup ?? 0;
  // An agent thought lost may still be writing after its step was picked up again, and an
  // attempt ends once: ignored, as in every fold (StepEvent.superseded in events/types.py).
  if (st && STEP_KINDS.has(ev.kind) &&
      (attempt < st.attempt || (attempt === st.attempt && pickup < st.pickup) ||
       (attempt === st.attempt && ENDED.has(st.status)))) return null;
  switch (ev.kind) {
    case "run_requested":
      run.request = ev;
      run.created_ts = ev.ts;
      return null;
    case "run_planned":
      run.plan = ev;
      run.steps = new Map(ev.steps.map((s) => [s.step_id, newStep(s)]));
      if (run.status === "requested") run.status = "planned";
      return null;
    case "step_queued":
      if (!st) return null;
      if (attempt !== st.attempt) {
        if (st.text) st.superseded.push(st.text);
        st.text = "";
        st.tools = [];
      }
      st.status = "queued";
      st.attempt = attempt;
      st.pickup = pickup;
      st.queued_ts = ev.ts;
      st.left_out = ev.left_out ?? [];
      st.error = "";
      if (!TERMINAL.has(run.status)) run.status = "running";
      return ev.step_id;
    case "step_started":
      if (!st) return null;
      if (attempt !== st.attempt) {
        if (st.text) st.superseded.push(st.text);
        st.text = "";
        st.tools = [];
        st.attempt = attempt;
      }
      st.pickup = pickup;
      st.text = st.text.slice(0, ev.continued_from ?? 0);
      st.status = "running";
      st.started_ts ??= ev.ts;
      return ev.step_id;
    case "output_delta":
      if (!st || attempt !== st.attempt) return null;
      st.text = st.text.slice(0, ev.offset) + ev.text;
      st.streamed_tokens += ev.tokens ?? 0;
      return ev.step_id;
    case "tool_called":
      if (!st || attempt !== st.attempt) return null;
      st.tools.push({ called: ev, outcome: null, at: st.text.length });
      return ev.step_id;
    case "tool_result":
    case "tool_denied": {
      if (!st) return null;
      const call = st.tools.find((c) => c.called.call_id === ev.call_id);
      if (call) call.outcome = ev;
      else if (ev.kind === "tool_denied" && attempt === st.attempt)
        st.tools.push({ called: { ...ev, kind: "tool_called" }, outcome: ev, at: st.text.length });
      return ev.step_id;
    }
    case "step_finished":
      if (!st) return null;
      st.status = "finished";
      st.attempt = attempt;
      st.pickup = pickup;
      st.findings = ev.findings ?? [];
      st.parse_error = ev.parse_error ?? "";
      st.tokens_in += ev.tokens_in ?? 0;
      st.tokens_out += ev.tokens_out ?? 0;
      st.ended_ts = ev.ts;
      st.error = "";
      return ev.step_id;
    case "step_failed":
      if (!st) return null;
      st.status = "failed";
      st.error = ev.error;
      st.failures.push(`attempt ${attempt}: ${ev.error}`);
      st.ended_ts = ev.ts;
      return ev.step_id;
    case "report_rendered":
      run.report = ev;
      return null;
    case "run_finished":
      run.status = "finished";
      run.ended_ts = ev.ts;
      return null;
    case "run_failed":
      run.status = "failed";
      run.error = ev.error;
      run.ended_ts = ev.ts;
      return null;
    case "run_cancelled":
      run.status = "cancelled";
      run.cancel_reason = ev.reason ?? "";
      run.ended_ts = ev.ts;
      return null;
    case "run_resumed":
      run.resumes += 1;
      return null;
    case "report_sent":
      run.sent.push(ev);
      return null;
    default:
      return null;
  }
}

export function tokens(st) {
  return st.tokens_out || st.streamed_tokens;
}
