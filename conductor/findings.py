"""What a step must answer, and a tolerant reading of what it actually answered.

``output_schema`` is the JSON Schema a step's final answer is constrained to. Every array has a
``maxItems`` and every string a ``maxLength``: a small model under constrained decoding repeats
an unbounded array until it runs out of tokens, and the bounds are what make it close the
object. No string is bounded above ``MAX_TEXT``: llama.cpp (the embedded engine, and llama.cpp
servers behind the ``openai`` engine) compiles a bounded string into one nested rule per
character and refuses a grammar past 1,000 of them, so a longer bound would fail every step
that gets it. The shapes are msgspec Structs below; the schema is generated from them, then the
persona's severity vocabulary and id prefix are written in.

``parse_output`` reads free-form model text and never raises: a JSON object, JSON in a fenced
block, JSON followed by chatter, JSON cut off mid-way (the complete items before the cut are
kept), and, failing all of those, Markdown bullets. Each item is coerced field by field or
dropped; what went wrong is said in ``ParsedOutput.error``, never hidden.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from events.types import Evidence, Finding, Verdict
from personas.model import Persona

__all__ = [
    "ParsedOutput",
    "output_schema",
    "parse_output",
    "persona_info",
]

Role = Literal["discovery", "synthesis", "validator", "editor"]

# Bounds given to the model (see the module docstring for why they exist at all).
MAX_FINDINGS = 8
MAX_EVIDENCE = 3
MAX_VERDICTS = 40
MAX_COUNTER = 3
MAX_LINE = 1_000_000
# The longest string bound llama.cpp's grammar compiler takes (1,000 compiles, 1,001 does not:
# measured with llama-cpp-python 0.3.36; see the module docstring).
MAX_TEXT = 1000


def _text(n: int) -> Any:
    return Annotated[str, msgspec.Meta(max_length=n)]


class _EvidenceOut(msgspec.Struct, forbid_unknown_fields=True):
    """A citation: the quote is copied character for character from these lines."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    line_start: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE)]
    line_end: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE)]
    quote: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]


class _FindingOut(msgspec.Struct, forbid_unknown_fields=True):
    """One finding about the code, with the citations that show it."""

    id: _text(16)
    severity: _text(40)
    category: _text(60)
    title: _text(160)
    claim: _text(1000)
    evidence: Annotated[tuple[_EvidenceOut, ...], msgspec.Meta(max_length=MAX_EVIDENCE)]
    recommendation: _text(500)


class _DeferrableFindingOut(_FindingOut, forbid_unknown_fields=True):
    """One finding; an item with no evidence of need today is deferred with a reopen trigger."""

    deferred: bool = False
    why_deferred: _text(300) = ""
    reopen_when: _text(300) = ""


class _FindingsAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """A step's answer: clear lines and overview in the summary, then the findings."""

    summary: _text(1000)
    findings: Annotated[tuple[_FindingOut, ...], msgspec.Meta(max_length=MAX_FINDINGS)]


class _DeferrableFindingsAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """A step's answer: clear lines and overview in the summary, then the findings."""

    summary: _text(1000)
    findings: Annotated[
        tuple[_DeferrableFindingOut, ...], msgspec.Meta(max_length=MAX_FINDINGS)
    ]


class _VerdictOut(msgspec.Struct, forbid_unknown_fields=True):
    """The judgement on one finding; a refutation carries counter-evidence."""

    finding_id: _text(24)
    result: Literal["confirmed", "partially_refuted", "refuted"]
    reason: _text(800)
    counter_evidence: Annotated[tuple[_EvidenceOut, ...], msgspec.Meta(max_length=MAX_COUNTER)]


class _VerdictsAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """The validator's answer: one verdict per finding it was given, no findings of its own."""

    summary: _text(600)
    verdicts: Annotated[tuple[_VerdictOut, ...], msgspec.Meta(max_length=MAX_VERDICTS)]


class _EditorAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """The rewritten prose, a note on what was left alone, and one finding per criterion."""

    text: _text(MAX_TEXT)  # as long as the synthesis summary it rewrites
    summary: _text(600)
    findings: Annotated[tuple[_FindingOut, ...], msgspec.Meta(max_length=MAX_FINDINGS)]


def output_schema(role: str, persona: Persona | None) -> dict:
    """The JSON Schema for a step's final answer (a fresh dict each call).

    ``persona`` narrows ``severity`` to its vocabulary and ``id`` to its prefix; without one
    (an unknown persona) both stay plain bounded strings.

    >>> s = output_schema("validator", None)
    >>> s["properties"]["verdicts"]["maxItems"] > 0
    True
    """
    if role == "validator":
        return _schema(_VerdictsAnswer)
    if role == "editor":
        schema = _schema(_EditorAnswer)
    elif persona is not None and persona.yagni_rule:
        schema = _schema(_DeferrableFindingsAnswer)
    else:
        schema = _schema(_FindingsAnswer)
    if persona is not None:
        item = schema["properties"]["findings"]["items"]["properties"]
        item["severity"] = {"type": "string", "enum": list(persona.severities)}
        item["id"] = {
            "type": "string",
            "pattern": f"^{re.escape(persona.id_prefix)}-[0-9]{{3}}$",
            "maxLength": len(persona.id_prefix) + 4,
        }
    return schema


@functools.cache
def _schema_json(shape: type) -> str:
    raw = msgspec.json.schema(shape)
    return json.dumps(_inline(raw, raw.get("$defs", {})))


def _schema(shape: type) -> dict:
    # Cached as text, returned as a fresh dict: callers may mutate what they get.
    return json.loads(_schema_json(shape))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every ``$ref`` by its definition: some grammar converters only follow inline
    schemas, and the shapes here are small and not recursive."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        out = {
            k: _inline(v, defs)
            for k, v in node.items()
            if k != "$defs" and not (k == "title" and isinstance(v, str))  # keep a property named title
        }
        if "enum" in out and "type" not in out:
            out["type"] = "string"
        return out
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


# --- reading what the model said ------------------------------------------------------------


class ParsedOutput(msgspec.Struct, frozen=True, kw_only=True):
    """What could be read from one step's final answer; ``error`` is empty on a clean read."""

    findings: tuple[Finding, ...] = ()
    summary: str = ""
    text: str = ""
    verdicts: tuple[Verdict, ...] = ()
    error: str = ""
    raw: str = ""  # the output as given, kept whenever the read was not clean


class PersonaInfo(msgspec.Struct, frozen=True):
    name: str
    prefix: str
    severities: tuple[str, ...]
    guessed: bool = False  # the prefix is a guess: the persona is not a builtin


def persona_info(
    persona: Persona | PersonaInfo | str, personas: Mapping[str, PersonaInfo] | None = None
) -> PersonaInfo:
    """Name, id prefix and severity vocabulary of a persona given as a struct or a name.

    A name is looked up in ``personas`` (the run's, as its plan recorded them), then among the
    builtin personas; an unknown name gets a prefix made of its initials (``my-checker`` →
    ``MC``) and no fixed vocabulary.
    """
    if isinstance(persona, PersonaInfo):
        return persona
    if isinstance(persona, Persona):
        return PersonaInfo(persona.name, persona.id_prefix, tuple(persona.severities))
    name = str(persona)
    if personas and name in personas:
        return personas[name]
    known = _builtin_personas().get(name)
    if known is not None:
        return PersonaInfo(name, known.id_prefix, tuple(known.severities))
    initials = "".join(part[:1] for part in re.split(r"[^A-Za-z]+", name) if part).upper()
    return PersonaInfo(name, initials[:6] or "F", (), guessed=True)


@functools.cache
def _builtin_personas() -> dict[str, Persona]:
    try:
        from personas import load_personas

        return load_personas()
    except Exception:  # a broken persona file must not stop a step's answer from being read
        return {}


# Reasoning blocks the model writes before its answer (an unclosed one runs to the end). Only
# leading ones: a '<think>' further on may sit inside a JSON string, as a claim or a quote.
_THINK = re.compile(r"\s*<think>.*?(?:</think>|\Z)", re.S | re.I)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\r?\n(.*?)```", re.S)
_MAX_STARTS = 64  # positions tried for a JSON value; bounds the work on hostile text
_FINDING_KEYS = ("findings", "issues", "results", "items")
_VERDICT_KEYS = ("verdicts", "results", "validations", "judgements", "judgments")
_TEXT_KEYS = ("text", "draft", "rewritten", "content", "document")


def parse_output(
    text: str, *, persona: Persona | PersonaInfo | str, step_id: str, role: str
) -> ParsedOutput:
    """Read a step's final answer; never raises.

    >>> p = parse_output('{"summary": "ok", "findings": [{"id": "x7", "severity": "High",'
    ...                  ' "title": "t", "evidence": []}]}', persona="structural-analyst",
    ...                  step_id="s1", role="discovery")
    >>> p.findings[0].id, p.findings[0].persona, p.error
    ('S-007', 'structural-analyst', '')
    """
    raw = text if isinstance(text, str) else str(text)
    try:
        info = persona_info(persona)
    except Exception:
        info = PersonaInfo(str(persona), "F", (), guessed=True)
    try:
        return _parse(raw, info, role)
    except Exception as exc:  # last line of defence: a reader that crashes loses the step
        return ParsedOutput(error=f"output could not be read ({type(exc).__name__})", raw=raw)


def _parse(raw: str, info: PersonaInfo, role: str) -> ParsedOutput:
    at = 0
    while m := _THINK.match(raw, at):
        at = m.end()
    cleaned = raw[at:].strip()
    if not cleaned:
        return ParsedOutput(error="empty output", raw=raw)
    answer, other = _first_json(cleaned)
    if answer is not None:
        return _from_object(answer, info, role, raw, [])
    salvaged = _salvage(cleaned, role)
    if salvaged is not None:
        return _from_object(salvaged, info, role, raw, ["output was cut off; kept the complete items before the cut"])
    if other is not None:
        if isinstance(other, list):
            other = {("verdicts" if role == "validator" else "findings"): other}
        return _from_object(other, info, role, raw, [])
    if role == "editor":
        return ParsedOutput(text=cleaned, error="not JSON: kept the whole output as the text", raw=raw)
    if role != "validator":
        drafts = _bullets(cleaned, info)
        if drafts:
            problems = [f"not JSON: read {len(drafts)} finding(s) from Markdown bullets"]
            findings = _finish(drafts, info, problems)
            return ParsedOutput(findings=findings, error="; ".join(problems), raw=raw)
    return ParsedOutput(error="no JSON object and no Markdown findings in the output", raw=raw)


def _from_object(
    value: dict[str, Any], info: PersonaInfo, role: str, raw: str, problems: list[str]
) -> ParsedOutput:
    summary = _as_str(value.get("summary")) or ""
    if role == "validator":
        items = _pick(value, _VERDICT_KEYS)
        verdicts = _verdicts(items, problems)
        if not verdicts and items is None and "findings" in value:
            problems.append("the validator answered with findings, not verdicts; ignored")
        return _result(summary=summary, verdicts=verdicts, problems=problems, raw=raw)
    items = _pick(value, _FINDING_KEYS)
    if items is None and ("title" in value or "claim" in value) and "severity" in value:
        items = [value]  # a single finding given on its own
        summary = ""
    text = ""
    if role == "editor":
        text = next((s for k in _TEXT_KEYS if (s := _as_str(value.get(k)))), "")
        if not text:
            problems.append("no rewritten text in the answer")
    drafts: list[dict[str, Any]] = []
    for n, item in enumerate(items or (), 1):
        draft = _finding_fields(item, info)
        if isinstance(draft, str):
            problems.append(f"finding {n} dropped: {draft}")
        else:
            drafts.append(draft)
    return _result(
        summary=summary,
        text=text,
        findings=_finish(drafts, info, problems),
        problems=problems,
        raw=raw,
    )


def _result(*, problems: list[str], raw: str, **fields: Any) -> ParsedOutput:
    error = "; ".join(problems)
    return ParsedOutput(**fields, error=error, raw=raw if error else "")


def _pick(value: dict[str, Any], keys: tuple[str, ...]) -> list[Any] | None:
    for key in keys:
        if key in value:
            got = value[key]
            if isinstance(got, list):
                return got
            if isinstance(got, dict):
                return [got]
            return []
    return None


# --- finding JSON: locate, salvage ------------------------------------------------------------


_ANSWER_KEYS = frozenset(("summary", *_FINDING_KEYS, *_VERDICT_KEYS, *_TEXT_KEYS))


def _first_json(text: str) -> tuple[dict[str, Any] | None, dict[str, Any] | list[Any] | None]:
    """The first complete JSON answer object in the text, ignoring what follows it.

    Returns ``(answer, other)``: ``answer`` is an object carrying an answer key (summary,
    findings, verdicts, text…); ``other`` is the first object or list of objects found
    otherwise (a lone finding, a bare list), used only when no answer or cut-off answer is
    found. An object nested inside a cut-off answer is never taken for the answer.
    """
    decoder = json.JSONDecoder()
    other: dict[str, Any] | list[Any] | None = None
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        tried = 0
        for match in re.finditer(r"[{\[]", candidate):
            if tried >= _MAX_STARTS:
                break
            tried += 1
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except (ValueError, RecursionError):
                continue
            if isinstance(value, dict):
                if _ANSWER_KEYS.intersection(value):
                    return value, None
                if other is None:
                    other = value
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                if other is None:
                    other = value
    return None, other


def _salvage(text: str, role: str) -> dict[str, Any] | None:
    """From JSON cut off mid-way, the complete items before the cut (and the summary)."""
    keys = _VERDICT_KEYS if role == "validator" else _FINDING_KEYS
    decoder = json.JSONDecoder()
    out: dict[str, Any] = {}
    summary = re.search(r'"summary"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    if summary:  # closed or cut off inside the string
        out["summary"] = _unescape_partial(summary.group(1))
    if role == "editor":
        for key in _TEXT_KEYS:
            m = re.search(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)', text)
            if m:
                out["text"] = _unescape_partial(m.group(1))
                break
    for key in keys:
        m = re.search(rf'"{key}"\s*:\s*\[', text)
        if not m:
            continue
        items, pos = [], m.end()
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text) or text[pos] != "{":
                break
            try:
                item, pos = decoder.raw_decode(text, pos)
            except (ValueError, RecursionError):
                break
            items.append(item)
        out[key] = items
        break
    return out or None


def _unescape_partial(body: str) -> str:
    # A string cut off mid-escape: drop the dangling backslash run before decoding.
    body = re.sub(r"\\u[0-9a-fA-F]{0,3}$|\\$", "", body)
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return body


# --- one finding, coerced field by field -----------------------------------------------------


def _finding_fields(item: Any, info: PersonaInfo) -> dict[str, Any] | str:
    if not isinstance(item, dict):
        return f"not an object ({type(item).__name__})"
    title = _one_line(_as_str(item.get("title")) or _as_str(item.get("name")) or "")
    claim = _as_str(item.get("claim")) or _as_str(item.get("description")) or ""
    if not title and not claim:
        return "no title or claim"
    if not title:
        title = _one_line(re.split(r"(?<=[.!?])\s", claim.strip(), maxsplit=1)[0])[:160]
    evidence = _evidence_list(item.get("evidence"))
    if not evidence:
        # A finding that put its location at the top level.
        single = _citation({k: v for k, v in item.items() if k != "evidence"})
        evidence = (single,) if single else ()
    deferred = _as_bool(item.get("deferred"))
    severity = _severity(item.get("severity") or item.get("priority") or item.get("level"), info)
    category = _as_str(item.get("category")) or ""
    if "yagni" in severity.lower() or "yagni" in category.lower():
        deferred = True
    return {
        "raw_id": _as_str(item.get("id")) or "",
        "severity": severity,
        "category": _one_line(category),
        "title": title,
        "claim": claim.strip(),
        "evidence": evidence,
        "recommendation": (_as_str(item.get("recommendation")) or _as_str(item.get("fix")) or "").strip(),
        "deferred": deferred,
        "why_deferred": (_as_str(item.get("why_deferred")) or "").strip(),
        "reopen_when": (_as_str(item.get("reopen_when")) or "").strip(),
    }


def _finish(drafts: list[dict[str, Any]], info: PersonaInfo, problems: list[str]) -> tuple[Finding, ...]:
    """Give every finding an id with the persona's prefix, unique within the answer.

    Ids the model numbered uniquely keep their number; the rest (duplicates, no number) get
    the next numbers after the highest one used, in answer order.
    """
    if info.guessed:
        prefixes = {m.group(1) for d in drafts if (m := re.match(r"\s*([A-Z]{1,6})-?\d", d["raw_id"]))}
        if len(prefixes) == 1:
            info = msgspec.structs.replace(info, prefix=prefixes.pop())
    wanted = [_number(d["raw_id"]) for d in drafts]
    seen: dict[int, int] = {}
    for n in wanted:
        if n is not None:
            seen[n] = seen.get(n, 0) + 1
    used = {n for n, c in seen.items() if c == 1}
    taken: set[int] = set()
    numbers: list[int | None] = []
    for n in wanted:
        if n is not None and n in used and n not in taken:
            taken.add(n)
            numbers.append(n)
        else:
            numbers.append(None)
    top = max(taken, default=0)
    renamed = 0
    out = []
    for draft, n in zip(drafts, numbers):
        if n is None:
            top += 1
            n = top
            renamed += bool(draft["raw_id"])
        draft = {k: v for k, v in draft.items() if k != "raw_id"}
        out.append(Finding(id=f"{info.prefix}-{n:03d}", persona=info.name, **draft))
    if renamed:
        problems.append(f"{renamed} duplicate or unnumbered id(s) renumbered")
    return tuple(out)


def _number(raw_id: str) -> int | None:
    m = re.search(r"(\d{1,6})\D*$", raw_id)
    if not m:
        return None
    n = int(m.group(1))
    return n if n >= 1 else None


_GENERIC_RANK = {
    "critical": 0, "blocker": 0, "blocking": 0, "severe": 0,
    "high": 1, "major": 1, "error": 1, "warning": 1, "warn": 1,
    "medium": 2, "moderate": 2, "minor": 2,
    "low": 3, "info": 3, "suggestion": 3, "nit": 3, "trivial": 3, "polish": 3,
}


def _severity(value: Any, info: PersonaInfo) -> str:
    """The persona's own word for a severity the model gave.

    Matched case- and separator-insensitively; a generic word (``critical``, ``warning``,
    ``minor``…) maps by rank onto the vocabulary; anything else becomes the least severe
    level, since an uncertain severity is read low.
    """
    given = _as_str(value) or ""
    key = _norm_word(given)
    vocab = info.severities
    if not vocab:
        return _one_line(given)[:40] or "unrated"
    for word in vocab:
        if _norm_word(word) == key:
            return word
    ladder = [w for w in vocab if "yagni" not in w.lower()] or list(vocab)
    rank = _GENERIC_RANK.get(key)
    if rank is not None:
        return ladder[min(round(rank * (len(ladder) - 1) / 3), len(ladder) - 1)]
    return ladder[-1]


def _norm_word(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s).strip().lower()


def _evidence_list(value: Any) -> tuple[Evidence, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        cited = _citation(item)
        if cited is not None:
            out.append(cited)
    return tuple(out)


# A path starts where a run of path characters starts (the lookbehind): tried from every
# character of a long run, the pattern backtracked quadratically; the leftmost match is the same.
_CITE = re.compile(
    r"`?(?<![A-Za-z0-9_.\-/])([A-Za-z0-9_.\-/]+\.[A-Za-z0-9_]+|[A-Za-z0-9_.\-/]+/[A-Za-z0-9_.\-]+)"
    r":(\d+)(?:\s*[-–]\s*(\d+))?`?"
)


def _citation(item: Any) -> Evidence | None:
    if isinstance(item, str):
        m = _CITE.search(item)
        if not m:
            return None
        start = int(m.group(2))
        end = int(m.group(3) or start)
        quote = item[m.end():].strip(" :-–\t")
        return _make_evidence(m.group(1), start, end, quote)
    if not isinstance(item, dict):
        return None
    path = _as_str(next((item[k] for k in ("path", "file", "filename", "location") if k in item), None))
    if not path:
        return None
    start = _as_int(next((item[k] for k in ("line_start", "start", "start_line", "line") if k in item), None))
    end = _as_int(next((item[k] for k in ("line_end", "end", "end_line") if k in item), None))
    lines = item.get("lines")
    if start is None and lines is not None:
        start, end = _line_range(lines)
    if start is None:
        m = _CITE.search(path)  # "path:12-14" given as the path
        if m:
            path, start, end = m.group(1), int(m.group(2)), int(m.group(3) or m.group(2))
    if start is None:
        return None
    # A quote given as a list is a list of lines: joined by "; " it could match nothing.
    quote = _as_str(next((item[k] for k in ("quote", "code", "snippet", "text") if k in item), ""), "\n") or ""
    return _make_evidence(path, start, end if end is not None else start, quote)


def _line_range(lines: Any) -> tuple[int | None, int | None]:
    if isinstance(lines, list) and lines:
        first, last = _as_int(lines[0]), _as_int(lines[-1])
        return first, last
    text = _as_str(lines) or ""
    m = re.match(r"\s*L?(\d+)(?:\s*[-–:]\s*L?(\d+))?", text)
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _make_evidence(path: str, start: int, end: int, quote: str) -> Evidence | None:
    path = path.strip().strip("`'\"").strip()
    while path.startswith("./"):
        path = path[2:]
    if not path or start < 1 or end < 1 or start > MAX_LINE or end > MAX_LINE:
        return None
    if end < start:
        start, end = end, start
    return Evidence(path=path, line_start=start, line_end=end, quote=quote)


def _verdicts(items: list[Any] | None, problems: list[str]) -> tuple[Verdict, ...]:
    out = []
    for n, item in enumerate(items or (), 1):
        if not isinstance(item, dict):
            problems.append(f"verdict {n} dropped: not an object")
            continue
        fid = _one_line(_as_str(item.get("finding_id")) or _as_str(item.get("id")) or "")
        result = _result_word(_as_str(item.get("result")) or _as_str(item.get("verdict")) or "")
        if not fid or result is None:
            problems.append(f"verdict {n} dropped: {'no finding id' if not fid else 'unknown result'}")
            continue
        out.append(
            Verdict(
                finding_id=fid,
                result=result,
                reason=(_as_str(item.get("reason")) or "").strip(),
                counter_evidence=_evidence_list(item.get("counter_evidence") or item.get("evidence")),
            )
        )
    return tuple(out)


def _result_word(value: str) -> Literal["confirmed", "partially_refuted", "refuted"] | None:
    key = _norm_word(value)
    if key in ("confirmed", "confirm", "upheld", "valid"):
        return "confirmed"
    if key in ("partially refuted", "partial", "partly refuted", "partially confirmed"):
        return "partially_refuted"
    if key in ("refuted", "refute", "rejected", "invalid", "false positive"):
        return "refuted"
    return None


# --- Markdown bullets, the last resort -------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+(.*\S)\s*$")
_BULLET_ID = re.compile(r"\b([A-Z]{1,6})-?(\d{1,4})\b")
_CODE = re.compile(r"`([^`]+)`")


def _bullets(text: str, info: PersonaInfo) -> list[dict[str, Any]]:
    """Findings from a Markdown list: a bullet counts when it names a severity or a citation."""
    vocab = list(info.severities) or ["Critical", "High", "Medium", "Low", "Warning", "Suggestion"]
    words = sorted(vocab, key=len, reverse=True)
    sev_re = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.I)
    out: list[dict[str, Any]] = []
    for line in text.splitlines()[:2000]:
        m = _BULLET.match(line)
        if not m:
            continue
        body = m.group(1)
        cite = _CITE.search(body)
        sev = sev_re.search(body)
        if cite is None and sev is None:
            continue
        evidence: tuple[Evidence, ...] = ()
        if cite is not None:
            quotes = [q for q in _CODE.findall(body) if q.strip() != cite.group(0).strip("`")]
            ev = _make_evidence(
                cite.group(1), int(cite.group(2)), int(cite.group(3) or cite.group(2)),
                quotes[0] if quotes else "",
            )
            evidence = (ev,) if ev else ()
        ident = _BULLET_ID.search(body)
        rest = body
        for piece in (cite.group(0) if cite else None, ident.group(0) if ident else None):
            if piece:
                rest = rest.replace(piece, " ")
        if sev is not None:
            rest = re.sub(r"[\[(]?\b" + re.escape(sev.group(1)) + r"\b[\])]?:?", " ", rest, count=1, flags=re.I)
        rest = re.sub(r"[*_]{1,3}|\(\s*\)|\[\s*\]", " ", rest)
        rest = re.sub(r"\s+", " ", rest).strip(" :-–—|")
        parts = re.split(r"\s[—–-]\s|:\s", rest, maxsplit=1)
        title = parts[0].strip() or rest[:160]
        claim = parts[1].strip() if len(parts) > 1 else ""
        if not title:
            continue
        out.append(
            {
                "raw_id": ident.group(0) if ident else "",
                "severity": _severity(sev.group(1) if sev else "", info),
                "category": "",
                "title": title[:160],
                "claim": claim,
                "evidence": evidence,
                "recommendation": "",
                "deferred": False,
                "why_deferred": "",
                "reopen_when": "",
            }
        )
    return out


# --- coercions -----------------------------------------------------------------------------


def _as_str(value: Any, joiner: str = "; ") -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return joiner.join(str(v) for v in value) or None
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_LINE:
        return int(value)
    if isinstance(value, str):
        m = re.match(r"\s*L?(\d{1,7})\b", value)
        return int(m.group(1)) if m else None
    return None


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "deferred")
    return False


def _one_line(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()
