"""The flow catalog: every flow is coherent data, requests are checked against it, and the
``orchestrator flows`` command lists it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec
import pytest

from conductor.flows import FLOWS
from conductor.requests import RequestError, validate

NAMES = ("code-review", "architectural-analysis", "investigate", "code-overview", "gap-analysis",
         "automated-test-planning")


def test_the_catalog_holds_the_six_read_only_flows():
    assert tuple(FLOWS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_flow_names_only_real_personas_and_phases(name, personas):
    flow = FLOWS[name]
    phase_names = [p.name for p in flow.phases]
    assert len(set(phase_names)) == len(phase_names)
    seated = {p for phase in flow.phases for p in phase.personas}
    assert set(flow.spine) == seated
    for persona in seated | {c.persona for c in flow.choices}:
        assert persona in personas, persona
    for choice in flow.choices:
        assert not choice.phase or choice.phase in phase_names
    for phase in flow.phases:
        assert set(phase.reads) <= set(phase_names[: phase_names.index(phase.name)])
    assert any(p.takes_chosen for p in flow.phases) or not flow.choices
    assert flow.sections and len(set(flow.sections)) == len(flow.sections)
    assert set(flow.section_personas) <= set(flow.sections)
    assert flow.description and "\n" not in flow.description and flow.audience
    assert flow.caps.small <= flow.caps.medium <= flow.caps.large


@pytest.mark.parametrize("name,required", [
    ("architectural-analysis", ("focus",)),
    ("investigate", ("symptom",)),
    ("gap-analysis", ("document",)),
    ("code-review", ()),
    ("code-overview", ()),
    ("automated-test-planning", ()),
])
def test_required_inputs(name, required):
    assert FLOWS[name].required_inputs() == required


# (case, flow, fields, error code, words the message must carry)
BAD_REQUESTS = [
    ("unknown flow", "code-reveiw", {}, "unknown_flow",
     ["unknown flow 'code-reveiw'", "known flows: architectural-analysis, automated-test-planning"]),
    ("architectural-analysis without a focus", "architectural-analysis", {}, "missing_input",
     ["architectural-analysis needs a focus"]),
    ("a blank focus is no focus", "architectural-analysis", {"focus": "   "}, "missing_input",
     ["needs a focus"]),
    ("investigate without a symptom", "investigate", {}, "missing_input", ["investigate needs a symptom"]),
    ("gap-analysis without a document", "gap-analysis", {}, "missing_input",
     ["gap-analysis needs a document", "path of the spec or document"]),
    ("a bad band", "code-review", {"band": "huge"}, "bad_band",
     ["band 'huge' is not one of small, medium, large"]),
    ("dynamic is not a band of a request", "code-review", {"band": "dynamic"}, "bad_band", ["'dynamic'"]),
    ("an input the flow does not take", "code-review", {"symptom": "it crashes"}, "bad_input",
     ["code-review does not take a symptom"]),
    ("no repository", "code-review", {"repo": " "}, "missing_input", ["a repository is required"]),
    ("a path climbing out", "code-review", {"paths": ("../secrets",)}, "bad_input",
     ["must be relative to the repository and stay inside it"]),
    ("an absolute path", "code-review", {"paths": ("/etc",)}, "bad_input", ["'/etc'"]),
]


@pytest.mark.parametrize("case,flow,fields,code,words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_clear_error(make_request, case, flow, fields, code, words):
    with pytest.raises(RequestError) as caught:
        validate(make_request(flow, **fields), FLOWS)
    assert caught.value.code == code
    for w in words:
        assert w in str(caught.value)


def test_a_persona_the_request_names_must_be_one_there_is(make_request):
    known = {"test-engineer", "adversarial-security-analyst"}
    with pytest.raises(RequestError) as caught:
        validate(make_request("code-review", personas=("secruity-analyst", "Test-Engineer")), FLOWS, known)
    assert caught.value.code == "unknown_persona"
    assert str(caught.value).startswith("unknown persona 'secruity-analyst' (`orchestrator personas`")
    with pytest.raises(RequestError, match="unknown personas 'a', 'b'"):
        validate(make_request("code-review", personas=("a", "b")), FLOWS, known)
    # Names are matched as the roster seats them (trimmed, any case); a blank one names nothing.
    validate(make_request("code-review", personas=(" Test-Engineer ", " ")), FLOWS, known)
    # A caller that does not know the personas (a client ahead of its server) leaves them be.
    validate(make_request("code-review", personas=("secruity-analyst",)), FLOWS)


@pytest.mark.parametrize("flow,fields", [
    ("code-review", {}),
    ("code-review", {"base": "main", "focus": "the cache", "text": "be brief", "band": "large"}),
    ("architectural-analysis", {"focus": "conductor/"}),
    ("investigate", {"symptom": "runs hang", "paths": ("actors",)}),
    ("gap-analysis", {"focus": "docs/spec.md"}),
    ("code-overview", {"paths": ("api",)}),
    ("automated-test-planning", {"base": "main"}),
])
def test_good_requests_pass(make_request, flow, fields):
    validate(make_request(flow, **fields), FLOWS)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "160", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ["PYTHONPATH"]}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_flows_command_json_lists_every_flow_with_its_inputs():
    proc = _cli("flows", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [f["name"] for f in listed] == list(NAMES)
    by_name = {f["name"]: f for f in listed}
    assert {"name": "symptom", "field": "symptom", "required": True} .items() <= \
        next(i for i in by_name["investigate"]["inputs"] if i["name"] == "symptom").items()
    assert by_name["architectural-analysis"]["phases"][1]["name"] == "risk"
    assert by_name["code-review"]["sections"][0] == "Review summary"
    # The JSON is the catalog itself, field for field.
    assert listed == json.loads(msgspec.json.encode(list(FLOWS.values())))


def test_flows_command_table_names_flows_and_marks_required_inputs():
    proc = _cli("flows")
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        assert name in proc.stdout
    assert "--symptom *" in proc.stdout
    assert "--focus (document) *" in proc.stdout
