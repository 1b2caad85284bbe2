// <orch-app>: the page. A top bar (current repository, Workflow, History, Analytics), the
// run panes side by side (stacked on narrow screens), the history drawer and the composer.
// Open panes survive a reload (sessionStorage).

import { client } from "./client.js";
import { button, h, toast } from "./dom.js";
import { icon } from "./icons.js";
import { currentRepo, setRepo } from "./prefs.js";

const OPEN_KEY = "orchestrator.panes";

export class OrchApp extends HTMLElement {
  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.classList.add("orch-app");

    this.repoInput = h("input", { class: "orch-repo-input", "aria-label": "Current repository", spellcheck: "false", autocomplete: "off", list: "orch-app-roots" });
    this.rootList = h("datalist", { id: "orch-app-roots" });
    this.repoInput.addEventListener("change", () => setRepo(this.repoInput.value.trim()));
    this.historyBtn = button("history", "History", { class: "orch-top-history", "aria-pressed": "false", "aria-controls": "orch-side", onclick: () => this.toggleHistory() });
    this.analyticsBtn = button("analytics", "Analytics", { class: "orch-top-analytics", "aria-pressed": "false", "aria-controls": "orch-analytics-panel", onclick: () => this.toggleAnalytics() });
    this.workflowBtn = button("workflow", "Workflow", { class: "orch-primary orch-top-workflow", "aria-haspopup": "dialog", onclick: () => this.launcher.open() });
    this.conn = h("span", { class: "orch-conn", role: "status", "aria-label": "Connection", title: "Connection" });

    this.side = h("aside", { class: "orch-side", id: "orch-side", "aria-label": "Run history", hidden: true }, h("orch-history"));
    this.analytics = h("section", { class: "orch-analytics-panel", id: "orch-analytics-panel", hidden: true, "aria-label": "Analytics" });
    this.panes = h("div", { class: "orch-panes", "aria-label": "Runs" });
    this.emptyState = h(
      "div",
      { class: "orch-empty" },
      icon("spark", "orch-empty-icon"),
      h("h2", {}, "Run a workflow on your repository"),
      h("p", {}, "Type ", h("kbd", {}, "/"), " in the box below to pick one (", h("code", {}, "/code-review small"), " launches at once), or press ", h("strong", {}, "Workflow"), " to set every option."),
    );
    this.launcher = h("orch-launcher");

    this.replaceChildren(
      h(
        "header",
        { class: "orch-top" },
        h("div", { class: "orch-brand" }, h("span", { class: "orch-logo", "aria-hidden": "true" }), h("span", { class: "orch-brand-name" }, "Orchestrator")),
        h("label", { class: "orch-repo" }, icon("folder"), h("span", { class: "orch-visually-hidden" }, "Repository"), this.repoInput, this.rootList),
        h("nav", { class: "orch-top-actions", "aria-label": "Views" }, this.workflowBtn, this.historyBtn, this.analyticsBtn),
        this.conn,
      ),
      h("div", { class: "orch-body" }, this.side, h("main", { class: "orch-main" }, this.analytics, this.emptyState, this.panes)),
      h("footer", { class: "orch-foot" }, h("orch-composer")),
      this.launcher,
    );

    this.addEventListener("orch-launched", (e) => this.open(e.detail.run_id, true));
    this.addEventListener("orch-open", (e) => {
      this.open(e.detail.run_id, true);
      if (window.matchMedia("(max-width: 900px)").matches) this.toggleHistory(false);
    });
    this.addEventListener("orch-open-launcher", (e) => this.launcher.open(e.detail.flow));
    this.addEventListener("orch-close", () => queueMicrotask(() => this._saveOpen()));
    // The components' events bubble (composed) on to the document, where the history and a
    // host page hear them: sending them there again would deliver each twice.
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !this.side.hidden && window.matchMedia("(max-width: 900px)").matches) this.toggleHistory(false);
    });
    document.addEventListener("orch-repo", (e) => (this.repoInput.value = e.detail.repo || ""));
    client().socket.onStatus((s) => {
      this.conn.dataset.state = s;
      this.conn.title = `Connection: ${s}`;
      this.conn.setAttribute("aria-label", `Connection: ${s}`);
    });

    this._init();
  }

  async _init() {
    try {
      const info = await client().info();
      this.rootList.replaceChildren(...info.repo_roots.map((r) => h("option", { value: r })));
      this.repoInput.value = await currentRepo();
      this.repoInput.title = this.repoInput.value;
    } catch (err) {
      toast(`The server did not answer: ${err.message}`, "error");
    }
    if (window.matchMedia("(min-width: 1200px)").matches) this.toggleHistory(true);
    const ids = JSON.parse(sessionStorage.getItem(OPEN_KEY) || "[]");
    for (const id of ids) this.open(id, false);
    this._updateEmpty();
  }

  /** Open a run's pane (or bring it forward if it is open). */
  open(runId, focus) {
    let pane = this.panes.querySelector(`orch-run-pane[run-id="${CSS.escape(runId)}"]`);
    if (!pane) {
      pane = h("orch-run-pane", { "run-id": runId });
      this.panes.prepend(pane);
      this._saveOpen();
    }
    this._updateEmpty();
    if (focus) {
      pane.scrollIntoView({ behavior: "smooth", block: "nearest", inline: "start" });
      pane.querySelector(".orch-pane-title")?.setAttribute("tabindex", "-1");
      pane.querySelector(".orch-pane-title")?.focus({ preventScroll: true });
    }
    return pane;
  }

  _saveOpen() {
    const ids = [...this.panes.querySelectorAll("orch-run-pane")].map((p) => p.runId).reverse();
    sessionStorage.setItem(OPEN_KEY, JSON.stringify(ids));
    this._updateEmpty();
  }

  _updateEmpty() {
    const any = this.panes.children.length > 0;
    this.emptyState.hidden = any;
    this.panes.dataset.count = String(this.panes.children.length);
  }

  toggleHistory(force) {
    const show = force ?? this.side.hidden;
    this.side.hidden = !show;
    this.historyBtn.setAttribute("aria-pressed", String(show));
    this.classList.toggle("orch-side-open", show);
    if (show) this.side.querySelector("orch-history")?.load?.();
  }

  toggleAnalytics(force) {
    const show = force ?? this.analytics.hidden;
    this.analytics.hidden = !show;
    this.analyticsBtn.setAttribute("aria-pressed", String(show));
    if (show) {
      if (!this.analytics.firstChild) this.analytics.append(h("orch-analytics"));
      else this.analytics.firstChild.load();
    }
  }
}

customElements.define("orch-app", OrchApp);
