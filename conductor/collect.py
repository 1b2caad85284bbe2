"""Post-collection: from every finished agent's findings to the list the validator judges.

Over the findings of finished discovery and synthesis steps, with their evidence results, in
plan order:

1. **Ids.** Two steps of one persona (several investigators) number their findings alike; a
   later step's clashing id gets the next free number of its prefix, and a note says so.
2. **Split.** YAGNI items go to ``deferred`` (whatever their evidence: they are never dropped);
   findings whose citations did not all verify go to ``unverified``, labelled with the reason.
   Only verified findings go on.
3. **Merge by substance.** Two findings of the same role that cite overlapping lines of one
   file and say a similar thing (title or wording) become one: the most severe is kept (a
   security finding wins, then the earlier), and ``Finding.sources`` lists every merged id.
4. **Reachability gate.** A finding whose own rationale calls it theoretical, hypothetical,
   defence in depth, effectively impossible, something that could happen or should never
   happen… is demoted one level; a suggestion demoted this way is omitted (listed, with the
   reason). Security findings are exempt: their bar is a proven exploit path already.
5. **Band calibration** (flows whose report is a severity-ranked review). Persona severities
   map onto the report levels critical / warning / suggestion. code-review: small keeps
   critical, and warnings in the files the step was asked to review; medium keeps critical and
   warning, and suggestions in those files; large keeps all. architectural-analysis: small
   keeps critical, medium critical and warning, large all. Security findings keep their tier.
6. **Self-consistency.** Two findings with opposite recommendations (add/remove,
   increase/decrease, …) on overlapping lines of one file are each demoted one level (a
   suggestion stays a suggestion) and their claims start ``Tension with {other id}:``.
   Security findings are annotated but not demoted. Contradictions across files are left alone.
7. **Caps.** At most ``cap`` non-security findings (30 for a review), critical first; security
   findings are not capped. What falls off is listed as omitted, with the reason.

Nothing here is silent: every finding that does not survive is in ``omitted``, ``deferred`` or
``unverified``, with its reason. The order is deterministic (level, then plan order, then the
order the agent gave).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from conductor.evidence import finding_status, unverified_reason
from conductor.findings import PersonaInfo, persona_info
from conductor.state import RunState
from events.types import EvidenceResult, Finding

__all__ = [
    "LEVELS",
    "Citation",
    "Collected",
    "Item",
    "Omitted",
    "Policy",
    "collect",
    "demote",
    "is_security",
    "level_of",
    "rank",
    "seated_personas",
    "surviving_findings",
]

Level = Literal["critical", "warning", "suggestion"]
LEVELS: tuple[Level, ...] = ("critical", "warning", "suggestion")
SECURITY_PERSONA = "adversarial-security-analyst"
FINDING_ROLES = ("discovery", "synthesis")


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """Which post-collection filters a flow applies."""

    reachability: bool = True
    calibrate: Literal["none", "review", "area"] = "none"
    cap: int | None = 30
    self_consistency: bool = True


# Flows whose findings are not defects (evidence, facts of an overview, gaps) skip the
# severity filters: demoting a piece of evidence for saying "could happen" means nothing.
POLICIES: dict[str, Policy] = {
    "code-review": Policy(calibrate="review", cap=30),
    "architectural-analysis": Policy(calibrate="area", cap=30),
    "automated-test-planning": Policy(cap=40),
    "investigate": Policy(reachability=False, cap=None, self_consistency=False),
    "code-overview": Policy(reachability=False, cap=None, self_consistency=False),
    "gap-analysis": Policy(reachability=False, cap=None, self_consistency=False),
}
DEFAULT_POLICY = Policy()


class Citation(msgspec.Struct, frozen=True, kw_only=True):
    """One citation as checked: where the quote really is, and what was cited."""

    path: str
    line_start: int  # real lines (for a moved quote, where it was found)
    line_end: int
    quote: str
    outcome: str  # an EvidenceResult outcome, or "unchecked"
    note: str = ""
    cited_start: int
    cited_end: int


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """A finding with what the conductor learnt about it."""

    finding: Finding
    step_id: str
    persona: str
    role: str
    level: Level
    security: bool
    status: Literal["verified", "unverified"]
    citations: tuple[Citation, ...] = ()
    reason: str = ""  # why it is unverified
    notes: tuple[str, ...] = ()
    order: int = 0  # plan order, then the agent's order

    @property
    def id(self) -> str:
        return self.finding.id


class Omitted(msgspec.Struct, frozen=True, kw_only=True):
    """A verified finding left out of the report's main list, and why."""

    item: Item
    reason: str


class Collected(msgspec.Struct, frozen=True, kw_only=True):
    """Every collected finding, each in exactly one list."""

    findings: tuple[Item, ...] = ()  # verified, post-filter: what the validator judges
    deferred: tuple[Item, ...] = ()
    unverified: tuple[Item, ...] = ()
    omitted: tuple[Omitted, ...] = ()
    notes: tuple[str, ...] = ()


def surviving_findings(state: RunState, *, before_wave: int | None = None) -> list[Finding]:
    """What the validator receives, verbatim: verified, not deferred, after every filter.

    ``before_wave`` limits the input to steps of earlier waves (the validator's own wave).
    """
    return [item.finding for item in collect(state, before_wave=before_wave).findings]


def collect(state: RunState, *, before_wave: int | None = None) -> Collected:
    """Run the post-collection pipeline over the run's finished steps (see the module doc)."""
    flow = state.request.flow if state.request else ""
    band = state.plan.band if state.plan else "small"
    policy = POLICIES.get(flow, DEFAULT_POLICY)
    notes: list[str] = []
    items = _gather(state, before_wave, notes)

    deferred = [i for i in items if i.finding.deferred]
    unverified = [i for i in items if not i.finding.deferred and i.status == "unverified"]
    live = [i for i in items if not i.finding.deferred and i.status == "verified"]
    omitted: list[Omitted] = []

    live = _merge(live)
    if policy.reachability:
        live = _reachability(live, omitted)
    if policy.calibrate != "none":
        scope = {sid: set(st.step.files) for sid, st in state.steps.items()}
        live = _calibrate(live, policy.calibrate, band, scope, omitted)
    if policy.self_consistency:
        live = _self_consistency(live)
    live = sorted(live, key=rank)
    if policy.cap is not None:
        live = _cap(live, policy.cap, omitted)
    return Collected(
        findings=tuple(live),
        deferred=tuple(deferred),
        unverified=tuple(unverified),
        omitted=tuple(sorted(omitted, key=lambda o: o.item.order)),
        notes=tuple(notes),
    )


# --- gathering -----------------------------------------------------------------------------


def _gather(state: RunState, before_wave: int | None, notes: list[str]) -> list[Item]:
    items: list[Item] = []
    personas = seated_personas(state)
    steps = [
        (n, st) for n, st in enumerate(state.steps.values())
        if st.status == "finished" and st.step.role in FINDING_ROLES
        and (before_wave is None or st.step.wave < before_wave)
    ]
    taken: set[str] = set()
    for step_no, st in steps:
        # A renumbered id must not clash with an id another step of this wave or an earlier one
        # uses either. Not later waves': the validator's gate sees only the waves before it,
        # and an id must come out the same there and in the report, or a verdict lands wrong.
        reserved = {f.id for _, other in steps if other.step.wave <= st.step.wave for f in other.findings}
        results = st.evidence or ()
        for n, finding in enumerate(st.findings):
            persona = finding.persona or st.persona
            mine = {r.index: r for r in results if r.finding_id == finding.id}
            if st.evidence is None:
                status, reason = "unverified", "evidence not checked yet"
            else:
                status = finding_status(finding, results)
                reason = "" if status == "verified" else unverified_reason(finding, results)
            citations = tuple(_citation(ev, mine.get(i)) for i, ev in enumerate(finding.evidence))
            fid = _unique_id(finding.id, taken, reserved)
            if fid != finding.id:
                notes.append(f"{finding.id} of step {st.step_id} renumbered {fid}: the id was taken")
                finding = msgspec.structs.replace(finding, id=fid)
            if not finding.persona:
                finding = msgspec.structs.replace(finding, persona=persona)
            taken.add(fid)
            items.append(
                Item(
                    finding=finding,
                    step_id=st.step_id,
                    persona=persona,
                    role=st.step.role,
                    level=level_of(finding.severity, persona, personas),
                    security=is_security(finding, persona),
                    status=status,
                    citations=citations,
                    reason=reason,
                    order=step_no * 10_000 + n,
                )
            )
    return items


def _citation(ev, result: EvidenceResult | None) -> Citation:
    if result is None:
        return Citation(
            path=ev.path, line_start=ev.line_start, line_end=ev.line_end, quote=ev.quote,
            outcome="unchecked", cited_start=ev.line_start, cited_end=ev.line_end,
        )
    return Citation(
        path=result.path, line_start=result.line_start, line_end=result.line_end,
        quote=ev.quote, outcome=result.outcome, note=result.note,
        cited_start=ev.line_start, cited_end=ev.line_end,
    )


def _unique_id(fid: str, taken: set[str], reserved: set[str]) -> str:
    if fid not in taken:
        return fid
    prefix = fid.rsplit("-", 1)[0] if "-" in fid else fid
    numbers = [
        int(t.rsplit("-", 1)[1]) for t in taken | reserved
        if t.startswith(prefix + "-") and t.rsplit("-", 1)[1].isdigit()
    ]
    return f"{prefix}-{max(numbers, default=0) + 1:03d}"


def is_security(finding: Finding, persona: str) -> bool:
    return persona == SECURITY_PERSONA or finding.id.startswith("SEC-")


# --- levels --------------------------------------------------------------------------------

_LEVEL_WORDS: dict[str, Level] = {
    "critical": "critical",
    "blocks correctness": "critical",
    "blocks rollout": "critical",
    "wakes someone up": "critical",
    "blocks decision": "critical",
    "blocks comprehension": "critical",
    "blocks task": "critical",
    "high": "warning",
    "degrades operations": "warning",
    "degrades reliability": "warning",
    "degrades comprehension": "warning",
    "degrades task": "warning",
    "muddies artifact": "warning",
    "warning": "warning",
    "medium": "suggestion",
    "low": "suggestion",
    "operational friction": "suggestion",
    "on-call friction": "suggestion",
    "friction": "suggestion",
    "worth clarifying": "suggestion",
    "polish": "suggestion",
    "suggestion": "suggestion",
}


def seated_personas(state: RunState) -> dict[str, PersonaInfo]:
    """The roster's personas with the id prefix and severity words the plan recorded: a user
    persona's come from the log, whatever its file says by now."""
    roster = state.plan.roster if state.plan else ()
    return {e.persona: PersonaInfo(e.persona, e.id_prefix, e.severities) for e in roster if e.id_prefix}


def level_of(severity: str, persona: str, personas: Mapping[str, PersonaInfo] | None = None) -> Level:
    """The report level of a persona's severity word.

    Known words map by meaning (``Blocks rollout`` is critical, ``High`` a warning, ``Polish``
    a suggestion). A vocabulary the table does not know maps by rank: its first word is a
    warning, the rest suggestions.
    """
    key = " ".join(severity.lower().split())
    if key in _LEVEL_WORDS:
        return _LEVEL_WORDS[key]
    vocab = [" ".join(s.lower().split()) for s in persona_info(persona, personas).severities]
    return "warning" if vocab and key == vocab[0] else "suggestion"


def demote(level: Level) -> Level | None:
    """One level down; None below suggestion."""
    i = LEVELS.index(level)
    return LEVELS[i + 1] if i + 1 < len(LEVELS) else None


def rank(item: Item) -> tuple[int, int]:
    """The one ordering of findings: level, then plan order, then the agent's order."""
    return (LEVELS.index(item.level), item.order)


def _with(item: Item, *, note: str, **changes) -> Item:
    return msgspec.structs.replace(item, notes=item.notes + (note,), **changes)


# --- merge by substance --------------------------------------------------------------------


def _overlap(a: Item, b: Item) -> bool:
    return any(
        x.path == y.path and x.line_start <= y.line_end and y.line_start <= x.line_end
        for x in a.citations
        for y in b.citations
    )


_WORD = re.compile(r"[a-z0-9_]{3,}")


def _similar(a: Finding, b: Finding) -> bool:
    ta, tb = " ".join(a.title.lower().split()), " ".join(b.title.lower().split())
    if ta and tb and difflib.SequenceMatcher(None, ta, tb).ratio() >= 0.6:
        return True
    wa = set(_WORD.findall(f"{a.title} {a.claim}".lower()))
    wb = set(_WORD.findall(f"{b.title} {b.claim}".lower()))
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) >= 0.5


def _merge(items: list[Item]) -> list[Item]:
    groups: list[list[Item]] = []
    for item in items:
        for group in groups:
            if any(
                other.role == item.role and _overlap(other, item) and _similar(other.finding, item.finding)
                for other in group
            ):
                group.append(item)
                break
        else:
            groups.append([item])
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        keep = min(group, key=lambda i: (not i.security, LEVELS.index(i.level), i.order))
        ids = (keep.id,) + tuple(i.id for i in group if i is not keep)
        merged = ", ".join(f"{i.id} ({i.persona})" for i in group if i is not keep)
        out.append(
            _with(
                keep,
                finding=msgspec.structs.replace(keep.finding, sources=ids),
                order=min(i.order for i in group),
                note=f"merged with {merged}: same lines, same substance",
            )
        )
    return out


# --- reachability gate ---------------------------------------------------------------------

_UNREACHABLE = re.compile(
    r"\b(theoretical(?:ly)?|hypothetical(?:ly)?|defen[cs]e[- ]in[- ]depth|effectively impossible"
    r"|in case the upstream|could happen|should never happen"
    r"|edge case that (?:does not|doesn't|never) occurs?)\b",
    re.I,
)


def _reachability(items: list[Item], omitted: list[Omitted]) -> list[Item]:
    out = []
    for item in items:
        f = item.finding
        m = None if item.security else _UNREACHABLE.search(f"{f.title}\n{f.claim}\n{f.recommendation}")
        if m is None:
            out.append(item)
            continue
        lower = demote(item.level)
        why = f'reachability: its rationale says "{m.group(1).lower()}"'
        if lower is None:
            omitted.append(Omitted(item=item, reason=f"{why}; demoted below suggestion"))
        else:
            out.append(_with(item, level=lower, note=f"demoted from {item.level}: {why}"))
    return out


# --- band calibration ----------------------------------------------------------------------


def _calibrate(
    items: list[Item], kind: str, band: str, scope: dict[str, set[str]], omitted: list[Omitted]
) -> list[Item]:
    out = []
    for item in items:
        files = scope.get(item.step_id) or set()
        in_scope = not files or any(c.path in files for c in item.citations)
        if item.security or _kept(item.level, kind, band, in_scope):
            out.append(item)
            continue
        where = "" if in_scope else " outside the files under review"
        omitted.append(
            Omitted(item=item, reason=f"calibration: a {item.level}{where} is below the {band} band's bar")
        )
    return out


def _kept(level: Level, kind: str, band: str, in_scope: bool) -> bool:
    if band == "large" or level == "critical":
        return True
    if kind == "review":
        if band == "small":
            return level == "warning" and in_scope
        return level == "warning" or in_scope  # medium: suggestions only in the reviewed files
    return band == "medium" and level == "warning"  # area


# --- self-consistency ----------------------------------------------------------------------

_OPPOSITES = (
    ("add", "remove"),
    ("add", "delete"),
    ("keep", "remove"),
    ("keep", "delete"),
    ("increase", "decrease"),
    ("increase", "reduce"),
    ("raise", "lower"),
    ("enable", "disable"),
    ("inline", "extract"),
    ("split", "merge"),
    ("split", "combine"),
    ("more", "fewer"),
    ("expose", "hide"),
    ("allow", "forbid"),
    ("allow", "deny"),
)
_TOKEN = re.compile(r"[a-z]+")


def _opposed(a: Finding, b: Finding) -> bool:
    wa = set(_TOKEN.findall((a.recommendation or a.title).lower()))
    wb = set(_TOKEN.findall((b.recommendation or b.title).lower()))
    for x, y in _OPPOSITES:
        for p, q in ((x, y), (y, x)):
            if p in wa and q in wb and q not in wa and p not in wb:
                return True
    return False


def _self_consistency(items: list[Item]) -> list[Item]:
    tension: dict[str, list[str]] = {}
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if _overlap(a, b) and _opposed(a.finding, b.finding):
                tension.setdefault(a.id, []).append(b.id)
                tension.setdefault(b.id, []).append(a.id)
    out = []
    for item in items:
        others = tension.get(item.id)
        if not others:
            out.append(item)
            continue
        label = ", ".join(others)
        claim = f"Tension with {label}: {item.finding.claim}".rstrip()
        level = item.level if item.security else (demote(item.level) or item.level)
        note = f"opposite recommendation to {label} on the same lines"
        if level != item.level:
            note += f"; demoted from {item.level}"
        out.append(
            _with(item, finding=msgspec.structs.replace(item.finding, claim=claim), level=level, note=note)
        )
    return out


# --- caps ----------------------------------------------------------------------------------


def _cap(items: list[Item], cap: int, omitted: list[Omitted]) -> list[Item]:
    out, counted = [], 0
    for item in items:  # already sorted: critical first
        if item.security:
            out.append(item)
            continue
        counted += 1
        if counted <= cap:
            out.append(item)
        else:
            omitted.append(Omitted(item=item, reason=f"over the cap of {cap} findings (critical first)"))
    return out


def items_by_id(items: Iterable[Item]) -> dict[str, Item]:
    return {i.id: i for i in items}
