"""Post-collection: merge, reachability gate, calibration, self-consistency, caps, and the
lists nothing leaves silently."""

from __future__ import annotations

from golden.synthetic import make_run

from conductor.collect import collect, level_of, surviving_findings
from conductor.snapshot import MemorySnapshot
from events.types import Evidence, Finding

CODE = "".join(f"value_{n} = compute({n})\n" for n in range(1, 121))
SNAP = MemorySnapshot({"svc/orders.py": CODE, "svc/other.py": CODE}, commit="c" * 40)


def cite(line, path="svc/orders.py", end=None):
    end = end or line
    quote = " ".join(f"value_{n} = compute({n})" for n in range(line, end + 1))
    return Evidence(path=path, line_start=line, line_end=end, quote=quote)


def f(fid, severity="High", title=None, *, lines=(10,), path="svc/orders.py", claim="", rec="",
      persona="", **kw):
    return Finding(
        id=fid, severity=severity, title=title or f"problem {fid}", claim=claim, recommendation=rec,
        persona=persona, evidence=tuple(cite(n, path) for n in lines), **kw,
    )


def run(steps, **kw):
    return make_run(steps, snapshot=SNAP, **kw)


def ids(items):
    return [i.id for i in items]


def test_duplicates_by_substance_merge_and_keep_every_source_id():
    state = run({
        "jd": ("junior-developer", [f("JD-001", "Blocks decision", "SQL injection in get_order via id",
                                      lines=(10,))]),
        "sec": ("adversarial-security-analyst", [f("SEC-001", "Critical", "SQL injection in get_order through id",
                                                   lines=(9, 10))]),
        "st": ("structural-analyst", [f("S-001", "High", "SQL injection in get_order via id", lines=(50,))]),
    })
    got = collect(state)
    assert ids(got.findings) == ["SEC-001", "S-001"]  # S-001 cites other lines: not a duplicate
    merged = got.findings[0]
    assert merged.security and merged.finding.sources == ("SEC-001", "JD-001")
    assert any("merged with JD-001 (junior-developer)" in n for n in merged.notes)


def test_findings_on_the_same_lines_saying_different_things_stay_apart():
    state = run({
        "jd": ("junior-developer", [f("JD-001", "Blocks decision", "Order totals are rounded twice",
                                      claim="Rounding happens in two places.")]),
        "st": ("structural-analyst", [f("S-001", "High", "Module imports the web layer",
                                        claim="The data module depends on request objects.")]),
    })
    assert ids(collect(state).findings) == ["JD-001", "S-001"]


def test_the_reachability_gate_demotes_one_level():
    state = run({"jd": ("junior-developer", [
        f("JD-001", "Blocks decision", claim="This is theoretical: no caller passes None.", lines=(1,)),
        f("JD-002", "Muddies artifact", claim="A defense-in-depth check.", lines=(2,)),
        f("JD-003", "Worth clarifying", rec="Guard it in case the upstream changes.", lines=(3,)),
        f("JD-004", "Blocks decision", claim="Callers pass None today.", lines=(4,)),
    ])})
    got = collect(state)
    levels = {i.id: i.level for i in got.findings}
    assert levels == {"JD-001": "warning", "JD-002": "suggestion", "JD-004": "critical"}
    assert any('"theoretical"' in n for n in got.findings[1].notes + got.findings[0].notes)
    (gone,) = got.omitted
    assert gone.item.id == "JD-003" and "in case the upstream" in gone.reason and "below suggestion" in gone.reason


def test_security_findings_are_exempt_from_the_reachability_gate():
    state = run({"sec": ("adversarial-security-analyst", [
        f("SEC-001", "Critical", claim="EXPLOIT: hypothetically anyone can call it; here is how."),
    ])})
    (item,) = collect(state).findings
    assert item.level == "critical" and item.notes == ()


def test_code_review_calibration_by_band():
    findings = [
        f("JD-001", "Blocks decision", lines=(1,)),                       # critical
        f("JD-002", "Muddies artifact", lines=(2,)),                      # warning, in review
        f("JD-003", "Muddies artifact", lines=(3,), path="svc/other.py"),  # warning, elsewhere
        f("JD-004", "Polish", lines=(4,)),                                # suggestion, in review
        f("JD-005", "Polish", lines=(5,), path="svc/other.py"),           # suggestion, elsewhere
    ]
    kept = {}
    for band in ("small", "medium", "large"):
        state = run({"jd": ("junior-developer", findings)}, band=band, files=("svc/orders.py",))
        got = collect(state)
        kept[band] = ids(got.findings)
        assert len(got.findings) + len(got.omitted) == 5
        for o in got.omitted:
            assert f"below the {band} band's bar" in o.reason
    assert kept["small"] == ["JD-001", "JD-002"]
    assert kept["medium"] == ["JD-001", "JD-002", "JD-003", "JD-004"]
    assert kept["large"] == ["JD-001", "JD-002", "JD-003", "JD-004", "JD-005"]


def test_area_calibration_and_security_keeps_its_tier():
    findings = {
        "st": ("structural-analyst", [f("S-001", "High", lines=(1,)), f("S-002", "Low", lines=(2,))]),
        "ec": ("edge-case-explorer", [f("EC-001", "Critical", lines=(3,))]),
        "sec": ("adversarial-security-analyst", [f("SEC-001", "Medium", lines=(4,))]),
    }
    small = collect(run(findings, flow="architectural-analysis", band="small"))
    assert ids(small.findings) == ["EC-001", "SEC-001"]
    medium = collect(run(findings, flow="architectural-analysis", band="medium"))
    assert ids(medium.findings) == ["EC-001", "S-001", "SEC-001"]
    assert [i.level for i in medium.findings] == ["critical", "warning", "suggestion"]


def test_opposite_recommendations_on_the_same_lines_are_in_tension():
    state = run({
        "jd": ("junior-developer", [f("JD-001", "Blocks decision", "Shared counter", rec="Add a lock around the counter.",
                                      lines=(20, 21))]),
        "cc": ("concurrency-analyst", [f("C-001", "Low", "Lock overhead", rec="Remove the lock; the counter is per request.",
                                         lines=(21,))]),
        "other": ("structural-analyst", [f("S-001", "High", "Elsewhere", rec="Remove the helper.", lines=(90,))]),
    })
    got = {i.id: i for i in collect(state).findings}
    assert got["JD-001"].level == "warning"  # demoted from critical
    assert got["C-001"].level == "suggestion"  # a suggestion stays a suggestion, annotated
    assert got["JD-001"].finding.claim.startswith("Tension with C-001:")
    assert got["C-001"].finding.claim.startswith("Tension with JD-001:")
    assert not got["S-001"].finding.claim.startswith("Tension")  # other lines: no tension


def test_the_cap_keeps_critical_first_and_never_counts_security():
    many = [f(f"JD-{n:03d}", "Blocks decision" if n > 30 else "Muddies artifact", f"distinct issue {n}",
              lines=(n,), claim=f"word{n} " * 3) for n in range(1, 36)]
    secs = [f(f"SEC-{n:03d}", "Medium", f"exploit {n}", lines=(100 + n,), claim=f"path{n}") for n in range(1, 4)]
    got = collect(run({"jd": ("junior-developer", many), "sec": ("adversarial-security-analyst", secs)}))
    non_security = [i for i in got.findings if not i.security]
    assert len(non_security) == 30
    assert [i.id for i in non_security[:5]] == [f"JD-{n:03d}" for n in range(31, 36)]  # the criticals
    assert sum(i.security for i in got.findings) == 3
    assert len(got.omitted) == 5
    assert all("cap of 30" in o.reason for o in got.omitted)
    assert {o.item.id for o in got.omitted} == {f"JD-{n:03d}" for n in range(26, 31)}


def test_unverified_and_deferred_findings_get_their_own_lists():
    state = run({"jd": ("junior-developer", [
        f("JD-001", "Blocks decision", lines=(1,)),
        Finding(id="JD-002", severity="Muddies artifact", title="invented",
                evidence=(Evidence(path="svc/orders.py", line_start=3, line_end=3, quote="not there"),)),
        Finding(id="JD-003", severity="Polish", title="no evidence"),
        Finding(id="JD-004", severity="Polish", title="plugin system", deferred=True,
                reopen_when="a second plugin exists"),
    ])})
    got = collect(state)
    assert ids(got.findings) == ["JD-001"]
    assert ids(got.unverified) == ["JD-002", "JD-003"]
    assert got.unverified[0].reason == "svc/orders.py:3-3: quote not found in the file"
    assert got.unverified[1].reason == "no evidence cited"
    assert ids(got.deferred) == ["JD-004"]
    assert surviving_findings(state) == [got.findings[0].finding]


def test_clashing_ids_of_two_steps_are_renumbered_and_keep_their_evidence():
    state = run({
        "inv-1": ("evidence-based-investigator", [f("E-001", "Direct", "error path", lines=(1,))]),
        "inv-2": ("evidence-based-investigator", [f("E-001", "Direct", "data flow", lines=(60,)),
                                                  f("E-002", "Contextual", "history", lines=(70,))]),
    }, flow="investigate")
    got = collect(state)
    # Direct is the vocabulary's first word (warning), Contextual a suggestion.
    assert ids(got.findings) == ["E-001", "E-003", "E-002"]
    assert all(i.status == "verified" for i in got.findings)
    assert any("E-001 of step inv-2 renumbered E-003" in n for n in got.notes)


def test_a_renumbered_id_is_the_same_for_the_validator_and_in_the_report():
    # A later wave's id used to be reserved too, so the report renumbered an earlier finding
    # past it while the validator, seeing only the earlier waves, had judged it by another id.
    state = run({
        "inv-1": ("evidence-based-investigator", [f("E-001", "Direct", "error path", lines=(1,))]),
        "inv-2": ("evidence-based-investigator", [f("E-001", "Direct", "data flow", lines=(60,))]),
        "late": ("evidence-based-investigator", [f("E-002", "Direct", "retry storm", lines=(90,))]),
    }, flow="investigate", waves={"late": 2})

    def by_title(items):
        return {i.finding.title: i.id for i in items}

    judged = by_title(collect(state, before_wave=1).findings)
    reported = by_title(collect(state).findings)
    assert judged == {"error path": "E-001", "data flow": "E-002"}
    assert reported == {**judged, "retry storm": "E-003"}  # the later step gives way


def test_collect_is_deterministic_and_ordered_by_level_then_plan():
    steps = {
        "a": ("structural-analyst", [f("S-001", "Low", "low one", lines=(1,)), f("S-002", "High", "high one", lines=(2,))]),
        "b": ("edge-case-explorer", [f("EC-001", "Critical", "crit", lines=(3,)), f("EC-002", "High", "high two", lines=(4,))]),
    }
    first, second = collect(run(steps)), collect(run(steps))
    assert first == second
    assert ids(first.findings) == ["EC-001", "S-002", "EC-002", "S-001"]


def test_only_finished_steps_before_the_wave_count():
    state = run({"jd": ("junior-developer", [f("JD-001", "Blocks decision")])})
    assert ids(collect(state, before_wave=0).findings) == []
    assert ids(collect(state, before_wave=1).findings) == ["JD-001"]


def test_severity_levels_map_by_meaning_then_by_rank():
    assert level_of("Wakes someone up", "on-call-engineer") == "critical"
    assert level_of("Degrades reliability", "devops-engineer") == "warning"
    assert level_of("Polish", "data-engineer") == "suggestion"
    assert level_of("Central", "codebase-explorer") == "warning"  # first of an unknown vocabulary
    assert level_of("Peripheral", "codebase-explorer") == "suggestion"
