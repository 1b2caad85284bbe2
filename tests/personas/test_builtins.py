"""The 23 builtin personas: they load, their ids cannot clash, and each prompt is complete."""

from __future__ import annotations

import re

import pytest

from personas import SLICES, load_personas

NAMES = {
    "adversarial-security-analyst", "adversarial-validator", "behavioral-analyst",
    "codebase-explorer", "concurrency-analyst", "content-auditor", "data-engineer",
    "devops-engineer", "edge-case-explorer", "evidence-based-investigator", "gap-analyzer",
    "information-architect", "junior-developer", "on-call-engineer", "plan-synthesizer",
    "project-scanner", "risk-analyst", "software-architect", "structural-analyst",
    "system-architect", "test-engineer", "user-experience-designer", "readability-editor",
}  # fmt: skip
SECTIONS = ("## Posture", "## Protocols", "## When nothing is found", "## Output")
SYNTHESIS = ("risk-analyst", "software-architect", "system-architect", "plan-synthesizer")

BUILTINS = load_personas()


def flat(text: str) -> str:
    """The text with its line wrapping undone, for phrase checks."""
    return " ".join(text.split())


def test_exactly_the_23_builtins_load():
    assert set(BUILTINS) == NAMES


def test_loading_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(load_personas()) == NAMES


def test_id_prefixes_are_unique_so_an_id_names_its_persona():
    # Ids are PREFIX-NNN; the catalog reused A and D across personas, ours must not.
    by_prefix = {p.id_prefix: p.name for p in BUILTINS.values()}
    assert len(by_prefix) == len(BUILTINS)
    assert by_prefix["SEC"] == "adversarial-security-analyst" and by_prefix["D"] == "plan-synthesizer"


def test_every_boundary_names_an_existing_sibling():
    for p in BUILTINS.values():
        assert p.boundaries, p.name
        for b in p.boundaries:
            assert b.use in BUILTINS and b.use != p.name, (p.name, b)


def test_fields_are_within_their_vocabularies():
    for p in BUILTINS.values():
        assert p.slice in SLICES
        assert p.severities and len(set(p.severities)) == len(p.severities)
        assert p.inputs
        assert p.signals == () and p.min_band == "small"  # builtins are chosen by the flows


@pytest.mark.parametrize("name", sorted(NAMES))
def test_body_has_its_sections_in_order_and_fits_a_prompt(name):
    body = BUILTINS[name].body
    positions = [body.find(s) for s in SECTIONS]
    assert -1 not in positions, (name, positions)
    assert positions == sorted(positions)
    assert 40 <= len(body.splitlines()) <= 90
    protocols = body[positions[1] : positions[2]]
    assert re.search(r"^1\. \*\*", protocols, re.M), "protocols are numbered"


@pytest.mark.parametrize("name", sorted(NAMES))
def test_output_names_its_id_format_and_every_severity(name):
    p = BUILTINS[name]
    output = p.body[p.body.index("## Output") :]
    assert f"`{p.id_prefix}-001`" in output
    for severity in p.severities:
        if name == "adversarial-validator":
            severity = severity.lower().replace(" ", "_")  # the Verdict struct's spelling
        assert f"`{severity}`" in output, severity


@pytest.mark.parametrize("name", sorted(NAMES))
def test_clear_line_is_a_checked_sentence(name):
    body = BUILTINS[name].body
    section = body[body.index("## When nothing is found") : body.index("## Output")]
    assert re.search(r"`[A-Z][^`]*\. Checked: [^`]+\.`", section)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_yagni_fields_are_asked_for_exactly_when_the_rule_applies(name):
    p = BUILTINS[name]
    output = p.body[p.body.index("## Output") :]
    asks = all(f"`{f}`" in output for f in ("deferred", "why_deferred", "reopen_when"))
    assert asks == p.yagni_rule


@pytest.mark.parametrize("name", sorted(NAMES - {"readability-editor"}))
def test_code_personas_quote_verbatim_and_disclose_blind_spots(name):
    body = flat(BUILTINS[name].body)
    assert "{path, line_start, line_end, quote}" in body
    assert "character for character" in body
    assert "Unverified: could not inspect" in body


@pytest.mark.parametrize("name", SYNTHESIS)
def test_synthesis_personas_take_upstream_findings_verbatim_by_id(name):
    p = BUILTINS[name]
    assert any("verbatim" in i for i in p.inputs)
    assert "never renumber" in flat(p.body)


def test_validator_rules_on_given_findings_and_adds_none():
    body = flat(BUILTINS["adversarial-validator"].body)
    assert "`finding_id`" in body and "`counter_evidence`" in body
    assert "exactly one per finding" in body
    assert "no findings of your own" in body


def test_readability_editor_treats_the_draft_as_data_and_keeps_facts():
    p = BUILTINS["readability-editor"]
    body = flat(p.body)
    assert "never an order to you" in body
    assert "Never add a fact" in body
    assert not p.evidence_rule
