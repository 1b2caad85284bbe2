"""``parse_output`` never raises, whatever the model (or a hostile repository quoted by it) says.

Whatever it reads, what comes back is well-formed: ids carry the persona's prefix and are
unique, every finding names its persona, citations have sane line ranges.
"""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conductor.findings import ParsedOutput, parse_output

PERSONAS = ["structural-analyst", "adversarial-security-analyst", "data-engineer", "someone-new"]
ROLES = ["discovery", "synthesis", "validator", "editor"]
PREFIX = {"structural-analyst": "S", "adversarial-security-analyst": "SEC", "data-engineer": "DATA"}

VALID = json.dumps({
    "summary": "Two findings.",
    "findings": [
        {"id": "S-001", "severity": "High", "category": "coupling", "title": "A",
         "claim": "c", "evidence": [{"path": "a.py", "line_start": 1, "line_end": 2, "quote": "x"}],
         "recommendation": "r"},
        {"id": "S-002", "severity": "Low", "category": "dup", "title": "B", "claim": "d",
         "evidence": [], "recommendation": ""},
    ],
    "verdicts": [{"finding_id": "S-001", "result": "refuted", "reason": "r",
                  "counter_evidence": [{"path": "a.py", "line_start": 3, "line_end": 3, "quote": "y"}]}],
    "text": "draft",
})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "severity", "title", "claim", "evidence", "path", "line_start",
                         "line_end", "quote", "findings", "verdicts", "summary", "text", "result",
                         "finding_id", "deferred", "lines"]) | st.text(max_size=8),
        children,
        max_size=6,
    ),
    max_leaves=30,
)


def _check(got: ParsedOutput, persona: str) -> None:
    assert isinstance(got, ParsedOutput)
    ids = [f.id for f in got.findings]
    assert len(ids) == len(set(ids))
    # A user persona's prefix may come from its own ids; within one answer it is one prefix.
    prefix = PREFIX[persona] if persona in PREFIX else "[A-Z]{1,6}"
    assert len({f.id.rsplit("-", 1)[0] for f in got.findings}) <= 1
    for f in got.findings:
        assert re.fullmatch(rf"{prefix}-\d{{3,}}", f.id), f.id
        assert f.persona == persona
        assert f.title
        for ev in f.evidence:
            assert 1 <= ev.line_start <= ev.line_end
            assert ev.path


common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(st.text(max_size=400), st.sampled_from(PERSONAS), st.sampled_from(ROLES))
def test_arbitrary_text(text, persona, role):
    _check(parse_output(text, persona=persona, step_id="s", role=role), persona)


@common
@given(st.binary(max_size=400), st.sampled_from(PERSONAS), st.sampled_from(ROLES))
def test_arbitrary_bytes_decoded(data, persona, role):
    text = data.decode("utf-8", errors="replace")
    _check(parse_output(text, persona=persona, step_id="s", role=role), persona)


@common
@given(
    st.integers(min_value=0, max_value=len(VALID)),
    st.integers(min_value=0, max_value=len(VALID)),
    st.text(max_size=12),
    st.sampled_from(PERSONAS),
    st.sampled_from(ROLES),
)
def test_mutated_valid_json(cut, at, insert, persona, role):
    for text in (VALID[:cut], VALID[:at] + insert + VALID[at:], VALID[:at] + VALID[cut:]):
        _check(parse_output(text, persona=persona, step_id="s", role=role), persona)


@common
@given(json_values, st.sampled_from(PERSONAS), st.sampled_from(ROLES), st.booleans())
def test_arbitrary_json_values(value, persona, role, fenced):
    text = json.dumps(value)
    if fenced:
        text = f"Answer:\n```json\n{text}\n```\n"
    _check(parse_output(text, persona=persona, step_id="s", role=role), persona)


def test_deeply_nested_json_does_not_crash():
    text = "[" * 100_000 + "]" * 100_000
    got = parse_output(text, persona="structural-analyst", step_id="s", role="discovery")
    assert isinstance(got, ParsedOutput) and got.findings == ()


def test_many_braces_are_bounded_work():
    # Thousands of candidate starts: the reader tries a bounded number, then gives up labelled.
    text = "{ " * 50_000
    got = parse_output(text, persona="structural-analyst", step_id="s", role="discovery")
    assert got.findings == () and got.error
