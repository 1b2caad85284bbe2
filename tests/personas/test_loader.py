"""The loader: user personas join the builtins; every bad file is refused naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from personas import Persona, PersonaError, card, get, load_personas, parse_persona

BODY = "## Posture\n\nRead every licence file before judging.\n\n## Output\n\nJSON.\n"


def refused(directory: Path) -> PersonaError:
    with pytest.raises(PersonaError) as info:
        load_personas(directory)
    return info.value


def test_user_personas_join_the_builtins(tmp_path, good, write):
    path = write(tmp_path, good, body=BODY)
    second = {**good, "name": "notice-checker", "id_prefix": "NOT",
              "boundaries": [{"does_not": "audit licences", "use": "license-auditor"}]}  # fmt: skip
    write(tmp_path, second)
    (tmp_path / "notes.txt").write_text("not a persona")

    personas = load_personas(tmp_path)

    assert len(personas) == 25
    lic = personas["license-auditor"]
    assert lic.source == str(path)
    assert lic.signals == ("manifests",) and lic.min_band == "medium"
    assert lic.severities == ("Blocks release", "Needs review", "Fine")
    assert lic.body == BODY.strip()
    assert personas["notice-checker"].boundaries[0].use == "license-auditor"


def test_no_directory_and_an_empty_directory_give_the_builtins(tmp_path):
    assert load_personas(None).keys() == load_personas(tmp_path).keys()
    assert len(load_personas("")) == 23


def test_a_missing_directory_is_refused(tmp_path):
    err = refused(tmp_path / "nope")
    assert err.field == "personas_dir" and "nope" in str(err)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda f: f.pop("lens"), "lens", "missing required field"),
        (lambda f: f.update(colour="blue"), "colour", "unknown field"),
        (lambda f: f.update(body="sneaky"), "body", "unknown field"),
        (lambda f: f.update(yagni_rule="yes"), "yagni_rule", "Expected `bool`"),
        (lambda f: f.update(severities="High"), "severities", "Expected `array`"),
        (lambda f: f.update(lens=3), "lens", "Expected `str`"),
        (lambda f: f.update(boundaries=[{"does_not": 1}]), "boundaries[0].does_not", "Expected"),
        (lambda f: f["boundaries"][0].update(why="x"), "boundaries[0].why", "unknown field"),
        (lambda f: f.update(slice="everything"), "slice", "'everything' is not one of"),
        (lambda f: f.update(min_band="huge"), "min_band", "'huge' is not one of"),
        (lambda f: f.update(id_prefix="lic"), "id_prefix", "upper-case"),
        (lambda f: f.update(severities=["High", "High"]), "severities", "twice"),
        (lambda f: f.update(lens="two\nlines"), "lens", "one non-empty line"),
        (lambda f: f.update(inputs=[]), "inputs", "non-empty"),
        (lambda f: f["boundaries"][0].update(use="ghost"), "boundaries[0].use", "no persona named 'ghost'"),
        (lambda f: f["boundaries"][0].update(use="license-auditor"), "boundaries[0].use", "itself"),
    ],
)
def test_a_bad_field_is_refused_naming_file_and_field(tmp_path, good, write, change, field, words):
    fields = good
    change(fields)
    path = write(tmp_path, fields, name="license-auditor")

    err = refused(tmp_path)

    assert err.source == str(path) and err.field == field
    assert str(err).startswith(f"{path}: {field}: ")
    assert words in str(err)


def test_name_must_match_the_file_name(tmp_path, good, write):
    path = write(tmp_path, good, name="licence-auditor")
    err = refused(tmp_path)
    assert (err.source, err.field) == (str(path), "name")
    assert "'license-auditor'" in str(err) and "'licence-auditor'" in str(err)


def test_an_empty_body_is_refused(tmp_path, good, write):
    path = write(tmp_path, good, body="\n   \n")
    err = refused(tmp_path)
    assert (err.source, err.field) == (str(path), "body")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("---\nname: [unclosed\n---\nbody\n", "not valid YAML (frontmatter line"),
        ("name: license-auditor\n\nA body with no frontmatter.\n", "must start with"),
        ("---\n- a list\n---\nbody\n", "mapping"),
        ("---\nname: license-auditor\n", "must start with"),  # never closed
    ],
)
def test_broken_frontmatter_is_refused(tmp_path, text, words):
    path = tmp_path / "license-auditor.md"
    path.write_text(text)
    err = refused(tmp_path)
    assert (err.source, err.field) == (str(path), "frontmatter")
    assert words in str(err)


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "license-auditor.md"
    path.write_bytes(b"---\nname: \xff\xfe\n---\nbody\n")
    err = refused(tmp_path)
    assert (err.source, err.field) == (str(path), "file")


def test_a_user_persona_may_not_take_a_builtins_name(tmp_path, good, write):
    path = write(tmp_path, {**good, "name": "risk-analyst"})
    err = refused(tmp_path)
    assert (err.source, err.field) == (str(path), "name")
    assert "personas/risk-analyst.md" in str(err)


def test_a_user_persona_may_not_reuse_an_id_prefix(tmp_path, good, write):
    path = write(tmp_path, {**good, "id_prefix": "SEC"})
    err = refused(tmp_path)
    assert (err.source, err.field) == (str(path), "id_prefix")
    assert "personas/adversarial-security-analyst.md" in str(err)


def test_two_user_personas_may_not_share_a_prefix(tmp_path, good, write):
    first = write(tmp_path, good)
    second = write(tmp_path, {**good, "name": "notice-checker"})
    err = refused(tmp_path)
    assert err.field == "id_prefix"
    assert str(second) in str(err) and str(first) in str(err)


def test_parse_persona_reads_one_text(good):
    text = "---\n" + yaml.safe_dump(good) + "---\n" + BODY
    persona = parse_persona(text, "inline")
    assert isinstance(persona, Persona) and persona.source == "inline"
    assert persona.id_prefix == "LIC"


def test_card_and_get():
    personas = load_personas()
    validator = get("adversarial-validator", personas)
    text = card(validator)
    assert text.startswith("adversarial-validator (V): " + validator.lens)
    for b in validator.boundaries:
        assert f"Does not {b.does_not} (use {b.use})." in text
    with pytest.raises(PersonaError, match="no such persona .*risk-analyst"):
        get("risk-analysts", personas)
