"""The report: one model built from a run's events, three renderings of it.

``build_report(state)`` folds what the run recorded (request, plan, steps, evidence results,
validator verdicts) into a ``Report``; ``render_markdown``, ``render_json`` and
``render_html`` (in ``conductor.report_html``) only format that model.

The report reads nothing that changes after it is first rendered: not the clock, not the
run's end or status, not the snapshot (accepted for the caller's convenience, unused for
content). A report rendered when the run reaches its ``Render`` decision and one rendered from
the finished run's events later are byte-identical, which is what ``ReportRendered.digest``
promises.

Sections follow the flow's own list (``conductor.flows.Flow.sections``); a title the report
knows how to fill gets that content, a title it does not know is left out (sections are lazy:
no empty stubs), and the spine's sections a flow did not list (findings, deferred, unverified,
left out, validator outcome, agent appendix) are added in that order when they have content.
Every finding is shown in full exactly once: in the first section naming its persona
(``Flow.section_personas``), else under its level, else in a closing findings section.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import string
from collections.abc import Iterable

import msgspec

from conductor.band import why
from conductor.collect import LEVELS, Citation, Item, collect, seated_personas
from conductor.evidence import finding_status
from conductor.findings import parse_output
from conductor.prompts import brief_cuts
from conductor.snapshot import Snapshot
from conductor.state import RunState, StepState
from conductor.validator import Validated, apply_verdicts

__all__ = [
    "Report",
    "build_report",
    "render_html",
    "render_json",
    "render_markdown",
    "report_digest",
    "summary_counts",
]

REPORT_VERSION = 1


# --- the model -----------------------------------------------------------------------------


class RosterLine(msgspec.Struct, frozen=True, kw_only=True):
    persona: str
    phase: str
    reason: str


class Header(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    flow: str
    flow_description: str = ""
    audience: str = ""
    repo: str = ""
    commit: str = ""
    base: str = ""
    focus: str = ""
    symptom: str = ""
    requested_at: str = ""  # from the request event, UTC
    band: str = ""
    band_reason: str = ""
    band_source: str = ""
    model: str = ""
    engine: str = ""
    roster: tuple[RosterLine, ...] = ()
    plan_notes: tuple[str, ...] = ()


class CitationView(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    line_start: int
    line_end: int
    quote: str
    outcome: str
    note: str = ""


class FindingView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    persona: str
    severity: str  # the persona's own word
    level: str  # critical | warning | suggestion (after every filter and the validator)
    security: bool
    category: str
    title: str
    claim: str
    recommendation: str
    citations: tuple[CitationView, ...]
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class DeferredView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    persona: str
    title: str
    claim: str
    why_deferred: str
    reopen_when: str
    evidence: str  # verified | unverified


class UnverifiedView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    persona: str
    severity: str
    title: str
    claim: str
    reason: str
    citations: tuple[CitationView, ...] = ()  # as cited, with each one's outcome


class OmittedView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    persona: str
    severity: str
    title: str
    reason: str


class VerdictView(msgspec.Struct, frozen=True, kw_only=True):
    finding_id: str
    result: str
    action: str
    counter_verified: bool
    reason: str = ""


class ValidatorView(msgspec.Struct, frozen=True, kw_only=True):
    planned: bool = False
    status: str = ""  # one line: ran, failed (why), not reached
    confirmed: int = 0
    partially_refuted: int = 0
    refuted: int = 0
    dropped: tuple[str, ...] = ()
    demoted: tuple[str, ...] = ()
    refutations_not_applied: tuple[str, ...] = ()  # refuted, counter-evidence not verified
    verdicts: tuple[VerdictView, ...] = ()
    notes: tuple[str, ...] = ()


class AgentView(msgspec.Struct, frozen=True, kw_only=True):
    step_id: str
    persona: str
    phase: str
    wave: int
    role: str
    status: str
    attempts: int
    tokens_in: int
    tokens_out: int
    duration_s: float | None
    findings: int
    verified: int
    summary: str = ""
    parse_error: str = ""
    error: str = ""
    failures: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # what its prompt left out for space


class StepSummary(msgspec.Struct, frozen=True, kw_only=True):
    persona: str
    step_id: str
    text: str


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """One section in the flow's order. ``ids`` point into ``Report.findings``."""

    title: str
    kind: str
    text: str = ""
    summaries: tuple[StepSummary, ...] = ()
    ids: tuple[str, ...] = ()


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a rendering shows; the JSON rendering is this struct."""

    version: int = REPORT_VERSION
    header: Header
    recommendation: str
    summary: str
    counts: dict[str, int]
    sections: tuple[Section, ...]
    findings: tuple[FindingView, ...] = ()
    deferred: tuple[DeferredView, ...] = ()
    unverified: tuple[UnverifiedView, ...] = ()
    omitted: tuple[OmittedView, ...] = ()
    validator: ValidatorView = ValidatorView()
    agents: tuple[AgentView, ...] = ()
    notes: tuple[str, ...] = ()


# --- flows: sections, ladders --------------------------------------------------------------

_GENERIC_SECTIONS = (
    "Summary",
    "Recommendation",
    "Critical",
    "Warnings",
    "Suggestions",
    "Deferred (YAGNI)",
    "Unverified claims",
    "Validator outcome",
    "Agent appendix",
)

_KINDS = {
    "summary": "summary",
    "review summary": "summary",
    "executive summary": "summary",
    "recommendation": "recommendation",
    "critical": "critical",
    "warnings": "warning",
    "suggestions": "suggestion",
    "test plan": "findings",
    "swarm findings": "findings",
    "deferred (yagni)": "deferred",
    "deferred tests": "deferred",
    "unverified claims": "unverified",
    "validator outcome": "validator",
    "validation results": "validator",
    "agent appendix": "agents",
    "how to read this report": "guide",
    "problem statement": "problem",
    "scope": "scope",
    "context used": "context",
    "what's good": "clear",
}
# Spine sections a flow's list may leave out, added (when not empty) in this order.
_SPINE_TAIL = (
    ("Findings", "findings"),
    ("Deferred (YAGNI)", "deferred"),
    ("Unverified claims", "unverified"),
    ("Left out, with the reason", "omitted"),
    ("Validator outcome", "validator"),
    ("Agent appendix", "agents"),
)
_DOCUMENT_TITLES = {"code-overview": "Overview", "gap-analysis": "Synthesis"}

# critical / warning / suggestion / nothing; {n} is the number of surviving findings.
_LADDERS: dict[str, tuple[str, str, str, str]] = {
    "code-review": (
        "Do not merge: fix the critical findings first.",
        "Mergeable after reviewing the warnings.",
        "Mergeable after reviewing the suggestions.",
        "Approve: no finding survived the checks.",
    ),
    "architectural-analysis": (
        "Fix the critical findings before building more on this area.",
        "Sound enough to build on; plan work for the warnings.",
        "Sound; the suggestions are optional improvements.",
        "No design problem survived the checks.",
    ),
    "automated-test-planning": (
        "Write the critical tests before relying on this code.",
        "Write the high-priority tests next.",
        "The suggested tests are worth adding when convenient.",
        "No missing test survived the checks.",
    ),
    "investigate": (
        "Review the diagnosis below: it rests on {n} verified finding(s).",
        "Review the diagnosis below: it rests on {n} verified finding(s).",
        "Review the diagnosis below: it rests on {n} verified finding(s).",
        "Unconfirmed: no evidence survived the checks; treat any diagnosis as a guess.",
    ),
    "code-overview": (
        "Read the overview below: {n} of its claims were checked against the code.",
        "Read the overview below: {n} of its claims were checked against the code.",
        "Read the overview below: {n} of its claims were checked against the code.",
        "No claim of the overview could be checked against the code; read it with care.",
    ),
    "gap-analysis": (
        "{n} gap finding(s) survived the checks; start with the critical ones.",
        "{n} gap finding(s) survived the checks; review them before planning work.",
        "{n} gap finding(s) survived the checks, none of them blocking.",
        "No gap survived the checks.",
    ),
}
_DEFAULT_LADDER = (
    "Fix the critical findings before relying on this code.",
    "Review the warnings before relying on this code.",
    "Only suggestions: nothing blocks relying on this code.",
    "No finding survived the checks.",
)
INCONCLUSIVE = "Inconclusive: no agent finished its analysis; see the agent appendix."


def _flow(name: str):
    try:
        from conductor.flows import FLOWS
    except ImportError:  # the flow catalog is optional to the report
        return None
    return FLOWS.get(name)


# --- building ------------------------------------------------------------------------------


def build_report(state: RunState, snapshot: Snapshot | None = None) -> Report:
    """The report of a run, from its events alone (``snapshot`` is not read)."""
    del snapshot  # see the module docstring: the report must re-render identically without it
    flow_name = state.request.flow if state.request else ""
    flow = _flow(flow_name)
    verdicts = (state.verdicts[s] for s in state.steps if s in state.verdicts)
    validated = apply_verdicts(collect(state), verdicts)
    got = validated.collected
    parsed = _parsed_steps(state)

    findings = tuple(_finding_view(i) for i in got.findings)
    deferred = tuple(_deferred_view(i) for i in got.deferred)
    unverified = tuple(_unverified_view(i) for i in got.unverified)
    omitted = tuple(
        OmittedView(id=o.item.id, persona=o.item.persona, severity=o.item.finding.severity,
                    title=o.item.finding.title, reason=o.reason)
        for o in got.omitted
    ) + tuple(
        OmittedView(id=item.id, persona=item.persona, severity=item.finding.severity,
                    title=item.finding.title,
                    reason=f"dropped by the validator: refuted with verified counter-evidence ({_cites(v.counter_evidence)})")
        for item, v in validated.dropped
    )
    validator = _validator_view(state, validated)
    agents = tuple(_agent_view(st, parsed.get(st.step_id)) for st in state.steps.values())
    levels = {lv: sum(f.level == lv for f in findings) for lv in LEVELS}
    finished_finders = any(
        st.status == "finished" and st.step.role in ("discovery", "synthesis") for st in state.steps.values()
    )
    recommendation = _recommendation(flow_name, levels, len(findings), finished_finders, len(unverified))
    counts = {
        "critical": levels["critical"],
        "warning": levels["warning"],
        "suggestion": levels["suggestion"],
        "security": sum(f.security for f in findings),
        "findings": len(findings),
        "deferred": len(deferred),
        "unverified": len(unverified),
        "omitted": len(omitted),
        "confirmed": validator.confirmed,
        "partially_refuted": validator.partially_refuted,
        "refuted": validator.refuted,
        "dropped": len(validator.dropped),
        "demoted": len(validator.demoted),
        "steps": len(agents),
        "failed_steps": sum(a.status == "failed" for a in agents),
    }
    header = _header(state, flow)
    summary = _summary_text(counts, agents, validator)
    sections = _sections(state, flow, flow_name, got.findings, parsed, deferred, unverified, omitted, header)
    return Report(
        header=header,
        recommendation=recommendation,
        summary=summary,
        counts=counts,
        sections=sections,
        findings=findings,
        deferred=deferred,
        unverified=unverified,
        omitted=omitted,
        validator=validator,
        agents=agents,
        notes=got.notes + _brief_notes(agents),
    )


def _parsed_steps(state: RunState) -> dict[str, object]:
    out = {}
    seated = seated_personas(state)
    for st in state.steps.values():
        if st.status == "finished":
            persona = seated.get(st.persona, st.persona)
            out[st.step_id] = parse_output(st.output, persona=persona, step_id=st.step_id, role=st.step.role)
    return out


def _header(state: RunState, flow) -> Header:
    req, plan = state.request, state.plan
    return Header(
        run_id=state.run_id,
        flow=req.flow if req else "",
        flow_description=flow.description if flow else "",
        audience=flow.audience if flow else "",
        repo=req.repo if req else "",
        commit=plan.commit if plan else "",
        base=(req.base or "") if req else "",
        focus=req.focus if req else "",
        symptom=req.symptom if req else "",
        requested_at=_iso(req.ts) if req else "",
        band=plan.band if plan else "",
        band_reason=plan.band_reason if plan else "",
        band_source=plan.band_source if plan else "",
        model=plan.model if plan else (req.model if req else ""),
        engine=plan.engine if plan else (req.engine if req else ""),
        roster=tuple(RosterLine(persona=r.persona, phase=r.phase, reason=r.reason) for r in plan.roster)
        if plan else (),
        plan_notes=tuple(plan.notes) if plan else (),
    )


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _citation_view(c: Citation) -> CitationView:
    return CitationView(path=c.path, line_start=c.line_start, line_end=c.line_end, quote=c.quote,
                        outcome=c.outcome, note=c.note)


def _finding_view(i: Item) -> FindingView:
    f = i.finding
    return FindingView(
        id=f.id, persona=i.persona, severity=f.severity, level=i.level, security=i.security,
        category=f.category, title=f.title, claim=f.claim, recommendation=f.recommendation,
        citations=tuple(_citation_view(c) for c in i.citations), sources=f.sources, notes=i.notes,
    )


def _deferred_view(i: Item) -> DeferredView:
    f = i.finding
    return DeferredView(id=f.id, persona=i.persona, title=f.title, claim=f.claim,
                        why_deferred=f.why_deferred, reopen_when=f.reopen_when, evidence=i.status)


def _unverified_view(i: Item) -> UnverifiedView:
    f = i.finding
    cited = tuple(
        CitationView(path=c.path if c.outcome != "moved" else f.evidence[n].path,
                     line_start=c.cited_start, line_end=c.cited_end, quote=c.quote,
                     outcome=c.outcome, note=c.note)
        for n, c in enumerate(i.citations)
    )
    return UnverifiedView(id=f.id, persona=i.persona, severity=f.severity, title=f.title, claim=f.claim,
                          reason=i.reason, citations=cited)


def _cites(evidence) -> str:
    return ", ".join(f"{e.path}:{e.line_start}-{e.line_end}" for e in evidence)


def _validator_view(state: RunState, validated: Validated) -> ValidatorView:
    steps = [st for st in state.steps.values() if st.step.role == "validator"]
    if not steps:
        return ValidatorView(planned=False, status="no validator in this flow's plan")
    lines = []
    for st in steps:
        if st.status == "failed":
            lines.append(f"step {st.step_id} failed ({st.error}); every finding was kept unchallenged")
        elif st.status != "finished":
            lines.append(f"step {st.step_id} did not run ({st.status})")
        elif st.step_id not in state.verdicts:
            lines.append(f"step {st.step_id} finished; its verdicts were not applied yet")
        else:
            lines.append(f"step {st.step_id} ran")
    applied = validated.verdicts
    return ValidatorView(
        planned=True,
        status="; ".join(lines),
        confirmed=sum(v.result == "confirmed" for v in applied),
        partially_refuted=sum(v.result == "partially_refuted" for v in applied),
        refuted=sum(v.result == "refuted" for v in applied),
        dropped=tuple(item.id for item, _ in validated.dropped),
        demoted=validated.demoted,
        refutations_not_applied=tuple(
            v.finding_id for v in applied if v.result == "refuted" and v.action != "drop"
        ),
        verdicts=tuple(
            VerdictView(finding_id=v.finding_id, result=v.result, action=v.action,
                        counter_verified=v.counter_verified, reason=v.reason)
            for v in applied
        ),
        notes=validated.notes,
    )


def _agent_view(st: StepState, parsed) -> AgentView:
    duration = None
    if st.started_ts is not None and st.ended_ts is not None:
        duration = round(max(0.0, st.ended_ts - st.started_ts), 1)
    results = st.evidence or ()
    verified = sum(finding_status(f, results) == "verified" for f in st.findings) if st.evidence is not None else 0
    return AgentView(
        step_id=st.step_id, persona=st.persona, phase=st.step.phase, wave=st.step.wave,
        role=st.step.role, status=st.status, attempts=st.attempt, tokens_in=st.tokens_in,
        tokens_out=st.tokens_out, duration_s=duration, findings=len(st.findings), verified=verified,
        summary=(parsed.summary if parsed is not None else ""),
        parse_error=st.parse_error, error=st.error if st.status == "failed" else "",
        failures=tuple(st.failures), left_out=st.left_out,
    )


def _brief_notes(agents: tuple[AgentView, ...]) -> tuple[str, ...]:
    """One note per set of brief cuts (a small context cuts the same sections of every
    brief, so they are said once, not on each agent's line)."""
    groups: dict[tuple[str, ...], dict[str, None]] = {}  # a persona's steps share its brief
    for a in agents:
        cuts, _ = brief_cuts(a.left_out)
        if cuts:
            groups.setdefault(cuts, {})[a.persona] = None
    return tuple(
        f"to fit the model's context (ORCH_CONTEXT_TOKENS), the brief{'s' if len(personas) > 1 else ''} "
        f"of {', '.join(personas)} went without {_and(cuts)}"
        for cuts, personas in groups.items()
    )


def _and(items: tuple[str, ...]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[-1] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _recommendation(flow: str, levels: dict[str, int], n: int, finished: bool, unverified: int = 0) -> str:
    if not finished:
        return INCONCLUSIVE
    ladder = _LADDERS.get(flow, _DEFAULT_LADDER)
    if levels["critical"]:
        rung = ladder[0]
    elif levels["warning"]:
        rung = ladder[1]
    elif levels["suggestion"]:
        rung = ladder[2]
    else:
        rung = ladder[3]
        # "Approve" alone would hide claims a weak citation kept out (the overview's own
        # last rung already says nothing could be checked).
        if unverified and flow != "code-overview":
            them = "it" if unverified == 1 else "them"
            rung += (f" {_plural(unverified, 'claim')} could not be checked against the code: "
                     f"read {them} below before relying on this.")
    return rung.format(n=n)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _summary_text(counts: dict[str, int], agents: tuple[AgentView, ...], v: ValidatorView) -> str:
    parts = []
    n = counts["findings"]
    if n:
        levels = ", ".join(
            _plural(counts[k], label)
            for k, label in (("critical", "critical"), ("warning", "warning"), ("suggestion", "suggestion"))
            if counts[k]
        )
        sec = f", {counts['security']} of them security" if counts["security"] else ""
        parts.append(f"{_plural(n, 'finding')} survived the evidence check and the filters: {levels}{sec}.")
    else:
        parts.append("No finding survived the evidence check and the filters.")
    if counts["unverified"]:
        parts.append(
            f"{_plural(counts['unverified'], 'claim')} could not be verified against the code and "
            f"{'are' if counts['unverified'] > 1 else 'is'} listed apart, labelled."
        )
    if counts["deferred"]:
        each = "each " if counts["deferred"] > 1 else ""
        parts.append(f"{_plural(counts['deferred'], 'item')} deferred under YAGNI, {each}with its reopen trigger.")
    if counts["omitted"]:
        each = "each " if counts["omitted"] > 1 else ""
        parts.append(f"{_plural(counts['omitted'], 'finding')} left out, {each}with the reason.")
    if v.planned and (v.confirmed or v.partially_refuted or v.refuted):
        parts.append(
            f"The validator confirmed {v.confirmed}, partially refuted {v.partially_refuted} and "
            f"refuted {v.refuted}; {_plural(len(v.dropped), 'finding')} dropped on verified counter-evidence."
        )
    failed = [a for a in agents if a.status == "failed"]
    if failed:
        names = ", ".join(f"{a.persona} ({a.step_id})" for a in failed)
        parts.append(f"{_plural(len(failed), 'agent')} of {len(agents)} failed: {names}.")
    return " ".join(parts)


def _sections(state, flow, flow_name, items, parsed, deferred, unverified, omitted, header):
    titles = tuple(flow.sections) if flow else _GENERIC_SECTIONS
    section_personas = dict(flow.section_personas) if flow else {}
    placed: set[str] = set()
    by_level = {lv: [i for i in items if i.level == lv] for lv in LEVELS}
    kinds_seen: set[str] = set()
    out: list[Section] = []
    document = _document(state, parsed)
    document_done = not document

    # Persona sections claim their findings first, wherever they stand in the order; a
    # persona already claimed by an earlier section leaves a later one empty (and omitted).
    claims: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for title in titles:
        personas = [p for p in section_personas.get(title, ()) if p not in used]
        if personas:
            used.update(personas)
            claims[title] = tuple(personas)
            placed.update(i.id for i in items if i.persona in personas)

    for title in titles:
        if title in section_personas:
            personas = claims.get(title, ())
            ids = tuple(i.id for i in items if i.persona in personas)
            said = _summaries(state, parsed, personas)
            if ids or said:
                out.append(Section(title=title, kind="personas", ids=ids, summaries=said))
            continue
        kind = _KINDS.get(title.lower())
        if kind is None:
            # A prose section of the flow's document: the edited text stands in for all of them.
            if not document_done:
                out.append(Section(title=_DOCUMENT_TITLES.get(flow_name, "Edited text"), kind="document",
                                   text=document))
                document_done = True
            continue
        kinds_seen.add(kind)
        section = _section(kind, title, state, items, by_level, placed, deferred, unverified, omitted,
                           parsed, header)
        if section is not None:
            out.append(section)

    if not document_done:
        out.insert(0, Section(title=_DOCUMENT_TITLES.get(flow_name, "Edited text"), kind="document",
                              text=document))
    if "summary" not in kinds_seen:
        out.insert(0, Section(title="Summary", kind="summary"))
    # Spine sections the flow did not list go before the first later spine section present.
    order = [kind for _, kind in _SPINE_TAIL]
    for title, kind in _SPINE_TAIL:
        if kind in kinds_seen and kind != "findings":
            continue
        section = _section(kind, title, state, items, by_level, placed, deferred, unverified, omitted,
                           parsed, header)
        if section is None:
            continue
        later = set(order[order.index(kind) + 1:])
        at = next((n for n, s in enumerate(out) if s.kind in later), len(out))
        out.insert(at, section)
    return tuple(out)


def _summaries(state: RunState, parsed, personas: Iterable[str]) -> tuple[StepSummary, ...]:
    wanted = set(personas)
    return tuple(
        StepSummary(persona=st.persona, step_id=st.step_id, text=parsed[st.step_id].summary)
        for st in state.steps.values()
        if st.persona in wanted and st.step_id in parsed and parsed[st.step_id].summary
        and st.step.role != "validator"
    )


def _section(kind, title, state, items, by_level, placed, deferred, unverified, omitted, parsed, header):
    if kind in ("summary", "recommendation", "agents"):
        return Section(title=title, kind=kind)
    if kind in LEVELS:
        ids = tuple(i.id for i in by_level[kind] if i.id not in placed)
        placed.update(ids)
        return Section(title=title, kind=kind, ids=ids) if ids else None
    if kind == "findings":
        ids = tuple(i.id for i in items if i.id not in placed)
        placed.update(ids)
        return Section(title=title, kind=kind, ids=ids) if ids else None
    if kind == "deferred":
        return Section(title=title, kind=kind) if deferred else None
    if kind == "unverified":
        return Section(title=title, kind=kind) if unverified else None
    if kind == "omitted":
        return Section(title=title, kind=kind) if omitted else None
    if kind == "validator":
        has = any(st.step.role == "validator" for st in state.steps.values())
        return Section(title=title, kind=kind) if has else None
    if kind == "guide":
        return Section(title=title, kind=kind, text=_guide(header))
    if kind == "problem":
        req = state.request
        text = (req.symptom or req.focus or req.text) if req else ""
        return Section(title=title, kind=kind, text=text) if text else None
    if kind == "scope":
        return _scope(title, state, header)
    if kind == "context":
        paths = sorted({c.path for i in items for c in i.citations})
        return Section(title=title, kind=kind, text="\n".join(paths)) if paths else None
    if kind == "clear":
        clean = tuple(
            StepSummary(persona=st.persona, step_id=st.step_id, text=parsed[st.step_id].summary)
            for st in state.steps.values()
            if st.step_id in parsed and st.step.role == "discovery" and parsed[st.step_id].summary
            and not any(i.step_id == st.step_id for i in items)
        )
        return Section(title=title, kind=kind, summaries=clean) if clean else None
    return None


def _document(state: RunState, parsed) -> str:
    for st in reversed(list(state.steps.values())):
        if st.step.role == "editor" and st.step_id in parsed and parsed[st.step_id].text:
            return parsed[st.step_id].text
    return ""


def _guide(header: Header) -> str:
    commit = header.commit[:12] or "the pinned commit"
    return (
        f"Every finding below cites lines of commit {commit}, and each quote was checked "
        "mechanically: it was found at the lines shown. Where a quote had moved, the lines shown "
        "are where it really is, with a note. Claims whose quotes were not found are not mixed "
        "in: they are listed under Unverified claims. Levels: critical means fix before relying "
        "on the code; warning means it should be fixed; suggestion means worth considering. Each "
        "finding keeps the severity word of the agent that raised it."
    )


def _scope(title: str, state: RunState, header: Header) -> Section | None:
    files = sorted({f for st in state.steps.values() for f in st.step.files})
    lines = []
    if header.band:
        lines.append(f"Band {header.band}: {why(header.band, header.band_reason)}")
    if files:
        shown = files[:50]
        lines.append(f"{_plural(len(files), 'file')} considered:")
        lines.extend(shown)
        if len(files) > len(shown):
            lines.append(f"… and {len(files) - len(shown)} more")
    return Section(title=title, kind="scope", text="\n".join(lines)) if lines else None


# --- renderings ----------------------------------------------------------------------------


def summary_counts(report: Report) -> tuple[dict[str, int], str]:
    """``(counts, recommendation)`` for the ``ReportRendered`` event."""
    return dict(report.counts), report.recommendation


def report_digest(markdown: str) -> str:
    """The sha256 of the Markdown rendering, hex."""
    return hashlib.sha256(markdown.encode("utf-8")).hexdigest()


def render_json(report: Report) -> str:
    """The report as JSON: fields in the model's order, two-space indent, trailing newline."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n"


def render_html(report: Report) -> str:
    from conductor.report_html import render

    return render(report)


def render_markdown(report: Report) -> str:
    """The report as Markdown (model text is escaped so it cannot forge structure)."""
    out: list[str] = []
    h = report.header
    out.append(f"# {_md(h.flow or 'Run')} report — {_md(h.repo or h.run_id)}")
    out.append("")
    out.extend(_md_header(h))
    out.append("")
    by_id = {f.id: f for f in report.findings}
    for section in report.sections:
        body = _md_section(section, report, by_id)
        while body and body[-1] == "":
            body.pop()
        if not body:
            continue
        out.append(f"## {_md(section.title)}")
        out.append("")
        out.extend(body)
        out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def header_rows(h: Header) -> list[tuple[str, str]]:
    """The header's labelled facts, in reading order, the empty ones left out (every format
    shows the same rows)."""
    rows = [
        ("Run", h.run_id),
        ("Flow", h.flow + (f" — {h.flow_description}" if h.flow_description else "")),
        ("Written for", h.audience),
        ("Repository", h.repo),
        ("Commit", h.commit),
        ("Base", h.base),
        ("Focus", h.focus),
        ("Symptom", h.symptom),
        ("Band", f"{h.band} ({h.band_source}): {why(h.band, h.band_reason)}" if h.band else ""),
        ("Model", f"{h.model} on {h.engine}" if h.model else ""),
        ("Engine", "" if h.model else h.engine),
        ("Requested", h.requested_at),
    ]
    return [(k, v) for k, v in rows if v]


def _md_header(h: Header) -> list[str]:
    lines = [f"- **{k}:** {_md(v)}" for k, v in header_rows(h)]
    if h.roster:
        lines.append("- **Roster:**")
        lines.extend(f"  - {_md(r.persona)} ({_md(r.phase)}): {_md(r.reason)}" for r in h.roster)
    for note in h.plan_notes:
        lines.append(f"- **Note:** {_md(note)}")
    return lines


def _md_section(section: Section, report: Report, by_id: dict[str, FindingView]) -> list[str] | None:
    kind = section.kind
    if kind == "summary":
        lead = [] if any(s.kind == "recommendation" for s in report.sections) else [
            f"**Recommendation: {_md(report.recommendation)}**", ""]
        return [*lead, _md(report.summary), *_md_counts(report)]
    if kind == "recommendation":
        return [f"**{_md(report.recommendation)}**"]
    if kind in ("personas", "critical", "warning", "suggestion", "findings", "clear"):
        lines: list[str] = []
        for s in section.summaries:
            lines.append(f"*{_md(s.persona)}* ({_md(s.step_id)}):")
            lines.append("")
            lines.extend(_md_block(s.text))
            lines.append("")
        for fid in section.ids:
            lines.extend(_md_finding(by_id[fid]))
        return lines or None
    if kind == "document":
        return _md_block(section.text)
    if kind in ("guide", "problem"):
        return _md_block(section.text)
    if kind in ("scope", "context"):
        head, *rest = section.text.split("\n") if kind == "scope" else ("", *section.text.split("\n"))
        lines = [_md(head)] if head else []
        if lines and rest:
            lines.append("")
        lines.extend(f"- `{_code(p)}`" if p and not p.startswith("…") else f"- {_md(p)}" for p in rest)
        return lines
    if kind == "deferred":
        lines = []
        for d in report.deferred:
            lines.append(f"### {_md(d.id)} — {_md(d.title)}")
            lines.append("")
            lines.append(f"- **Raised by:** {_md(d.persona)} ({deferred_evidence(d)})")
            lines.append(f"- **Why deferred:** {_md(d.why_deferred or d.claim or 'no evidence of need today')}")
            lines.append(f"- **Reopen when:** {_md(d.reopen_when or 'no trigger given')}")
            lines.append("")
        return lines
    if kind == "unverified":
        lines = ["These claims are kept as the agents made them, but their citations did not check out "
                 "against the commit. Treat them as leads, not findings.", ""]
        for u in report.unverified:
            lines.append(f"### {_md(u.id)} — {_md(u.title)} (unverified)")
            lines.append("")
            lines.append(f"- **Raised by:** {_md(u.persona)}, severity {_md(u.severity)}")
            lines.append(f"- **Why unverified:** {_md(u.reason)}")
            if u.claim:
                lines.append(f"- **Claim:** {_md(_one_line(u.claim))}")
            lines.append("")
        return lines
    if kind == "omitted":
        return [f"- **{_md(o.id)}** ({_md(o.persona)}, {_md(o.severity)}): {_md(o.title)} — {_md(o.reason)}"
                for o in report.omitted]
    if kind == "validator":
        return _md_validator(report.validator)
    if kind == "agents":
        return _md_agents(report)
    return None


def agent_problems(report: Report) -> list[tuple[AgentView, str]]:
    """Each agent that failed, retried, answered unreadably or without part of its context,
    with what happened."""
    out = []
    for a in report.agents:
        what = []
        if a.status == "failed":
            what.append(f"failed: {a.error}")
        if a.failures and (a.status != "failed" or len(a.failures) > 1):
            what.append("attempts: " + "; ".join(a.failures))
        if a.parse_error:
            what.append(f"output: {a.parse_error}")
        _, context = brief_cuts(a.left_out)
        if context:
            what.append("answered without (left out of its prompt for space): " + "; ".join(context))
        if what:
            out.append((a, " — ".join(what)))
    return out


def deferred_evidence(d: DeferredView) -> str:
    return "its citations verified" if d.evidence == "verified" else "no verified citation"


def _md_counts(report: Report) -> list[str]:
    c = report.counts
    return ["", "| Critical | Warnings | Suggestions | Unverified | Deferred | Left out |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {c['critical']} | {c['warning']} | {c['suggestion']} | {c['unverified']} | "
            f"{c['deferred']} | {c['omitted']} |"]


def _md_finding(f: FindingView) -> list[str]:
    tier = f"{f.level}, security tier {f.severity}" if f.security else f"{f.level} ({f.severity})"
    lines = [f"### {_md(f.id)} — {_md(f.title)}", "",
             f"- **Level:** {_md(tier)} · **Raised by:** {_md(f.persona)}"
             + (f" · **Category:** {_md(f.category)}" if f.category else "")]
    if f.sources:
        lines.append(f"- **Merged from:** {_md(', '.join(f.sources))}")
    for note in f.notes:
        lines.append(f"- **Note:** {_md(note)}")
    lines.append("")
    if f.claim:
        lines.extend(_md_block(f.claim))
        lines.append("")
    if f.recommendation:
        lines.append(f"**Recommendation:** {_md(f.recommendation)}")
        lines.append("")
    for c in f.citations:
        moved = f" (moved: {_md(c.note)})" if c.outcome == "moved" else ""
        lines.append(f"`{_code(c.path)}:{c.line_start}-{c.line_end}`{moved}")
        lines.append("")
        quote = shown_quote(c.quote)
        # Longer than any run of backticks or tildes in the text written, so no line of it closes it.
        fence = "`" * max(3, _longest_run(quote, "`") + 1, _longest_run(quote, "~") + 1)
        lines.extend([fence, quote, fence, ""])
    return lines


def _md_validator(v: ValidatorView) -> list[str]:
    lines = [_md(v.status[:1].upper() + v.status[1:]) + "."] if v.status else []
    if v.planned:
        lines.append("")
        lines.append(
            f"Confirmed {v.confirmed}, partially refuted {v.partially_refuted}, refuted {v.refuted}."
        )
        if v.dropped:
            lines.append(f"Dropped on verified counter-evidence: {_md(', '.join(v.dropped))}.")
        if v.demoted:
            lines.append(f"Demoted one level: {_md(', '.join(v.demoted))}.")
        if v.refutations_not_applied:
            lines.append(
                "Refuted without verified counter-evidence (demoted, not dropped): "
                f"{_md(', '.join(v.refutations_not_applied))}."
            )
        if v.verdicts:
            lines.append("")
            for verdict in v.verdicts:
                lines.append(
                    f"- **{_md(verdict.finding_id)}**: {verdict.result.replace('_', ' ')} → {verdict.action}"
                    + (" (counter-evidence verified)" if verdict.counter_verified else "")
                    + (f" — {_md(_one_line(verdict.reason))}" if verdict.reason else "")
                )
        for note in v.notes:
            lines.append("")
            lines.append(f"Note: {_md(note)}")
    return lines


def _md_agents(report: Report) -> list[str]:
    if not report.agents:
        return ["No agent step was planned."]
    lines = ["| Step | Persona | Phase | Status | Attempts | Tokens in/out | Duration | Findings (verified) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for a in report.agents:
        duration = f"{a.duration_s:.1f} s" if a.duration_s is not None else "—"
        lines.append(
            f"| {_md(a.step_id)} | {_md(a.persona)} | {_md(a.phase)} | {_md(a.status)} | {a.attempts} | "
            f"{a.tokens_in}/{a.tokens_out} | {duration} | {a.findings} ({a.verified}) |"
        )
    problems = agent_problems(report)
    if problems:
        lines.append("")
        lines.extend(f"- **{_md(a.persona)}** ({_md(a.step_id)}): {_md(what)}" for a, what in problems)
    for note in report.notes:
        lines.append("")
        lines.append(f"Note: {_md(note)}")
    return lines


# --- Markdown escaping ---------------------------------------------------------------------
# Text from the model or the repository must never make structure. Inline, every character that
# could open a link, an image, emphasis, a code span, HTML or a table cell is escaped (a
# backslash before ASCII punctuation is always literal in CommonMark; &, < and > become
# entities). At the start of a line, any ASCII punctuation is escaped too, which leaves no
# heading, setext underline, fence, thematic break, list, block quote or table to open.

_INLINE = {"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "!": "\\!",
           "~": "\\~", "|": "\\|", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
_INLINE_CHARS = re.compile("[" + re.escape("".join(_INLINE)) + "]")
_ORDERED = re.compile(r"^(\d{1,9})([.)])")  # '1.' or '1)' opens an ordered list
_PUNCTUATION = frozenset(string.punctuation)  # ASCII: what CommonMark lets a backslash escape


def _md(text: str) -> str:
    """Model text made inert inline, on one line."""
    text = _md_inline(_one_line(text))
    # A heading drops a closing run of '#'; with its last one escaped, the run stays text.
    return text[:-1] + "\\#" if text.endswith("#") else text


def shown_quote(quote: str) -> str:
    """A quote as both renderings write it: every CR, alone or before LF, is one line break.

    That is how CommonMark and HTML read a CR anyway; writing it out lets the Markdown fence be
    sized on the very text inside it (a CR dropped instead would join two runs of backticks).
    """
    return quote.replace("\r\n", "\n").replace("\r", "\n")


def _md_block(text: str) -> list[str]:
    """Model prose as paragraphs, made inert: no line of it can open a block."""
    lines = text.replace("\r", "").strip().split("\n")
    # Leading spaces dropped: four of them would open a code block (and a paragraph ignores them).
    return [_md_line_start(_md_inline(line.strip())) for line in lines]


def _md_inline(text: str) -> str:
    def escape(m: re.Match) -> str:
        at = m.start()
        if m.group() == "_" and text[at - 1:at].isalnum() and text[at + 1:at + 2].isalnum():
            return "_"  # inside a word (snake_case) '_' can neither open nor close emphasis
        return _INLINE[m.group()]

    return _INLINE_CHARS.sub(escape, text)


def _md_line_start(line: str) -> str:
    """Escape what would make ``line`` (already inline-escaped) open a block."""
    if line[:1] in _PUNCTUATION and line[:1] not in "\\&":  # '\' and '&' start an escape already
        return "\\" + line
    return _ORDERED.sub(r"\1\\\2", line)


def _code(text: str) -> str:
    return _one_line(text).replace("`", "'")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _longest_run(text: str, ch: str) -> int:
    runs = re.findall(f"{re.escape(ch)}+", text)
    return max((len(r) for r in runs), default=0)
