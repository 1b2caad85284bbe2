"""The report as one self-contained HTML page: inline CSS, no script, no external asset.

Every piece of text is escaped, so model output (titles, claims, quotes) shows as text and can
never become markup. The layout is one readable column that narrows to a phone's width; wide
tables scroll sideways inside their own box instead of widening the page.
"""

from __future__ import annotations

from html import escape

from conductor.report import (
    FindingView,
    Report,
    Section,
    ValidatorView,
    agent_problems,
    deferred_evidence,
    header_rows,
    shown_quote,
)

__all__ = ["render"]

_CSS = """
:root{color-scheme:light dark;--fg:#1d1f23;--bg:#fff;--muted:#5d636b;--line:#d9dce1;--code:#f4f5f7;
--crit:#b3261e;--warn:#9a6700;--sugg:#2557a7;--ok:#1a7f37}
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--bg:#16181b;--muted:#9aa1a9;--line:#33373d;
--code:#202328;--crit:#ff8a80;--warn:#e3b341;--sugg:#79a6f6;--ok:#56d364}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif}
main{max-width:60rem;margin:0 auto;padding:1rem}
h1{font-size:1.45rem;margin:.5rem 0 1rem;overflow-wrap:anywhere}
h2{font-size:1.2rem;margin:2rem 0 .75rem;padding-bottom:.25rem;border-bottom:1px solid var(--line)}
h3{font-size:1.05rem;margin:1.25rem 0 .5rem;overflow-wrap:anywhere}
p,li{overflow-wrap:anywhere}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;overflow-wrap:anywhere}
@media (max-width:36rem){dl.meta{grid-template-columns:1fr}dl.meta dd{margin-bottom:.5rem}}
.rec{font-weight:600;padding:.75rem 1rem;border-left:4px solid var(--ok);background:var(--code)}
.rec.critical{border-color:var(--crit)}.rec.warning{border-color:var(--warn)}.rec.suggestion{border-color:var(--sugg)}
.finding{border:1px solid var(--line);border-radius:8px;padding:.75rem 1rem;margin:1rem 0}
.finding h3{margin-top:0}
.badge{display:inline-block;font-size:.8rem;font-weight:600;padding:0 .5rem;border-radius:999px;
border:1px solid currentColor;margin-right:.35rem;white-space:nowrap}
.critical .badge.level,.badge.critical{color:var(--crit)}.warning .badge.level,.badge.warning{color:var(--warn)}
.suggestion .badge.level,.badge.suggestion{color:var(--sugg)}
.muted{color:var(--muted);font-size:.9rem}
pre{background:var(--code);padding:.6rem .75rem;border-radius:6px;overflow-x:auto;white-space:pre-wrap;
overflow-wrap:anywhere;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;margin:.25rem 0 .75rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid var(--line);padding:.35rem .5rem;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;white-space:nowrap}
.prose{white-space:pre-wrap}
"""


def render(report: Report) -> str:
    h = report.header
    title = f"{h.flow or 'Run'} report — {h.repo or h.run_id}"
    by_id = {f.id: f for f in report.findings}
    body = [f"<h1>{escape(title)}</h1>", _meta(report)]
    for section in report.sections:
        content = _section(section, report, by_id)
        if content:
            body.append(f"<section><h2>{escape(section.title)}</h2>\n{content}\n</section>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def _meta(report: Report) -> str:
    h = report.header
    items = [f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in header_rows(h)]
    if h.roster:
        roster = "".join(
            f"<li><strong>{escape(r.persona)}</strong> ({escape(r.phase)}): {escape(r.reason)}</li>"
            for r in h.roster
        )
        items.append(f"<dt>Roster</dt><dd><ul>{roster}</ul></dd>")
    for note in h.plan_notes:
        items.append(f"<dt>Note</dt><dd>{escape(note)}</dd>")
    return '<dl class="meta">' + "".join(items) + "</dl>"


def _level_class(report: Report) -> str:
    c = report.counts
    for level in ("critical", "warning", "suggestion"):
        if c.get(level):
            return level
    return "none"


def _section(section: Section, report: Report, by_id: dict[str, FindingView]) -> str:
    kind = section.kind
    if kind == "summary":
        lead = "" if any(s.kind == "recommendation" for s in report.sections) else _rec(report)
        c = report.counts
        table = (
            '<div class="scroll"><table><tr><th class="n">Critical</th><th class="n">Warnings</th>'
            '<th class="n">Suggestions</th><th class="n">Unverified</th><th class="n">Deferred</th>'
            '<th class="n">Left out</th></tr>'
            f'<tr><td class="n">{c["critical"]}</td><td class="n">{c["warning"]}</td>'
            f'<td class="n">{c["suggestion"]}</td><td class="n">{c["unverified"]}</td>'
            f'<td class="n">{c["deferred"]}</td><td class="n">{c["omitted"]}</td></tr></table></div>'
        )
        return f"{lead}<p>{escape(report.summary)}</p>{table}"
    if kind == "recommendation":
        return _rec(report)
    if kind in ("personas", "critical", "warning", "suggestion", "findings", "clear"):
        parts = [
            f'<p class="muted"><strong>{escape(s.persona)}</strong> ({escape(s.step_id)})</p>'
            f'<p class="prose">{escape(s.text.strip())}</p>'
            for s in section.summaries
        ]
        parts.extend(_finding(by_id[fid]) for fid in section.ids)
        return "\n".join(parts)
    if kind in ("document", "guide", "problem"):
        return f'<p class="prose">{escape(section.text.strip())}</p>'
    if kind in ("scope", "context"):
        lines = section.text.split("\n")
        head = ""
        if kind == "scope" and lines:
            head, lines = f"<p>{escape(lines[0])}</p>", lines[1:]
        listed = "".join(f"<li><code>{escape(p)}</code></li>" for p in lines if p)
        return head + (f"<ul>{listed}</ul>" if listed else "")
    if kind == "deferred":
        return "\n".join(
            f'<div class="finding"><h3>{escape(d.id)} — {escape(d.title)}</h3>'
            f'<p class="muted">Raised by {escape(d.persona)} ({deferred_evidence(d)})</p>'
            f"<p><strong>Why deferred:</strong> {escape(d.why_deferred or d.claim or 'no evidence of need today')}</p>"
            f"<p><strong>Reopen when:</strong> {escape(d.reopen_when or 'no trigger given')}</p></div>"
            for d in report.deferred
        )
    if kind == "unverified":
        items = "\n".join(
            f'<div class="finding"><h3>{escape(u.id)} — {escape(u.title)} '
            f'<span class="badge">unverified</span></h3>'
            f'<p class="muted">Raised by {escape(u.persona)}, severity {escape(u.severity)}</p>'
            f"<p><strong>Why unverified:</strong> {escape(u.reason)}</p>"
            + (f'<p class="prose">{escape(u.claim.strip())}</p>' if u.claim else "")
            + "</div>"
            for u in report.unverified
        )
        return (
            "<p>These claims are kept as the agents made them, but their citations did not check "
            "out against the commit. Treat them as leads, not findings.</p>\n" + items
        )
    if kind == "omitted":
        rows = "".join(
            f"<li><strong>{escape(o.id)}</strong> ({escape(o.persona)}, {escape(o.severity)}): "
            f"{escape(o.title)} — {escape(o.reason)}</li>"
            for o in report.omitted
        )
        return f"<ul>{rows}</ul>"
    if kind == "validator":
        return _validator(report.validator)
    if kind == "agents":
        return _agents(report)
    return ""


def _rec(report: Report) -> str:
    return f'<p class="rec {_level_class(report)}">{escape(report.recommendation)}</p>'


def _finding(f: FindingView) -> str:
    tier = f"security tier {f.severity}" if f.security else f.severity
    parts = [
        f'<article class="finding {escape(f.level)}">',
        f"<h3>{escape(f.id)} — {escape(f.title)}</h3>",
        f'<p><span class="badge level">{escape(f.level)}</span>'
        f'<span class="muted">{escape(tier)} · raised by {escape(f.persona)}'
        + (f" · {escape(f.category)}" if f.category else "")
        + "</span></p>",
    ]
    if f.sources:
        parts.append(f'<p class="muted">Merged from {escape(", ".join(f.sources))}</p>')
    for note in f.notes:
        parts.append(f'<p class="muted">Note: {escape(note)}</p>')
    if f.claim:
        parts.append(f'<p class="prose">{escape(f.claim.strip())}</p>')
    if f.recommendation:
        parts.append(f"<p><strong>Recommendation:</strong> {escape(f.recommendation)}</p>")
    for c in f.citations:
        moved = f' <span class="muted">(moved: {escape(c.note)})</span>' if c.outcome == "moved" else ""
        parts.append(
            f"<p><code>{escape(c.path)}:{c.line_start}-{c.line_end}</code>{moved}</p>"
            f"<pre><code>{escape(shown_quote(c.quote))}</code></pre>"
        )
    parts.append("</article>")
    return "\n".join(parts)


def _validator(v: ValidatorView) -> str:
    parts = [f"<p>{escape(v.status[:1].upper() + v.status[1:])}.</p>"] if v.status else []
    if not v.planned:
        return "\n".join(parts)
    parts.append(
        f"<p>Confirmed {v.confirmed}, partially refuted {v.partially_refuted}, refuted {v.refuted}.</p>"
    )
    if v.dropped:
        parts.append(f"<p>Dropped on verified counter-evidence: {escape(', '.join(v.dropped))}.</p>")
    if v.demoted:
        parts.append(f"<p>Demoted one level: {escape(', '.join(v.demoted))}.</p>")
    if v.refutations_not_applied:
        parts.append(
            "<p>Refuted without verified counter-evidence (demoted, not dropped): "
            f"{escape(', '.join(v.refutations_not_applied))}.</p>"
        )
    if v.verdicts:
        rows = "".join(
            f"<li><strong>{escape(x.finding_id)}</strong>: {escape(x.result.replace('_', ' '))} → "
            f"{escape(x.action)}" + (" (counter-evidence verified)" if x.counter_verified else "")
            + (f" — {escape(' '.join(x.reason.split()))}" if x.reason else "") + "</li>"
            for x in v.verdicts
        )
        parts.append(f"<ul>{rows}</ul>")
    parts.extend(f'<p class="muted">Note: {escape(n)}</p>' for n in v.notes)
    return "\n".join(parts)


def _agents(report: Report) -> str:
    if not report.agents:
        return "<p>No agent step was planned.</p>"
    rows = []
    for a in report.agents:
        duration = f"{a.duration_s:.1f} s" if a.duration_s is not None else "—"
        rows.append(
            f"<tr><td>{escape(a.step_id)}</td><td>{escape(a.persona)}</td><td>{escape(a.phase)}</td>"
            f"<td>{escape(a.status)}</td><td class=\"n\">{a.attempts}</td>"
            f"<td class=\"n\">{a.tokens_in}/{a.tokens_out}</td><td class=\"n\">{duration}</td>"
            f"<td class=\"n\">{a.findings} ({a.verified})</td></tr>"
        )
    table = (
        '<div class="scroll"><table><tr><th>Step</th><th>Persona</th><th>Phase</th><th>Status</th>'
        '<th class="n">Attempts</th><th class="n">Tokens in/out</th><th class="n">Duration</th>'
        '<th class="n">Findings (verified)</th></tr>' + "".join(rows) + "</table></div>"
    )
    problems = [
        f"<li><strong>{escape(a.persona)}</strong> ({escape(a.step_id)}): {escape(what)}</li>"
        for a, what in agent_problems(report)
    ]
    notes = "".join(f'<p class="muted">Note: {escape(n)}</p>' for n in report.notes)
    return table + (f"<ul>{''.join(problems)}</ul>" if problems else "") + notes
