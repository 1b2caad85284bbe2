"""The validator gate: a drop needs counter-evidence that verifies; doubt only demotes."""

from __future__ import annotations

import json

import msgspec

from golden.synthetic import make_run

from conductor.collect import collect
from conductor.report import build_report
from conductor.snapshot import MemorySnapshot
from conductor.state import apply
from conductor.validator import apply_verdicts, gate
from events.types import Evidence, Finding

CODE = "".join(f"value_{n} = compute({n})\n" for n in range(1, 61))
SNAP = MemorySnapshot({"svc/orders.py": CODE}, commit="d" * 40)


def finding(fid, severity, line, persona=""):
    quote = f"value_{line} = compute({line})"
    return Finding(id=fid, severity=severity, title=f"issue {fid} at {line}", claim=f"claim {fid} {line}",
                   persona=persona, evidence=(Evidence(path="svc/orders.py", line_start=line, line_end=line,
                                                       quote=quote),))


def counter(path="svc/orders.py", line=40, quote=None):
    return {"path": path, "line_start": line, "line_end": line,
            "quote": quote if quote is not None else f"value_{line} = compute({line})"}


def verdicts(*items, summary="judged"):
    return json.dumps({"summary": summary, "verdicts": list(items)})


def v(fid, result, *evidence, reason="because"):
    return {"finding_id": fid, "result": result, "reason": reason, "counter_evidence": list(evidence)}


STEPS = {
    "jd": ("junior-developer", [finding("JD-001", "Blocks decision", 1), finding("JD-002", "Muddies artifact", 2),
                                finding("JD-003", "Muddies artifact", 3), finding("JD-004", "Polish", 4),
                                finding("JD-005", "Blocks decision", 5)]),
    "sec": ("adversarial-security-analyst", [finding("SEC-001", "Critical", 10), finding("SEC-002", "High", 11),
                                             finding("SEC-003", "Medium", 12)]),
}


def gated(output, steps=STEPS, snapshot=SNAP):
    state = make_run(steps, snapshot=snapshot, validator_output=output)
    event = gate(state, "validate", snapshot)
    return state, event, {x.finding_id: x for x in event.verdicts}


def test_refuted_drops_only_with_counter_evidence_that_verifies():
    _, event, got = gated(verdicts(
        v("JD-001", "refuted", counter(line=40)),                         # verifies: drop
        v("JD-002", "refuted", counter(line=41, quote="something else")),  # quote not there: demote
        v("JD-003", "refuted", counter(path="svc/missing.py")),           # no such file: demote
        v("JD-004", "refuted"),                                           # no counter-evidence: demote
        v("JD-005", "refuted", counter(line=42), counter(line=43, quote="invented")),  # one bad: demote
    ))
    assert (got["JD-001"].action, got["JD-001"].counter_verified) == ("drop", True)
    for fid in ("JD-002", "JD-003", "JD-004", "JD-005"):
        assert (got[fid].action, got[fid].counter_verified) == ("demote", False), fid
    assert event.step_id == "validate"


def test_confirmed_keeps_and_partially_refuted_demotes():
    _, _, got = gated(verdicts(v("JD-001", "confirmed"), v("JD-002", "partially_refuted", counter(line=40))))
    assert got["JD-001"].action == "keep"
    assert (got["JD-002"].action, got["JD-002"].counter_verified) == ("demote", True)


def test_security_findings_follow_the_same_drop_rule():
    _, _, got = gated(verdicts(
        v("SEC-001", "refuted", counter(line=44)),
        v("SEC-002", "refuted", counter(path="../../etc/passwd", quote="root")),
    ))
    assert got["SEC-001"].action == "drop"
    assert (got["SEC-002"].action, got["SEC-002"].counter_verified) == ("demote", False)


def test_degenerate_counter_evidence_never_drops_a_correctly_cited_finding():
    # A one-character quote over every line, or a fragment of two words, is found in any file:
    # it proves nothing, so the refutation only demotes.
    def whole_file(quote):
        return {"path": "svc/orders.py", "line_start": 1, "line_end": 1_000_000, "quote": quote}

    state, event, got = gated(verdicts(
        v("JD-001", "refuted", whole_file("e")),
        v("JD-005", "refuted", whole_file("value_1 = compute(1)")),  # a range wider than a citation
        v("SEC-001", "refuted", counter(line=7, quote="ue_7 = comp")),  # fragments of two words
        v("SEC-002", "refuted", counter(line=8, quote="(")),
    ))
    for fid in ("JD-001", "JD-005", "SEC-001", "SEC-002"):
        assert (got[fid].action, got[fid].counter_verified) == ("demote", False), fid
    apply(state, event)
    report = build_report(state)
    assert report.validator.dropped == ()
    assert {"JD-001", "JD-005", "SEC-001", "SEC-002"} <= {f.id for f in report.findings}


def test_unknown_ids_and_second_verdicts_are_ignored_with_a_note_and_silence_keeps():
    _, event, got = gated(verdicts(
        v("JD-001", "confirmed"),
        v("JD-001", "refuted", counter(line=40)),
        v("XYZ-009", "refuted", counter(line=40)),
        v("XYZ-009", "confirmed"),
    ))
    assert list(got) == ["JD-001"] and got["JD-001"].action == "keep"
    assert event.note.count("ignored a verdict on XYZ-009: not a finding the validator was given") == 1
    assert "ignored a second verdict on JD-001" in event.note
    assert "kept without a verdict: JD-002, JD-003, JD-004, JD-005, SEC-001, SEC-002, SEC-003" in event.note


def test_stray_ids_are_named_together_in_one_note():
    # The embedded model numbers its verdicts 1, 2, 3…: one note for them, not one each.
    _, event, got = gated(verdicts(*(v(str(i), "confirmed") for i in (1, 2, 3, 2, 4))))
    assert got == {}
    assert "ignored verdicts on 1, 2, 3, 4: not findings the validator was given" in event.note
    assert event.note.count("ignored") == 1


def test_loosely_written_ids_are_read_as_the_finding_they_name():
    _, event, got = gated(verdicts(v("jd1", "confirmed"), v("SEC 2", "partially_refuted")))
    assert got["JD-001"].action == "keep" and got["SEC-002"].action == "demote"
    assert "read jd1 as JD-001" in event.note


def test_the_validator_never_adds_findings():
    output = json.dumps({"summary": "x", "findings": [{"id": "V-001", "severity": "High", "title": "new",
                                                        "evidence": [counter(line=40)]}],
                         "verdicts": [v("JD-001", "confirmed")]})
    state, event, got = gated(output)
    apply(state, event)
    report = build_report(state)
    assert {f.id for f in report.findings} == {f.id for f in collect(state).findings}
    assert "V-001" not in {f.id for f in report.findings}
    assert list(got) == ["JD-001"]


def test_an_unreadable_answer_keeps_every_finding_and_says_why():
    state, event, got = gated("I think they are all wrong.")
    assert got == {}
    assert "validator output:" in event.note
    apply(state, event)
    assert len(build_report(state).findings) == len(collect(state).findings) == 8


def test_applied_verdicts_drop_demote_and_keep_security_in_the_report():
    state, event, _ = gated(verdicts(
        v("JD-001", "partially_refuted", counter(line=40)),  # critical -> warning
        v("JD-004", "partially_refuted"),                    # suggestion -> left out, with reason
        v("JD-005", "refuted", counter(line=41)),            # dropped
        v("SEC-003", "refuted"),                              # security suggestion: stays
        v("SEC-001", "confirmed"),
    ))
    result = apply_verdicts(collect(state), [event])
    levels = {i.id: i.level for i in result.collected.findings}
    assert levels["JD-001"] == "warning"
    assert "JD-004" not in levels and "JD-005" not in levels
    assert levels["SEC-003"] == "suggestion"
    assert [item.id for item, _ in result.dropped] == ["JD-005"]
    assert result.demoted == ("JD-001", "JD-004", "SEC-003")
    (left,) = [o for o in result.collected.omitted if o.item.id == "JD-004"]
    assert "validator: partially refuted; demoted below suggestion" == left.reason
    assert [i.id for i in result.collected.findings][0] == "SEC-001"


def test_counter_evidence_is_checked_against_the_pinned_commit_not_the_work_tree(git_repo):
    repo = git_repo({"svc/orders.py": CODE})
    snap = repo.pin()
    (repo.path / "svc" / "orders.py").write_text("guard = True\n" + CODE)  # after the pin
    steps = {"jd": ("junior-developer", [finding("JD-001", "Blocks decision", 1)])}
    _, _, got = gated(verdicts(v("JD-001", "refuted", counter(line=1, quote="guard = True"))),
                      steps=steps, snapshot=snap)
    assert (got["JD-001"].action, got["JD-001"].counter_verified) == ("demote", False)
    _, _, got = gated(verdicts(v("JD-001", "refuted", counter(line=2))), steps=steps, snapshot=snap)
    assert got["JD-001"].action == "drop"


def test_gate_reads_no_clock():
    state, first, _ = gated(verdicts(v("JD-001", "confirmed")))
    second = gate(state, "validate", SNAP)
    assert first == second
    assert first.ts == state.steps["validate"].ended_ts
    assert gate(state, "validate", SNAP, ts=99.0).ts == 99.0


def _judged_then_restated(verdict):
    """gap-analysis: JD-001 judged by the validator, then restated by a synthesis step after it."""
    from conductor.evidence import check
    from conductor.state import fold
    from events.types import (EvidenceChecked, PlannedStep, RunPlanned, RunRequested, StepFinished,
                              StepStarted)

    jd = finding("JD-001", "Worth clarifying", 2)
    later = msgspec.structs.replace(jd, id="D-001", severity="Disputed")
    steps = (PlannedStep(step_id="jd", persona="junior-developer", phase="swarm", wave=1, role="synthesis"),
             PlannedStep(step_id="validate", persona="adversarial-validator", phase="validation", wave=2,
                         role="validator"),
             PlannedStep(step_id="ps", persona="plan-synthesizer", phase="synthesis", wave=3, role="synthesis"))
    state = fold([RunRequested(run_id="r", ts=1.0, flow="gap-analysis", repo="/repo"),
                  RunPlanned(run_id="r", ts=2.0, band="medium", band_reason="t", band_source="explicit",
                             roster=(), steps=steps, commit=SNAP.commit, model="m", engine="e")])

    def finish(sid, output="", findings=()):
        apply(state, StepStarted(run_id="r", ts=3.0, step_id=sid))
        apply(state, StepFinished(run_id="r", ts=4.0, step_id=sid, output=output, findings=findings))
        apply(state, EvidenceChecked(run_id="r", ts=5.0, step_id=sid, results=check(findings, SNAP)))

    finish("jd", findings=(jd,))
    finish("validate", output=verdicts(verdict))
    apply(state, gate(state, "validate", SNAP))
    finish("ps", findings=(later,))
    return build_report(state)


def test_a_verdict_still_applies_when_a_later_finding_merged_with_the_judged_one():
    dropped = _judged_then_restated(v("JD-001", "refuted", counter(line=40)))
    # The refuted substance is gone, under either id, and the drop is counted.
    assert [f.id for f in dropped.findings] == []
    assert (dropped.validator.refuted, dropped.validator.dropped) == (1, ("D-001",))
    assert [(o.id, o.reason.startswith("dropped by the validator")) for o in dropped.omitted] == [("D-001", True)]

    demoted = _judged_then_restated(v("JD-001", "partially_refuted"))
    (f,) = demoted.findings
    assert (f.id, f.sources, f.level) == ("D-001", ("D-001", "JD-001"), "suggestion")
    assert demoted.validator.demoted == ("D-001",)
