// <orch-composer>: the chat input. "/" lists the flows (arrow keys, Enter/Tab to pick,
// Escape to close); "/code-review [band] [free text]" launches at once on the current
// repository. The Workflow button opens the flow launcher.
//
// Emits (bubbling): "orch-launched" {run_id, request} after a launch, and
// "orch-open-launcher" {flow} when the Workflow button is pressed.

import { client } from "./client.js";
import { button, h, toast } from "./dom.js";
import { currentRepo, newThread } from "./prefs.js";

const BANDS = new Set(["small", "medium", "large", "auto"]);
let composerCount = 0;

/** "/code-review large look at auth" → {flow, band, text}; null if it is not a command. */
export function parseCommand(line) {
  const m = /^\/([\w-]+)\s*([\s\S]*)$/.exec(line.trim());
  if (!m) return null;
  let rest = m[2].trim();
  let band = null;
  const first = rest.split(/\s+/, 1)[0].toLowerCase();
  if (BANDS.has(first)) {
    band = first;
    rest = rest.slice(first.length).trim();
  }
  return { flow: m[1], band, text: rest };
}

export class OrchComposer extends HTMLElement {
  constructor() {
    super();
    this.flows = [];
    this.matches = [];
    this.active = -1;
    this.uid = `orch-composer-${++composerCount}`;
  }

  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.classList.add("orch-composer");
    const listId = `${this.uid}-menu`;
    this.menu = h("ul", { class: "orch-slash-menu", id: listId, role: "listbox", "aria-label": "Workflows", hidden: true });
    this.input = h("textarea", {
      class: "orch-composer-input",
      rows: 1,
      placeholder: "Type / to pick a workflow, e.g. /code-review small check the auth changes",
      "aria-label": "Message: type / for workflows",
      role: "combobox",
      "aria-autocomplete": "list",
      "aria-expanded": "false",
      "aria-controls": listId,
      spellcheck: "false",
    });
    this.input.addEventListener("input", () => this._changed());
    this.input.addEventListener("keydown", (e) => this._keys(e));
    this.input.addEventListener("blur", () => setTimeout(() => this._closeMenu(), 150));
    this.sendBtn = button("send", "Launch", { class: "orch-primary orch-composer-send", onclick: () => this.submit() });
    this.workflowBtn = button("workflow", "Workflow", {
      class: "orch-composer-workflow",
      "aria-haspopup": "dialog",
      onclick: () => this.dispatchEvent(new CustomEvent("orch-open-launcher", { bubbles: true, composed: true, detail: {} })),
    });
    this.replaceChildren(h("div", { class: "orch-composer-box" }, this.menu, this.workflowBtn, this.input, this.sendBtn));
    // A command sent before the catalog arrives waits for it (see submit).
    this.ready = client()
      .flows()
      .then((flows) => {
        this.flows = flows;
        // Someone may have typed "/" before the catalog arrived: show the menu now.
        if (document.activeElement === this.input) this._changed();
      })
      .catch((err) => toast(`Could not load the workflows: ${err.message}`, "error"));
  }

  _changed() {
    const el = this.input;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight, 160)}px`;
    const value = el.value;
    const m = /^\/([\w-]*)$/.exec(value.trimStart());
    if (m) this._openMenu(m[1]);
    else this._closeMenu();
  }

  _openMenu(prefix) {
    const p = prefix.toLowerCase();
    this.matches = this.flows.filter((f) => f.name.toLowerCase().startsWith(p) || f.name.toLowerCase().includes(p));
    if (!this.matches.length) return this._closeMenu();
    this.active = Math.max(0, this.matches.findIndex((f) => f.name.toLowerCase().startsWith(p)));
    this.menu.replaceChildren(
      ...this.matches.map((f, i) =>
        h(
          "li",
          {
            role: "option",
            id: `${this.uid}-opt-${i}`,
            class: "orch-slash-item",
            "data-flow": f.name,
            "aria-selected": String(i === this.active),
            onmousedown: (e) => {
              e.preventDefault();
              this._pick(i);
            },
          },
          h("span", { class: "orch-slash-name" }, `/${f.name}`),
          h("span", { class: "orch-slash-desc" }, flowLine(f)),
        ),
      ),
    );
    this.menu.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
    this._highlight();
  }

  _closeMenu() {
    this.menu.hidden = true;
    this.active = -1;
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
  }

  _highlight() {
    [...this.menu.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === this.active)));
    const li = this.menu.children[this.active];
    if (li) {
      this.input.setAttribute("aria-activedescendant", li.id);
      li.scrollIntoView({ block: "nearest" });
    }
  }

  _pick(i) {
    const flow = this.matches[i];
    if (!flow) return;
    this.input.value = `/${flow.name} `;
    this._closeMenu();
    this.input.focus();
  }

  _keys(e) {
    const open = !this.menu.hidden;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      const n = this.matches.length;
      this.active = (this.active + (e.key === "ArrowDown" ? 1 : -1) + n) % n;
      this._highlight();
      return;
    }
    if (open && e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      this._closeMenu();
      return;
    }
    if (open && e.key === "Tab") {
      e.preventDefault();
      this._pick(this.active);
      return;
    }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (open) {
        const typed = this.input.value.trim().slice(1).toLowerCase();
        const exact = this.matches.find((f) => f.name.toLowerCase() === typed);
        if (!exact) return this._pick(this.active);
      }
      this.submit();
    }
  }

  async submit() {
    const line = this.input.value.trim();
    if (!line || this.busy) return; // a second Enter while one is going out launches nothing
    this.busy = true;
    try {
      await this._submit(line);
    } finally {
      this.busy = false;
    }
  }

  async _submit(line) {
    // Without the catalog a command cannot be checked, nor its required input asked for.
    await this.ready;
    this._closeMenu();
    const cmd = parseCommand(line);
    if (!cmd) {
      toast("Start with / and a workflow name (e.g. /code-review), or use the Workflow button.", "error");
      return;
    }
    const flow = this.flows.find((f) => f.name === cmd.flow);
    if (this.flows.length && !flow) {
      toast(`There is no workflow /${cmd.flow}. Type / to see them.`, "error");
      return;
    }
    // The free text answers the flow's required input (a symptom, a focus, a document) if it
    // has one; otherwise it is a note to every agent. Without it, the launcher asks.
    const needs = (flow?.inputs || []).find((i) => i.required);
    if (needs && !cmd.text) {
      this.dispatchEvent(new CustomEvent("orch-open-launcher", { bubbles: true, composed: true, detail: { flow: cmd.flow } }));
      return;
    }
    const request = { flow: cmd.flow, repo: await currentRepo(), origin: "pane", thread: newThread() };
    if (cmd.text) request[needs ? needs.field : "text"] = cmd.text;
    if (cmd.band && cmd.band !== "auto") request.band = cmd.band;
    this.sendBtn.disabled = true;
    try {
      const out = await client().launch(request);
      this.input.value = "";
      this._changed();
      this.dispatchEvent(new CustomEvent("orch-launched", { bubbles: true, composed: true, detail: { run_id: out.run_id, request } }));
    } catch (err) {
      toast(`Not launched: ${err.message}`, "error");
    } finally {
      this.sendBtn.disabled = false;
    }
  }
}

export function flowLine(flow) {
  const text = flow.description || flow.summary || flow.title || "";
  return text.split(/(?<=\.)\s/)[0];
}

customElements.define("orch-composer", OrchComposer);
