"""A run's plan, as one pure function of its request, its snapshot and the personas.

``plan`` reads no clock but the ``ts`` it is given and iterates everything in sorted or
declared order, so the same inputs give the same plan, byte for byte. The plan's steps are the
flow's waves: ``conductor.advance`` starts wave *w* once every earlier wave is settled.

Order of decisions: the files considered (the snapshot's, narrowed by the focus when it names
paths), their signals, the band (explicit, then ``.han/config.md``, then signals), the roster
(spine, then signal-chosen within the caps), then the steps with each persona's slice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from conductor import band as bands
from conductor import han_config, signals
from conductor.flows import FLOWS, Flow, Phase, band_rank
from conductor.requests import RequestError, validate
from conductor.roster import Roster, choose, instances, slice_files
from conductor.snapshot import Snapshot
from events.types import Band, PlannedStep, RunPlanned, RunRequested, Signal
from personas.model import Persona

__all__ = ["MAX_SIGNAL_FILES", "MAX_STEP_FILES", "plan"]

MAX_STEP_FILES = 200  # paths recorded per step; the prompt says how to find the rest
MAX_SIGNAL_FILES = 500  # paths recorded per signal in the plan (the plan lists every considered file)


def plan(
    request: RunRequested,
    snapshot: Snapshot,
    personas: Mapping[str, Persona],
    *,
    model: str,
    engine: str,
    ts: float,
) -> RunPlanned:
    """The plan of a validated request (raises ``RequestError`` for a request that cannot run,
    such as a gap-analysis document that is not in the snapshot)."""
    validate(request, FLOWS)
    flow = FLOWS[request.flow]
    notes: list[str] = []

    config = han_config.read(snapshot)
    notes += config.notes
    document = _document(flow, request, snapshot)
    considered = _considered(flow, request, snapshot, document, notes)
    sigs = signals.compute(snapshot, considered, symptom=request.symptom)
    choice = bands.resolve(flow, request.band, config, sigs)
    roster = choose(flow, choice.band, sigs, personas, request.personas, config)
    notes += roster.notes
    steps = _steps(flow, choice.band, roster, sigs, snapshot, personas, document, notes)

    return RunPlanned(
        run_id=request.run_id,
        ts=ts,
        band=choice.band,
        band_reason=choice.reason,
        band_source=choice.source,
        roster=roster.entries,
        steps=tuple(steps),
        commit=snapshot.commit,
        model=model,
        engine=engine,
        signals=tuple(_recorded(s) for s in sigs.signals),
        notes=tuple(notes),
        considered=sigs.considered,
    )


def _recorded(signal: Signal) -> Signal:
    """The signal as the plan records it: a very long file list is cut, and the cut is said."""
    if len(signal.files) <= MAX_SIGNAL_FILES:
        return signal
    detail = f"{signal.detail} (first {MAX_SIGNAL_FILES} of {len(signal.files)} files listed)"
    return Signal(name=signal.name, files=signal.files[:MAX_SIGNAL_FILES], detail=detail.strip())


# --- what is considered ------------------------------------------------------------------------


def _document(flow: Flow, request: RunRequested, snapshot: Snapshot) -> str:
    spec = flow.input("document")
    if spec is None:
        return ""
    path = getattr(request, spec.field).strip().strip("'\"").removeprefix("./")
    if snapshot.size(path) is None:
        raise RequestError(
            f"{flow.name}: document {path!r} is not a file in the repository at commit "
            f"{snapshot.commit[:12]}",
            "bad_input",
        )
    return path


def _considered(
    flow: Flow, request: RunRequested, snapshot: Snapshot, document: str, notes: list[str]
) -> tuple[str, ...]:
    changed = _in_scope(flow, request, snapshot)
    if document:
        changed = tuple(p for p in changed if p != document)
    focus_spec = flow.input("focus")
    if focus_spec is not None and focus_spec.narrows and request.focus.strip():
        narrowed = _focus_paths(request.focus, changed)
        if narrowed:
            changed = narrowed
        elif flow.name == "architectural-analysis":
            notes.append(
                f"the focus {request.focus.strip()[:80]!r} names no path in scope; every file "
                "in scope is considered and the focus is given to each agent"
            )
    if not changed:
        # Agents with nothing to read can only invent: refuse before any is dispatched.
        if request.base:
            why = (f"no file in scope differs between {request.base!r} and the commit pinned "
                   f"({snapshot.commit[:12]})")
        elif document:
            why = f"no file in scope besides the document {document!r}"
        else:
            why = "no file is in scope"
        raise RequestError(f"{flow.name}: nothing to analyse: {why}", "bad_input")
    return changed


def _in_scope(flow: Flow, request: RunRequested, snapshot: Snapshot) -> tuple[str, ...]:
    """The snapshot's considered files; for a flow about the tree, every file in scope even
    when the snapshot considers only uncommitted changes (its diff is then not empty)."""
    if flow.scope == "change" or not snapshot.diff():
        return snapshot.changed()
    wanted = [_clean(p.strip()) for p in request.paths]
    return tuple(p for p in snapshot.paths()
                 if not wanted or any(not w or p == w or p.startswith(w + "/") for w in wanted))


def _focus_paths(focus: str, changed: tuple[str, ...]) -> tuple[str, ...]:
    """The files in scope that the focus names: a file, or everything under a directory."""
    picked: set[str] = set()
    for token in re.split(r"[\s,;]+", focus):
        token = token.strip("`'\"()")
        if token.startswith("/") or ".." in token.split("/"):
            continue
        token = _clean(token)
        if not token:
            continue
        for p in changed:
            if p == token or p.startswith(token + "/"):
                picked.add(p)
    return tuple(sorted(picked))


def _clean(path: str) -> str:
    """A path as the snapshot reads it: '.' segments and extra slashes dropped ('' the root)."""
    return "/".join(part for part in path.split("/") if part not in ("", "."))


# --- the steps ---------------------------------------------------------------------------------


def _steps(
    flow: Flow,
    band: Band,
    roster: Roster,
    sigs: signals.SignalSet,
    snapshot: Snapshot,
    personas: Mapping[str, Persona],
    document: str,
    notes: list[str],
) -> list[PlannedStep]:
    steps: list[PlannedStep] = []
    seated = {e.persona for e in roster.entries}
    wave = 0
    for phase in flow.phases:
        if band_rank(band) < band_rank(phase.min_band):
            continue
        members = [p for p in phase.personas if p in seated]
        members += [e.persona for e in roster.entries if e.phase == phase.name and e.persona not in members]
        if not members:
            continue
        wave += 1
        inputs = _inputs(flow, phase, steps)
        for persona in members:
            several = _instances(phase, persona, band, sigs, snapshot, personas)
            for n, (angle, files) in enumerate(several, 1):
                if phase.role == "editor":
                    files = ()
                elif document and document not in files:
                    files = (document, *files)
                step_id = f"w{wave}-{persona}" + (f"-{n}" if len(several) > 1 else "")
                if len(files) > MAX_STEP_FILES:
                    notes.append(f"{step_id}: {MAX_STEP_FILES} of the {len(files)} files in its "
                                 "slice are listed; it can find the rest with its tools")
                    files = files[:MAX_STEP_FILES]
                steps.append(
                    PlannedStep(
                        step_id=step_id,
                        persona=persona,
                        phase=phase.name,
                        wave=wave,
                        files=files,
                        angle=angle,
                        role=phase.role,
                        inputs=inputs,
                    )
                )
    return steps


def _multiple(phase: Phase, persona: str) -> bool:
    return phase.count is not None and persona in phase.personas


def _instances(
    phase: Phase,
    persona: str,
    band: Band,
    sigs: signals.SignalSet,
    snapshot: Snapshot,
    personas: Mapping[str, Persona],
) -> list[tuple[str, tuple[str, ...]]]:
    """(angle, files) for each step of this persona in this phase."""
    files = _ranked(slice_files(personas[persona], sigs, snapshot), sigs)
    if not _multiple(phase, persona):
        return [(phase.angle, files)]
    n = instances(phase, band, sigs)
    groups = _by_subsystem(files, n) if phase.count_max is not None else None
    if groups is not None:
        return [(f"the code under {', '.join(names)}", group) for names, group in groups]
    return [(phase.angles[i % len(phase.angles)] if phase.angles else phase.angle, files)
            for i in range(n)]


def _by_subsystem(
    files: tuple[str, ...], n: int
) -> list[tuple[list[str], tuple[str, ...]]] | None:
    """Split the files among ``n`` steps by subsystem (round robin over the sorted names), when
    there are at least ``n`` subsystems to split; otherwise None (the steps take angles)."""
    names = sorted({signals.subsystem_of(p) for p in files})
    if n < 2 or len(names) < n:
        return None
    owner = {name: i % n for i, name in enumerate(names)}
    out = []
    for i in range(n):
        mine = [name for name in names if owner[name] == i]
        out.append((mine, tuple(p for p in files if owner[signals.subsystem_of(p)] == i)))
    return out


def _ranked(files: tuple[str, ...], sigs: signals.SignalSet) -> tuple[str, ...]:
    """Files the specific signals point at most come first (stable for the rest), so a capped
    slice keeps the files that matter to its domain."""
    weight: dict[str, int] = {}
    for s in sigs:
        if s.name not in ("considered", "subsystems", "languages", "docs", "docs-only"):
            for p in s.files:
                weight[p] = weight.get(p, 0) + 1
    if len(files) <= MAX_STEP_FILES:
        return files
    return tuple(sorted(files, key=lambda p: (-weight.get(p, 0), p)))


def _inputs(flow: Flow, phase: Phase, earlier: list[PlannedStep]) -> tuple[str, ...]:
    """The earlier steps whose output this phase reads verbatim."""
    if phase.role == "discovery":
        return ()
    wanted = set(phase.reads) or {s.phase for s in earlier}
    return tuple(
        s.step_id
        for s in earlier
        if s.phase in wanted and (not phase.reads_personas or s.persona in phase.reads_personas)
    )
