"""The mechanical evidence check: is each cited quote really at its lines of the pinned commit?

A quote is compared with whitespace normalised (runs of spaces, tabs and newlines count as one
space; ends trimmed), so re-indented or re-wrapped quotes still match, but a changed word does
not. A match counts only at token boundaries: a quote starting (ending) with a letter, digit or
underscore must not continue a word of the file there. Outcomes of one citation:

- ``verified``: the quote stands inside the cited lines;
- ``moved``: the quote is elsewhere in the same file; the result carries the lines where it
  really is (the nearest occurrence to the cited lines, and the note says whether that is
  within ``window`` lines of them);
- ``not_found``: the file exists but the quote is not in it, or the citation cannot prove
  anything: no quote, a quote under ``MIN_QUOTE_CHARS`` characters besides spaces, a range
  wider than ``MAX_CITED_LINES`` lines, or lines past the end of the file (an end past the last
  line is clamped when the quote is found inside) or past the first ``READ_BYTES`` bytes, which
  are all the check reads, as the read_file tool;
- ``no_such_file``: no such file in the snapshot, or a path that could lead outside it.

Paths are checked here before any read, as a second gate behind ``Snapshot.read``: absolute
paths, ``..``, backslashes, NUL and other control characters, and paths the snapshot does not
list are refused without reading.

A finding is **verified** when it cites at least one location and every citation is
``verified`` or ``moved``. One invented citation is enough to leave a finding unverified: the
report promises that every citation it shows was checked, so a finding cannot lean on a quote
that is not there. Unverified findings are kept and labelled, never dropped.
"""

from __future__ import annotations

import bisect
import io
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from conductor.snapshot import Snapshot
from events.types import EvidenceResult, Finding

__all__ = ["check", "check_one", "finding_status", "safe_path", "unverified_reason"]

Status = Literal["verified", "unverified"]

# How far into a file the check reads: the read_file tool's bound (actors.tools.ToolLimits
# .read_bytes), so a quote is checked against the same text the model could see. A citation
# past it is not found, and a huge file costs no more memory than this.
READ_BYTES = 4_000_000
# A quote shorter than this (spaces not counted) stands somewhere in most files, and a range
# wider than this covers most of one: either would verify anything.
MIN_QUOTE_CHARS = 8
MAX_CITED_LINES = 200
# Places a quote is looked for, per search: a hostile file can repeat a quote on every line,
# and the check runs in the supervisor's loop. Normal files never come near it.
MAX_SCANNED = 10_000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_path(path: str) -> str | None:
    """The path as a clean relative POSIX path, or None when it could point outside the tree.

    >>> safe_path("./src/a.py"), safe_path("../etc/passwd"), safe_path("/etc/passwd")
    ('src/a.py', None, None)
    """
    if not isinstance(path, str) or not path or len(path) > 4096:
        return None
    if "\\" in path or _CONTROL.search(path) or path.startswith(("/", "~")):
        return None
    if _WINDOWS_DRIVE.match(path):
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def check(
    findings: Sequence[Finding], snapshot: Snapshot, *, window: int = 30
) -> tuple[EvidenceResult, ...]:
    """One result per citation of every finding, in finding then citation order.

    A finding with no evidence gives no result (and is unverified: see ``finding_status``).
    """
    files = _Files(snapshot)
    results = []
    for finding in findings:
        for index, ev in enumerate(finding.evidence):
            results.append(
                check_one(
                    finding.id, index, ev.path, ev.line_start, ev.line_end, ev.quote, files,
                    window=window,
                )
            )
    return tuple(results)


def check_one(
    finding_id: str,
    index: int,
    path: str,
    line_start: int,
    line_end: int,
    quote: str,
    files: _Files | Snapshot,
    *,
    window: int = 30,
) -> EvidenceResult:
    """Check a single citation (``files`` is a snapshot or a cache made by ``check``)."""
    if not isinstance(files, _Files):
        files = _Files(files)

    def result(outcome, start=line_start, end=line_end, note="", where=path):
        return EvidenceResult(
            finding_id=finding_id, index=index, outcome=outcome, path=where,
            line_start=start, line_end=end, note=note,
        )

    clean = safe_path(path)
    if clean is None:
        return result("no_such_file", note="path could lead outside the snapshot; not read")
    text = files.text(clean)
    if text is None:
        return result("no_such_file", note="no such file in the snapshot", where=clean)
    if text is _BINARY:
        return result("not_found", note="binary file; quotes are checked in text files only", where=clean)
    needle = _norm(_unwrap(quote))
    if not needle:
        return result("not_found", note="the citation has no quote to check", where=clean)
    problem = _degenerate(needle, line_start, line_end)
    if problem:
        return result("not_found", note=problem, where=clean)
    total, partial = files.extent(clean)
    past = ""
    if line_end > total:
        if not partial:
            past = f"cited lines {line_start}-{line_end} run past the end of the file ({total} lines)"
        elif total:
            past = f"only the first {READ_BYTES:,} bytes of the file are checked (lines 1-{total})"
        else:
            past = (f"the file has no whole line in its first {READ_BYTES:,} bytes, which are "
                    "all that is checked")
    if line_start > total or (past and partial):
        return result("not_found", note=past, where=clean)
    last = min(line_end, total)  # an end past the last line is clamped only with the quote inside
    # The cited lines first, searched on their own, so how often the quote occurs elsewhere
    # cannot change this answer.
    if next(files.spans(clean, needle, line_start, last), None) is not None:
        return result("verified", start=line_start, end=last, where=clean)
    nearest, gap = None, 0
    for span in files.spans(clean, needle):
        distance = _distance(span, line_start, line_end)
        if nearest is None or distance < gap:  # ties go to the earlier: spans come in file order
            nearest, gap = span, distance
    if past:
        return result("not_found", note=past, where=clean)
    if nearest is None:
        head = f" (only its first {READ_BYTES:,} bytes are checked)" if partial else ""
        return result("not_found", note=f"quote not found in the file{head}", where=clean)
    start, end = nearest
    where = "within" if gap <= window else "outside"
    note = f"cited lines {line_start}-{line_end}; found at {start}-{end} ({where} {window} lines)"
    return result("moved", start=start, end=end, note=note, where=clean)


def finding_status(finding: Finding, results: Iterable[EvidenceResult]) -> Status:
    """``verified`` when the finding cites something and every citation verified or moved.

    ``results`` may hold results of other findings; only this finding's id counts.
    """
    mine = {r.index: r for r in results if r.finding_id == finding.id}
    if not finding.evidence:
        return "unverified"
    for index in range(len(finding.evidence)):
        r = mine.get(index)
        if r is None or r.outcome not in ("verified", "moved"):
            return "unverified"
    return "verified"


def unverified_reason(finding: Finding, results: Iterable[EvidenceResult]) -> str:
    """Why a finding is unverified, in one line ('' when it is verified)."""
    if not finding.evidence:
        return "no evidence cited"
    mine = {r.index: r for r in results if r.finding_id == finding.id}
    bad = []
    for index, ev in enumerate(finding.evidence):
        r = mine.get(index)
        if r is None:
            bad.append(f"{ev.path}:{ev.line_start}-{ev.line_end} not checked")
        elif r.outcome == "no_such_file":
            bad.append(f"{ev.path}: {r.note or 'no such file'}")
        elif r.outcome == "not_found":
            bad.append(f"{ev.path}:{ev.line_start}-{ev.line_end}: {r.note or 'quote not found'}")
    return "; ".join(dict.fromkeys(bad))  # a path cited three times is one reason, not three


# --- matching ------------------------------------------------------------------------------

_BINARY = object()


def _norm(s: str) -> str:
    return " ".join(s.split())


def _degenerate(needle: str, line_start: int, line_end: int) -> str:
    """Why a citation proves nothing wherever it is found ('' when it can be checked)."""
    if len(needle) - needle.count(" ") < MIN_QUOTE_CHARS:
        return f"quote too short to check (fewer than {MIN_QUOTE_CHARS} characters besides spaces)"
    if line_end - line_start + 1 > MAX_CITED_LINES:
        return (f"cited lines {line_start}-{line_end} are too wide to check; cite a narrower range "
                f"(at most {MAX_CITED_LINES} lines) around the quote")
    return ""


def _is_word(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _unwrap(quote: str) -> str:
    """Drop one pair of backticks a model may have put around a quote."""
    q = quote.strip()
    m = re.fullmatch(r"(`{1,3})(.*?)\1", q, re.S)
    if not m:
        return q
    if m.group(1) == "```":  # only a real fence may open with a language line ('python')
        return re.sub(r"\A[A-Za-z0-9_+-]*\n", "", m.group(2))
    return m.group(2)


def _distance(span: tuple[int, int], start: int, end: int) -> int:
    s, e = span
    if e < start:
        return start - e
    if s > end:
        return s - end
    return 0


class _Files:
    """Each file read once per check (its head: see ``READ_BYTES``), decoded, and indexed for
    whitespace-free search."""

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot
        self._listed: frozenset[str] | None = None
        self._text: dict[str, object] = {}
        self._partial: dict[str, bool] = {}
        self._index: dict[str, tuple[str, array, array, int]] = {}

    def text(self, path: str) -> object:
        if path not in self._text:
            self._text[path] = self._load(path)
        return self._text[path]

    def _load(self, path: str) -> object:
        if self._listed is None:
            self._listed = frozenset(self._snapshot.paths())
        if path not in self._listed:
            return None
        head = self._snapshot.read_head(path, READ_BYTES)
        if head is None:
            return None
        data, size = head
        if b"\x00" in data[:8192]:
            return _BINARY
        self._partial[path] = len(data) < size
        return data.decode("utf-8", errors="replace")

    def extent(self, path: str) -> tuple[int, bool]:
        """(lines checked, whether the file goes on past them)."""
        _, _, _, total = self._indexed(path)
        return total, self._partial[path]

    def spans(
        self, path: str, needle: str, from_line: int = 1, to_line: int | None = None
    ) -> Iterator[tuple[int, int]]:
        """Each (first line, last line) where the normalised needle occurs in the file, or in
        lines ``from_line``-``to_line`` of it, in file order, at token boundaries: 'rn Tr' is
        not a quote of 'return True'. At most ``MAX_SCANNED`` places are looked at."""
        joined, starts, lines, _ = self._indexed(path)
        i = bisect.bisect_left(lines, from_line)
        j = len(lines) - 1 if to_line is None else bisect.bisect_right(lines, to_line) - 1
        if i > j:
            return
        lo = starts[i]
        hi = starts[j + 1] - 1 if j + 1 < len(starts) else len(joined)  # before the joining space
        open_start, open_end = _is_word(needle[0]), _is_word(needle[-1])
        pos = joined.find(needle, lo, hi)
        for _ in range(MAX_SCANNED):
            if pos == -1:
                return
            after = pos + len(needle)
            if not (open_start and pos > 0 and _is_word(joined[pos - 1])) and not (
                open_end and after < len(joined) and _is_word(joined[after])
            ):
                first = lines[bisect.bisect_right(starts, pos) - 1]
                last = lines[bisect.bisect_right(starts, after - 1) - 1]
                yield first, last
            pos = joined.find(needle, pos + 1, hi)

    def _indexed(self, path: str) -> tuple[str, array, array, int]:
        if path not in self._index:
            # The file's words joined by single spaces; starts[i] is where word-run i begins in
            # that string and lines[i] the line it came from, so a match maps back to lines.
            # Arrays, and lines read one at a time: a file of millions of short lines costs a
            # few bytes a line, not a Python object each.
            text = self._text[path]
            assert isinstance(text, str)
            if self._partial[path]:
                text = text[: text.rfind("\n") + 1]  # the head may stop mid-line: whole lines only
            starts, lines, joined = array("q"), array("q"), io.StringIO()
            # newline="\n": lines end at "\n" only, as git counts them.
            for number, line in enumerate(io.StringIO(text, newline="\n"), 1):
                chunk = " ".join(line.split())
                if not chunk:
                    continue
                if lines:
                    joined.write(" ")  # the joining space belongs to the previous line
                starts.append(joined.tell())
                lines.append(number)
                joined.write(chunk)
            total = text.count("\n") + (not text.endswith("\n") and text != "")
            self._index[path] = (joined.getvalue(), starts, lines, total)
        return self._index[path]
