"""The mechanical evidence check: is each cited quote really at its lines of the pinned commit?

A quote is compared with whitespace normalised (runs of spaces, tabs and newlines count as one
space; ends trimmed), so re-indented or re-wrapped quotes still match, but a changed word does
not. Outcomes of one citation:

- ``verified``: the quote stands inside the cited lines;
- ``moved``: the quote is elsewhere in the same file; the result carries the lines where it
  really is (the nearest occurrence to the cited lines, and the note says whether that is
  within ``window`` lines of them);
- ``not_found``: the file exists but the quote is not in it (or there was no quote to check);
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
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from conductor.snapshot import Snapshot
from events.types import EvidenceResult, Finding

__all__ = ["check", "check_one", "finding_status", "safe_path", "unverified_reason"]

Status = Literal["verified", "unverified"]

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
    spans = files.spans(clean, needle)
    if not spans:
        return result("not_found", note="quote not found in the file", where=clean)
    for start, end in spans:
        if start >= line_start and end <= line_end:
            return result("verified", start=line_start, end=line_end, where=clean)
    # Nearest occurrence to the cited lines; ties go to the earlier one.
    start, end = min(spans, key=lambda s: (_distance(s, line_start, line_end), s[0]))
    gap = _distance((start, end), line_start, line_end)
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


def _unwrap(quote: str) -> str:
    """Drop one pair of backticks a model may have put around a quote."""
    q = quote.strip()
    m = re.fullmatch(r"(`{1,3})(?:[A-Za-z0-9_+-]*\n)?(.*?)\1", q, re.S)
    return m.group(2) if m else q


def _distance(span: tuple[int, int], start: int, end: int) -> int:
    s, e = span
    if e < start:
        return start - e
    if s > end:
        return s - end
    return 0


class _Files:
    """Each file read once per check, decoded, and indexed for whitespace-free search."""

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot
        self._listed: frozenset[str] | None = None
        self._text: dict[str, object] = {}
        self._index: dict[str, tuple[str, list[int], list[int]]] = {}

    def text(self, path: str) -> object:
        if path not in self._text:
            self._text[path] = self._load(path)
        return self._text[path]

    def _load(self, path: str) -> object:
        if self._listed is None:
            self._listed = frozenset(self._snapshot.paths())
        if path not in self._listed:
            return None
        data = self._snapshot.read(path)
        if data is None:
            return None
        if b"\x00" in data[:8192]:
            return _BINARY
        return data.decode("utf-8", errors="replace")

    def spans(self, path: str, needle: str) -> list[tuple[int, int]]:
        """Every (first line, last line) where the normalised needle occurs in the file."""
        joined, starts, lines = self._indexed(path)
        found = []
        pos = joined.find(needle)
        while pos != -1:
            first = lines[bisect.bisect_right(starts, pos) - 1]
            last = lines[bisect.bisect_right(starts, pos + len(needle) - 1) - 1]
            found.append((first, last))
            pos = joined.find(needle, pos + 1)
        return found

    def _indexed(self, path: str) -> tuple[str, list[int], list[int]]:
        if path not in self._index:
            # The file's words joined by single spaces; starts[i] is where word-run i begins in
            # that string and lines[i] the line it came from, so a match maps back to lines.
            pieces, starts, lines, pos = [], [], [], 0
            text = self._text[path]
            assert isinstance(text, str)
            for number, line in enumerate(text.split("\n"), 1):  # lines as git counts them
                words = line.split()
                if not words:
                    continue
                chunk = " ".join(words)
                if pieces:
                    pos += 1  # the joining space belongs to the previous line
                starts.append(pos)
                lines.append(number)
                pieces.append(chunk)
                pos += len(chunk)
            self._index[path] = (" ".join(pieces), starts, lines)
        return self._index[path]
