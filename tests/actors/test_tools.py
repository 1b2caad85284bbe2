"""The read-only tool layer: what a model may read, and everything it may not do."""

from __future__ import annotations

import json
import os
import time

import jsonschema
import pytest
from hostile import ESCAPES, PASSWD_MARK, REDOS, SECRET, make_hostile_repo, make_repo, write

from actors.snapshot import pin
from actors.tools import (
    TOOL_NAMES,
    TOOL_SPECS,
    ToolGate,
    ToolLimits,
    ToolOutcome,
    call_schema,
    glob_match,
    outcome_event,
)
from conductor.snapshot import MemorySnapshot
from events.codec import decode, encode
from events.types import ToolDenied, ToolResult


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    repo = make_hostile_repo(root)
    snap = pin(repo, work_dir=root / "run")
    yield root, repo, snap
    snap.close()


@pytest.fixture
def gate(hostile):
    return ToolGate(hostile[2])


def leaks(outcome: ToolOutcome) -> bool:
    text = outcome.content + outcome.denied
    return SECRET in text or PASSWD_MARK in text


# --- the tool descriptions ------------------------------------------------------------------


def string_schemas(node):
    """Every schema of type string inside ``node``."""
    if isinstance(node, dict):
        if node.get("type") == "string":
            yield node
        for value in node.values():
            yield from string_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_schemas(value)


def test_tool_specs_describe_exactly_the_read_tools():
    assert [s["function"]["name"] for s in TOOL_SPECS] == list(TOOL_NAMES)
    assert set(TOOL_NAMES) == {"list_dir", "read_file", "grep", "glob", "git_log"}
    for spec in TOOL_SPECS:
        assert spec["type"] == "function"
        params = spec["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert spec["function"]["description"]
        jsonschema.Draft202012Validator.check_schema(params)
    assert all("maxLength" in s for s in string_schemas(TOOL_SPECS))
    json.dumps(TOOL_SPECS)  # plain JSON, ready for an OpenAI-style request


def test_call_schema_accepts_one_read_call_or_a_final_answer():
    final = {"type": "object", "properties": {"findings": {"type": "array", "maxItems": 3}},
             "required": ["findings"], "additionalProperties": False}
    schema = call_schema(final)
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid({"tool": "read_file", "args": {"path": "src/app.py", "start_line": 2}})
    assert check.is_valid({"tool": "grep", "args": {"pattern": "def ", "glob": "*.py"}})
    assert check.is_valid({"final": {"findings": []}})
    assert not check.is_valid({"tool": "write_file", "args": {"path": "x"}})
    assert not check.is_valid({"tool": "read_file", "args": {"path": "x" * 1000}})
    assert not check.is_valid({"tool": "read_file", "args": {"path": "a", "mode": "w"}})
    assert not check.is_valid({"tool": "glob", "args": {"path": "a"}})  # glob needs a pattern
    assert not check.is_valid({"final": {"findings": [1, 2, 3, 4]}})
    assert not check.is_valid({"tool": "list_dir", "args": {}, "final": {"findings": []}})
    plain = jsonschema.Draft202012Validator(call_schema())
    assert plain.is_valid({"final": "done"})
    assert not plain.is_valid({"final": "x" * 100_000})
    assert all("maxLength" in s for s in string_schemas(call_schema()))


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["write_file", "edit", "edit_file", "shell", "bash", "exec", "delete", "git_commit", "run",
     "", "READ_FILE", "read_file ", "read_file;rm -rf /", "../read_file", "x" * 5000, None, 42],
)
def test_anything_but_a_read_tool_is_refused_with_a_reason(gate, name):
    out = gate.call(name, {"path": "README.md", "content": "owned"})
    assert out.denied and not out.ok and out.content == ""
    assert "is not a read-only tool" in out.denied and len(out.denied) < 300


@pytest.mark.parametrize(
    "name, args, why",
    [
        ("read_file", None, "expected a JSON object"),
        ("read_file", ["README.md"], "expected a JSON object"),
        ("read_file", "README.md", "expected a JSON object"),
        ("read_file", {}, "missing required field `path`"),
        ("read_file", {"path": 3}, "Expected `str`"),
        ("read_file", {"path": "a", "start_line": "5"}, "Expected `int`"),
        ("read_file", {"path": "a", "start_line": True}, "Expected `int`"),
        ("read_file", {"path": "a", "start_line": 0}, ">= 1"),
        ("read_file", {"path": "a", "mode": "w"}, "unknown field `mode`"),
        ("read_file", {"path": "a" * 301}, "length <= 300"),
        ("read_file", {"path": "README.md", "start_line": 5, "end_line": 2}, "before start_line"),
        ("grep", {"pattern": ""}, "length >= 1"),
        ("grep", {"pattern": "x" * 201}, "length <= 200"),
        ("glob", {}, "missing required field `pattern`"),
        ("git_log", {"limit": 0}, ">= 1"),
        ("git_log", {"limit": 1000}, "<= 100"),
        ("list_dir", {"path": ".", "recursive": True}, "unknown field"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(gate, name, args, why):
    out = gate.call(name, args)
    assert out.denied.startswith(f"bad arguments for {name}") and why in out.denied


def test_every_escape_through_every_tool_is_refused_or_empty(hostile, gate):
    calls = []
    for path in ESCAPES:
        calls += [
            ("list_dir", {"path": path}),
            ("read_file", {"path": path}),
            ("read_file", {"path": path, "start_line": 1, "end_line": 5}),
            ("grep", {"pattern": ".", "path": path}),
            ("grep", {"pattern": "SECRET|root", "glob": path}),
            ("glob", {"pattern": path}),
            ("git_log", {"path": path}),
        ]
    for name, args in calls:
        out = gate.call(name, args)
        assert not leaks(out), (name, args, out)
        if name == "git_log" and args["path"] in hostile[2].entries():
            continue  # the history of a link entry is in-tree history; its target is never read
        # Refused, failed, or an empty result ("0 files match ...", "0 matches ...").
        assert out.denied or not out.ok or out.content.startswith("0 "), (name, args, out)
    # The refusals that matter are refusals, not just empty answers.
    for path in ("../outside-secret.txt", "/etc/passwd", "secret-link", "abs-secret", "chain-1",
                 "etc-passwd", "parent-dir/outside-secret.txt", "..\\outside-secret.txt"):
        assert gate.call("read_file", {"path": path}).denied, path
    assert gate.call("list_dir", {"path": "parent-dir"}).denied
    assert gate.call("read_file", {"path": "vendor/lib"}).denied
    assert gate.call("read_file", {"path": "vendor/lib/x.py"}).denied
    assert os.listdir(hostile[0] / "canary") == []


def test_the_whole_repository_read_through_the_tools_never_shows_the_secret(hostile, gate):
    root, _, snap = hostile
    outs = [gate.call("list_dir", {}), gate.call("glob", {"pattern": "**"})]
    outs += [gate.call("grep", {"pattern": p}) for p in (".", "SECRET", "root:", "passwd")]
    for d in ("", "src", "docs", "data", "...", "..data", "vendor"):
        outs.append(gate.call("list_dir", {"path": d or "."}))
    for path in snap.entries():
        outs.append(gate.call("read_file", {"path": path}))
        outs.append(gate.call("git_log", {"path": path}))
    assert not any(leaks(o) for o in outs)
    assert os.listdir(root / "canary") == []


# --- reading --------------------------------------------------------------------------------


def test_read_file_shows_numbered_line_ranges(gate):
    out = gate.call("read_file", {"path": "src/app.py", "start_line": 4, "end_line": 6})
    assert out.ok and not out.truncated and not out.denied
    assert out.content.splitlines() == [
        "src/app.py lines 4-6 of 10",
        "     4\tdef handler(event):",
        "     5\t    path = event['path']",
        "     6\t    return open(path).read()  # unchecked path: a real finding",
    ]
    whole = gate.call("read_file", {"path": "src/app.py"})
    assert whole.content.count("\n") == 10
    past = gate.call("read_file", {"path": "src/app.py", "start_line": 11})
    assert not past.ok and "has 10 lines" in past.content
    beyond = gate.call("read_file", {"path": "src/app.py", "start_line": 9, "end_line": 400})
    assert beyond.ok and "lines 9-10 of 10" in beyond.content
    assert gate.call("read_file", {"path": "missing.py"}).content == "no file missing.py in the repository"


def test_read_file_follows_links_inside_and_reads_odd_names(gate):
    link = gate.call("read_file", {"path": "docs/readme-link.md", "end_line": 1})
    assert link.ok and "# Friendly project" in link.content
    for path, text in [("new\nline.txt", "a name with a newline"), (".../hidden.txt", "three dots"),
                       ("..data/values.txt", "two dots"), ("with space.txt", "a space"),
                       ("-rf.txt", "looks like an option"), ("\u00fcn\u00efc\u00f8d\u00e9.py", "print")]:
        out = gate.call("read_file", {"path": path})
        assert out.ok and text in out.content, path
    assert "binary file (16,384 bytes)" in gate.call("read_file", {"path": "blob.bin"}).content


def test_read_file_is_bounded_and_says_so(hostile):
    snap = hostile[2]
    small = ToolGate(snap, ToolLimits(max_lines=5, max_line_chars=20, read_bytes=1000))
    out = small.call("read_file", {"path": "data/huge.txt"})
    assert out.truncated and out.content.count("\n") == 5
    assert "…[+" in out.content and "more with start_line=6" in out.content
    far = small.call("read_file", {"path": "data/huge.txt", "start_line": 50_000})
    assert not far.ok and "only its first 19 lines" in far.content
    huge = ToolGate(snap).call("read_file", {"path": "data/huge.txt", "start_line": 59_999})
    assert huge.ok and not huge.truncated and "line 059999 of" in huge.content
    tiny = ToolGate(snap, ToolLimits(max_output_chars=200))
    cut = tiny.call("read_file", {"path": "src/util.py"})
    assert cut.truncated and len(cut.content) < 260 and "[output cut at 200 characters]" in cut.content


def test_list_dir_and_glob(gate):
    root = gate.call("list_dir", {}).content.splitlines()
    assert root[0] == ".: 21 entries"
    assert "src/" in root and "README.md" in root and "..data/" in root
    assert any(line.startswith("etc-passwd (link not leading") for line in root)
    assert "lib (submodule: not readable)" in gate.call("list_dir", {"path": "vendor/"}).content
    assert not gate.call("list_dir", {"path": "README.md"}).ok
    assert not gate.call("list_dir", {"path": "nope"}).ok
    py = gate.call("glob", {"pattern": "*.py"}).content.splitlines()
    assert py == ["3 files match *.py", "src/app.py", "src/util.py", "\u00fcn\u00efc\u00f8d\u00e9.py"]
    assert gate.call("glob", {"pattern": "src/*.txt"}).content.splitlines()[1:] == ["src/redos.txt"]
    assert '"new\\nline.txt"' in gate.call("glob", {"pattern": "new*"}).content  # quoted, re-usable
    docs = gate.call("glob", {"pattern": "docs/**"}).content.splitlines()[1:]
    assert docs == ["docs/guide.md", "docs/readme-link.md"]
    few = ToolGate(gate.snapshot, ToolLimits(max_entries=2)).call("glob", {"pattern": "**"})
    assert few.truncated and len(few.content.splitlines()) == 3


@pytest.mark.parametrize(
    "pattern, path, hit",
    [
        ("*.py", "a/b/c.py", True),
        ("src/*.py", "src/a.py", True),
        ("src/*.py", "src/a/b.py", False),
        ("src/**/*.py", "src/b.py", True),
        ("src/**/*.py", "src/a/b/c.py", True),
        ("**/test_*.py", "tests/test_x.py", True),
        ("**", "any/thing", True),
        ("file?.[ch]", "file1.c", True),
        ("file?.[!ch]", "file1.c", False),
        ("[a-c]*", "banana", True),
        ("*[", "x[", True),
        ("a*a*a*a*a*a*a*a*a*a*a*a*b", "a" * 4000, False),
        ("/".join(["**"] * 60 + ["c.py"]), "a/b/c.py", True),  # **/** is **, not 60 loops
        ("/".join(["**"] * 60 + ["x.py"]), "/".join("abcdefghijklm"), False),
    ],
)
def test_glob_match(pattern, path, hit):
    started = time.monotonic()
    assert glob_match(pattern, path) is hit
    assert time.monotonic() - started < 1.0  # no backtracking blow-up


def test_a_glob_too_costly_for_the_tree_stops_at_its_budget_and_says_so():
    # "*/**" repeated costs more per path than a big tree allows; it stopped at nothing.
    deep = "/".join("d" * 40)
    files = {f"{deep}/{name}{i}.txt": "x\n" for name in ("f", "g") for i in range(1500)}
    gate = ToolGate(MemorySnapshot(files), ToolLimits(glob_seconds=0.05, max_output_chars=10**7))
    out = gate.call("glob", {"pattern": "*/**/" * 30 + "f1*.txt"})
    assert out.ok and out.truncated
    assert "matching stopped after 0.05s" in out.content.splitlines()[0]
    found = out.content.splitlines()[1:]
    assert found and all(glob_match("**/f1*.txt", f) for f in found)  # what it found is right


# --- grep -----------------------------------------------------------------------------------


def test_grep_finds_lines_and_narrows_by_path_and_glob(gate):
    out = gate.call("grep", {"pattern": r"def (handler|main)"})
    assert out.ok and out.content.splitlines()[1:] == ["src/app.py:4: def handler(event):",
                                                        "src/app.py:9: def main():"]
    assert "README.md:3:" in gate.call("grep", {"pattern": "SYSTEM", "glob": "*.md"}).content
    assert "README" not in gate.call("grep", {"pattern": "SYSTEM", "glob": "*.txt"}).content
    one = gate.call("grep", {"pattern": "helper_3\\b", "path": "src/util.py"})
    assert one.content.splitlines()[1:] == ["src/util.py:10: def helper_3():"]
    bad = gate.call("grep", {"pattern": "(unclosed"})
    assert not bad.ok and not bad.denied and "invalid regular expression" in bad.content
    assert gate.call("grep", {"pattern": ".", "path": "parent-dir/x"}).denied


def test_grep_is_bounded_in_matches(hostile):
    few = ToolGate(hostile[2], ToolLimits(max_matches=3))
    out = few.call("grep", {"pattern": "helper"})
    assert out.truncated and len(out.content.splitlines()) == 4
    assert "stopped at 3 matches" in out.content


def test_grep_with_a_catastrophic_regex_stops_on_time(hostile):
    gate = ToolGate(hostile[2], ToolLimits(grep_seconds=1.0))
    started = time.monotonic()
    out = gate.call("grep", {"pattern": REDOS})
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert out.ok and out.truncated and "search stopped after 1s" in out.content
    # The same pattern over lines it cannot blow up on still answers normally.
    fine = gate.call("grep", {"pattern": REDOS, "path": "docs"})
    assert fine.ok and not fine.truncated


def test_grep_skips_large_and_binary_files_and_says_so(gate):
    out = gate.call("grep", {"pattern": "line 000001 of"})
    assert "binary or large files not searched" in out.content  # data/huge.txt is over 1 MB
    big = ToolGate(gate.snapshot, ToolLimits(grep_file_bytes=5_000_000))
    assert "data/huge.txt:2:" in big.call("grep", {"pattern": "line 000001 of"}).content


# --- history, pinning, other snapshots ------------------------------------------------------


def test_git_log_reads_history_of_the_pinned_commit(tmp_path):
    repo = make_repo(tmp_path / "repo", {"a.py": "A = 1\n", "b.py": "B = 1\n"}, "first")
    write(repo, {"a.py": "A = 2\n"})
    from hostile import git

    git(repo, "commit", "-q", "-am", "second touches a")
    snap = pin(repo, work_dir=tmp_path / "run")
    git(repo, "commit", "-q", "--allow-empty", "-m", "after the pin")
    gate = ToolGate(snap)
    log = gate.call("git_log", {}).content.splitlines()
    assert [line.split(": ", 1)[1] for line in log] == ["second touches a", "first"]
    assert [ln.split(": ", 1)[1] for ln in gate.call("git_log", {"path": "b.py"}).content.splitlines()] == ["first"]
    assert len(gate.call("git_log", {"limit": 1}).content.splitlines()) == 1
    assert not gate.call("git_log", {"path": "nope.py"}).ok


def test_tools_read_the_pin_not_the_work_tree(tmp_path):
    repo = make_repo(tmp_path / "repo", {"a.py": "PINNED = True\n"})
    gate = ToolGate(pin(repo, work_dir=tmp_path / "run"))
    write(repo, {"a.py": "EDITED = True\n", "b.py": "NEW = 1\n"})
    assert "PINNED" in gate.call("read_file", {"path": "a.py"}).content
    assert "EDITED" not in gate.call("grep", {"pattern": "EDITED|NEW"}).content
    assert gate.call("glob", {"pattern": "*.py"}).content.splitlines()[1:] == ["a.py"]


def test_the_gate_works_over_an_in_memory_snapshot():
    gate = ToolGate(MemorySnapshot({"src/a.py": "x = 1\ny = 2\n", "README.md": "hi\n"}))
    assert gate.call("read_file", {"path": "src/a.py", "start_line": 2}).content.endswith("     2\ty = 2")
    assert gate.call("list_dir", {}).content.splitlines()[1:] == ["README.md", "src/"]
    assert "src/a.py:1: x = 1" in gate.call("grep", {"pattern": "x"}).content
    assert not gate.call("git_log", {}).ok
    assert gate.call("read_file", {"path": "../etc/passwd"}).denied


# --- events ---------------------------------------------------------------------------------


def test_outcomes_map_to_events(gate):
    common = dict(run_id="r1", step_id="s1", attempt=2, call_id="c1", ts=1.5)
    denied = outcome_event(gate.call("bash", {"cmd": "rm -rf /"}), tool="bash",
                           args={"cmd": "rm -rf /"}, **common)
    assert isinstance(denied, ToolDenied)
    assert denied.reason.startswith("'bash' is not a read-only tool") and denied.args == {"cmd": "rm -rf /"}
    result = outcome_event(gate.call("read_file", {"path": "README.md"}), tool="read_file",
                           args={"path": "README.md"}, **common)
    assert isinstance(result, ToolResult) and result.ok and "Friendly project" in result.content
    missing = outcome_event(gate.call("read_file", {"path": "nope"}), tool="read_file",
                            args={"path": "nope"}, **common)
    assert isinstance(missing, ToolResult) and not missing.ok
    for event in (denied, result, missing):
        assert decode(encode(event)) == event
        assert (event.run_id, event.step_id, event.attempt, event.call_id) == ("r1", "s1", 2, "c1")
