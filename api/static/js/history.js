// <orch-history>: find and reopen past runs (filter by flow, status, text).
// Emits "orch-open" {run_id} when a run is chosen. Refreshes itself when a run is launched
// or changes status anywhere on the page.

import { client } from "./client.js";
import { basename, button, capital, count, duration, h, toast, when } from "./dom.js";

const PAGE = 30;
const STATUSES = ["running", "finished", "failed", "cancelled", "planned", "requested"];

export class OrchHistory extends HTMLElement {
  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.classList.add("orch-history");
    this.flow = h("select", { "aria-label": "Filter by workflow", class: "orch-history-flow" }, h("option", { value: "" }, "All workflows"));
    this.status = h("select", { "aria-label": "Filter by status", class: "orch-history-status" }, h("option", { value: "" }, "Any status"), ...STATUSES.map((s) => h("option", { value: s }, capital(s))));
    this.q = h("input", { type: "search", class: "orch-history-q", placeholder: "Search runs", "aria-label": "Search runs" });
    this.list = h("ul", { class: "orch-history-list", role: "list", "aria-label": "Runs" });
    this.more = h("button", { type: "button", class: "orch-btn orch-quiet orch-history-more", hidden: true, onclick: () => this.load(true) }, h("span", { class: "orch-label-keep" }, "Older runs"));
    this.empty = h("p", { class: "orch-empty-note", hidden: true }, "No runs match.");
    const refresh = button("refresh", "Refresh history", { class: "orch-quiet orch-icon-only orch-history-refresh", onclick: () => this.load() });
    this.replaceChildren(
      h("div", { class: "orch-history-head" }, h("h2", {}, "History"), refresh),
      h("div", { class: "orch-history-filters" }, this.q, h("div", { class: "orch-history-selects" }, this.flow, this.status)),
      this.list,
      this.empty,
      this.more,
    );
    let timer = 0;
    this.q.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.load(), 250);
    });
    this.flow.addEventListener("change", () => this.load());
    this.status.addEventListener("change", () => this.load());
    // A pane catching up on a run passes through its statuses at once: one reload for them all.
    let reload = 0;
    this._onRunChange = () => {
      clearTimeout(reload);
      reload = setTimeout(() => this.load(), 200);
    };
    document.addEventListener("orch-launched", this._onRunChange);
    document.addEventListener("orch-run-status", this._onRunChange);
    client()
      .flows()
      .then((flows) => this.flow.append(...flows.map((f) => h("option", { value: f.name }, f.name))))
      .catch(() => {});
    this.load();
  }

  disconnectedCallback() {
    document.removeEventListener("orch-launched", this._onRunChange);
    document.removeEventListener("orch-run-status", this._onRunChange);
    this.built = false;
  }

  async load(append = false) {
    const offset = append ? this.list.children.length : 0;
    const ticket = (this.ticket = (this.ticket || 0) + 1);
    try {
      const page = await client().runs({ flow: this.flow.value, status: this.status.value, q: this.q.value.trim(), limit: PAGE, offset });
      if (ticket !== this.ticket) return; // a newer query is on its way
      const items = page.runs.map((r) => this._item(r));
      if (append) this.list.append(...items);
      else this.list.replaceChildren(...items);
      this.more.hidden = page.runs.length < PAGE;
      this.empty.hidden = this.list.children.length > 0;
    } catch (err) {
      toast(`History could not be loaded: ${err.message}`, "error");
    }
  }

  _item(r) {
    const took = r.ended_ts && r.created_ts ? duration(r.ended_ts - r.created_ts) : "";
    const open = () => this.dispatchEvent(new CustomEvent("orch-open", { bubbles: true, composed: true, detail: { run_id: r.run_id } }));
    return h(
      "li",
      { class: "orch-history-item", "data-run": r.run_id, "data-status": r.status },
      h(
        "button",
        { type: "button", class: "orch-history-open", onclick: open, "aria-label": `Open ${r.flow} run on ${basename(r.repository)} (${r.status})` },
        h("span", { class: "orch-history-line" }, h("span", { class: "orch-history-flow-name" }, r.flow), r.band ? h("span", { class: "orch-chip orch-band", "data-band": r.band }, r.band) : null, h("span", { class: "orch-status", "data-status": r.status }, r.status)),
        h("span", { class: "orch-history-sub" }, basename(r.repository), " · ", when(r.created_ts), took ? ` · ${took}` : "", reported(r)),
        r.request_text ? h("span", { class: "orch-history-text" }, r.request_text) : null,
      ),
    );
  }
}

// What the report kept (not all the agents raised): the count a reader finds in the report.
function reported(r) {
  const parts = [];
  if (r.report_findings) parts.push(count(r.report_findings, "finding"));
  if (r.report_unverified) parts.push(`${r.report_unverified} unverified`);
  return parts.map((p) => ` · ${p}`).join("");
}

customElements.define("orch-history", OrchHistory);
