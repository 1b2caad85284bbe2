// <orch-run-pane run-id="…">: one run, live. Header (flow, band and its reason, repository,
// commit, model, status, elapsed), the report on top once the run finishes, a collapsed
// roster with one agent expanded at a time to watch its stream, and the run's chat thread.

import { client, requestId } from "./client.js";
import { basename, button, compact, count, duration, h, toast } from "./dom.js";
import { apply, newRun, TERMINAL, tokens } from "./fold.js";
import { icon } from "./icons.js";
import { sanitize } from "./sanitize.js";

const STATUS_TEXT = {
  requested: "Starting",
  planned: "Planned",
  queued: "Queued",
  running: "Running",
  finished: "Finished",
  failed: "Failed",
  cancelled: "Cancelled",
};

let paneCount = 0;

export class OrchRunPane extends HTMLElement {
  constructor() {
    super();
    this.run = null;
    this.rows = new Map(); // step id → {li, btn, stream, body, cells…}
    this.expanded = null;
    this.dirty = new Set();
    this.frame = 0;
    this.reportState = "none"; // none | loading | shown | failed
    this.uid = `orch-pane-${++paneCount}`;
  }

  get runId() {
    return this.getAttribute("run-id");
  }

  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.run = newRun(this.runId);
    this._build();
    this.unsubscribe = client().subscribe(this.runId, (f) => this._frame(f), 0);
    this.ticker = setInterval(() => this._tick(), 1000);
  }

  disconnectedCallback() {
    // A pane moved within the page is re-attached at once; only a real removal stops it.
    queueMicrotask(() => {
      if (this.isConnected) return;
      this.unsubscribe?.();
      clearInterval(this.ticker);
      this.built = false;
    });
  }

  // --- building ---------------------------------------------------------------------------

  _build() {
    this.classList.add("orch-run-pane");
    this.titleEl = h("span", { class: "orch-pane-flow" }, "…");
    this.bandEl = h("span", { class: "orch-chip orch-band", hidden: true });
    this.statusEl = h("span", { class: "orch-status", "data-status": "requested" }, "Starting");
    this.elapsedEl = h("span", { class: "orch-elapsed", title: "Elapsed time" }, "");
    this.bandReasonEl = h("p", { class: "orch-band-reason", hidden: true });
    this.metaEl = h("dl", { class: "orch-meta" });

    this.copyBtn = button("copy", "Copy report as Markdown", { "data-text": "Copy", class: "orch-act-copy", disabled: true, onclick: () => this._copy() });
    this.saveMenu = this._saveMenu();
    this.sendBtn = button("chat", "Send report to chat", { "data-text": "Send to chat", class: "orch-act-send", disabled: true, onclick: () => this._send() });
    this.cancelBtn = button("stop", "Cancel run", { "data-text": "Cancel", class: "orch-act-cancel orch-danger", disabled: true, onclick: () => this._cancel() });
    const closeBtn = button("close", "Close pane", { "data-text": "Close", class: "orch-act-close orch-quiet", onclick: () => this._close() });

    this.requestEl = h("div", { class: "orch-msg orch-msg-user", hidden: true });
    this.bannerEl = h("div", { class: "orch-banner", role: "status", hidden: true });
    this.reportEl = h("section", { class: "orch-report", "aria-label": "Report", hidden: true });
    this.rosterList = h("ul", { class: "orch-roster-list", role: "list" });
    this.rosterCount = h("span", { class: "orch-roster-count" }, "");
    this.roster = h(
      "section",
      { class: "orch-roster", "aria-label": "Agents" },
      h("h3", { class: "orch-roster-title" }, "Agents ", this.rosterCount),
      this.rosterList,
    );
    this.sentEl = h("div", { class: "orch-sent" });

    const head = h(
      "header",
      { class: "orch-pane-head" },
      h("div", { class: "orch-pane-line" }, h("h2", { class: "orch-pane-title" }, this.titleEl), this.bandEl, this.statusEl, this.elapsedEl),
      this.bandReasonEl,
      this.metaEl,
      h("div", { class: "orch-pane-actions", role: "toolbar", "aria-label": "Run actions" }, this.copyBtn, this.saveMenu, this.sendBtn, this.cancelBtn, closeBtn),
    );
    const article = h(
      "article",
      { class: "orch-pane", "aria-labelledby": `${this.uid}-title` },
      head,
      h("div", { class: "orch-thread" }, this.requestEl, this.bannerEl, this.reportEl, this.roster, this.sentEl),
    );
    this.titleEl.id = `${this.uid}-title`;
    this.replaceChildren(article);
    this.rosterList.addEventListener("keydown", (e) => this._rosterKeys(e));
  }

  _saveMenu() {
    const items = [
      ["md", "Markdown (.md)"],
      ["html", "HTML (.html)"],
      ["json", "JSON (.json)"],
    ].map(([fmt, label]) =>
      h("button", { type: "button", role: "menuitem", class: "orch-menu-item", "data-format": fmt, onclick: () => this._save(fmt) }, label),
    );
    const summary = h("summary", { class: "orch-btn orch-act-save", "aria-label": "Save report as a file", title: "Save report as a file", role: "button" }, icon("download"), h("span", { class: "orch-label" }, "Save"));
    const menu = h("details", { class: "orch-menu" }, summary, h("div", { class: "orch-menu-list", role: "menu" }, items));
    menu.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && menu.open) {
        menu.open = false;
        summary.focus();
        e.stopPropagation();
      }
    });
    menu.addEventListener("toggle", () => menu.open && items[0].focus());
    this.saveItems = items;
    return menu;
  }

  // --- frames -----------------------------------------------------------------------------

  _frame(frame) {
    if (frame.type === "snapshot") {
      if (!this.run.request && frame.run) this._fromRow(frame.run);
      return;
    }
    if (frame.type === "error") {
      this._banner(frame.code === "not_found" ? "This run does not exist (any more)." : frame.message, "error");
      return;
    }
    const before = this.run.status;
    const touched = apply(this.run, frame.event, frame.seq);
    this.dirty.add(touched ?? "run");
    if (frame.event.kind === "run_planned") this.dirty.add("plan");
    if (frame.event.kind === "report_sent") this.dirty.add("sent");
    if (this.run.status !== before) {
      const detail = { run_id: this.runId, status: this.run.status };
      this.dispatchEvent(new CustomEvent("orch-run-status", { bubbles: true, composed: true, detail }));
      if (!TERMINAL.has(before) && TERMINAL.has(this.run.status)) {
        this.dispatchEvent(new CustomEvent("orch-run-ended", { bubbles: true, composed: true, detail }));
      }
    }
    this._schedule();
  }

  _fromRow(row) {
    // Before the events arrive: enough for the header.
    this.titleEl.textContent = row.flow || this.runId;
    this._setStatus(row.status);
  }

  _schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this._render());
  }

  // --- rendering --------------------------------------------------------------------------

  _render() {
    this.frame = 0;
    const run = this.run;
    const dirty = this.dirty;
    this.dirty = new Set();
    this._renderHead();
    if (dirty.has("plan")) this._buildRoster();
    const ended = TERMINAL.has(run.status);
    for (const [id, row] of this.rows) if (dirty.has(id) || ended) this._renderRow(id, row);
    if (this.expanded && dirty.has(this.expanded)) this._renderStream(this.expanded);
    if (dirty.has("sent")) this._renderSent();
    if (run.status === "finished" && this.reportState === "none") this._loadReport();
    if (run.status === "failed") this._banner(`The run failed: ${run.error || "see the agents below"}`, "error");
    if (run.status === "cancelled") this._banner(`Cancelled${run.cancel_reason ? `: ${run.cancel_reason}` : ""}.`, "warn");
  }

  _renderHead() {
    const run = this.run;
    const req = run.request;
    const plan = run.plan;
    if (req) {
      this.titleEl.textContent = req.flow;
      this.requestEl.hidden = false;
      const words = [`/${req.flow}`, req.band, req.text].filter(Boolean).join(" ");
      const extras = [req.focus && `Focus: ${req.focus}`, req.symptom && `Symptom: ${req.symptom}`, req.base && `Base: ${req.base}`].filter(Boolean);
      this.requestEl.replaceChildren(h("div", { class: "orch-msg-text" }, words), ...extras.map((x) => h("div", { class: "orch-msg-extra" }, x)));
    }
    if (plan) {
      this.bandEl.hidden = false;
      this.bandEl.textContent = plan.band;
      this.bandEl.dataset.band = plan.band;
      this.bandReasonEl.hidden = !plan.band_reason;
      this.bandReasonEl.textContent = plan.band_reason;
    }
    const meta = [];
    if (req) meta.push(["Repository", basename(req.repo), req.repo]);
    if (plan) meta.push(["Commit", (plan.commit || "").slice(0, 10), plan.commit], ["Model", plan.model || plan.engine, `${plan.engine}: ${plan.model}`]);
    this.metaEl.replaceChildren(...meta.flatMap(([k, v, t]) => [h("dt", {}, k), h("dd", { title: t }, v)]));
    this._setStatus(run.status);
    this._tick();
    const done = TERMINAL.has(run.status);
    const hasReport = run.status === "finished" && !!run.report;
    this.cancelBtn.disabled = done || run.status === "requested" && !req;
    this.cancelBtn.hidden = done;
    for (const b of [this.copyBtn, this.sendBtn]) b.disabled = !hasReport;
    this.saveMenu.classList.toggle("orch-disabled", !hasReport);
    this.saveMenu.querySelector("summary").setAttribute("aria-disabled", String(!hasReport));
    if (!hasReport) this.saveMenu.open = false;
  }

  _setStatus(status) {
    this.statusEl.dataset.status = status;
    this.statusEl.textContent = STATUS_TEXT[status] || status;
    this.dataset.status = status;
  }

  _tick() {
    const run = this.run;
    if (run?.created_ts) {
      const end = run.ended_ts ?? Date.now() / 1000;
      this.elapsedEl.textContent = duration(end - run.created_ts);
    }
    if (TERMINAL.has(run?.status)) return;
    for (const [id, row] of this.rows) {
      const st = run.steps.get(id);
      if (st && (st.status === "running" || st.status === "queued")) row.elapsed.textContent = duration(Date.now() / 1000 - (st.started_ts ?? st.queued_ts));
    }
  }

  _buildRoster() {
    this.rows.clear();
    this.rosterList.replaceChildren();
    const steps = [...this.run.steps.values()];
    this.rosterCount.textContent = `(${steps.length})`;
    for (const st of steps) {
      const id = st.step.step_id;
      const streamId = `${this.uid}-stream-${id}`;
      const dot = h("span", { class: "orch-dot", "aria-hidden": "true" });
      const statusText = h("span", { class: "orch-agent-status" });
      const tok = h("span", { class: "orch-agent-tokens", title: "Tokens" });
      const elapsed = h("span", { class: "orch-agent-elapsed", title: "Elapsed" });
      const fail = h("span", { class: "orch-agent-fail", hidden: true });
      const btn = h(
        "button",
        { type: "button", class: "orch-agent-row", "aria-expanded": "false", "aria-controls": streamId, onclick: () => this.toggle(id) },
        icon("chevron", "orch-chevron"),
        dot,
        h("span", { class: "orch-agent-name" }, st.step.persona),
        h("span", { class: "orch-agent-phase" }, st.step.phase),
        statusText,
        tok,
        elapsed,
        fail,
      );
      const body = h("div", { class: "orch-stream-body" });
      const stream = h("div", { class: "orch-stream", id: streamId, hidden: true, role: "log", "aria-live": "off", "aria-label": `${st.step.persona} stream` }, body);
      const li = h("li", { class: "orch-agent", "data-step": id, "data-persona": st.step.persona }, btn, stream);
      this.rows.set(id, { li, btn, stream, body, dot, statusText, tok, elapsed, fail });
      this.rosterList.append(li);
      this._renderRow(id, this.rows.get(id));
    }
  }

  _renderRow(id, row) {
    const st = this.run.steps.get(id);
    if (!st) return;
    // A step still in flight when its run ended (cancelled, failed) was stopped with it.
    const status = TERMINAL.has(this.run.status) && (st.status === "queued" || st.status === "running") ? "stopped" : st.status;
    row.li.dataset.status = status;
    // Nothing back yet: the prompt is being read, or the step waits for a free model stream.
    const waiting = status === "running" && !st.text && !st.tools.length;
    row.statusText.textContent = waiting ? "waiting for the model" : status;
    row.tok.textContent = `${compact(tokens(st))} tok`;
    if (st.ended_ts && st.started_ts) row.elapsed.textContent = duration(st.ended_ts - st.started_ts);
    else if (!st.started_ts && !st.queued_ts) row.elapsed.textContent = "";
    const failures = st.failures.length;
    row.fail.hidden = !failures && !st.parse_error;
    // The reader's own words ("output was cut off; kept the complete items before the cut").
    row.fail.textContent = failures ? count(failures, "failed attempt") : st.parse_error;
    row.fail.title = [...st.failures, st.parse_error].filter(Boolean).join("\n");
    const denied = st.tools.filter((c) => c.outcome?.kind === "tool_denied").length;
    row.li.classList.toggle("orch-has-denied", denied > 0);
  }

  /** Expand one agent's stream (collapsing any other), or collapse it if it is open. */
  toggle(stepId) {
    const open = this.expanded === stepId ? null : stepId;
    for (const [id, row] of this.rows) {
      const on = id === open;
      row.btn.setAttribute("aria-expanded", String(on));
      row.stream.hidden = !on;
      row.li.classList.toggle("orch-expanded", on);
    }
    this.expanded = open;
    if (open) this._renderStream(open);
  }

  _renderStream(id) {
    const row = this.rows.get(id);
    const st = this.run.steps.get(id);
    if (!row || !st) return;
    const stream = row.stream;
    const pinned = stream.scrollHeight - stream.scrollTop - stream.clientHeight < 40;
    const parts = [];
    let pos = 0;
    for (const call of st.tools) {
      const at = Math.min(call.at, st.text.length);
      if (at > pos) parts.push(h("span", { class: "orch-text" }, st.text.slice(pos, at)));
      pos = Math.max(pos, at);
      parts.push(this._toolChip(call));
    }
    if (st.text.length > pos) parts.push(h("span", { class: "orch-text" }, st.text.slice(pos)));
    if (!parts.length) parts.push(h("span", { class: "orch-stream-empty" }, st.status === "planned" ? "Waiting for its wave." : "Waiting for the model…"));
    if (st.status === "running") parts.push(h("span", { class: "orch-caret", "aria-hidden": "true" }));
    if (st.error) parts.push(h("div", { class: "orch-stream-error" }, icon("alert"), ` ${st.error}`));
    if (st.status === "finished" && st.findings.length) {
      parts.push(h("div", { class: "orch-stream-findings" }, `${count(st.findings.length, "finding")}: `, st.findings.map((f) => h("span", { class: "orch-chip", "data-severity": f.severity }, `${f.severity} · ${f.title}`))));
    }
    // Said first: the answer below was written without these.
    if (st.left_out.length) parts.unshift(h("div", { class: "orch-stream-note" }, `Answered without (left out of its prompt for space): ${st.left_out.join("; ")}`));
    row.body.replaceChildren(...parts);
    if (pinned) stream.scrollTop = stream.scrollHeight;
  }

  _toolChip(call) {
    const c = call.called;
    const out = call.outcome;
    const denied = out?.kind === "tool_denied";
    const arg = c.args ? Object.values(c.args).filter((v) => typeof v === "string").join(" ") : "";
    const state = denied ? `denied: ${out.reason}` : out ? (out.ok === false ? "error" : "ok") : "…";
    return h(
      "span",
      { class: `orch-tool${denied ? " orch-tool-denied" : ""}`, "data-tool": c.tool, title: denied ? out.reason : out?.content?.slice(0, 400) || "" },
      icon(denied ? "ban" : "tool"),
      h("span", { class: "orch-tool-name" }, c.tool),
      arg ? h("span", { class: "orch-tool-arg" }, arg) : null,
      h("span", { class: "orch-tool-state" }, state),
    );
  }

  _rosterKeys(e) {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    const btns = [...this.rosterList.querySelectorAll(".orch-agent-row")];
    const i = btns.indexOf(document.activeElement);
    if (i < 0) return;
    e.preventDefault();
    btns[(i + (e.key === "ArrowDown" ? 1 : -1) + btns.length) % btns.length].focus();
  }

  _banner(text, kind) {
    this.bannerEl.hidden = false;
    this.bannerEl.dataset.kind = kind;
    this.bannerEl.textContent = text;
  }

  async _loadReport() {
    this.reportState = "loading";
    try {
      const html = await client().report(this.runId, "html");
      const doc = h("div", { class: "orch-report-body" });
      doc.append(sanitize(html));
      // The pane's header already names the flow and repository: fold the report's own
      // header away (still one click from view).
      doc.querySelector("h1")?.remove();
      const meta = doc.querySelector("dl.meta");
      if (meta) meta.replaceWith(h("details", { class: "orch-report-meta" }, h("summary", {}, "Run details"), meta.cloneNode(true)));
      const rec = this.run.report?.recommendation;
      this.reportEl.replaceChildren(
        h("div", { class: "orch-report-head" }, icon("check"), h("h3", {}, "Report"), rec ? h("p", { class: "orch-recommendation" }, rec) : null),
        doc,
      );
      this.reportEl.hidden = false;
      this.reportState = "shown";
    } catch (err) {
      this.reportState = "failed";
      this._banner(`The report could not be loaded: ${err.message}`, "error");
    }
  }

  _renderSent() {
    this.sentEl.replaceChildren(
      ...this.run.sent.map((ev) => {
        const ok = ev.ok !== false; // a default value is left out of an event's JSON
        const body = h("pre", { class: "orch-msg-md" });
        const details = h("details", { class: "orch-msg-details" }, h("summary", {}, "Show the report that was sent"), body);
        details.addEventListener("toggle", async () => {
          if (details.open && !body.textContent) body.textContent = await client().report(this.runId, "md").catch((e) => e.message);
        });
        return h(
          "div",
          { class: `orch-msg orch-msg-bot${ok ? "" : " orch-msg-failed"}`, "data-request": ev.request_id },
          h("div", { class: "orch-msg-text" }, icon(ok ? "chat" : "alert"), ok ? " Report sent to chat" : " Sending to chat failed", h("span", { class: "orch-msg-extra" }, ` · ${ev.target}${ev.detail ? ` · ${ev.detail}` : ""}`)),
          details,
        );
      }),
    );
  }

  // --- actions ----------------------------------------------------------------------------

  async _copy() {
    try {
      const md = await client().report(this.runId, "md");
      await copyText(md);
      toast("Report copied as Markdown.");
    } catch (err) {
      toast(`Copy failed: ${err.message}`, "error");
    }
  }

  async _save(format) {
    this.saveMenu.open = false;
    try {
      const name = await client().download(this.runId, format);
      toast(`Saved ${name}.`);
    } catch (err) {
      toast(`Save failed: ${err.message}`, "error");
    }
  }

  async _send() {
    this.sendBtn.disabled = true;
    try {
      const out = await client().send(this.runId, requestId());
      toast(out.ok ? "Report sent to chat." : `Sending failed: ${out.detail}`, out.ok ? "info" : "error");
    } catch (err) {
      toast(`Sending failed: ${err.message}`, "error");
    } finally {
      this.sendBtn.disabled = false;
    }
  }

  async _cancel() {
    this.cancelBtn.disabled = true;
    try {
      const out = await client().cancel(this.runId, "cancelled from the pane");
      if (!out.cancelled) toast("The run had already ended.");
    } catch (err) {
      this.cancelBtn.disabled = false;
      toast(`Cancel failed: ${err.message}`, "error");
    }
  }

  _close() {
    this.dispatchEvent(new CustomEvent("orch-close", { bubbles: true, composed: true, detail: { run_id: this.runId } }));
    this.remove();
  }
}

async function copyText(text) {
  if (navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      /* fall back below (no permission) */
    }
  }
  const area = h("textarea", { class: "orch-offscreen", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("the browser refused to copy");
}

customElements.define("orch-run-pane", OrchRunPane);
