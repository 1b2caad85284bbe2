"""The validator gate: apply the adversarial validator's verdicts to the surviving findings.

The validator filters; it never adds. For each surviving finding it judged:

- **confirmed** keeps the finding;
- **partially refuted** demotes it one level;
- **refuted** drops it only when its counter-evidence itself verifies against the pinned
  snapshot (the same mechanical check as any finding: at least one citation, every citation
  found). A refutation whose counter-evidence is missing or not found demotes instead: a doubt
  without proof does not remove a finding.

Security findings follow the same rule, stated plainly: a refuted security finding is dropped
only with verified counter-evidence; a demoted one steps down its own tier and never falls out
of the report (it stays at least a suggestion).

A finding the validator did not mention is kept (uncertainty keeps the item). Verdicts on ids
that were not in its input, and second verdicts on one id, are ignored with a note. YAGNI and
unverified items are not the validator's input and are untouched. A finding made after the
validator's wave that merges with a judged one takes that verdict (its sources name the judged
id), so a refuted claim cannot come back under a later finding's id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec

from conductor.collect import Collected, Item, Omitted, collect, demote, rank
from conductor.evidence import check, finding_status
from conductor.findings import parse_output
from conductor.snapshot import Snapshot
from conductor.state import RunState
from events.types import Finding, ValidatorVerdict, Verdict

__all__ = ["Validated", "apply_verdicts", "gate"]


def gate(
    state: RunState, step_id: str, snapshot: Snapshot, *, ts: float | None = None
) -> ValidatorVerdict:
    """Read the validator step's answer and decide what each verdict does.

    The returned event carries only the verdicts that apply to a finding the validator was
    given, each with its ``action`` and whether its counter-evidence verified. Its ``ts`` is
    ``ts`` when given, else the validator step's end (the conductor reads no clock).
    """
    st = state.steps[step_id]
    surviving = collect(state, before_wave=st.step.wave).findings
    known = {item.id for item in surviving}
    parsed = parse_output(st.output, persona=st.persona, step_id=step_id, role="validator")
    notes: list[str] = []
    if parsed.error:
        notes.append(f"validator output: {parsed.error}")
    verdicts: list[Verdict] = []
    seen: set[str] = set()
    strays: dict[str, None] = {}  # ids the validator was not given, in order, each once
    canonical = {_canonical(fid): fid for fid in known}
    for v in parsed.verdicts:
        if v.finding_id not in known and canonical.get(_canonical(v.finding_id)):
            # "S1" or "s-1" for S-001: the same finding, written loosely.
            notes.append(f"read {v.finding_id} as {canonical[_canonical(v.finding_id)]}")
            v = msgspec.structs.replace(v, finding_id=canonical[_canonical(v.finding_id)])
        if v.finding_id not in known:
            strays[v.finding_id] = None
            continue
        if v.finding_id in seen:
            notes.append(f"ignored a second verdict on {v.finding_id}")
            continue
        seen.add(v.finding_id)
        verdicts.append(v)
    verdicts = _decide(verdicts, snapshot)
    if strays:  # one note for them all: a small model can number a dozen verdicts 1, 2, 3…
        ids = ", ".join(strays)
        notes.append(f"ignored a verdict on {ids}: not a finding the validator was given"
                     if len(strays) == 1 else
                     f"ignored verdicts on {ids}: not findings the validator was given")
    unmentioned = [i for i in sorted(known) if i not in seen]
    if unmentioned:
        notes.append(f"kept without a verdict: {', '.join(unmentioned)}")
    return ValidatorVerdict(
        run_id=state.run_id,
        ts=ts if ts is not None else (st.ended_ts if st.ended_ts is not None else 0.0),
        step_id=step_id,
        verdicts=tuple(verdicts),
        note="; ".join(dict.fromkeys(notes)),  # the same stray id twice is one note
    )


def _canonical(fid: str) -> str:
    m = re.fullmatch(r"\s*([A-Za-z]+)[-_ ]?0*(\d+)\s*", fid)
    return f"{m.group(1).upper()}-{int(m.group(2))}" if m else fid


def _decide(verdicts: list[Verdict], snapshot: Snapshot) -> list[Verdict]:
    # One check for every counter-citation: each file is read and indexed once, not per verdict.
    probes = [Finding(id=v.finding_id, severity="", title="", evidence=v.counter_evidence) for v in verdicts]
    results = check(probes, snapshot)
    out = []
    for v, probe in zip(verdicts, probes):
        counter_verified = bool(v.counter_evidence) and finding_status(probe, results) == "verified"
        if v.result == "confirmed":
            action = "keep"
        elif v.result == "refuted" and counter_verified:
            action = "drop"
        else:
            action = "demote"
        out.append(msgspec.structs.replace(v, counter_verified=counter_verified, action=action))
    return out


class Validated(msgspec.Struct, frozen=True, kw_only=True):
    """The collected findings after the validators' verdicts, and what each verdict did."""

    collected: Collected
    dropped: tuple[tuple[Item, Verdict], ...] = ()
    demoted: tuple[str, ...] = ()
    verdicts: tuple[Verdict, ...] = ()  # every applied verdict, in the validators' order
    notes: tuple[str, ...] = ()


def apply_verdicts(collected: Collected, events: Iterable[ValidatorVerdict]) -> Validated:
    """Carry out the recorded actions on the collected findings (the report's view)."""
    items = list(collected.findings)
    omitted = list(collected.omitted)
    dropped: list[tuple[Item, Verdict]] = []
    demoted: list[str] = []
    applied: list[Verdict] = []
    notes: list[str] = []
    for event in events:
        if event.note:
            notes.append(event.note)
        for v in event.verdicts:
            # A finding made after the validator's wave may have merged with the judged one and
            # be kept in its place: the verdict judges that substance, so it follows the merge.
            at = next((n for n, i in enumerate(items) if i.id == v.finding_id), None)
            if at is None:
                at = next((n for n, i in enumerate(items) if v.finding_id in i.finding.sources), None)
            if at is None:
                continue  # dropped earlier, or no longer in the list
            applied.append(v)
            item = items[at]
            label = v.result.replace("_", " ")
            if item.id != v.finding_id:
                label += f" (on {v.finding_id}, merged here)"
            if v.action == "drop":
                dropped.append((item, v))
                del items[at]
            elif v.action == "demote":
                lower = demote(item.level)
                if lower is None and item.security:
                    lower = item.level  # a security finding never falls out on a demotion
                demoted.append(item.id)
                if lower is None:
                    del items[at]
                    omitted.append(Omitted(item=item, reason=f"validator: {label}; demoted below suggestion"))
                else:
                    items[at] = _note(item, f"validator: {label}, demoted from {item.level}", level=lower)
            else:
                items[at] = _note(item, f"validator: {label}")
    return Validated(
        collected=msgspec.structs.replace(
            collected,
            findings=tuple(sorted(items, key=rank)),
            omitted=tuple(sorted(omitted, key=lambda o: o.item.order)),
        ),
        dropped=tuple(dropped),
        demoted=tuple(demoted),
        verdicts=tuple(applied),
        notes=tuple(notes),
    )


def _note(item: Item, note: str, **changes) -> Item:
    return msgspec.structs.replace(item, notes=item.notes + (note,), **changes)
