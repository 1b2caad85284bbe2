// Small DOM helpers shared by the components.

import { icon } from "./icons.js";

/** h("div", {class: "x", onclick: fn}, child, "text") */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

/** A button with an icon and a label; the label hides on narrow screens (aria-label stays). */
export function button(iconName, label, attrs = {}) {
  const { class: cls = "", ...rest } = attrs;
  return h(
    "button",
    { type: "button", class: `orch-btn ${cls}`.trim(), "aria-label": label, title: label, ...rest },
    icon(iconName),
    h("span", { class: "orch-label" }, attrs["data-text"] || label),
  );
}

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

export function when(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// "1 run", "3 runs": a count with its noun.
export function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

export function capital(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

export function basename(path) {
  return (path || "").replace(/\/+$/, "").split("/").pop() || path || "";
}

export function compact(n) {
  if (n == null) return "–";
  if (n < 1000) return String(n);
  if (n < 1e6) return (n / 1000).toFixed(n < 1e4 ? 1 : 0) + "k";
  return (n / 1e6).toFixed(1) + "M";
}

/** Tell the person something (an aria-live region); kind: info | error. */
export function toast(message, kind = "info") {
  let region = document.querySelector(".orch-toasts");
  if (!region) {
    region = h("div", { class: "orch-toasts", role: "status", "aria-live": "polite" });
    document.body.append(region);
  }
  const item = h("div", { class: `orch-toast orch-toast-${kind}` }, message);
  region.append(item);
  while (region.children.length > 3) region.firstChild.remove();
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}
