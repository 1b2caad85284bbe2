"""The band: explicit, then .han/config.md in the snapshot, then the signals; never escalated on a
borderline signal; a bad configuration gives a note naming the file, never a failure."""

from __future__ import annotations

import pytest

from conductor.han_config import parse
from conductor.plan import plan

BASE = {"README.md": "# shop\n", "app/core.py": "def total(items):\n    return sum(items)\n"}


def _logic(n: int, where: str = "app") -> dict[str, str]:
    return {f"{where}/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(n)}


# (case, flow, extra request fields, files changed on the branch, band, reason)
CLASSIFIED = [
    ("one file", "code-review", {}, _logic(1), "small",
     "Small: 1 file in 1 subsystem, nothing points higher"),
    ("three files is the top of small", "code-review", {}, _logic(3), "small",
     "Small: 3 files in 1 subsystem, nothing points higher"),
    ("four files", "code-review", {}, _logic(4), "medium", "Medium: 4 files in 1 subsystem"),
    ("two subsystems", "code-review", {}, {**_logic(1), **_logic(1, "billing")}, "medium",
     "Medium: 2 files in 2 subsystems"),
    ("a migration", "code-review", {}, {"app/m0.py": "x = 1\n",
                                        "db/migrations/0002_email.sql": "ALTER TABLE u ADD e text;\n"},
     "medium", "Medium: 2 files in 2 subsystems, touches a migration"),
    ("ten files is the top of medium", "code-review", {}, _logic(10), "medium",
     "Medium: 10 files in 1 subsystem"),
    ("eleven files", "code-review", {}, _logic(11), "large", "Large: 11 files in 1 subsystem"),
    ("two cross-cutting concerns", "code-review", {},
     {"db/migrations/0002.sql": "ALTER TABLE u ADD e text;\n", "Dockerfile": "FROM python:3.11\n"},
     "large", "touches a migration, touches infrastructure or delivery config"),
    ("SQL mentioned in a README", "code-review", {},
     {"README.md": "# shop\nCREATE TABLE users (id int);\n"}, "small",
     "Small: 1 documentation file, nothing points higher"),
    ("docs in two folders", "code-review", {},
     {"README.md": "# shop\nmore\n", "docs/usage.md": "use it\n"}, "small",
     "Small: 2 documentation files, nothing points higher"),
    ("twelve files is the top of an area's small", "architectural-analysis", {"focus": "app"},
     _logic(11), "small", "Small: 12 files in 1 subsystem, nothing points higher"),
    ("a service seam means large", "architectural-analysis", {"focus": "app api"},
     {"api/orders.proto": "syntax = \"proto3\";\n"}, "large",
     "crosses a boundary between deployable units"),
]


@pytest.mark.parametrize("case,flow,fields,files,band,reason", CLASSIFIED, ids=[c[0] for c in CLASSIFIED])
def test_signals_choose_the_band_and_say_why(git_repo, personas, make_request,
                                              case, flow, fields, files, band, reason):
    repo = git_repo(BASE)
    repo.branch("feature")
    repo.write(files)
    repo.commit(case)
    base = "main" if flow == "code-review" else None
    planned = plan(make_request(flow, base=base, **fields), repo.pin(base=base), personas,
                   model="m", engine="e", ts=2.0)
    assert planned.band == band
    assert reason in planned.band_reason
    assert planned.band_source == ("default" if band == "small" else "signals")


def test_an_explicit_band_wins_and_says_so(git_repo, personas, make_request):
    repo = git_repo({**BASE, ".han/config.md": "---\ndefault-swarm-size: large\n---\n"})
    planned = plan(make_request("code-review", band="medium"), repo.pin(), personas,
                   model="m", engine="e", ts=2.0)
    assert (planned.band, planned.band_source) == ("medium", "explicit")
    assert planned.band_reason == "Medium: passed explicitly"


@pytest.mark.parametrize("value,band", [("large", "large"), ("  Medium ", "medium"), ("SMALL", "small")])
def test_the_projects_han_config_band_is_adopted_and_named(git_repo, personas, make_request, value, band):
    repo = git_repo({**BASE, ".han/config.md": f"---\ndefault-swarm-size: {value}\n---\n\nNotes.\n"})
    planned = plan(make_request("code-review"), repo.pin(), personas, model="m", engine="e", ts=2.0)
    assert (planned.band, planned.band_source) == (band, "config")
    assert planned.band_reason == f"{band.capitalize()}: from .han/config.md default-swarm-size"
    assert planned.notes == ()


def test_dynamic_in_the_config_sizes_from_the_code(git_repo, personas, make_request):
    repo = git_repo({**BASE, ".han/config.md": "---\ndefault-swarm-size: dynamic\n---\n"})
    planned = plan(make_request("code-review", paths=("app",)), repo.pin(paths=("app",)), personas,
                   model="m", engine="e", ts=2.0)
    assert planned.band_source == "default"
    assert planned.band_reason.startswith("Small: 1 file in 1 subsystem")
    assert ".han/config.md asks to size from the code" in planned.band_reason


MALFORMED = [
    ("unclosed front matter", "---\ndefault-swarm-size: large\n", "no closing '---'"),
    ("not YAML", "---\ndefault-swarm-size: [large\n---\n", "not valid YAML"),
    ("not a mapping", "---\n- large\n---\n", "not a list of 'key: value' settings"),
    ("invalid band", "---\ndefault-swarm-size: huge\n---\n", "'huge' is not small, medium, large"),
    ("blank band", "---\ndefault-swarm-size:\n---\n", "default-swarm-size is blank"),
    ("unknown key", "---\nswarm: large\n---\n", "unknown setting 'swarm'"),
    ("not UTF-8", b"---\ndefault-swarm-size: \xff\xfe\n---\n", "not UTF-8"),
]


@pytest.mark.parametrize("case,text,note", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_a_malformed_config_gives_a_note_naming_the_file_not_a_failure(git_repo, personas, make_request,
                                                                       case, text, note):
    repo = git_repo({**BASE, ".han/config.md": text})
    planned = plan(make_request("code-review"), repo.pin(), personas, model="m", engine="e", ts=2.0)
    assert planned.band_source in ("default", "signals")  # sized from the code instead
    notes = [n for n in planned.notes if n.startswith(".han/config.md:")]
    assert len(notes) == 1 and note in notes[0], planned.notes
    assert "\n" not in notes[0]


@pytest.mark.parametrize("text,extras,notes", [
    ("## Extra Agents\n- han-core:data-engineer\n- `devops-engineer`\n* Data-Engineer\n",
     ("data-engineer", "devops-engineer"), ()),
    ("# Settings\n\n## extra agents\n\n1. on-call-engineer  # we page a lot\n\n## Other\n- junior-developer\n",
     ("on-call-engineer",), ()),
    ("## Extra Agents\n- not an agent!\n", (), ("'not an agent!' under Extra Agents is not an agent name",)),
    ("Just prose, nothing to configure.\n", (), ()),
    ("---\noutput-directory: out\nwriting-voice: voice.md\n---\n", (), ()),
])
def test_extra_agents_list_is_read_case_insensitively(text, extras, notes):
    cfg = parse(text)
    assert cfg.extra_agents == extras
    assert len(cfg.notes) == len(notes)
    for got, want in zip(cfg.notes, notes):
        assert want in got and got.startswith(".han/config.md: ")


def test_a_hostile_config_is_cheap_and_still_only_a_note():
    import time

    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefg", "bcdefgh"):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = "---\n" + "\n".join(levels) + "\ndefault-swarm-size: *h\n---\n"
    started = time.perf_counter()
    cfg = parse(bomb)
    assert time.perf_counter() - started < 1.0
    assert cfg.band is None
    assert ".han/config.md: default-swarm-size is not a single word; sizing from the code instead" in cfg.notes


def test_only_the_start_of_a_huge_config_is_read(git_repo, personas, make_request):
    text = "---\ndefault-swarm-size: medium\n---\n" + "filler line\n" * 10_000
    repo = git_repo({**BASE, ".han/config.md": text})
    planned = plan(make_request("code-review"), repo.pin(), personas, model="m", engine="e", ts=2.0)
    assert planned.band == "medium" and planned.band_source == "config"
    assert ".han/config.md: larger than 64 KB; only its start was read" in planned.notes
