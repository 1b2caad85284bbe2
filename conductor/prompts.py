"""The messages one step sends to the model, built from the run's state and its snapshot.

- **system**: the persona's brief, the run's rules (read-only tools, evidence, YAGNI, fencing,
  the persona's boundaries), the band's calibration, and the shape of the answer.
- **user**: the task and the angle, the person's own inputs (focus, symptom, document, notes:
  trusted, given as written), then the context: for synthesis, validator and editor steps the
  upstream results verbatim; for a change, its commit messages and diff; then the step's files.
  Everything that came from the repository or from an agent quoting it is fenced as data.

The budget is in tokens, estimated as ``ceil(characters / 4)`` plus 4 per message: rough, but
cheap, deterministic and on the safe side for code and English. What does not fit is left out
whole or cut at a line, in a fixed order of priority (upstream results, then the diff, then
the files: files in the change first, then those more signals point at, then smaller ones),
and everything left out is named in the prompt and in ``Prompt.left_out``; the model can read
files with its tools. When even the fixed part is too large, the persona brief is shortened
section by section (its first section and its output section are kept longest).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from conductor import contracts
from conductor.flows import FLOWS, Flow
from conductor.snapshot import Snapshot
from conductor.state import RunState, StepState
from events.types import Finding, PlannedStep
from personas.model import Persona

__all__ = [
    "Prompt",
    "brief_cuts",
    "build_messages",
    "estimate_tokens",
    "listed",
    "messages_tokens",
]

MESSAGE_OVERHEAD = 4  # tokens a chat message costs beyond its text (role, separators)
MIN_PART_TOKENS = 64  # a file is cut at a line only when at least this much of it fits
USER_TEXT_CAP = 4000  # characters of each of the person's inputs shown (their text is trusted)
FILE_BYTES = 1_000_000  # of a file read for a prompt at most: more than any context holds
LISTED_FILES = 30  # paths of the step's slice listed by name before "and N more"
LISTED_CHARS = 1_200  # and at most about this many characters of them
SHOWN_PATH_CHARS = 160  # a longer path is shown cut in the middle
LISTED_LEFT_OUT = 20  # items named in the "not included" line before "and N more"
SECTION_SLACK = 16  # tokens kept for section headings and separators between items
# Signals that say nothing about one file's relevance (they fire on every file).
_GENERIC = {"considered", "subsystems", "languages", "source", "tests", "docs", "docs-only"}


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    messages: list[dict]
    left_out: tuple[str, ...] = ()
    budget_tokens: int
    estimated_tokens: int


# How a left-out label names a cut of the persona's brief: BRIEF + what + CUT.
BRIEF, CUT = "persona brief: ", " (cut for space)"


def listed(labels: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The first ``LISTED_LEFT_OUT`` labels, and how many more there were."""
    more = len(labels) - LISTED_LEFT_OUT
    return tuple(labels[:LISTED_LEFT_OUT]) + ((f"and {more} more",) if more > 0 else ())


def brief_cuts(labels: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Left-out labels split into what was cut of the persona's brief (``"section 'X'"``)
    and everything else (files, diffs, upstream results)."""
    cuts, rest = [], []
    for label in labels:
        if label.startswith(BRIEF):
            cuts.append(label.removeprefix(BRIEF).removesuffix(CUT))
        else:
            rest.append(label)
    return tuple(cuts), tuple(rest)


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """The estimate of a chat's prompt: each message's text and tool calls, and its overhead."""
    used = 0
    for m in messages:
        used += MESSAGE_OVERHEAD + estimate_tokens(m.get("content") or "")
        if m.get("tool_calls"):
            used += estimate_tokens(json.dumps(m["tool_calls"]))
    return used


def _messages_tokens(system: str, user: str) -> int:
    return estimate_tokens(system) + estimate_tokens(user) + 2 * MESSAGE_OVERHEAD


class _Item(msgspec.Struct, frozen=True):
    """One optional piece of context: its section, label, text, and how to cut it."""

    section: str
    label: str  # what ``left_out`` names when it does not fit
    render: Callable[[int | None], tuple[str, str]]  # max lines -> (text, left-out remainder)
    lines: int = 0  # 0: all or nothing


def build_messages(
    state: RunState,
    step_id: str,
    snapshot: Snapshot,
    personas: Mapping[str, Persona],
    *,
    budget_tokens: int,
) -> Prompt:
    if state.request is None or state.plan is None:
        raise ValueError(f"run {state.run_id} has no plan yet")
    st = state.steps[step_id]
    step = st.step
    flow = FLOWS[state.request.flow]
    persona = personas.get(step.persona)
    if persona is None:
        raise ValueError(f"persona {step.persona!r} of step {step_id} is not loaded")

    rules = _rules(state, flow, step, persona)
    task = _task(state, flow, step, persona, snapshot)
    items = _context_items(state, flow, st, snapshot)
    # Shorten the brief only as far as needed to leave the context a quarter of the budget
    # (or all it needs, when that is less).
    wanted = sum(estimate_tokens(i.render(None)[0]) + 1 for i in items)
    reserve = min(budget_tokens // 4, wanted + SECTION_SLACK)
    room = budget_tokens - reserve - _messages_tokens(rules, task)
    # A cut brief is named in a note at the end, which needs room of its own: fit again with
    # that room kept until the note fits it (each round only cuts more, so this ends).
    cut_note = 0
    for _ in range(5):
        body, cut_sections = _fit_body(persona.body, room - cut_note)
        cut = [BRIEF + s + CUT for s in cut_sections]
        need = estimate_tokens(_left_out_note(cut, upstream=False)) if cut else 0
        if need <= cut_note:
            break
        cut_note = need
    system = f"{body}\n\n{rules}" if body else rules

    base = _messages_tokens(system, task) + SECTION_SLACK
    sections, skipped, used = _fill(items, budget_tokens - base - cut_note)
    if skipped:
        # Something did not fit: make room for the note that says so, and fill again.
        note_room = estimate_tokens(_left_out_note([i.label for i in items] + cut, upstream=True))
        sections, skipped, used = _fill(items, budget_tokens - base - note_room)

    user = task
    for name, parts in sections.items():
        user += f"\n\n## {name}\n\n" + "\n\n".join(parts)
    if skipped or cut:
        upstream = any(s.startswith(_UPSTREAM_LABELS) for s in skipped)
        user += "\n\n" + _left_out_note(skipped + cut, upstream=upstream)
    left_out = cut + skipped
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return Prompt(
        messages=messages,
        left_out=tuple(left_out),
        budget_tokens=budget_tokens,
        estimated_tokens=_messages_tokens(system, user),
    )


def _fill(items: list[_Item], room: int) -> tuple[dict[str, list[str]], list[str], int]:
    """Take whole items in order while they fit in ``room`` tokens (skipping one that does
    not, so smaller ones after it still get in); then cut the skipped files and diffs at a
    line, in order, while enough room is left. Returns sections, left-out labels, tokens used."""
    taken: dict[int, str] = {}
    rests: dict[int, str] = {}
    used = 0
    for n, item in enumerate(items):
        text, _ = item.render(None)
        cost = estimate_tokens(text) + 1
        if cost <= room - used:
            taken[n], used = text, used + cost
    for n, item in enumerate(items):
        if n in taken or not item.lines or room - used < MIN_PART_TOKENS:
            continue
        fitted = _fit_lines(item, room - used)
        if fitted is not None:
            taken[n], rests[n] = fitted
            used += estimate_tokens(fitted[0]) + 1
    sections: dict[str, list[str]] = {}
    skipped: list[str] = []
    for n, item in enumerate(items):
        if n in taken:
            sections.setdefault(item.section, []).append(taken[n])
            if n in rests:
                skipped.append(rests[n])
        else:
            skipped.append(item.label)
    return sections, skipped, used


# --- the fixed part --------------------------------------------------------------------------


def _rules(state: RunState, flow: Flow, step: PlannedStep, persona: Persona) -> str:
    lines = ["## Rules of this run", "", contracts.read_only()]
    if persona.evidence_rule:
        lines += ["", contracts.evidence_rule()]
    if persona.yagni_rule and step.role in ("discovery", "synthesis"):
        lines += ["", contracts.yagni_rule()]
    lines += ["", contracts.fencing_rule()]
    lanes = [f"{b.does_not} ({b.use})" if b.use else b.does_not for b in persona.boundaries]
    if lanes:
        lines += ["", "Stay in your lane; others cover these: " + "; ".join(lanes) + "."]
    lines += [
        "",
        contracts.calibration(flow, state.plan.band, persona, role=step.role),
        "",
        "## Your answer",
        "",
        "When you have what you need, answer with one JSON object of this shape"
        + (":" if step.role == "validator" else
           f" (ids start with {persona.id_prefix}-, numbered from 001):"),
        _answer_shape(step.role, persona),
    ]
    return "\n".join(lines)


_ROLE_TASKS = {
    "discovery": "Look at your files through your lens and report what you find, with evidence.",
    "synthesis": "Work from the upstream results below: cite them by their ids exactly as given "
    "(never renumber or reword them) and add only what your lens adds.",
    "validator": "Try to refute each finding below with the code itself and rule on every one: "
    "confirmed, partially_refuted or refuted. A refutation needs counter-evidence (path, lines, "
    "quote). Add no findings of your own; when you cannot disprove a finding, confirm it.",
    "editor": "Rewrite the draft below so its reader can follow it on first reading. Keep every "
    "fact, id, path and number; cut or correct the claims the validator refuted; change prose "
    "only, never code, ids or citations.",
}


def _task(
    state: RunState, flow: Flow, step: PlannedStep, persona: Persona, snapshot: Snapshot
) -> str:
    req, plan = state.request, state.plan
    lines = ["# Task", "", f"{flow.task} {_ROLE_TASKS[step.role]}"]
    if step.angle:
        lines.append(f"Your angle: {step.angle}.")
    lines += [
        "",
        f"Flow: {flow.name}, for {flow.audience}. You are {persona.name}: {persona.lens}",
        f"Band: {plan.band_reason}. Commit: {plan.commit[:12]}. Scope: {_scope(state, flow, snapshot)}, "
        f"{len(plan.considered)} file{'s' if len(plan.considered) != 1 else ''} considered.",
    ]
    if step.files:
        listed_files = [shown_path(p) for p in step.files[:LISTED_FILES]]
        while len(listed_files) > 1 and sum(map(len, listed_files)) > LISTED_CHARS:
            listed_files.pop()
        more = len(step.files) - len(listed_files)
        lines.append(f"Your files ({len(step.files)}): {', '.join(listed_files)}"
                     + (f", and {more} more" if more > 0 else ""))

    given: list[str] = []
    for field, label in (("focus", "Focus"), ("symptom", "Symptom"), ("text", "Notes")):
        value = getattr(req, field).strip()
        if not value:
            continue
        spec = next((i for i in flow.inputs if i.field == field), None)
        if spec is not None and spec.name == "document":
            label = "Document (the desired state)"
        if len(value) > USER_TEXT_CAP:
            value = value[:USER_TEXT_CAP] + f" [… {len(value) - USER_TEXT_CAP} more characters]"
        given.append(f"{label}: {value}")
    if given:
        lines += ["", "## From the person who launched the run (their own words)", "", *given]
    return "\n".join(lines)


def _scope(state: RunState, flow: Flow, snapshot: Snapshot) -> str:
    req = state.request
    if req.base:
        return f"the branch's changes since {req.base}"
    if flow.scope == "change" and snapshot.diff():
        return "the uncommitted changes"
    if req.paths:
        return "the given paths " + ", ".join(req.paths[:5]) + (" …" if len(req.paths) > 5 else "")
    if len(state.plan.considered) < len(snapshot.paths()):
        return "the part of the repository in focus"
    return "the whole repository"


def _answer_shape(role: str, persona: Persona) -> str:
    from conductor.findings import output_schema

    return json.dumps(_example(output_schema(role, persona)), ensure_ascii=False)


def _example(schema: dict) -> object:
    """A one-item example of a JSON Schema, to show the model the shape of its answer."""
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return {k: _example(v) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_example(schema.get("items", {}))]
    if kind == "integer":
        return 1
    if kind == "boolean":
        return False
    if "pattern" in schema:
        return schema["pattern"].strip("^$").replace("[0-9]{3}", "001").replace("\\", "")
    return "…"


def _fit_body(body: str, room: int) -> tuple[str, list[str]]:
    """The persona brief within ``room`` tokens: whole sections dropped from the end (the
    first section and the output section go last), then what is left cut at a paragraph; a
    brief with less than ``MIN_PART_TOKENS`` of room is left out whole."""
    if estimate_tokens(body) <= room:
        return body, []
    if room < MIN_PART_TOKENS:
        return "", ["the whole brief"]
    parts = [p for p in re.split(r"(?m)^(?=## )", body) if p.strip()]
    titles = [p.splitlines()[0].lstrip("#").strip() for p in parts]
    keep = list(range(len(parts)))
    last_resort = [0] + [i for i, t in enumerate(titles) if t.lower().startswith("output")]
    order = [i for i in reversed(range(len(parts))) if i not in last_resort] + last_resort[::-1]
    cut: list[str] = []
    for i in order:
        if estimate_tokens("".join(parts[k] for k in keep)) <= room or len(keep) == 1:
            break
        # Keep the head of this section when that is enough: dropping it whole for a few
        # tokens (the note naming a cut needs some) would lose more of the brief than needed.
        rest = estimate_tokens("".join(parts[k] for k in keep if k != i))
        head = _paragraphs_within(parts[i], room - rest)
        if head:
            parts[i] = head + "\n\n"
            cut.append(f"section {titles[i]!r} after {len(head)} characters")
            break
        keep.remove(i)
        cut.append(f"section {titles[i]!r}")
    text = "".join(parts[k] for k in keep).strip()
    if estimate_tokens(text) > room:
        head = text[: room * 4]
        head = head[: head.rfind("\n\n")] if "\n\n" in head else head
        kept_title = titles[keep[0]]
        cut.append(f"section {kept_title!r} after {len(head)} characters")
        text = head.rstrip()
    return text, cut


def _paragraphs_within(section: str, room: int) -> str:
    """The whole paragraphs at the head of ``section`` (its heading and at least one more)
    that fit ``room`` tokens, or '' when they do not."""
    if room < MIN_PART_TOKENS:
        return ""
    paragraphs = section.strip().split("\n\n")
    head = ""
    for n, paragraph in enumerate(paragraphs):
        grown = f"{head}\n\n{paragraph}" if head else paragraph
        if estimate_tokens(grown) > room:
            return head if n >= 2 else ""
        head = grown
    return head


# --- the optional part -----------------------------------------------------------------------


def _context_items(state: RunState, flow: Flow, st: StepState, snapshot: Snapshot) -> list[_Item]:
    items: list[_Item] = []
    if st.step.role != "discovery":
        items += _upstream_items(state, st.step)
    if st.step.role == "editor":
        return items
    req = state.request
    messages = snapshot.messages()
    if messages and (req.base or snapshot.diff()):
        text = "\n\n".join(messages)
        items.append(_whole("Branch context", "commit messages",
                            contracts.fence(text, source="commit messages of the change")))
    diff = snapshot.diff()
    files = _ranked_files(state, st.step, snapshot)
    if diff:
        by_file = _split_diff(diff)
        for path in files:
            if path in by_file:
                name = shown_path(path)
                items.append(_lines_item("Diff", f"diff of {name}", f"diff of {name}", by_file[path]))
    for path in files:
        head = snapshot.read_head(path, FILE_BYTES)
        if head is None:
            continue
        data, size = head
        name = shown_path(path)
        if b"\0" in data[:8192]:
            items.append(_whole("Files", name, f"{name}: binary file, {size} bytes (not shown)"))
            continue
        if len(data) < size:  # whole lines only: the head may stop inside one
            data = data[: data.rfind(b"\n") + 1]
            if not data:
                items.append(_whole("Files", name, (
                    f"{name}: {size} bytes with no line break in the first {FILE_BYTES:,} (not "
                    "shown; read_file shows part of it)")))
                continue
        text = data.decode("utf-8", errors="replace")
        items.append(_file_item(name, text, size if len(data) < size else None))
    return items


def shown_path(path: str) -> str:
    """A repository path as prompt text: one line, bounded.

    Paths come from the analysed repository and are not fenced: a name holding a line break
    could forge a section of the prompt ("## From the person who launched the run"). Such a
    name is shown quoted, with escapes (as the tools show it); a very long one is cut.
    """
    if any(ch < " " or ch == "\x7f" or unicodedata.category(ch) in _HIDDEN for ch in path):
        path = json.dumps(path)
    if len(path) > SHOWN_PATH_CHARS:
        half = SHOWN_PATH_CHARS // 2
        path = f"{path[:half]}…{path[-half:]}"
    return path


_HIDDEN = ("Cc", "Cf", "Zl", "Zp")  # control and format characters, line and paragraph breaks


def _whole(section: str, label: str, text: str) -> _Item:
    return _Item(section=section, label=label, render=lambda _n: (text, label))


def _lines_item(section: str, label: str, source: str, text: str) -> _Item:
    lines = _split_lines(text)

    def render(n: int | None) -> tuple[str, str]:
        if n is None or n >= len(lines):
            return contracts.fence(text, source=source), label
        head = "\n".join(lines[:n])
        return (contracts.fence(head, source=source, note=f"first {n} of {len(lines)} lines"),
                f"{label} (lines {n + 1}-{len(lines)})")

    return _Item(section=section, label=label, render=render, lines=len(lines))


def _file_item(path: str, text: str, cut_from: int | None = None) -> _Item:
    """A file's numbered lines; ``cut_from``: the file's size when ``text`` is only its head."""
    lines = _split_lines(text)
    width = len(str(len(lines)))
    whole = f"{len(lines)} lines" if cut_from is None else (
        f"the first {len(lines)} lines of {cut_from:,} bytes")

    def numbered(n: int) -> str:
        return "\n".join(f"{i:>{width}}| {line}" for i, line in enumerate(lines[:n], 1))

    def render(n: int | None) -> tuple[str, str]:
        if n is None or n >= len(lines):
            note = f"{whole}; the number before '|' is the line number, not file text"
            return contracts.fence(numbered(len(lines)), source=path, note=note), path
        note = (f"lines 1-{n} of {whole}; the number before '|' is the line number, not "
                "file text")
        return contracts.fence(numbered(n), source=path, note=note), f"{path} (lines {n + 1}-{len(lines)})"

    return _Item(section="Files", label=path, render=render, lines=len(lines))


def _split_lines(text: str) -> list[str]:
    """Lines as git, the read_file tool and the evidence check number them: split at LF only
    (``str.splitlines`` also splits at a form feed, a lone CR, U+2028…, shifting the numbers),
    trailing CRs dropped."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line starts no line
    return [line.rstrip("\r") for line in lines]


def _fit_lines(item: _Item, room: int) -> tuple[str, str] | None:
    """The longest head of ``item`` that fits in ``room`` tokens (binary search on lines)."""
    lo, hi, best = 1, item.lines - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        text, rest = item.render(mid)
        if estimate_tokens(text) + 1 <= room:
            best, lo = (text, rest), mid + 1
        else:
            hi = mid - 1
    return best


def _split_diff(diff: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in re.split(r"(?m)^(?=diff --git )", diff):
        m = re.match(r"diff --git a/(\S+) b/(\S+)", block)
        if m:
            out[m.group(2)] = block
    return out


def _ranked_files(state: RunState, step: PlannedStep, snapshot: Snapshot) -> list[str]:
    """The step's files, most relevant first: files in the change, then files more of the
    run's signals point at, then files named by the focus or symptom, then smaller files."""
    considered = set(state.plan.considered)
    weight: dict[str, int] = {}
    for s in state.plan.signals:
        if s.name not in _GENERIC:
            for p in s.files:
                weight[p] = weight.get(p, 0) + 1
    req = state.request
    words = {w for w in re.findall(r"[a-z0-9_]{4,}", f"{req.focus} {req.symptom}".lower())}

    def mentioned(path: str) -> int:
        low = path.lower()
        return sum(1 for w in words if w in low)

    sizes = {p: snapshot.size(p) or 0 for p in step.files}  # not read: a file may be huge
    return sorted(
        step.files,
        key=lambda p: (p not in considered, -weight.get(p, 0), -mentioned(p), sizes[p], p),
    )


_UPSTREAM_LABELS = ("output of", "finding", "verdicts of")


def _upstream_items(state: RunState, step: PlannedStep) -> list[_Item]:
    items: list[_Item] = []
    upstream = [state.steps[s] for s in step.inputs if s in state.steps]
    if step.role == "validator":
        # The drafts (synthesised conclusions) first, then the surviving findings one by one.
        for st in upstream:
            if st.step.role == "synthesis":
                items += _output_items(st, with_findings=False)
        for finding, checks in _surviving(state, step):
            items.append(_finding_item(finding, checks, section="Findings to challenge"))
        return items
    if step.role == "editor":
        for st in upstream:
            if st.step.role == "validator":
                verdict = state.verdicts.get(st.step_id)
                if verdict is not None and verdict.verdicts:
                    text = "\n".join(_compact(v) for v in verdict.verdicts)
                    source = f"verdicts of {st.step_id}"
                    items.append(_whole("Validator's rulings", source, contracts.fence(text, source=source)))
            else:
                items += _output_items(st, with_findings=False)
        return items
    for st in upstream:
        items += _output_items(st, with_findings=True)
    return items


def _output_items(st: StepState, *, with_findings: bool) -> list[_Item]:
    """An upstream step's result: its findings one by one, or its text when it has none."""
    source = f"{st.step_id} ({st.persona})"
    if st.status != "finished":
        why = st.error or f"status {st.status}"
        return [_whole("Upstream results", f"output of {st.step_id}",
                       f"{source} gave no output ({why}).")]
    if with_findings and st.findings:
        return [_finding_item(f, "", section="Upstream results") for f in st.findings]
    return [_whole("Upstream results", f"output of {st.step_id}",
                   contracts.fence(st.output, source=f"output of {source}"))]


def _compact(value: msgspec.Struct) -> str:
    """The struct as one JSON line, leaving out fields that are empty (nothing is reworded)."""
    raw = msgspec.to_builtins(value)
    return json.dumps({k: v for k, v in raw.items() if v not in ("", (), [], None, False)},
                      ensure_ascii=False)


def _finding_item(finding: Finding, checks: str, *, section: str) -> _Item:
    source = f"finding {finding.id} ({finding.persona or 'unknown persona'})"
    note = f"evidence check: {checks}" if checks else ""
    return _whole(section, f"finding {finding.id}",
                  contracts.fence(_compact(finding), source=source, note=note))


def _surviving(state: RunState, step: PlannedStep) -> Iterable[tuple[Finding, str]]:
    """The findings the validator receives verbatim (``conductor.collect``: verified, not
    deferred, after the post-collection filters, from earlier waves), each with a summary of
    its citations' checks."""
    from conductor.collect import collect

    for item in collect(state, before_wave=step.wave).findings:
        outcomes = [c.outcome for c in item.citations]
        summary = ", ".join(f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes)))
        yield item.finding, summary


def _left_out_note(labels: list[str], *, upstream: bool) -> str:
    if not labels:
        return ""
    names = list(listed(labels)[:LISTED_LEFT_OUT])
    while len(names) > 1 and sum(map(len, names)) > LISTED_CHARS:
        names.pop()  # long names (of files, say) would otherwise fill the room they were cut for
    more = len(labels) - len(names)
    shown = "; ".join(names + ([f"and {more} more"] if more > 0 else []))
    how = "Read files with read_file, grep or glob when you need them."
    if upstream:
        how += " Upstream results left out cannot be read with the tools; say which you did not see."
    return f"## Not included for space\n\n{shown}.\n{how}"
