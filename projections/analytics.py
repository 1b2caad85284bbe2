"""Analytics: SQL views over the projections and the log, and a helper that serves them.

Durations are in seconds, from the events' own timestamps: a step's is ``ended - started``
(all its attempts), a run's is ``ended - created``; only ended steps and runs count. Severities
are the personas' raw words (see ``projections.rows``). The views over the log itself
(``LOG_VIEWS``) exist only where the log's table does.
"""

from __future__ import annotations

from typing import Any

from projections.rows import LOG_TABLE

# A run's numbers, grouped by one of its columns (flow, band).
_RUNS_BY = """
SELECT {key},
  count(*) AS runs,
  count(*) FILTER (status = 'finished') AS finished,
  count(*) FILTER (status = 'failed') AS failed,
  count(*) FILTER (status = 'cancelled') AS cancelled,
  count(*) FILTER (status NOT IN ('finished', 'failed', 'cancelled')) AS active,
  round(count(*) FILTER (status = 'failed') / count(*), 4) AS failure_rate,
  round(avg(ended_ts - created_ts), 3) AS avg_duration_s,
  round(quantile_cont(ended_ts - created_ts, 0.5), 3) AS median_duration_s,
  round(max(ended_ts - created_ts), 3) AS max_duration_s,
  sum(steps_total) AS steps,
  sum(steps_failed) AS failed_steps,
  sum(tokens_in) AS tokens_in,
  sum(tokens_out) AS tokens_out,
  sum(findings) AS findings,
  sum(report_findings) AS report_findings
FROM flow_runs
GROUP BY {key}
ORDER BY {key}
"""

VIEWS: dict[str, str] = {
    # Per persona: how long its steps take, what they cost and what they find.
    "analytics_persona": """
SELECT persona,
  count(*) AS steps,
  count(*) FILTER (status = 'finished') AS finished,
  count(*) FILTER (status = 'failed') AS failed,
  round(avg(ended_ts - started_ts), 3) AS avg_duration_s,
  round(quantile_cont(ended_ts - started_ts, 0.5), 3) AS median_duration_s,
  round(max(ended_ts - started_ts), 3) AS max_duration_s,
  sum(tokens_in) AS tokens_in,
  sum(tokens_out) AS tokens_out,
  sum(tool_calls) AS tool_calls,
  sum(tools_denied) AS tools_denied,
  sum(findings) AS findings
FROM flow_steps
GROUP BY persona
ORDER BY persona
""",
    "analytics_flow": _RUNS_BY.format(key="flow"),
    "analytics_band": _RUNS_BY.format(key="band"),
    # Findings by severity word, per flow and persona.
    "analytics_findings": """
SELECT r.flow, s.persona, s.severity, sum(s.n) AS findings, count(DISTINCT s.run_id) AS runs
FROM (
  SELECT run_id, persona,
    unnest(map_keys(findings_by_severity)) AS severity,
    unnest(map_values(findings_by_severity)) AS n
  FROM flow_steps
) s
JOIN flow_runs r USING (run_id)
GROUP BY r.flow, s.persona, s.severity
ORDER BY r.flow, s.persona, findings DESC, s.severity
""",
    # What the evidence check and the adversarial validator made of the findings, per flow.
    "analytics_validator": """
SELECT flow,
  count(*) AS runs,
  sum(evidence_verified) AS evidence_verified,
  sum(evidence_unverified) AS evidence_unverified,
  round(sum(evidence_verified)
    / nullif(sum(evidence_verified) + sum(evidence_unverified), 0), 4) AS verified_rate,
  sum(confirmed) AS confirmed,
  sum(partially_refuted) AS partially_refuted,
  sum(refuted) AS refuted,
  round(sum(refuted) / nullif(sum(confirmed) + sum(partially_refuted) + sum(refuted), 0), 4)
    AS refuted_rate
FROM flow_runs
GROUP BY flow
ORDER BY flow
""",
    # Failed attempts and failed steps, per flow and persona.
    "analytics_failures": """
SELECT r.flow, s.persona,
  count(*) AS steps,
  sum(s.attempt) AS attempts,
  sum(s.failures) AS failed_attempts,
  count(*) FILTER (s.status = 'failed') AS failed_steps,
  count(*) FILTER (s.status = 'failed' AND s.retryable) AS failed_retryable,
  round(count(*) FILTER (s.status = 'failed') / count(*), 4) AS step_failure_rate,
  round(sum(s.failures) / nullif(sum(s.attempt), 0), 4) AS attempt_failure_rate
FROM flow_steps s
JOIN flow_runs r USING (run_id)
GROUP BY r.flow, s.persona
ORDER BY r.flow, s.persona
""",
}


LOG_VIEWS: dict[str, str] = {
    # Every kind of event the log holds: how many, over how many runs, first and last.
    "analytics_events": f"""
SELECT kind, count(*) AS events, count(DISTINCT run_id) AS runs,
  min(ts) AS first_ts, max(ts) AS last_ts
FROM {LOG_TABLE}
GROUP BY kind
ORDER BY kind
""",
    # Which read-only tools each persona called, how often they failed or were refused.
    "analytics_tools": f"""
SELECT s.persona, json_extract_string(e.body, '$.tool') AS tool,
  count(*) FILTER (e.kind = 'tool_called') AS calls,
  count(*) FILTER (e.kind = 'tool_result'
    AND NOT coalesce(json_extract(e.body, '$.ok')::BOOLEAN, true)) AS errors,
  count(*) FILTER (e.kind = 'tool_denied') AS denied,
  count(DISTINCT e.run_id) AS runs
FROM {LOG_TABLE} e
LEFT JOIN flow_steps s ON s.run_id = e.run_id AND s.step_id = e.step_id
WHERE e.kind IN ('tool_called', 'tool_result', 'tool_denied')
GROUP BY s.persona, tool
ORDER BY s.persona, tool
""",
}

ALL_VIEWS = {**VIEWS, **LOG_VIEWS}


def create_views(con: Any) -> None:
    """(Re)create every analytics view; the projection tables must exist."""
    has_log = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [LOG_TABLE]
    ).fetchone()[0]
    for name, sql in (ALL_VIEWS if has_log else VIEWS).items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def analytics(con: Any, names: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each view's rows as JSON-able dicts, by view name (every view present unless ``names``)."""
    present = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    wanted = [n for n in ALL_VIEWS if n in present] if names is None else names
    unknown = [n for n in wanted if n not in ALL_VIEWS or n not in present]
    if unknown:
        raise KeyError(f"no analytics view named {', '.join(unknown)}")
    out: dict[str, list[dict[str, Any]]] = {}
    for name in wanted:
        cur = con.execute(f"SELECT * FROM {name}")
        cols = [d[0] for d in cur.description]
        out[name] = [dict(zip(cols, row)) for row in cur.fetchall()]
    return out

