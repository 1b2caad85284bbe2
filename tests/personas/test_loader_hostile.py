"""Whatever sits in the personas directory, loading it either works or raises PersonaError
naming the file: the one error the command line turns into a clear message."""

from __future__ import annotations

import pytest

from personas import PersonaError, load_personas


def refused(directory) -> PersonaError:
    with pytest.raises(PersonaError) as info:
        load_personas(directory)
    return info.value


def test_a_directory_named_like_a_persona_is_refused_by_name(tmp_path):
    (tmp_path / "x.md").mkdir()
    err = refused(tmp_path)
    assert err.source == str(tmp_path / "x.md") and err.field == "file"


def test_a_dangling_symlink_is_refused_by_name(tmp_path):
    (tmp_path / "x.md").symlink_to(tmp_path / "nowhere")
    err = refused(tmp_path)
    assert err.source == str(tmp_path / "x.md") and err.field == "file"


@pytest.mark.parametrize("lens", [
    "[" * 3000 + "]" * 3000,  # nested past the recursion limit
    "1" + "0" * 5000,  # an integer past Python's 4,300-digit limit
], ids=["deep", "big-integer"])
def test_frontmatter_python_cannot_hold_is_refused_by_name(tmp_path, lens):
    (tmp_path / "x.md").write_text(f"---\nname: x\nlens: {lens}\n---\nbody\n")
    err = refused(tmp_path)
    assert err.source == str(tmp_path / "x.md") and err.field == "frontmatter"


def test_a_key_too_large_to_print_is_refused_by_name(tmp_path):
    # YAML reads this binary literal (an explicit key, as a plain one is at most 1,024
    # characters), but str() refuses an integer of over 4,300 digits.
    (tmp_path / "x.md").write_text("---\n? 0b1" + "0" * 16000 + "\n: x\n---\nbody\n")
    err = refused(tmp_path)
    assert err.source == str(tmp_path / "x.md") and "unknown field" in err.problem


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path, good, write):
    write(tmp_path, good, body="x" * (2 * 1024 * 1024))
    err = refused(tmp_path)
    assert err.field == "file" and "larger than" in err.problem


@pytest.mark.parametrize("field,value", [
    ("lens", "Looks at things. " * 3500),
    ("severities", [f"Level{i}" for i in range(5000)]),
    ("severities", ["High " * 100, "Low"]),
    ("inputs", [f"input {i}" for i in range(500)]),
    ("boundaries", [{"does_not": f"thing {i}"} for i in range(500)]),
], ids=["long-lens", "many-severities", "long-severity", "many-inputs", "many-boundaries"])
def test_fields_every_prompt_carries_whole_are_bounded(tmp_path, good, write, field, value):
    # The prompt shortens only the body, so these fields must stay small.
    write(tmp_path, {**good, field: value})
    err = refused(tmp_path)
    assert err.field == field
