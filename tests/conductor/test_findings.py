"""The answer schema given to the model, and the tolerant reading of what it answered."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conductor.findings import ParsedOutput, output_schema, parse_output
from events.types import Evidence


def _walk(schema, path="$"):
    yield path, schema
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _walk(value, f"{path}[{i}]")


ROLES = [
    ("discovery", "adversarial-security-analyst"),
    ("discovery", "data-engineer"),
    ("synthesis", "risk-analyst"),
    ("validator", "adversarial-validator"),
    ("editor", "readability-editor"),
    ("discovery", None),
]


@pytest.mark.parametrize("role,name", ROLES)
def test_every_array_and_string_in_the_schema_is_bounded(role, name, personas):
    # An unbounded array makes the small embedded model repeat items until max_tokens.
    schema = output_schema(role, personas[name] if name else None)
    kinds = 0
    for where, node in _walk(schema):
        if not isinstance(node, dict):
            continue
        if node.get("type") == "array":
            kinds += 1
            assert isinstance(node.get("maxItems"), int), where
        if node.get("type") == "string" and "enum" not in node:
            kinds += 1
            assert isinstance(node.get("maxLength"), int), where
        assert "$ref" not in node, where
    assert kinds >= 4


def test_discovery_schema_speaks_the_personas_vocabulary(personas):
    sec = personas["adversarial-security-analyst"]
    schema = output_schema("discovery", sec)
    item = schema["properties"]["findings"]["items"]
    assert item["properties"]["severity"]["enum"] == ["Critical", "High", "Medium"]
    assert item["properties"]["id"]["pattern"] == "^SEC-[0-9]{3}$"
    assert item["additionalProperties"] is False
    assert {"id", "severity", "title", "claim", "evidence"} <= set(item["required"])
    # A persona without the YAGNI duty is not offered the deferral fields.
    assert "deferred" not in item["properties"]
    data = output_schema("discovery", personas["data-engineer"])["properties"]["findings"]["items"]
    assert {"deferred", "why_deferred", "reopen_when"} <= set(data["properties"])


def test_validator_and_editor_schemas_have_their_own_shape(personas):
    v = output_schema("validator", personas["adversarial-validator"])
    assert set(v["required"]) == {"summary", "verdicts"}
    verdict = v["properties"]["verdicts"]["items"]
    assert verdict["properties"]["result"]["enum"] == ["confirmed", "partially_refuted", "refuted"]
    assert "findings" not in v["properties"]  # the validator never adds findings
    e = output_schema("editor", personas["readability-editor"])
    assert "text" in e["required"]


def test_a_well_formed_answer_validates_and_a_wrong_severity_does_not(personas):
    schema = output_schema("discovery", personas["structural-analyst"])
    answer = {
        "summary": "One coupling problem.",
        "findings": [{
            "id": "S-001", "severity": "High", "category": "coupling", "title": "t", "claim": "c",
            "evidence": [{"path": "a.py", "line_start": 1, "line_end": 2, "quote": "import b"}],
            "recommendation": "r",
        }],
    }
    jsonschema.validate(answer, schema)
    answer["findings"][0]["severity"] = "Critical"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(answer, schema)


@pytest.mark.parametrize("role,name", ROLES)
def test_the_schema_compiles_to_a_llama_cpp_grammar(role, name, personas):
    from llama_cpp.llama_grammar import LlamaGrammar

    schema = output_schema(role, personas[name] if name else None)
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    assert grammar._grammar  # the converter produced rules, so constrained decoding can use it


def test_each_call_returns_a_fresh_schema(personas):
    a = output_schema("discovery", personas["structural-analyst"])
    a["properties"]["findings"]["maxItems"] = 999
    b = output_schema("discovery", personas["structural-analyst"])
    assert b["properties"]["findings"]["maxItems"] != 999


# --- parsing -------------------------------------------------------------------------------

FINDING = {
    "id": "S-001", "severity": "High", "category": "coupling", "title": "Handlers import the db",
    "claim": "Every handler imports the database module directly.",
    "evidence": [{"path": "app/handlers.py", "line_start": 1, "line_end": 1, "quote": "from app.db import query"}],
    "recommendation": "Depend on a repository interface.",
}


def parse(text, persona="structural-analyst", role="discovery"):
    return parse_output(text, persona=persona, step_id="step-1", role=role)


def test_a_clean_json_answer_reads_without_error():
    got = parse(json.dumps({"summary": "One finding.", "findings": [FINDING]}))
    assert got.error == "" and got.raw == ""
    assert got.summary == "One finding."
    (f,) = got.findings
    assert (f.id, f.persona, f.severity, f.title) == ("S-001", "structural-analyst", "High", FINDING["title"])
    assert f.evidence == (Evidence(path="app/handlers.py", line_start=1, line_end=1, quote="from app.db import query"),)


def test_json_in_a_fence_with_chatter_around_it():
    text = "Sure! Here you go:\n```json\n" + json.dumps({"summary": "s", "findings": [FINDING]}) + "\n```\nHope it helps {not json}"
    got = parse(text)
    assert got.error == ""
    assert [f.id for f in got.findings] == ["S-001"]


def test_json_followed_by_trailing_garbage():
    got = parse(json.dumps({"summary": "s", "findings": [FINDING]}) + "}}] trailing words")
    assert got.error == ""
    assert len(got.findings) == 1


def test_a_cut_off_answer_keeps_the_complete_findings_before_the_cut():
    second = dict(FINDING, id="S-002", title="Second")
    full = json.dumps({"summary": "Two.", "findings": [FINDING, second, dict(FINDING, id="S-003")]})
    cut = full[: full.index('"S-003"') + 20]  # mid-way through the third finding
    got = parse(cut)
    assert [f.id for f in got.findings] == ["S-001", "S-002"]
    assert got.summary == "Two."
    assert "cut off" in got.error
    assert got.raw == cut  # the raw output is kept with the label


def test_an_object_nested_in_a_cut_off_answer_is_not_taken_for_the_answer():
    cut = '{"summary": "s", "findings": [' + json.dumps(FINDING) + ', {"id": "S-002", "title": "x'
    got = parse(cut)
    assert got.summary == "s" and [f.id for f in got.findings] == ["S-001"]
    assert "cut off" in got.error


def test_a_cut_inside_the_summary_is_labelled_cut_off():
    got = parse('{"summary": "Checked the handlers and the \\"db\\" mod')
    assert got.summary == 'Checked the handlers and the "db" mod'
    assert got.findings == () and "cut off" in got.error


def test_markdown_bullets_are_the_last_resort():
    text = (
        "## Findings\n"
        "- **[High]** Handlers import the db — every handler imports it (`app/handlers.py:1`) `from app.db import query`\n"
        "- S-7 (Low): naming is inconsistent in app/util.py:10-12\n"
        "- No structural problem found in duplication. Checked: app/.\n"
    )
    got = parse(text)
    assert "Markdown" in got.error
    # The unnumbered bullet takes the number after the highest one given (S-7).
    assert [(f.id, f.severity) for f in got.findings] == [("S-008", "High"), ("S-007", "Low")]
    first = got.findings[0]
    assert first.title == "Handlers import the db"
    assert first.evidence == (Evidence(path="app/handlers.py", line_start=1, line_end=1, quote="from app.db import query"),)
    assert got.findings[1].evidence[0].line_end == 12


def test_a_long_dotted_bullet_is_read_in_linear_time():
    import time

    from conductor import findings

    # A hostile file can steer the model into a huge "a.a.a." line with no ':<line>' after it.
    t = time.perf_counter()
    (f,) = parse("- High: " + "a." * 32_768).findings
    assert time.perf_counter() - t < 3 and f.evidence == ()  # ~19 s when it backtracked
    # Citations in ordinary text are read as before.
    for text, want in [
        ("see `app/handlers.py:1` here", ("app/handlers.py", "1", None)),
        ("in app/util.py:10-12 and b.py:3", ("app/util.py", "10", "12")),
        ("x`src/a-b/c.d.py:7 – 9`", ("src/a-b/c.d.py", "7", "9")),
        ("dir/Makefile:4", ("dir/Makefile", "4", None)),
        ("v1.2:3", ("v1.2", "3", None)),
        ("not a path: x-y:3, but lib/x-y:5", ("lib/x-y", "5", None)),
    ]:
        assert findings._CITE.search(text).groups() == want, text
    assert findings._CITE.search("no.path-here:7 dir/:8") is None


def test_nothing_readable_is_a_labelled_failure_that_keeps_the_raw_text():
    got = parse("I could not find anything worth reporting today.")
    assert got.findings == ()
    assert got.error and got.raw == "I could not find anything worth reporting today."
    assert parse("   ").error == "empty output"


def test_wrong_types_are_coerced_or_dropped_per_item():
    items = [
        {"id": 3, "severity": "high", "title": 12345, "evidence": {"file": "./a.py", "lines": "7-5", "code": "x"}},
        "not an object",
        {"id": "S-9", "severity": "High"},  # no title and no claim: dropped
        {"severity": ["High"], "claim": "Only a claim. It has two sentences.", "evidence": ["b.py:4-6 y = 2", 17]},
        {"title": "bad lines", "severity": "Medium", "evidence": [{"path": "c.py", "line_start": "x"}, {"path": "c.py", "line_start": 0}]},
    ]
    got = parse(json.dumps({"summary": 7, "findings": items}))
    assert [f.id for f in got.findings] == ["S-003", "S-004", "S-005"]
    a, b, c = got.findings
    assert (a.severity, a.title) == ("High", "12345")
    assert a.evidence == (Evidence(path="a.py", line_start=5, line_end=7, quote="x"),)
    assert b.title == "Only a claim." and b.severity == "High"
    assert b.evidence == (Evidence(path="b.py", line_start=4, line_end=6, quote="y = 2"),)
    assert c.evidence == ()  # both citations unusable, dropped; the finding stays (unverified later)
    assert "finding 2 dropped" in got.error and "finding 3 dropped" in got.error
    assert got.summary == "7"


def test_ids_take_the_personas_prefix_and_are_made_unique():
    items = [dict(FINDING, id="SEC-001"), dict(FINDING, id="S1"), dict(FINDING, id="S-001"),
             dict(FINDING, id="S-004"), dict(FINDING, id="whatever")]
    got = parse(json.dumps({"summary": "", "findings": items}))
    ids = [f.id for f in got.findings]
    # S-004 was the only uniquely numbered id and keeps its number; the rest follow it.
    assert ids == ["S-005", "S-006", "S-007", "S-004", "S-008"]
    assert len(set(ids)) == len(ids)
    assert "renumbered" in got.error


def test_a_persona_given_by_an_unknown_name_gets_its_initials_as_prefix():
    got = parse(json.dumps({"summary": "", "findings": [dict(FINDING, id="7", severity="whatever")]}),
                persona="my-custom-checker")
    assert got.findings[0].id == "MCC-007"
    assert got.findings[0].persona == "my-custom-checker"
    # A user persona's own prefix (the one its prompt asked for) is kept when its ids agree.
    got = parse(json.dumps({"summary": "", "findings": [dict(FINDING, id="MYC-002"), dict(FINDING, id="MYC-5")]}),
                persona="my-custom-checker")
    assert [f.id for f in got.findings] == ["MYC-002", "MYC-005"]


def test_severity_words_map_onto_the_personas_vocabulary():
    sev = lambda s: parse(json.dumps({"summary": "", "findings": [dict(FINDING, severity=s)]}),  # noqa: E731
                          persona="data-engineer").findings[0].severity
    assert sev("blocks_correctness") == "Blocks correctness"
    assert sev("critical") == "Blocks correctness"
    assert sev("low") == "Polish"
    assert sev("no idea") == "Polish"  # an unreadable severity is read low
    assert sev("YAGNI candidate") == "YAGNI candidate"


def test_a_yagni_item_is_deferred_with_its_reopen_trigger():
    item = dict(FINDING, category="YAGNI candidate", deferred="yes", reopen_when="a second backend ships")
    (f,) = parse(json.dumps({"summary": "", "findings": [item]}), persona="data-engineer").findings
    assert f.deferred and f.reopen_when == "a second backend ships"


def test_thinking_blocks_are_ignored():
    text = "<think>maybe {\"summary\": \"wrong\"}</think>" + json.dumps({"summary": "right", "findings": []})
    assert parse(text).summary == "right"


def test_a_think_tag_inside_a_json_string_is_content_not_reasoning():
    # A finding about code that strips reasoning blocks quotes the tags; the answer must survive.
    first = dict(FINDING, id="S-001", claim="The reader removes <think> blocks before parsing.",
                 evidence=[{"path": "a.py", "line_start": 1, "line_end": 1,
                            "quote": 'THINK = re.compile(r"<think>.*?</think>")'}])
    second = dict(FINDING, id="S-002", title="Second finding")
    p = parse("<think>draft {\"summary\": \"wrong\"}</think>\n"
              + json.dumps({"summary": "right", "findings": [first, second]}))
    assert p.error == "" and p.summary == "right"
    assert [f.id for f in p.findings] == ["S-001", "S-002"]
    assert p.findings[0].claim == first["claim"]
    assert p.findings[0].evidence[0].quote == first["evidence"][0]["quote"]
    # An opening tag with no closing one, inside a string, is content too.
    (f,) = parse(json.dumps({"summary": "s", "findings": [dict(FINDING, claim="emits <think> first")]})).findings
    assert f.claim == "emits <think> first"


def test_a_quote_given_as_a_list_of_lines_keeps_its_line_breaks():
    from conductor.evidence import check
    from conductor.snapshot import MemorySnapshot

    code = "def load(path):\n    with open(path) as fh:\n        return eval(fh.read())\n"
    snap = MemorySnapshot({"app/io.py": code})
    item = dict(FINDING, evidence=[{"path": "app/io.py", "line_start": 2, "line_end": 3,
                                    "quote": ["with open(path) as fh:", "return eval(fh.read())"]}])
    (f,) = parse(json.dumps({"summary": "s", "findings": [item]})).findings
    assert f.evidence[0].quote == "with open(path) as fh:\nreturn eval(fh.read())"
    assert [r.outcome for r in check([f], snap)] == ["verified"]


def test_validator_verdicts_are_read_and_normalised():
    text = json.dumps({"summary": "x", "verdicts": [
        {"finding_id": "S-001", "result": "Partially Refuted", "reason": "r",
         "counter_evidence": [{"path": "a.py", "line_start": 2, "line_end": 2, "quote": "q"}]},
        {"id": "S-002", "verdict": "REFUTED"},
        {"finding_id": "S-003", "result": "maybe"},
        {"result": "confirmed"},
    ]})
    got = parse(text, persona="adversarial-validator", role="validator")
    assert [(v.finding_id, v.result) for v in got.verdicts] == [("S-001", "partially_refuted"), ("S-002", "refuted")]
    assert got.verdicts[0].counter_evidence == (Evidence(path="a.py", line_start=2, line_end=2, quote="q"),)
    assert got.findings == ()
    assert "verdict 3 dropped: unknown result" in got.error and "verdict 4 dropped: no finding id" in got.error


def test_a_validator_answering_with_findings_adds_nothing():
    got = parse(json.dumps({"summary": "", "findings": [FINDING]}), persona="adversarial-validator", role="validator")
    assert got.findings == () and got.verdicts == ()
    assert "not verdicts" in got.error


def test_the_editor_text_is_read_and_plain_prose_is_kept_as_text():
    got = parse(json.dumps({"text": "Rewritten.", "summary": "left the code alone", "findings": []}),
                persona="readability-editor", role="editor")
    assert (got.text, got.summary, got.error) == ("Rewritten.", "left the code alone", "")
    prose = parse("Just a rewritten draft.", persona="readability-editor", role="editor")
    assert prose.text == "Just a rewritten draft." and "not JSON" in prose.error
    cut = parse('{"text": "A long draft that was cu', persona="readability-editor", role="editor")
    assert cut.text == "A long draft that was cu" and "cut off" in cut.error


def test_the_result_is_a_struct_with_the_documented_fields():
    got = parse("{}")
    assert isinstance(got, ParsedOutput)
    assert (got.findings, got.verdicts, got.summary, got.text) == ((), (), "", "")


@pytest.mark.model
@pytest.mark.slow
def test_the_embedded_model_under_the_schema_gives_output_the_parser_reads(personas):
    # The real 135M model, constrained by the schema. Its content is weak (invented paths are
    # the evidence check's job); what must hold is that its output is read, never a crash:
    # either a clean read, or a labelled cut-off with the complete findings kept.
    from llama_cpp import Llama

    from actors.engines.embedded import default_model_path

    llm = Llama(model_path=str(default_model_path()), n_ctx=1024, n_threads=2, verbose=False)
    sec = personas["adversarial-security-analyst"]
    out = llm.create_chat_completion(
        messages=[
            {"role": "system", "content": "You review code for security problems. Answer in JSON."},
            {"role": "user", "content": "src/load.py:\n1 def load(path):\n2     return eval(open(path).read())\n"},
        ],
        response_format={"type": "json_object", "schema": output_schema("discovery", sec)},
        max_tokens=200,
        temperature=0.0,
    )
    text = out["choices"][0]["message"]["content"]
    got = parse_output(text, persona=sec, step_id="s", role="discovery")
    if out["choices"][0]["finish_reason"] == "length":
        assert "cut off" in got.error, got.error
    else:
        assert "cut off" not in got.error
    for f in got.findings:
        assert f.id.startswith("SEC-") and f.severity in sec.severities and f.persona == sec.name


def test_a_user_persona_keeps_its_vocabulary_and_prefix(tmp_path, git_repo, make_request):
    # Looked up by name among the builtins, a user persona had no words and no prefix: its
    # findings kept whatever id the model wrote (SEC-001 passed for a security finding) and
    # its top word ranked as a suggestion. The plan now records them, and readers use that.
    from golden.synthetic import USER_PERSONA, make_run

    from conductor.collect import collect
    from conductor.findings import PersonaInfo
    from conductor.plan import plan
    from conductor.snapshot import MemorySnapshot
    from personas import load_personas

    (tmp_path / "perf-auditor.md").write_text(USER_PERSONA)
    repo = git_repo({"app/core.py": "def total(items):\n    return sum(items)\n"})
    repo.branch("feature")
    repo.write({"app/core.py": "def total(items):\n    return sum(items) + 1\n"})
    repo.commit("change")
    planned = plan(make_request("code-review", base="main", personas=("perf-auditor",)),
                   repo.pin(base="main"), load_personas(tmp_path), model="m", engine="e", ts=2.0)
    (seat,) = [e for e in planned.roster if e.persona == "perf-auditor"]
    assert (seat.id_prefix, seat.severities) == ("PA", ("Showstopper", "Slow", "Nit"))

    answer = json.dumps({"summary": "s", "findings": [dict(FINDING, id="SEC-001", severity="Showstopper")]})
    (f,) = parse(answer, persona=PersonaInfo(seat.persona, seat.id_prefix, seat.severities)).findings
    assert (f.id, f.severity) == ("PA-001", "Showstopper")  # not a security finding by its id

    (tmp_path / "perf-auditor.md").unlink()  # the report reads the words from the log alone
    snap = MemorySnapshot({"app/handlers.py": "from app.db import query\n"}, commit="e" * 40)
    state = make_run({"pa": ("perf-auditor", [f])}, snapshot=snap, roster=planned.roster)
    (item,) = collect(state).findings
    assert (item.id, item.level, item.security) == ("PA-001", "warning", False)
