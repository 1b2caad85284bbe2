"""The report: one model, three renderings, byte-identical from the same events.

Golden files: ``tests/conductor/golden/report.{md,json,html}`` are the renderings of the fixed
synthetic run in ``golden/synthetic.py``. Any difference fails the test. After an intended
change, regenerate them and review the diff before committing::

    UPDATE_GOLDEN=1 python -m pytest tests/conductor/test_report.py -q
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path

import msgspec
import pytest
from golden.synthetic import SNAPSHOT, drive, frozen_flows, make_run

from conductor.report import (
    INCONCLUSIVE,
    Report,
    build_report,
    render_html,
    render_json,
    render_markdown,
    report_digest,
    summary_counts,
)
from conductor.prompts import BRIEF, CUT
from conductor.snapshot import MemorySnapshot
from conductor.state import apply, fold
from events.types import (
    Evidence,
    Finding,
    PlannedStep,
    StepFailed,
    StepFinished,
    StepQueued,
    StepStarted,
)

GOLDEN = Path(__file__).parent / "golden"
RENDERERS = {"md": render_markdown, "json": render_json, "html": render_html}


@pytest.fixture(scope="module")
def golden_run():
    with frozen_flows():
        return drive()


@pytest.fixture
def frozen():
    with frozen_flows():
        yield


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
def test_golden_report(golden_run, frozen, fmt):
    _, state = golden_run
    got = RENDERERS[fmt](build_report(state))
    path = GOLDEN / f"report.{fmt}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(got, encoding="utf-8")
    want = path.read_text(encoding="utf-8")
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "rendered", n=2))
        pytest.fail(f"report.{fmt} differs from the golden file (UPDATE_GOLDEN=1 to accept):\n{diff[:6000]}")


def test_the_run_played_to_its_end_and_recorded_the_report(golden_run, frozen):
    events, state = golden_run
    assert state.status == "finished"
    assert state.report is not None
    report = build_report(state)
    assert state.report.digest == report_digest(render_markdown(report))
    assert (state.report.counts, state.report.recommendation) == summary_counts(report)


def test_same_events_give_the_same_bytes_before_and_after_the_run_finished(golden_run, frozen):
    events, state = golden_run
    at_render = fold([e for e in events if e.__struct_config__.tag not in ("report_rendered", "run_finished")])
    for fmt, render in RENDERERS.items():
        before = render(build_report(at_render))
        after = render(build_report(fold(events)))
        assert before == after, fmt
        # The snapshot is not read: with or without it, the same bytes.
        assert render(build_report(fold(events), SNAPSHOT)) == after, fmt


def test_the_report_content_a_reader_relies_on(golden_run, frozen):
    _, state = golden_run
    r = build_report(state)
    assert r.recommendation == "Do not merge: fix the critical findings first."
    (sec,) = [f for f in r.findings if f.id == "SEC-001"]
    assert sec.sources == ("SEC-001", "JD-001")
    # Every citation shown is verified, a moved one at its real lines.
    assert [(c.path, c.line_start, c.line_end, c.outcome) for c in sec.citations] == [
        ("app/handlers.py", 5, 6, "verified"), ("app/db.py", 7, 7, "moved")]
    assert all(c.outcome in ("verified", "moved") for f in r.findings for c in f.citations)
    assert {u.id for u in r.unverified} == {"JD-005", "SEC-002"}
    assert [(d.id, d.reopen_when) for d in r.deferred] == [
        ("JD-004", "A second database is committed to on the roadmap with a date.")]
    assert r.validator.dropped == ("JD-003",)
    assert r.validator.refutations_not_applied == ("JD-006",)
    assert (r.validator.confirmed, r.validator.partially_refuted, r.validator.refuted) == (1, 1, 2)
    (failed,) = [a for a in r.agents if a.status == "failed"]
    assert failed.persona == "test-engineer" and "context" in failed.error and failed.attempts == 2
    md = render_markdown(r)
    for fid in ("SEC-001", "JD-002", "JD-006"):
        assert md.count(f"### {fid} ") == 1, fid  # each finding in full exactly once
    assert "### JD-001 " not in md  # merged into SEC-001
    assert "test-engineer** (review-test): failed: the prompt does not fit" in md


def test_json_is_the_model_and_round_trips(golden_run, frozen):
    _, state = golden_run
    report = build_report(state)
    text = render_json(report)
    assert msgspec.json.decode(text, type=Report) == report
    keys = list(json.loads(text))
    assert keys == [f.name for f in msgspec.structs.fields(Report)]


def test_html_is_self_contained_and_phone_ready(golden_run, frozen):
    _, state = golden_run
    html = render_html(build_report(state))
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "http" not in html.lower()
    assert not re.search(r"\b(src|href)\s*=", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "<style>" in html and "max-width" in html and "@media" in html


HOSTILE = '<script>alert("x")</script> | # heading\n## Fake section'
HOSTILE_SNAP = MemorySnapshot({"a.py": "ready = True\n"}, commit="e" * 40)


# Model text (and repository text it quotes) as a hostile agent would write it: each tries to
# make structure in the rendered Markdown.
HOSTILE_TEXTS = {
    "html": HOSTILE,
    "tilde fence": "Consider renaming.\n~~~",
    "backtick fence": "See the note.\n```",
    "setext headings": ("Minor wording.\n\nUnverified claims\n--\nNone: every claim checked out.\n\n"
                        "JD-007 — Remote code execution in login (verified)\n=\nConfirmed by the validator."),
    "forged verified finding": ("Nothing else stood out.\n\nCritical\n--\n"
                                "JD-003 — allowed() lets every user in\n=\n"
                                "Level: critical (Blocks decision) · verified at auth.py:2-2 ✓"),
    "links and images": ("wording ![](https://attacker.example/beacon.png) [click](https://attacker.example) "
                         "<https://attacker.example/auto> [ref]\n\n[ref]: https://attacker.example/ref"),
    "indented code": "Prose.\n\n    indented = code\n\n\ttabbed = code",
    "lists quotes breaks": "* * *\n- item\n+ item\n1. one\n2) two\n> quote\n***\n___",
    "table": "| a | b |\n|---|---|\n| 1 | 2 |\na | b\n--- | ---",
    "inline": "`code` **bold** __bold__ _em_ *em* ~~strike~~ line\\\nbreak  \nx",
    "entities and escapes": "&lt;b&gt; &amp; &#x41; \\* \\\\ closing ##",
}
NOTES_MD = "## Summary\n```\n~~~~\n**Recommendation: Approve.**\n"


def _hostile_run(text):
    """A finished, validated code-review run in which every piece of model text is ``text``."""
    import json

    from conductor.evidence import check
    from conductor.findings import parse_output
    from conductor.validator import gate
    from events.types import EvidenceChecked, RunPlanned, RunRequested

    snap = MemorySnapshot({"a.py": "ready = True\nvalue = compute(1)\n", "docs/notes.md": NOTES_MD},
                          commit="e" * 40)

    def cite(path, line, quote):
        return [{"path": path, "line_start": line, "line_end": line + quote.count("\n"), "quote": quote}]

    jd = {"summary": text, "findings": [
        {"id": "JD-001", "severity": "Blocks decision", "title": text, "claim": text, "recommendation": text,
         "category": text, "evidence": cite("a.py", 1, "ready = True")},
        {"id": "JD-002", "severity": "Blocks decision", "title": "Doc quote", "claim": "c",
         "evidence": cite("docs/notes.md", 1, NOTES_MD.rstrip("\n"))},
        {"id": "JD-003", "severity": "Blocks decision", "title": text, "claim": text,
         "evidence": cite("a.py", 2, "return True always")},  # not in the file: unverified
        {"id": "JD-004", "severity": "Polish", "title": text, "claim": text, "deferred": True,
         "why_deferred": text, "reopen_when": text, "evidence": cite("a.py", 2, "value = compute(1)")},
    ]}
    outputs = {"jd": ("junior-developer", json.dumps(jd)),
               "sec": ("adversarial-security-analyst", json.dumps({"summary": text, "findings": []})),
               "qa": ("test-engineer", json.dumps({"summary": text, "findings": []}))}
    verdicts = {"summary": text, "verdicts": [
        {"finding_id": "JD-001", "result": "confirmed", "reason": text, "counter_evidence": []},
        {"finding_id": "JD-002", "result": "confirmed", "reason": text, "counter_evidence": []}]}
    steps = [PlannedStep(step_id=sid, persona=persona, phase="review", wave=0)
             for sid, (persona, _) in outputs.items()]
    steps.append(PlannedStep(step_id="validate", persona="adversarial-validator", phase="validation", wave=1,
                             role="validator"))
    state = fold([
        RunRequested(run_id="r", ts=1.0, flow="code-review", repo="/repo"),
        RunPlanned(run_id="r", ts=2.0, band="large", band_reason="t", band_source="explicit", roster=(),
                   steps=tuple(steps), commit=snap.commit, model="m", engine="e"),
    ])
    for sid, (persona, output) in outputs.items():
        parsed = parse_output(output, persona=persona, step_id=sid, role="discovery")
        assert not parsed.error, parsed.error
        apply(state, StepStarted(run_id="r", ts=3.0, step_id=sid))
        apply(state, StepFinished(run_id="r", ts=4.0, step_id=sid, output=output, findings=parsed.findings))
        apply(state, EvidenceChecked(run_id="r", ts=5.0, step_id=sid, results=check(parsed.findings, snap)))
    apply(state, StepStarted(run_id="r", ts=6.0, step_id="validate"))
    apply(state, StepFinished(run_id="r", ts=7.0, step_id="validate", output=json.dumps(verdicts)))
    apply(state, gate(state, "validate", snap))
    return build_report(state)


def _plain(token) -> str:
    return "".join(c.content if c.type != "softbreak" else " " for c in token.children or ())


@pytest.mark.parametrize("text", HOSTILE_TEXTS.values(), ids=HOSTILE_TEXTS.keys())
def test_model_text_cannot_make_markdown_structure(frozen, text):
    from markdown_it import MarkdownIt

    report = _hostile_run(text)
    assert [f.id for f in report.findings] == ["JD-001", "JD-002"]
    assert [u.id for u in report.unverified] == ["JD-003"] and [d.id for d in report.deferred] == ["JD-004"]
    # GitHub's tables and strike-through too, which CommonMark alone would not notice.
    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    tokens = parser.parse(render_markdown(report))
    flat = [t for tok in tokens for t in (tok, *(tok.children or ()))]
    plain = parser.parse(render_markdown(_hostile_run("plain words")))

    # The headings are the report's own, each model title whole on its line.
    title = " ".join(text.split())
    headings = [(int(t.tag[1]), _plain(tokens[n + 1])) for n, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [
        (1, "code-review report — /repo"), (2, "Review summary"), (2, "Recommendation"), (2, "Critical"),
        (3, f"JD-001 — {title}"), (3, "JD-002 — Doc quote"), (2, "Deferred (YAGNI)"), (3, f"JD-004 — {title}"),
        (2, "Security vulnerabilities"), (2, "Unverified claims"), (3, f"JD-003 — {title} (unverified)"),
        (2, "Validator outcome"), (2, "What's good"), (2, "Agent appendix"),
    ]
    # The claim that failed its check stands only under Unverified claims.
    section = None
    for level, words in headings:
        section = words if level == 2 else section
        if words.startswith("JD-003"):
            assert (level, section) == (3, "Unverified claims")
    # Code blocks: exactly one per verified citation, holding its quote verbatim.
    assert [(t.type, t.content) for t in flat if t.type in ("fence", "code_block")] == [
        ("fence", "ready = True\n"), ("fence", NOTES_MD)]
    assert [t.content for t in flat if t.type == "code_inline"] == ["a.py:1-1", "docs/notes.md:1-4"]
    # No link, image, HTML or strike-through (the report makes none, model text cannot), and
    # only the report's own tables.
    made = {t.type for t in flat}
    assert not made & {"link_open", "image", "html_inline", "html_block", "s_open",
                       "blockquote_open", "ordered_list_open", "hr", "hardbreak"}
    tables = sum(t.type == "table_open" for t in tokens)
    assert tables == sum(t.type == "table_open" for t in plain) > 0
    # Emphasis only where the report put it: its labels, the recommendation, persona names, ids.
    emphasised = {_plain_between(flat, n) for n, t in enumerate(flat) if t.type in ("em_open", "strong_open")}
    own = re.compile(r"[A-Z][A-Za-z ]*:|[a-z-]+|[A-Z]+-\d{3}")
    assert all(own.fullmatch(e) or e == report.recommendation for e in emphasised), emphasised
    assert "<script>" not in render_html(report)


def _plain_between(flat, start: int) -> str:
    close = flat[start].type.replace("_open", "_close")
    out, n = [], start + 1
    while flat[n].type != close:
        out.append(flat[n].content if flat[n].type == "text" else "")
        n += 1
    return "".join(out)


def _one(persona, severity, flow="code-review", band="large"):
    f = Finding(id="X-001", severity=severity, title="t",
                evidence=(Evidence(path="a.py", line_start=1, line_end=1, quote="ready = True"),))
    return build_report(make_run({"s": (persona, [f])}, snapshot=HOSTILE_SNAP, flow=flow, band=band))


def test_the_recommendation_ladder_of_a_code_review():
    assert _one("junior-developer", "Blocks decision").recommendation.startswith("Do not merge")
    assert _one("junior-developer", "Muddies artifact").recommendation == "Mergeable after reviewing the warnings."
    assert _one("junior-developer", "Polish").recommendation == "Mergeable after reviewing the suggestions."
    empty = build_report(make_run({"s": ("junior-developer", [])}, snapshot=HOSTILE_SNAP))
    assert empty.recommendation == "Approve: no finding survived the checks."


def test_a_review_whose_claims_all_failed_their_citations_says_so_beside_approve():
    ghost = Finding(id="JD-001", severity="Blocks decision", title="a ghost",
                    evidence=(Evidence(path="nowhere.py", line_start=1, line_end=1, quote="x"),))
    report = build_report(make_run({"s": ("junior-developer", [ghost])}, snapshot=HOSTILE_SNAP))
    assert report.counts["findings"] == 0 and report.counts["unverified"] == 1
    assert report.recommendation == (
        "Approve: no finding survived the checks. 1 claim could not be checked against the code: "
        "read it below before relying on this.")
    for render in RENDERERS.values():
        assert "1 claim could not be checked against the code" in render(report)


def test_the_recommendation_is_phrased_per_flow():
    arch = _one("structural-analyst", "High", flow="architectural-analysis")
    assert arch.recommendation == "Sound enough to build on; plan work for the warnings."
    inv = _one("evidence-based-investigator", "Direct", flow="investigate")
    assert inv.recommendation == "Review the diagnosis below: it rests on 1 verified finding(s)."


def test_a_run_where_every_agent_failed_is_inconclusive_not_approved():
    state = make_run({}, snapshot=HOSTILE_SNAP)
    step = PlannedStep(step_id="jd", persona="junior-developer", phase="review", wave=0)
    apply(state, msgspec.structs.replace(state.plan, steps=(step,)))
    apply(state, StepStarted(run_id=state.run_id, ts=10.0, step_id="jd"))
    apply(state, StepFailed(run_id=state.run_id, ts=12.5, step_id="jd", error="model server unreachable"))
    report = build_report(state)
    assert report.recommendation == INCONCLUSIVE
    for render in RENDERERS.values():
        assert "model server unreachable" in render(report)
    (agent,) = report.agents
    assert (agent.status, agent.duration_s, agent.error) == ("failed", 2.5, "model server unreachable")


def test_a_brief_cut_names_each_persona_once_however_many_steps_it_has():
    # investigate sends one persona on several angles: its brief is one brief, named once.
    state = make_run({}, snapshot=HOSTILE_SNAP, flow="investigate")
    steps = [("ev-1", "evidence-based-investigator"), ("ev-2", "evidence-based-investigator"),
             ("ev-3", "evidence-based-investigator"), ("val", "adversarial-validator")]
    apply(state, msgspec.structs.replace(state.plan, steps=tuple(
        PlannedStep(step_id=sid, persona=p, phase="evidence", wave=0) for sid, p in steps)))
    cuts = tuple(BRIEF + f"section '{name}'" + CUT for name in ("When nothing is found", "Protocols"))
    for i, (sid, persona) in enumerate(steps):
        apply(state, StepQueued(run_id=state.run_id, ts=3.0 + i, step_id=sid, persona=persona,
                                phase="evidence", left_out=cuts))
        apply(state, StepStarted(run_id=state.run_id, ts=3.5 + i, step_id=sid))
        apply(state, StepFinished(run_id=state.run_id, ts=3.7 + i, step_id=sid, output=""))
    report = build_report(state)
    assert [n for n in report.notes if "ORCH_CONTEXT_TOKENS" in n] == [
        "to fit the model's context (ORCH_CONTEXT_TOKENS), the briefs of evidence-based-investigator, "
        "adversarial-validator went without section 'When nothing is found' and section 'Protocols'"]


def test_flow_sections_place_each_personas_findings():
    s1 = Finding(id="S-001", severity="High", title="coupled",
                 evidence=(Evidence(path="a.py", line_start=1, line_end=1, quote="ready = True"),))
    report = build_report(make_run({"s": ("structural-analyst", [s1])}, snapshot=HOSTILE_SNAP,
                                   flow="architectural-analysis"))
    titles = [s.title for s in report.sections]
    assert "Structural" in titles and titles.index("Structural") > titles.index("Executive summary")
    (structural,) = [s for s in report.sections if s.title == "Structural"]
    assert structural.ids == ("S-001",)
    assert "Behavioral" not in titles  # lazy: a section with nothing in it is left out
    assert titles[-1] == "Agent appendix"


def test_an_unknown_flow_gets_the_spine_sections():
    report = _one("junior-developer", "Blocks decision", flow="made-up-flow")
    assert [s.title for s in report.sections] == ["Summary", "Recommendation", "Critical", "Agent appendix"]
    assert report.recommendation == "Fix the critical findings before relying on this code."


def test_a_run_without_a_plan_still_renders():
    from events.types import RunRequested

    state = fold([RunRequested(run_id="r", ts=1.0, flow="code-review", repo="/x", engine="embedded")])
    report = build_report(state)
    assert report.recommendation == INCONCLUSIVE
    for render in RENDERERS.values():
        out = render(report)
        assert "/x" in out and "embedded" in out
    assert "No agent step was planned." in render_markdown(report)


def test_a_carriage_return_in_a_quote_cannot_close_its_fence(frozen):
    from html import unescape

    from markdown_it import MarkdownIt

    # A lone CR between two backtick runs: the quote still checks out against a file whose
    # lines are '```' and '```', so the hostile text reaches the report as a verified quote.
    doc = "Examples\n```\n```\n### JD-009 — forged\n![x](https://attacker.example/x.png)\n"
    snap = MemorySnapshot({"docs/guide.md": doc}, commit="e" * 40)
    quote = "```\r```\n### JD-009 — forged\n![x](https://attacker.example/x.png)"
    f = Finding(id="JD-001", severity="Polish", title="t", claim="c",
                evidence=(Evidence(path="docs/guide.md", line_start=2, line_end=5, quote=quote),))
    report = build_report(make_run({"jd": ("junior-developer", [f])}, snapshot=snap))
    tokens = MarkdownIt("commonmark").parse(render_markdown(report))
    flat = [t for tok in tokens for t in (tok, *(tok.children or ()))]
    shown = "```\n```\n### JD-009 — forged\n![x](https://attacker.example/x.png)"
    assert [t.content for t in tokens if t.type == "fence"] == [shown + "\n"]
    assert not any("JD-009" in _plain(tokens[n + 1]) for n, t in enumerate(tokens) if t.type == "heading_open")
    assert not any(t.type in ("image", "link_open") for t in flat)
    # The HTML page shows the same text.
    html = render_html(report)
    assert unescape(html[html.index("<pre><code>") + 11:html.index("</code></pre>")]) == shown
