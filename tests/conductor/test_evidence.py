"""The evidence check: each cited quote is looked up at its lines of the pinned commit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conductor import evidence
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

    def read_head(self, path, limit):
        self.reads.append(path)
        return self.inner.read_head(path, limit)

    def size(self, path):
        self.reads.append(path)
        return self.inner.size(path)

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


def test_only_a_real_fence_may_open_with_a_language_line(snap):
    # The report shows the quote as given, so every line of it must be in the file.
    fenced = "```python\nwith open(path) as fh:\n    data = fh.read()\n```"
    assert one(snap, "app/io.py", 5, 6, fenced).outcome == "verified"
    forged = "`BACKDOOR_accepted\n    data = fh.read()`"
    assert one(snap, "app/io.py", 6, 6, forged).outcome == "not_found"
    assert one(snap, "app/io.py", 6, 6, forged.replace("`", "``")).outcome == "not_found"


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
    findings = [finding(("app/io.py", 1, 1, "import os"), ("app/io.py", 7, 7, "eval(data)"), fid=f"S-00{n}")
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
    repo = git_repo({"app.py": "def main():\n    return 100\n", "docs/readme.md": "hello\n"})
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
    assert one(spy, "app.py", 2, 2, "return 100").outcome == "verified"
    assert one(spy, "docs/alias.py", 1, 1, "def main():").outcome == "verified"


def test_the_pinned_commit_is_read_not_the_work_tree(git_repo):
    repo = git_repo({"app.py": "answer = 1\n"})
    snap = repo.pin()
    (repo.path / "app.py").write_text("answer = 2\n")  # edited after the pin
    assert one(snap, "app.py", 1, 1, "answer = 1").outcome == "verified"
    assert one(snap, "app.py", 1, 1, "answer = 2").outcome == "not_found"


# --- degenerate citations ------------------------------------------------------------------

AUTH = MemorySnapshot({"auth.py": "def allowed(user):\n    return True\n"})


def test_a_quote_too_short_to_prove_anything_is_not_found():
    for quote in ("e", "(", "return", "x = 1 ;"):  # under 8 characters besides spaces
        r = one(AUTH, "auth.py", 1, 2, quote)
        assert r.outcome == "not_found", quote
        assert "too short to check" in r.note
    assert one(AUTH, "auth.py", 2, 2, "return True").outcome == "verified"


def test_a_quote_matches_only_at_token_boundaries():
    # 'rn Tr' of 'return True', 'llowed(user' of 'allowed(user)': fragments of words.
    assert one(AUTH, "auth.py", 2, 2, "eturn True").outcome == "not_found"
    assert one(AUTH, "auth.py", 2, 2, "return Tru").outcome == "not_found"
    assert one(AUTH, "auth.py", 1, 1, "llowed(user):").outcome == "not_found"
    # Punctuation at an end needs no boundary there: '(user):' may follow a word.
    assert one(AUTH, "auth.py", 1, 2, "(user): return True").outcome == "verified"
    assert one(AUTH, "auth.py", 1, 1, "allowed(user").outcome == "verified"


def test_a_range_wider_than_any_quote_is_not_found_and_asks_for_a_narrower_one():
    r = one(AUTH, "auth.py", 1, 1_000_000, "return True")
    assert r.outcome == "not_found" and "narrower" in r.note
    code = MemorySnapshot({"big.py": "".join(f"value_{n} = {n}\n" for n in range(1, 301))})
    assert one(code, "big.py", 1, 200, "value_150 = 150").outcome == "verified"
    r = one(code, "big.py", 1, 201, "value_150 = 150")
    assert r.outcome == "not_found" and "at most 200 lines" in r.note


def test_a_range_past_the_end_of_the_file():
    r = one(AUTH, "auth.py", 3, 3, "return True")  # the file has 2 lines
    assert r.outcome == "not_found" and "past the end of the file (2 lines)" in r.note
    r = one(AUTH, "auth.py", 2, 9, "return True")  # quote inside: the end is clamped
    assert (r.outcome, r.line_start, r.line_end) == ("verified", 2, 2)
    r = one(AUTH, "auth.py", 2, 9, "def allowed(user):")  # elsewhere: not 'moved'
    assert r.outcome == "not_found" and "past the end of the file" in r.note


def test_a_citation_reaching_past_the_checked_head_is_not_found(monkeypatch):
    monkeypatch.setattr(evidence, "READ_BYTES", 40)
    snap = MemorySnapshot({
        "long.py": b"first_value = 1\nsecond_value = 2\nthird_value = 3\n",  # line 3 past byte 40
        "bundle.js": b"var a_long_name = 1; " * 4,  # no line break in the head at all
    })
    assert one(snap, "long.py", 1, 2, "second_value = 2").outcome == "verified"
    r = one(snap, "long.py", 2, 3, "second_value = 2")  # its end is not clamped to the head
    assert r.outcome == "not_found" and "only the first 40 bytes" in r.note and "lines 1-2" in r.note
    r = one(snap, "bundle.js", 1, 1, "var a_long_name = 1;")
    assert r.outcome == "not_found" and "no whole line in its first 40 bytes" in r.note


@pytest.mark.parametrize(
    "data, start, end, quote",
    [
        (b"x = 1\r\nlimit = 20\r\n", 2, 2, "limit = 20"),  # CRLF
        (b"if x:\n\tcall(a,\tb)\n", 2, 2, "call(a, b)"),  # tabs
        (b"a = 1\nlast_value = 2", 2, 2, "last_value = 2"),  # no newline at the end
        ("name = 'caf\xe9'\n".encode("latin-1"), 1, 1, "name = 'caf\ufffd'"),  # not UTF-8
        (b"a = 1\n\x0c\nb_value = 2\n", 3, 3, "b_value = 2"),  # a form feed is not a line break
        ("a = 1\u2028\nb_value = 2\n".encode(), 2, 2, "b_value = 2"),  # nor U+2028
    ],
)
def test_real_files_still_verify(data, start, end, quote):
    assert one(MemorySnapshot({"f.py": data}), "f.py", start, end, quote).outcome == "verified"


def test_a_quote_repeated_all_over_a_file_is_checked_quickly():
    # A hostile repository makes every line an occurrence of the quote; the check runs in the
    # supervisor's loop, so it must not walk each of them for every citation.
    import time

    snap = MemorySnapshot({"gen/t.txt": "x = 1\n" + "((\n" * 600_000}, commit="e" * 40)
    quote = "(( (( (( (( (("
    cites = [("gen/t.txt", 1, 1, quote)] * 24 + [("gen/t.txt", 500_000, 500_004, quote)]
    t = time.perf_counter()
    results = check([finding(*cites)], snap)
    assert time.perf_counter() - t < 5  # ~25 s when every occurrence was walked
    assert [r.outcome for r in results] == ["moved"] * 24 + ["verified"]


def test_a_huge_file_is_checked_in_its_head_only_and_in_little_memory():
    # A hostile repository can hold a file of tens of MB that compresses to nothing in git.
    # Run in a child process so its peak memory is its own.
    script = """
import resource, sys
from conductor.evidence import check
from conductor.snapshot import MemorySnapshot
from events.types import Evidence, Finding
snap = MemorySnapshot({"big.txt": b"ab\\n" * 10_000_000})  # 30 MB, ten million lines
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cites = [(1, 8, "ab ab ab ab"), (5_000_000, 5_000_001, "ab ab ab ab"), (2, 3, "cd cd cd cd")]
f = Finding(id="F-1", severity="High", title="t",
            evidence=tuple(Evidence(path="big.txt", line_start=a, line_end=b, quote=q) for a, b, q in cites))
for r in check([f], snap):
    print(r.outcome, r.note, sep="|")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    near, far, absent, grown_mb = out[0].split("|"), out[1].split("|"), out[2].split("|"), int(out[3])
    assert grown_mb < 200, grown_mb
    assert near == ["verified", ""]
    assert far[0] == "not_found" and "only the first 4,000,000 bytes of the file are checked" in far[1]
    assert absent[0] == "not_found" and "only its first 4,000,000 bytes are checked" in absent[1]
