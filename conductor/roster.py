"""Who runs: the flow's spine, then specialists chosen by signal within the band's caps.

- The spine always sits (a phase may start only at a band, e.g. gap-analysis synthesis).
- Personas the person named in the request always join, outside the caps.
- The flow's signal-chosen specialists, the configuration's extra agents and user personas
  (with ``signals`` in their frontmatter) compete for the band's cap on the same terms: a
  candidate needs one of its signals to have fired and the band to reach its minimum. A forced
  large band therefore never seats an agent whose domain is untouched.
- Every decision that leaves someone out (unknown name, cap reached, band too small) is a
  one-line note; nothing is dropped silently.

Each persona then reads only its domain's slice of the files (``slice_files``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence

import msgspec

from conductor.flows import FLOWS, Flow, Phase, band_rank
from conductor.han_config import HanConfig, capped
from conductor.signals import SignalSet, is_manifest, is_test, kind_of
from conductor.snapshot import Snapshot
from events.types import Band, RosterEntry
from personas.model import Persona

__all__ = ["Roster", "choose", "instances", "slice_files", "SLICE_SIGNALS"]

# The signal that says a persona's domain was touched, by the persona's slice (for configured
# and user personas that declare no signals of their own).
SLICE_SIGNALS: dict[str, str] = {
    "all": "considered",
    "source": "source",
    "runtime": "source",
    "tests": "source",
    "data": "data",
    "infra": "infra",
    "security": "considered",
    "ui": "ui",
    "docs": "docs",
    "concurrency": "concurrency",
    "manifests": "manifests",
}
_SHOWN_FILES = 2  # files named in a reason before "+N more"


def _role_only() -> dict[str, str]:
    """Personas the flows seat only to validate, synthesise or edit the others' work (never to
    look at the code first), with that role: a configuration may not make them reviewers."""
    roles: dict[str, str] = {}
    reviewers: set[str] = set()
    for flow in FLOWS.values():
        reviewers.update(c.persona for c in flow.choices)
        for phase in flow.phases:
            for name in phase.personas:
                if phase.role == "discovery":
                    reviewers.add(name)
                else:
                    roles.setdefault(name, phase.role)
    return {name: role for name, role in roles.items() if name not in reviewers}


ROLE_ONLY: dict[str, str] = _role_only()


class Roster(msgspec.Struct, frozen=True, kw_only=True):
    entries: tuple[RosterEntry, ...]
    notes: tuple[str, ...] = ()

    def phase_of(self, persona: str) -> str:
        for e in self.entries:
            if e.persona == persona:
                return e.phase
        raise KeyError(persona)

    def in_phase(self, phase: str) -> tuple[str, ...]:
        return tuple(e.persona for e in self.entries if e.phase == phase)


class _Candidate(msgspec.Struct, frozen=True):
    persona: str
    phase: str
    reason: str


def choose(
    flow: Flow,
    band: Band,
    sigs: SignalSet,
    personas: Mapping[str, Persona],
    named: Sequence[str] = (),
    config: HanConfig | None = None,
) -> Roster:
    config = config or HanConfig()
    notes: list[str] = []
    seated: dict[str, RosterEntry] = {}
    joining = _joining_phase(flow, band)

    for phase in _phases(flow, band):
        for name in phase.personas:
            if name in seated:
                continue
            if name not in personas:
                notes.append(f"spine persona {name!r} is not available; {phase.name} runs without it")
                continue
            seated[name] = _entry(name, personas[name], _spine_reason(flow, phase, band, sigs), phase.name)

    for raw in named:
        name = raw.strip().lower()
        if not name or name in seated:
            continue
        if name not in personas:
            notes.append(f"persona {raw.strip()!r} named in the request is not known; skipped "
                         "(see `orchestrator personas`)")
            continue
        choice = next((c for c in flow.choices if c.persona == name), None)
        phase = choice.phase if choice is not None and choice.phase else joining.name
        seated[name] = _entry(name, personas[name], "named in the request", phase)

    candidates: list[_Candidate] = []
    considered: set[str] = set(seated)

    def consider(name: str, signals: Sequence[str], min_band: str, phase: str, lead: str) -> None:
        considered.add(name)
        fired = [s for s in signals if sigs.fired(s)]
        if not fired:
            return
        if band_rank(band) < band_rank(min_band):
            notes.append(f"{name} left out at {band} band: {fired[0]} fired, but it joins from "
                         f"{min_band}")
            return
        candidates.append(_Candidate(name, phase, f"{lead} ({_evidence(sigs, fired[0])})"))

    for c in flow.choices:
        if c.persona in considered:
            continue
        if c.persona not in personas:
            notes.append(f"persona {c.persona!r} is not available; not considered")
            considered.add(c.persona)
            continue
        consider(c.persona, c.signals, c.min_band, c.phase or joining.name,
                 f"chosen: {c.why}")

    # The file's notes are collected apart and capped: a hostile file may list thousands of names.
    config_notes: list[str] = []
    for name in config.extra_agents:
        if name not in personas:
            config_notes.append(f"{config.path}: extra agent {name!r} is not a known persona; skipped")
            continue
        p = personas[name]
        choice = next((c for c in flow.choices if c.persona == name), None)
        signals = choice.signals if choice else p.signals or (SLICE_SIGNALS.get(p.slice, "considered"),)
        if name in seated or any(c.persona == name for c in candidates):
            continue
        if name in ROLE_ONLY:
            config_notes.append(f"{config.path}: extra agent {name} only works in the "
                                f"{ROLE_ONLY[name]} role, not as a reviewer; skipped")
            continue
        if not any(sigs.fired(s) for s in signals):
            config_notes.append(f"{config.path}: extra agent {name} not seated: none of its "
                                f"signals ({', '.join(signals)}) fired")
            continue
        if name in considered:
            continue  # a flow choice whose band is not reached: already noted
        if not flow.open_roster:
            config_notes.append(f"{config.path}: {flow.name} seats no extra agents; {name} skipped")
            continue
        consider(name, signals, p.min_band, joining.name, f"extra agent from {config.path}")
    notes += capped(config_notes, config.path)

    if flow.open_roster:
        for name in sorted(personas):
            p = personas[name]
            if p.signals and name not in considered:
                consider(name, p.signals, p.min_band, joining.name, "user persona")

    candidates = _infra_or_app(flow, band, sigs, candidates, notes)
    cap = flow.caps.at(band)
    kept, left = candidates[:cap], candidates[cap:]
    if left:
        notes.append(
            f"cap of {cap} specialist{'s' if cap != 1 else ''} at {band} band reached; left out "
            + ", ".join(c.persona for c in left)
            + ("; a larger band would seat them" if band != "large" else "")
        )
    for c in kept:
        seated[c.persona] = _entry(c.persona, personas[c.persona], c.reason, c.phase)

    order = {p.name: i for i, p in enumerate(flow.phases)}
    entries = sorted(seated.values(), key=lambda e: order.get(e.phase, len(order)))
    return Roster(entries=tuple(entries), notes=tuple(notes))


def _infra_or_app(
    flow: Flow, band: Band, sigs: SignalSet, candidates: list[_Candidate], notes: list[str]
) -> list[_Candidate]:
    """Below the large band, of the flow's infrastructure and application-source specialists
    only one competes (Han: both only at large): the infrastructure one when infrastructure
    files outnumber the application source, else the other."""
    if flow.infra_or_app is None or band == "large":
        return candidates
    infra, app = flow.infra_or_app
    names = {c.persona for c in candidates}
    if infra not in names or app not in names:
        return candidates
    infra_files = set(sigs.files("infra"))
    source = [p for p in sigs.considered if kind_of(p) == "source" and p not in infra_files]
    keep, drop = (infra, app) if len(infra_files) > len(source) else (app, infra)
    mostly = "infrastructure files" if keep == infra else "application source"
    notes.append(f"{drop} left out at {band} band: the files are mostly {mostly}, which "
                 f"{keep} covers; both sit only at large")
    return [c for c in candidates if c.persona != drop]


def _entry(name: str, persona: Persona, reason: str, phase: str) -> RosterEntry:
    return RosterEntry(persona=name, reason=reason, phase=phase,
                       id_prefix=persona.id_prefix, severities=tuple(persona.severities))


def instances(phase: Phase, band: Band, sigs: SignalSet) -> int:
    """How many steps a multi-angle phase runs: its band's count, raised towards ``count_max``
    when the considered files span more subsystems."""
    if phase.count is None:
        return 1
    low = phase.count.at(band)
    if phase.count_max is None:
        return low
    return max(low, min(phase.count_max.at(band), len(sigs.subsystems)))


def slice_files(
    persona: Persona, sigs: SignalSet, snapshot: Snapshot
) -> tuple[str, ...]:
    """The persona's domain slice of the considered files (every considered file when its
    domain matched nothing: it is here because someone asked or its signal fired)."""
    considered = sigs.considered
    kinds = {p: kind_of(p) for p in considered}
    match persona.slice:
        case "source":
            files = [p for p in considered if kinds[p] == "source"]
        case "runtime":
            logic = set()
            for name in ("behaviour", "resilience", "input-handling", "concurrency", "security"):
                logic.update(sigs.files(name))
            files = [p for p in considered if kinds[p] == "source" and p in logic]
            files = files or [p for p in considered if kinds[p] == "source"]
        case "tests":
            files = _with_tests(considered, kinds, snapshot)
        case "data" | "infra" | "ui" | "concurrency":
            files = list(sigs.files(persona.slice))
        case "security":
            files = sorted(set(considered) | {p for p in snapshot.paths() if is_manifest(p)})
        case "docs":
            files = [p for p in considered if kinds[p] == "doc"]
        case "manifests":
            files = [p for p in snapshot.paths() if is_manifest(p)]
        case _:
            files = list(considered)
    return tuple(files) if files else considered


def _with_tests(considered: Sequence[str], kinds: dict[str, str], snapshot: Snapshot) -> list[str]:
    """Source files in scope and the tests that exercise them (by file name)."""
    source = [p for p in considered if kinds[p] == "source"]
    tests = {p for p in considered if kinds[p] == "test"}
    stems = {posixpath.splitext(posixpath.basename(p))[0].lower() for p in source}
    stems.discard("__init__")
    if stems:
        for p in snapshot.paths():
            if is_test(p) and _tested_stem(p) in stems:
                tests.add(p)
    return source + sorted(tests)


def _tested_stem(path: str) -> str:
    stem = posixpath.basename(path).lower()
    for suffix in (".py", ".go", ".rb", ".exs", ".java", ".kt", ".js", ".ts", ".jsx", ".tsx",
                   ".mjs", ".cjs", ".test", ".spec"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    for prefix in ("test_",):
        if stem.startswith(prefix):
            stem = stem[len(prefix):]
    for suffix in ("_test", "_spec", "tests", "test"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem


def _phases(flow: Flow, band: Band) -> list[Phase]:
    return [p for p in flow.phases if band_rank(band) >= band_rank(p.min_band)]


def _joining_phase(flow: Flow, band: Band) -> Phase:
    """Where chosen, configured and named personas join: the first phase that takes them."""
    phases = _phases(flow, band)
    return next((p for p in phases if p.takes_chosen), phases[0])


def _spine_reason(flow: Flow, phase: Phase, band: Band, sigs: SignalSet) -> str:
    n = instances(phase, band, sigs)
    if n > 1:
        return f"spine of {flow.name}: {n} steps on different angles"
    return f"spine of {flow.name}"


def _evidence(sigs: SignalSet, name: str) -> str:
    signal = sigs.get(name)
    if signal is None:
        return name
    if not signal.files:
        return f"{name}: {signal.detail}" if signal.detail else name
    shown = ", ".join(signal.files[:_SHOWN_FILES])
    more = len(signal.files) - _SHOWN_FILES
    return f"{name}: {shown}" + (f" +{more} more" if more > 0 else "")
