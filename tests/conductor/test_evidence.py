"""The evidence check: each cited quote is looked up at its lines of the pinned commit."""

from __future__ import annotations

import os

import pytest

from conductor.evidence import check, finding_status, safe_path, unverified_reason
from conductor.snapshot import MemorySnapshot
from events.types import Evidence, EvidenceResult, Finding

APP = """\
import os


def load(path):
    with open(path) as fh:
        data = fh.read()
    return eval(data)
""" + "\n" * 40 + """\
def save(path, data):
    with open(path, "w") as fh:
        fh.write(repr(data))
"""


def finding(*citations, fid="S-001"):
    return Finding(
        id=fid, severity="High", title="t",
        evidence=tuple(Evidence(path=p, line_start=a, line_end=b, quote=q) for p, a, b, q in citations),
    )


def one(snapshot, path, start, end, quote, **kw):
    (result,) = check([finding((path, start, end, quote))], snapshot, **kw)
    return result


class Spy:
    """A snapshot that records every read, to prove a refused path is never read."""

    def __init__(self, inner):
        self.inner, self.commit, self.reads = inner, inner.commit, []

    def paths(self):
        return self.inner.paths()

    def read(self, path):
        self.reads.append(path)
        return self.inner.read(path)

    def changed(self):
        return self.inner.changed()

    def diff(self):
        return self.inner.diff()

    def messages(self):
        return self.inner.messages()


@pytest.fixture
def snap():
    return MemorySnapshot({"app/io.py": APP, "logo.png": b"\x89PNG\x00\x00data", "README.md": "read me\n"})


def test_exact_quote_at_its_lines_verifies(snap):
    r = one(snap, "app/io.py", 7, 7, "return eval(data)")
    assert r == EvidenceResult(finding_id="S-001", index=0, outcome="verified", path="app/io.py",
                               line_start=7, line_end=7)


def test_whitespace_is_normalised_but_words_are_not(snap):
    # Re-indented and re-wrapped across two lines: still the same text.
    assert one(snap, "app/io.py", 5, 6, "with open(path) as fh:\n data = fh.read()").outcome == "verified"
    assert one(snap, "app/io.py", 5, 6, "with   open(path)   as fh:   data =\tfh.read()").outcome == "verified"
    assert one(snap, "app/io.py", 5, 6, "with open(path) as f:").outcome == "not_found"


def test_a_moved_quote_is_reported_at_its_real_lines(snap):
    near = one(snap, "app/io.py", 1, 2, "data = fh.read()")
    assert (near.outcome, near.line_start, near.line_end) == ("moved", 6, 6)
    assert "within 30 lines" in near.note and "cited lines 1-2" in near.note
    far = one(snap, "app/io.py", 1, 1, 'fh.write(repr(data))')
    assert (far.outcome, far.line_start, far.line_end) == ("moved", 50, 50)
    assert "outside 30 lines" in far.note
    # The window is the caller's: with a wider one the same quote is "within".
    assert "within 60 lines" in one(snap, "app/io.py", 1, 1, "fh.write(repr(data))", window=60).note


def test_the_nearest_occurrence_wins(snap):
    r = one(snap, "app/io.py", 46, 48, "with open(path")
    assert (r.outcome, r.line_start, r.line_end) == ("moved", 49, 49)
    r = one(snap, "app/io.py", 2, 3, "with open(path")
    assert (r.outcome, r.line_start) == ("moved", 5)


def test_a_wrong_quote_is_not_found(snap):
    r = one(snap, "app/io.py", 7, 7, "return pickle.loads(data)")
    assert (r.outcome, r.line_start, r.line_end) == ("not_found", 7, 7)


def test_an_empty_quote_cannot_verify(snap):
    assert one(snap, "app/io.py", 7, 7, "").outcome == "not_found"


def test_a_quote_wrapped_in_backticks_is_unwrapped(snap):
    assert one(snap, "app/io.py", 7, 7, "`return eval(data)`").outcome == "verified"


def test_a_missing_file(snap):
    r = one(snap, "app/other.py", 1, 1, "x")
    assert (r.outcome, r.path) == ("no_such_file", "app/other.py")


def test_a_binary_file_is_not_searched(snap):
    assert one(snap, "logo.png", 1, 1, "data").outcome == "not_found"


@pytest.mark.parametrize(
    "path",
    ["../app/io.py", "app/../../etc/passwd", "/etc/passwd", "/app/io.py", "app\\io.py",
     "app/io.py\x00", "C:/app/io.py", "~/app/io.py", "", "app/\n/io.py"],
)
def test_paths_that_could_leave_the_tree_are_refused_without_reading(snap, path):
    spy = Spy(snap)
    r = one(spy, path, 1, 1, "import os")
    assert r.outcome == "no_such_file"
    assert spy.reads == []


def test_dot_segments_inside_the_tree_are_cleaned(snap):
    assert safe_path("./app/./io.py") == "app/io.py"
    assert one(snap, "./app/io.py", 1, 1, "import os").outcome == "verified"


def test_each_file_is_read_once_per_check(snap):
    spy = Spy(snap)
    findings = [finding(("app/io.py", 1, 1, "import os"), ("app/io.py", 7, 7, "eval"), fid=f"S-00{n}")
                for n in range(1, 4)]
    results = check(findings, spy)
    assert [r.outcome for r in results] == ["verified"] * 6
    assert spy.reads == ["app/io.py"]


def test_results_follow_finding_then_citation_order(snap):
    results = check([finding(("app/io.py", 1, 1, "import os"), ("nope.py", 1, 1, "x"), fid="S-001"),
                     finding(fid="S-002"),
                     finding(("app/io.py", 7, 7, "nothing"), fid="S-003")], snap)
    assert [(r.finding_id, r.index, r.outcome) for r in results] == [
        ("S-001", 0, "verified"), ("S-001", 1, "no_such_file"), ("S-003", 0, "not_found"),
    ]


# --- finding status ------------------------------------------------------------------------


def test_status_verified_needs_every_citation_found(snap):
    good = finding(("app/io.py", 7, 7, "return eval(data)"), ("app/io.py", 1, 1, "data = fh.read()"))
    assert finding_status(good, check([good], snap)) == "verified"  # one verified, one moved
    mixed = finding(("app/io.py", 7, 7, "return eval(data)"), ("app/io.py", 1, 1, "invented"))
    results = check([mixed], snap)
    assert finding_status(mixed, results) == "unverified"
    assert "invented" not in unverified_reason(mixed, results)
    assert "app/io.py:1-1: quote not found in the file" == unverified_reason(mixed, results)


def test_a_reason_given_by_several_citations_is_said_once(snap):
    # The small model cites one made-up path again and again; the report says so once.
    repeated = finding(("1", 1, 1, "x"), ("1", 2, 2, "y"), ("app/io.py", 1, 1, "invented"), ("1", 3, 3, "z"))
    assert unverified_reason(repeated, check([repeated], snap)) == (
        "1: no such file in the snapshot; app/io.py:1-1: quote not found in the file"
    )


def test_status_without_evidence_or_results_is_unverified(snap):
    bare = finding()
    assert finding_status(bare, check([bare], snap)) == "unverified"
    assert unverified_reason(bare, ()) == "no evidence cited"
    cited = finding(("app/io.py", 7, 7, "return eval(data)"))
    assert finding_status(cited, ()) == "unverified"  # not checked yet is not verified


def test_status_only_counts_the_findings_own_results(snap):
    a = finding(("app/io.py", 7, 7, "return eval(data)"), fid="S-001")
    b = finding(("app/io.py", 7, 7, "nope"), fid="S-002")
    results = check([a, b], snap)
    assert finding_status(a, results) == "verified"
    assert finding_status(b, results) == "unverified"


# --- a real pinned git snapshot --------------------------------------------------------------


def test_links_out_of_a_real_git_tree_are_never_followed(git_repo, tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("TOP SECRET\n")
    repo = git_repo({"app.py": "def main():\n    return 1\n", "docs/readme.md": "hello\n"})
    os.symlink(str(secret), repo.path / "abs_link.txt")  # absolute, out of the tree
    os.symlink("../../outside.txt", repo.path / "docs" / "up_link.txt")  # relative, climbs out
    os.symlink("../app.py", repo.path / "docs" / "alias.py")  # stays inside the tree
    repo.commit("links")
    snap = repo.pin()
    spy = Spy(snap)

    for path in ("abs_link.txt", "docs/up_link.txt"):
        r = one(spy, path, 1, 1, "TOP SECRET")
        assert r.outcome == "no_such_file", path
    assert spy.reads == []  # not listed in the snapshot: refused before any read
    assert one(spy, "../outside.txt", 1, 1, "TOP SECRET").outcome == "no_such_file"
    assert spy.reads == []

    # Inside the tree, the pinned commit is what is read, and a link to a file in it resolves.
    assert one(spy, "app.py", 2, 2, "return 1").outcome == "verified"
    assert one(spy, "docs/alias.py", 1, 1, "def main():").outcome == "verified"


def test_the_pinned_commit_is_read_not_the_work_tree(git_repo):
    repo = git_repo({"app.py": "x = 1\n"})
    snap = repo.pin()
    (repo.path / "app.py").write_text("x = 2\n")  # edited after the pin
    assert one(snap, "app.py", 1, 1, "x = 1").outcome == "verified"
    assert one(snap, "app.py", 1, 1, "x = 2").outcome == "not_found"
