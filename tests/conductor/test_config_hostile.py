"""A hostile repository writes its own `.han/config.md`: whatever it holds, reading it must be
quick, must never fail the plan, and may only cost a few short notes."""

from __future__ import annotations

import re
import time

import pytest

from conductor import han_config
from conductor.han_config import parse
from conductor.plan import plan
from conductor.snapshot import MemorySnapshot
from events.types import RunRequested

PATH = han_config.CONFIG_PATH
# The heading pattern the parser used before; it backtracks on long runs of spaces, so it is
# only the reference for what short, ordinary headings mean.
OLD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _plan(files, personas, flow="code-review", **fields):
    snap = MemorySnapshot(files)
    req = RunRequested(run_id="r", ts=0.0, flow=flow, repo=".", **fields)
    return plan(req, snap, personas, model="m", engine="e", ts=1.0)


def _config_notes(planned):
    return [n for n in planned.notes if n.startswith(PATH)]


# --- headings are read in linear time ------------------------------------------------------


def test_a_heading_line_full_of_spaces_is_read_quickly():
    # The old pattern took about 20 s on this 3 KB line (cubic); anything linear takes
    # microseconds, so 2 s is a generous bound that still catches the old behaviour.
    text = "## Extra Agents\n- data-engineer\n# a" + " " * 3000 + "x\n- devops-engineer\n"
    started = time.perf_counter()
    cfg = parse(text)
    assert time.perf_counter() - started < 2.0
    # The long line is a heading of its own, so the list after it is not extra agents.
    assert cfg.extra_agents == ("data-engineer",)


HEADINGS = [
    "# Extra Agents", "## Extra Agents", "###### Extra Agents", "####### Extra Agents",
    "#Extra Agents", "## Extra Agents ##", "##   extra agents   ###   ", "## Extra Agents #x",
    "## Extra # Agents", "#", "# ", "#  ##", "## \t Extra Agents\t#", "  ## Extra Agents",
    "## Extra Agents\u00a0", "##\u2003Extra Agents", "## Extra Agents\\#", "##",
]


@pytest.mark.parametrize("line", HEADINGS)
def test_headings_mean_what_they_meant_before(line):
    old = OLD_HEADING.match(line)
    was_heading = old is not None
    opened = was_heading and old.group(2).strip().lower() == "extra agents"
    cfg = parse(f"{line}\n- data-engineer\n")
    # A heading either opens the list or closes it; a non-heading leaves it closed here.
    assert cfg.extra_agents == (("data-engineer",) if opened else ())
    # Inside the list, another heading closes it unless it opens it again; other lines are items.
    after = parse(f"## Extra Agents\n{line}\n- devops-engineer\n")
    assert after.extra_agents == (("devops-engineer",) if opened or not was_heading else ())


# --- front matter that Python or YAML cannot hold ------------------------------------------


@pytest.mark.parametrize("front", [
    "x: " + "[" * 5000 + "]" * 5000,  # nesting deeper than the recursion limit
    "x: {a: " * 800 + "1" + "}" * 800,
    "x: 1" + "0" * 5000,  # an integer past Python's 4,300-digit str/int limit
    "default-swarm-size: 0b1" + "0" * 16000,  # parses, but cannot be turned into text
    "? 0b1" + "0" * 16000 + "\n: small",  # the same, as an (explicit) key
], ids=["deep-list", "deep-map", "big-decimal", "big-binary-value", "big-binary-key"])
def test_front_matter_that_cannot_be_read_is_a_note_not_a_failure(personas, front):
    files = {PATH: f"---\n{front}\n---\n## Extra Agents\n- data-engineer\n", "a.py": "x = 1\n"}
    cfg = han_config.read(MemorySnapshot(files))
    assert cfg.band is None and not cfg.dynamic
    assert cfg.notes and all(n.startswith(PATH) and "\n" not in n and len(n) < 300
                             for n in cfg.notes)
    assert "ignored" in cfg.notes[0] or "sizing from the code" in cfg.notes[0]
    # The rest of the file still counts.
    assert cfg.extra_agents == ("data-engineer",)
    planned = _plan(files, personas)  # and the run is planned
    assert planned.band_source in ("default", "signals")


# --- the 64 KB cut -----------------------------------------------------------------------------


def test_a_cut_inside_a_character_keeps_the_settings():
    head = "---\ndefault-swarm-size: large\n---\n## Notes\n"
    pad = "x" * (han_config.MAX_BYTES - len(head.encode()) - 1)
    data = (head + pad + "é" + "more text\n").encode("utf-8")  # 'é' straddles the cut
    cfg = han_config.read(MemorySnapshot({PATH: data, "a.py": "x = 1\n"}))
    assert cfg.band == "large"
    assert cfg.notes == (f"{PATH}: larger than 64 KB; only its start was read",)


def test_bytes_that_are_not_utf8_are_still_refused_before_the_cut():
    data = b"---\ndefault-swarm-size: large\n---\n\xff\xfe\n" + b"x" * han_config.MAX_BYTES
    cfg = han_config.read(MemorySnapshot({PATH: data, "a.py": "x = 1\n"}))
    assert cfg.band is None
    assert any("not UTF-8" in n for n in cfg.notes)


# --- a bounded number of notes ----------------------------------------------------------------


def test_a_config_full_of_bad_lines_gives_a_bounded_number_of_notes():
    text = "## Extra Agents\n" + "".join(f"- not an agent {i}!\n" for i in range(1000))
    cfg = parse(text)
    assert len(cfg.notes) == han_config.MAX_NOTES + 1
    assert cfg.notes[-1].startswith(PATH) and f"{1000 - han_config.MAX_NOTES} more" in cfg.notes[-1]


def test_thousands_of_unknown_extra_agents_give_a_bounded_number_of_plan_notes(personas):
    text = ("## Extra Agents\n" + "".join(f"- a{i}\n" for i in range(12000)))[: 64 * 1024]
    planned = _plan({PATH: text, "a.py": "x = 1\n"}, personas)
    notes = _config_notes(planned)
    assert 0 < len(notes) <= 2 * (han_config.MAX_NOTES + 1)
    assert "more" in notes[-1]
    assert sum(map(len, planned.notes)) < 10_000


def test_a_long_line_is_quoted_short_in_its_note():
    cfg = parse("## Extra Agents\n- " + "a b " * 10_000 + "\n")
    assert len(cfg.notes) == 1 and len(cfg.notes[0]) < 300


# --- extra agents seat only reviewers --------------------------------------------------------

ROLE_ONLY = ("adversarial-validator", "readability-editor", "plan-synthesizer", "risk-analyst",
             "software-architect")


@pytest.mark.parametrize("flow,fields", [
    ("code-review", {}),
    ("investigate", {"symptom": "it crashes"}),
    ("gap-analysis", {"focus": "docs/spec.md"}),
    ("architectural-analysis", {"focus": "app"}),
])
def test_extra_agents_cannot_seat_role_only_personas_as_reviewers(personas, flow, fields):
    cfg = "## Extra Agents\n" + "".join(f"- {n}\n" for n in ROLE_ONLY)
    files = {PATH: cfg, "app/a.py": "def f(x):\n    return x\n", "docs/spec.md": "# spec\n"}
    planned = _plan(files, personas, flow, band="large", **fields)
    for step in planned.steps:
        if step.persona in ROLE_ONLY:
            assert step.role != "discovery", step
    # Those the flow does not seat in their own role are refused in a note, not dropped silently.
    seated = {e.persona for e in planned.roster}
    notes = _config_notes(planned)
    for name in ROLE_ONLY:
        assert name in seated or any(name in n for n in notes), notes
