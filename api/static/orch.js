// Orchestrator's web components, in one module with no build step:
//   <orch-app>        the whole page (top bar, panes, history, analytics, composer)
//   <orch-composer>   the chat input with the "/" workflow menu and the Workflow button
//   <orch-launcher>   the flow launcher dialog (open() it)
//   <orch-run-pane>   one run, live (run-id="…")
//   <orch-history>    past runs to reopen
//   <orch-analytics>  charts of the run history
// A host page on another origin (started with `orchestrator serve --allow-origin ORIGIN`)
// sets window.orchestratorConfig = {server: "http://127.0.0.1:8765", token} before loading
// this module, links orch.css, and mounts <orch-run-pane run-id> on "orch-launched" events.

export { configure, client, OrchClient } from "./js/client.js";
export { OrchComposer, parseCommand } from "./js/composer.js";
export { OrchLauncher } from "./js/launcher.js";
export { OrchRunPane } from "./js/run-pane.js";
export { OrchHistory } from "./js/history.js";
export { OrchAnalytics } from "./js/analytics.js";
export { OrchApp } from "./js/app.js";
