// <orch-launcher>: the flow launcher dialog. Pick a flow (its description and inputs shown),
// the repository, a band (or auto), a base ref, focus or symptom, the model; launch.
// open(flowName?) shows it; Escape closes it. Emits "orch-launched" {run_id, request}.

import { client } from "./client.js";
import { capital, h } from "./dom.js";
import { icon } from "./icons.js";
import { currentRepo, newThread } from "./prefs.js";

let launcherCount = 0;

export class OrchLauncher extends HTMLElement {
  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.classList.add("orch-launcher");
    const id = (name) => `orch-launcher-${this.uid}-${name}`;
    this.uid = ++launcherCount;
    const field = (name, label, control, hint) =>
      h("div", { class: `orch-field orch-field-${name}` }, h("label", { for: id(name) }, label), control, hint ? h("p", { class: "orch-hint", id: `${id(name)}-hint` }, hint) : null);

    this.flowSel = h("select", { id: id("flow"), name: "flow", required: true, "aria-describedby": `${id("flow")}-about` });
    this.about = h("div", { class: "orch-flow-about", id: `${id("flow")}-about`, "aria-live": "polite" });
    this.repo = h("input", { id: id("repo"), name: "repo", required: true, autocomplete: "off", spellcheck: "false", list: id("roots") });
    this.roots = h("datalist", { id: id("roots") });
    this.band = h(
      "select",
      { id: id("band"), name: "band" },
      h("option", { value: "auto" }, "Auto (from the changes)"),
      h("option", { value: "small" }, "Small"),
      h("option", { value: "medium" }, "Medium"),
      h("option", { value: "large" }, "Large"),
    );
    this.base = h("input", { id: id("base"), name: "base", placeholder: "e.g. main (default: the flow's own)", autocomplete: "off", spellcheck: "false" });
    this.focusIn = h("input", { id: id("focus"), name: "focus", placeholder: "an area, a file, a concern", autocomplete: "off" });
    this.symptom = h("textarea", { id: id("symptom"), name: "symptom", rows: 2, placeholder: "What goes wrong, and when" });
    this.model = h("input", { id: id("model"), name: "model", autocomplete: "off", spellcheck: "false" });
    this.text = h("textarea", { id: id("text"), name: "text", rows: 2, placeholder: "Anything else the agents should know" });
    this.error = h("p", { class: "orch-form-error", role: "alert", hidden: true });
    this.launchBtn = h("button", { type: "submit", class: "orch-btn orch-primary", "aria-label": "Launch" }, icon("play"), h("span", { class: "orch-label" }, "Launch"));

    this.paths = h("textarea", { id: id("paths"), name: "paths", rows: 2, placeholder: "src/auth\nsrc/session.py", spellcheck: "false" });
    // The inputs a flow may take; each is shown only for the flows that take it.
    this.inputs = {
      base: { el: this.base, field: field("base", "Base ref", this.base, "") },
      focus: { el: this.focusIn, field: field("focus", "Focus", this.focusIn, "") },
      symptom: { el: this.symptom, field: field("symptom", "Symptom", this.symptom, "") },
      paths: { el: this.paths, field: field("paths", "Paths", this.paths, "") },
    };
    this.form = h(
      "form",
      { class: "orch-launcher-form", method: "dialog" },
      h("header", { class: "orch-dialog-head" }, h("h2", { id: id("title") }, "Launch a workflow"), h("button", { type: "button", class: "orch-btn orch-quiet", "aria-label": "Close", title: "Close", onclick: () => this.close() }, icon("close"))),
      field("flow", "Workflow", this.flowSel),
      this.about,
      field("repo", "Repository", this.repo),
      this.roots,
      h("div", { class: "orch-field-row" }, field("band", "Band", this.band), field("model", "Model", this.model)),
      this.inputs.symptom.field,
      this.inputs.focus.field,
      this.inputs.base.field,
      this.inputs.paths.field,
      field("text", "Notes", this.text),
      this.error,
      h("footer", { class: "orch-dialog-foot" }, h("button", { type: "button", class: "orch-btn orch-quiet", onclick: () => this.close() }, h("span", { class: "orch-label-keep" }, "Cancel")), this.launchBtn),
    );
    this.dialog = h("dialog", { class: "orch-dialog", "aria-labelledby": id("title") }, this.form);
    this.replaceChildren(this.dialog);
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this._launch();
    });
    this.flowSel.addEventListener("change", () => this._describe());
  }

  async open(flowName) {
    const c = client();
    const [flows, info] = await Promise.all([c.flows(), c.info()]);
    this.flows = flows;
    if (!this.flowSel.options.length) {
      for (const f of flows) this.flowSel.append(h("option", { value: f.name }, f.name));
      this.roots.replaceChildren(...info.repo_roots.map((r) => h("option", { value: r })));
      this.model.placeholder = info.model || `server default (${info.engine})`;
    }
    if (flowName) this.flowSel.value = flowName;
    this.repo.value = await currentRepo();
    this.error.hidden = true;
    this._describe();
    this.dialog.showModal();
    this.flowSel.focus();
  }

  close() {
    this.dialog.close();
  }

  _describe() {
    const flow = this.flows?.find((f) => f.name === this.flowSel.value);
    if (!flow) return;
    this.about.replaceChildren(h("p", {}, flow.description || ""));
    const taken = new Map((flow.inputs || []).map((i) => [i.field, i]));
    for (const [name, { el, field }] of Object.entries(this.inputs)) {
      const spec = taken.get(name);
      field.hidden = !spec;
      el.required = !!spec?.required;
      if (!spec) continue;
      const label = field.querySelector("label");
      label.textContent = capital(spec.name) + (spec.required ? " (required)" : "");
      field.querySelector(".orch-hint")?.remove();
      if (spec.help) field.append(h("p", { class: "orch-hint" }, capital(spec.help)));
    }
  }

  async _launch() {
    const request = {
      flow: this.flowSel.value,
      repo: this.repo.value.trim(),
      band: this.band.value,
      origin: "pane",
      thread: newThread(),
    };
    for (const [key, el] of [["model", this.model], ["text", this.text]]) {
      if (el.value.trim()) request[key] = el.value.trim();
    }
    for (const [name, { el, field }] of Object.entries(this.inputs)) {
      if (field.hidden || !el.value.trim()) continue;
      request[name] = name === "paths" ? el.value.split(/[\n,]+/).map((p) => p.trim()).filter(Boolean) : el.value.trim();
    }
    this.launchBtn.disabled = true;
    this.error.hidden = true;
    try {
      const out = await client().launch(request);
      this.close();
      this.dispatchEvent(new CustomEvent("orch-launched", { bubbles: true, composed: true, detail: { run_id: out.run_id, request } }));
    } catch (err) {
      this.error.textContent = err.message;
      this.error.hidden = false;
    } finally {
      this.launchBtn.disabled = false;
    }
  }
}

customElements.define("orch-launcher", OrchLauncher);
