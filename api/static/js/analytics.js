// <orch-analytics>: charts of the run history from /api/analytics, drawn as inline SVG:
// durations and tokens by persona and flow, findings by severity, validator outcomes,
// evidence checks and failure rates.

import { client } from "./client.js";
import { button, compact, count, duration, h, toast } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 360;
const LABEL_W = 128;
const BAR_H = 16;
const GAP = 6;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) if (c != null) el.append(c);
  return el;
}

/**
 * A horizontal (stacked) bar chart.
 * rows: [{label, values: [n, …]}]; series: [{name, key}] (one colour class per key).
 */
export function barChart({ title, rows, series, format = compact, note = "" }) {
  const figure = h("figure", { class: "orch-chart" });
  figure.append(h("figcaption", {}, title, note ? h("span", { class: "orch-chart-note" }, ` ${note}`) : null));
  if (!rows.length) {
    figure.append(h("p", { class: "orch-empty-note" }, "No data yet."));
    return figure;
  }
  const max = Math.max(...rows.map((r) => r.values.reduce((a, b) => a + (b || 0), 0)), 0) || 1;
  const height = rows.length * (BAR_H + GAP) + GAP;
  const plot = W - LABEL_W - 56;
  const svg = s("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": title, class: "orch-chart-svg", preserveAspectRatio: "xMinYMin meet" });
  rows.forEach((row, i) => {
    const y = GAP + i * (BAR_H + GAP);
    svg.append(s("text", { x: LABEL_W - 8, y: y + BAR_H - 4, "text-anchor": "end", class: "orch-chart-label" }, clip(row.label)));
    let x = LABEL_W;
    const total = row.values.reduce((a, b) => a + (b || 0), 0);
    row.values.forEach((v, j) => {
      const w = ((v || 0) / max) * plot;
      if (w > 0) {
        const rect = s("rect", { x, y, width: Math.max(w, 1), height: BAR_H, rx: 3, class: `orch-series-${series[j].key}` });
        rect.append(s("title", {}, `${row.label} · ${series[j].name}: ${format(v)}`));
        svg.append(rect);
      }
      x += w;
    });
    svg.append(s("text", { x: x + 6, y: y + BAR_H - 4, class: "orch-chart-value" }, format(total)));
  });
  figure.append(svg);
  if (series.length > 1) {
    figure.append(h("div", { class: "orch-legend" }, series.map((se) => h("span", { class: "orch-legend-item" }, h("span", { class: `orch-swatch orch-series-${se.key}` }), se.name))));
  }
  return figure;
}

function clip(text, n = 18) {
  text = String(text ?? "–");
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

const pct = (v) => `${Math.round((v || 0) * 100)}%`;
// Averages: a tenth of a second below 10 s, where whole seconds would read "0s" for every bar.
const secs = (v) => (v != null && isFinite(v) && v < 10 ? `${Math.max(0, v).toFixed(1)}s` : duration(v));

function sum(rows, key) {
  return rows.reduce((a, r) => a + (Number(r[key]) || 0), 0);
}

/** The charts for one /api/analytics answer. */
export function charts(data) {
  const persona = data.analytics_persona || [];
  const flow = data.analytics_flow || [];
  const findings = data.analytics_findings || [];
  const validator = data.analytics_validator || [];
  const failures = data.analytics_failures || [];

  const bySeverity = new Map();
  for (const r of findings) bySeverity.set(r.severity, (bySeverity.get(r.severity) || 0) + (Number(r.findings) || 0));
  const failByPersona = new Map();
  for (const r of failures) {
    const acc = failByPersona.get(r.persona) || { steps: 0, failed: 0 };
    acc.steps += Number(r.steps) || 0;
    acc.failed += Number(r.failed_steps) || 0;
    failByPersona.set(r.persona, acc);
  }
  return [
    barChart({
      title: "Runs by workflow",
      rows: flow.map((r) => ({ label: r.flow, values: [r.finished, r.failed, r.cancelled, r.active] })),
      series: [
        { name: "finished", key: "ok" },
        { name: "failed", key: "bad" },
        { name: "cancelled", key: "warn" },
        { name: "active", key: "info" },
      ],
    }),
    barChart({ title: "Average run duration by workflow", rows: flow.map((r) => ({ label: r.flow, values: [r.avg_duration_s] })), series: [{ name: "seconds", key: "a" }], format: secs }),
    barChart({
      title: "Tokens by workflow",
      rows: flow.map((r) => ({ label: r.flow, values: [r.tokens_in, r.tokens_out] })),
      series: [
        { name: "prompt", key: "b" },
        { name: "generated", key: "a" },
      ],
    }),
    barChart({ title: "Average step duration by persona", rows: persona.map((r) => ({ label: r.persona, values: [r.avg_duration_s] })), series: [{ name: "seconds", key: "a" }], format: secs }),
    barChart({
      title: "Tokens by persona",
      rows: persona.map((r) => ({ label: r.persona, values: [r.tokens_in, r.tokens_out] })),
      series: [
        { name: "prompt", key: "b" },
        { name: "generated", key: "a" },
      ],
    }),
    barChart({ title: "Findings by severity", rows: [...bySeverity].sort((a, b) => b[1] - a[1]).map(([k, v]) => ({ label: k, values: [v] })), series: [{ name: "findings", key: "a" }] }),
    barChart({
      title: "Validator outcomes by workflow",
      rows: validator.map((r) => ({ label: r.flow, values: [r.confirmed, r.partially_refuted, r.refuted] })),
      series: [
        { name: "confirmed", key: "ok" },
        { name: "partially refuted", key: "warn" },
        { name: "refuted", key: "bad" },
      ],
    }),
    barChart({
      title: "Evidence checks by workflow",
      rows: validator.map((r) => ({ label: r.flow, values: [r.evidence_verified, r.evidence_unverified] })),
      series: [
        { name: "verified", key: "ok" },
        { name: "unverified", key: "bad" },
      ],
      note: `(${pct(sum(validator, "evidence_verified") / (sum(validator, "evidence_verified") + sum(validator, "evidence_unverified") || 1))} verified overall)`,
    }),
    barChart({ title: "Run failure rate by workflow", rows: flow.map((r) => ({ label: r.flow, values: [r.failure_rate] })), series: [{ name: "failure rate", key: "bad" }], format: pct }),
    barChart({
      title: "Step failure rate by persona",
      rows: [...failByPersona].map(([k, v]) => ({ label: k, values: [v.steps ? v.failed / v.steps : 0] })),
      series: [{ name: "failure rate", key: "bad" }],
      format: pct,
    }),
  ];
}

export class OrchAnalytics extends HTMLElement {
  connectedCallback() {
    if (this.built) return;
    this.built = true;
    this.classList.add("orch-analytics");
    this.grid = h("div", { class: "orch-chart-grid" });
    this.summary = h("p", { class: "orch-analytics-summary" });
    this.replaceChildren(
      h("div", { class: "orch-analytics-head" }, h("h2", {}, "Analytics"), this.summary, button("refresh", "Refresh analytics", { class: "orch-quiet orch-icon-only", onclick: () => this.load() })),
      this.grid,
    );
    this.load();
  }

  async load() {
    try {
      const data = await client().get("/api/analytics");
      const flows = data.analytics_flow || [];
      this.summary.textContent = `${count(sum(flows, "runs"), "run")} · ${compact(sum(flows, "tokens_out"))} generated tokens · ${count(sum(flows, "findings"), "finding")} raised, ${sum(flows, "report_findings")} in reports`;
      this.grid.replaceChildren(...charts(data));
    } catch (err) {
      toast(`Analytics could not be loaded: ${err.message}`, "error");
    }
  }
}

customElements.define("orch-analytics", OrchAnalytics);
