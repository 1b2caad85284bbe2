// The pane's one connection to the server: REST calls and a WebSocket that resubscribes
// from the last seq it saw after any disconnect, so a run's stream misses nothing and never
// repeats itself.

const TOKEN_KEY = "orchestrator.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class OrchClient {
  /** @param {{server?: string, token?: string}} opts  server: base URL ("" = this page's). */
  constructor({ server = "", token = "" } = {}) {
    this.server = server.replace(/\/$/, "");
    this.token = token;
    this.socket = new Socket(this);
    this._info = null;
    this._flows = null;
  }

  url(path) {
    return this.server + path;
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async request(method, path, body) {
    const init = { method, headers: this.headers() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(this.url(path), init);
    } catch (err) {
      throw new ApiError(0, "unreachable", `The server cannot be reached (${err.message}).`);
    }
    if (!resp.ok) throw await errorOf(resp);
    return resp;
  }

  async get(path) {
    return (await this.request("GET", path)).json();
  }

  async post(path, body) {
    return (await this.request("POST", path, body)).json();
  }

  async text(path) {
    return (await this.request("GET", path)).text();
  }

  async info() {
    this._info ??= await this.get("/api/info");
    return this._info;
  }

  async flows() {
    this._flows ??= await this.get("/api/flows");
    return this._flows;
  }

  launch(request) {
    return this.post("/api/runs", request);
  }

  runs(filters = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    return this.get(`/api/runs?${q}`);
  }

  run(runId) {
    return this.get(`/api/runs/${encodeURIComponent(runId)}`);
  }

  report(runId, format) {
    return this.text(`/api/runs/${encodeURIComponent(runId)}/report?format=${format}`);
  }

  cancel(runId, reason = "") {
    return this.post(`/api/runs/${encodeURIComponent(runId)}/cancel`, { reason });
  }

  send(runId, requestId) {
    return this.post(`/api/runs/${encodeURIComponent(runId)}/send`, { request_id: requestId });
  }

  /** Save a report file: fetched with the token in a header, handed to the browser as a blob. */
  async download(runId, format) {
    const resp = await this.request("GET", `/api/runs/${encodeURIComponent(runId)}/report?format=${format}&download=1`);
    const blob = await resp.blob();
    const disposition = resp.headers.get("Content-Disposition") || "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] || `${runId}-report.${format}`;
    const href = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = href;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10_000);
    return name;
  }

  /** Follow a run: onFrame gets the snapshot, then every event frame, in seq order. */
  subscribe(runId, onFrame, after = 0) {
    return this.socket.subscribe(runId, onFrame, after);
  }
}

async function errorOf(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return new ApiError(resp.status, body.error.code, body.error.message);
  } catch {
    /* not JSON */
  }
  return new ApiError(resp.status, "http_" + resp.status, `${resp.status} ${resp.statusText}`);
}

class Socket {
  constructor(client) {
    this.client = client;
    this.ws = null;
    this.subs = new Map(); // run id → {listeners, frames, from, lastSeq, waiting}
    this.retry = 0;
    this.listeners = new Set();
    this.status = "idle";
    this.lastFrame = 0;
    // The server sends a heartbeat every few seconds: a connection silent for three of them
    // is dead even if the browser has not noticed, so drop it and resubscribe.
    setInterval(() => {
      const beat = (this.client._info?.heartbeat_seconds ?? 15) * 1000;
      if (this.ws?.readyState === WebSocket.OPEN && Date.now() - this.lastFrame > 3 * beat) this.drop();
    }, 5000);
  }

  onStatus(fn) {
    this.listeners.add(fn);
    fn(this.status);
    return () => this.listeners.delete(fn);
  }

  _setStatus(status) {
    this.status = status;
    for (const fn of this.listeners) fn(status);
  }

  subscribe(runId, onFrame, after = 0) {
    const listener = { onFrame, lastSeq: after };
    let run = this.subs.get(runId);
    if (!run) {
      run = { listeners: new Set(), frames: [], from: after, lastSeq: after, waiting: false };
      this.subs.set(runId, run);
      this._ensure();
      if (this.ws?.readyState === WebSocket.OPEN) this._follow(runId, run);
    } else if (after < run.from) {
      // It needs events older than this client holds: the server follows the run again from
      // there (the others skip what they have seen).
      Object.assign(run, { frames: [], from: after, lastSeq: after });
      if (this.ws?.readyState === WebSocket.OPEN) this._follow(runId, run);
    } else {
      // The run is followed already (another pane shows it): replay what came so far.
      for (const frame of run.frames) this._deliver(listener, frame);
    }
    run.listeners.add(listener);
    return () => {
      if (!run.listeners.delete(listener) || run.listeners.size > 0) return;
      this.subs.delete(runId);
      if (this.ws?.readyState === WebSocket.OPEN) this._send({ type: "unsubscribe", run_id: runId });
    };
  }

  _follow(runId, run) {
    // The server replaces a run's subscription: events of the old one still on their way are
    // dropped until the snapshot of this one (which carries its after).
    run.waiting = true;
    this._send({ type: "subscribe", run_id: runId, after: run.lastSeq });
  }

  _deliver(listener, frame) {
    if (frame.type === "event") {
      if (frame.seq <= listener.lastSeq) return;
      listener.lastSeq = frame.seq;
    }
    listener.onFrame(frame);
  }

  _ensure() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    const base = this.client.server || location.origin;
    const url = new URL("/ws", base.replace(/^http/, "ws"));
    if (this.client.token) url.searchParams.set("token", this.client.token);
    this._setStatus("connecting");
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 0;
      this.lastFrame = Date.now();
      this._setStatus("open");
      // Resubscribe each run once, from the last seq seen: nothing missed, nothing twice.
      for (const [runId, run] of this.subs) this._follow(runId, run);
    };
    ws.onmessage = (msg) => {
      this.lastFrame = Date.now();
      const message = JSON.parse(msg.data);
      // Frames queued while the server was sending arrive together, in order.
      if (message.type === "batch") for (const frame of message.frames) this._frame(frame);
      else this._frame(message);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this._setStatus("closed");
      if (this.subs.size === 0) return;
      const delay = Math.min(5000, 300 * 2 ** this.retry++);
      setTimeout(() => this._ensure(), delay);
    };
  }

  _send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  _frame(frame) {
    switch (frame.type) {
      case "snapshot":
      case "event":
      case "error": {
        const key = frame.type === "error" ? frame.run_id ?? undefined : frame.sub;
        const run = this.subs.get(key); // (an error about no run goes to no one)
        if (!run) return;
        if (frame.type === "snapshot" && frame.after === run.lastSeq) run.waiting = false;
        if (frame.type === "event") {
          if (run.waiting || frame.seq <= run.lastSeq) return;
          run.lastSeq = frame.seq;
        }
        for (const listener of run.listeners) this._deliver(listener, frame);
        // Kept for a listener that joins later, which must see the run from its start (not
        // for the feed of every run, which would keep the whole log in the page).
        if (key !== null) run.frames.push(frame);
        return;
      }
      case "heartbeat":
        return;
      default:
        return;
    }
  }

  /** Drop the connection (tests and "reconnect" use it); it comes back on its own. */
  drop() {
    this.ws?.close();
  }
}

let shared = null;

/** The page's client: configured once (server, token), shared by every component. */
export function configure(opts = {}) {
  shared = new OrchClient(opts);
  return shared;
}

export function client() {
  if (!shared && globalThis.orchestratorConfig) {
    // A host page on another origin sets window.orchestratorConfig = {server, token} before
    // it loads the components.
    shared = new OrchClient(globalThis.orchestratorConfig);
  }
  if (!shared) {
    // A token passed as ?token= is kept for this tab, then removed from the address bar.
    const params = new URLSearchParams(location.search);
    let token = params.get("token") || "";
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    } else {
      token = sessionStorage.getItem(TOKEN_KEY) || "";
    }
    shared = new OrchClient({ token });
  }
  return shared;
}

/** A request id for once-only operations. */
export function requestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
