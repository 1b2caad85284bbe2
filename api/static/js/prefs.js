// The page's preferences: the current repository (kept across reloads) and thread ids.

import { client } from "./client.js";

const REPO_KEY = "orchestrator.repo";

/** The repository launches use: the one chosen here, else the server's default root. */
export async function currentRepo() {
  const chosen = localStorage.getItem(REPO_KEY);
  if (chosen) return chosen;
  return (await client().info()).default_repo;
}

export function setRepo(path) {
  if (path) localStorage.setItem(REPO_KEY, path);
  else localStorage.removeItem(REPO_KEY);
  document.dispatchEvent(new CustomEvent("orch-repo", { detail: { repo: path } }));
}

/** A chat thread id for a launch from this pane: the report is sent back to it. */
export function newThread() {
  return `pane-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
