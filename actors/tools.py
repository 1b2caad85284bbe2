"""The read-only tools an agent step may call, gated in code over the pinned snapshot.

Five tools read the snapshot (never the work tree): ``list_dir``, ``read_file``, ``grep``,
``glob`` and ``git_log``. ``ToolGate.call(name, args)`` runs one of them or refuses:

- any other name (``write_file``, ``shell``, ``bash``, unknown or odd names) is refused;
- arguments are checked against each tool's Struct (types, required, no extra keys, bounds);
- paths are relative to the repository root; absolute paths, ``..`` segments, backslashes,
  NUL, and links (or linked directories) that lead out of the tree are refused;
- output is bounded (characters, lines, entries, matches) and a cut says ``truncated=True``.

``grep`` uses Python ``re``. A regular expression can backtrack for ever and ``re`` cannot be
interrupted, so the search runs in a short-lived child interpreter with a time budget; when
the budget runs out the child is killed and the matches found so far are returned, truncated.
Glob patterns are matched segment by segment without regular expressions (linear time).

The refusal is a value (``ToolOutcome.denied``), not an exception: the step records it as a
``ToolDenied`` event and tells the model (``outcome_event``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from conductor.findings import MAX_TEXT
from events.types import ToolDenied, ToolResult

__all__ = [
    "TOOL_NAMES",
    "TOOL_SPECS",
    "ToolGate",
    "ToolLimits",
    "ToolOutcome",
    "call_schema",
    "glob_match",
    "outcome_event",
]

MAX_PATH = 300
MAX_PATTERN = 200
MAX_FINAL_CHARS = MAX_TEXT  # a plain final answer's bound: llama.cpp compiles no longer one


class ToolLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on what one tool call may cost and return."""

    max_output_chars: int = 12_000
    max_lines: int = 300  # read_file lines per call
    max_line_chars: int = 400  # longer lines are cut
    max_entries: int = 400  # list_dir entries, glob results
    max_matches: int = 100  # grep matches
    grep_seconds: float = 5.0
    glob_seconds: float = 5.0
    grep_bytes: int = 20_000_000  # text searched by one grep
    grep_file_bytes: int = 1_000_000  # larger files are not searched (and that is reported)
    read_bytes: int = 4_000_000  # read_file looks at most this far into a file
    max_log: int = 100


class ToolOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one call gave: content, or why it was refused (``denied`` is '' unless refused)."""

    ok: bool
    content: str = ""
    truncated: bool = False
    denied: str = ""


# --- the arguments of each tool: one Struct each, the single definition of the shape ----------

Path = Annotated[
    str, Meta(max_length=MAX_PATH, description="Path relative to the repository root, e.g. src/app.py")
]


class ListDirArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """List the files and directories directly inside a directory of the repository."""

    path: Annotated[
        str, Meta(max_length=MAX_PATH, description="Directory relative to the repository root; '.' is the root")
    ] = "."


class ReadFileArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Read a file of the repository, with line numbers, optionally only a range of lines."""

    path: Path
    start_line: Annotated[int, Meta(ge=1, le=10_000_000, description="First line to show (1-based)")] = 1
    end_line: Annotated[int, Meta(ge=1, le=10_000_000, description="Last line to show (inclusive)")] | None = None


class GrepArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Search file contents with a Python regular expression; shows path:line: text for each match."""

    pattern: Annotated[
        str, Meta(min_length=1, max_length=MAX_PATTERN, description="Python regular expression")
    ]
    path: Annotated[
        str, Meta(max_length=MAX_PATH, description="File or directory to search; '.' is the whole repository")
    ] = "."
    glob: Annotated[
        str, Meta(max_length=MAX_PATTERN, description="Only files matching this glob, e.g. *.py")
    ] | None = None


class GlobArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Find files by glob pattern: * and ? within a name, ** across directories; a pattern
    without / matches file names at any depth."""

    pattern: Annotated[
        str, Meta(min_length=1, max_length=MAX_PATTERN, description="Glob pattern, e.g. src/**/*.py")
    ]


class GitLogArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Show the commit history up to the analysed commit, optionally only commits touching a path."""

    path: Annotated[
        str, Meta(max_length=MAX_PATH, description="Only commits touching this file or directory")
    ] | None = None
    limit: Annotated[int, Meta(ge=1, le=100, description="How many commits to show")] = 20


ARGS: dict[str, type[msgspec.Struct]] = {
    "list_dir": ListDirArgs,
    "read_file": ReadFileArgs,
    "grep": GrepArgs,
    "glob": GlobArgs,
    "git_log": GitLogArgs,
}
TOOL_NAMES = tuple(ARGS)


def _parameters(struct: type[msgspec.Struct]) -> dict[str, Any]:
    schema = msgspec.json.schema(struct)
    params = dict(schema["$defs"][struct.__name__])
    params.pop("title", None)
    params.pop("description", None)
    params.setdefault("required", [])
    return params


def _describe(struct: type[msgspec.Struct]) -> str:
    return " ".join((struct.__doc__ or "").split())


TOOL_SPECS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": name, "description": _describe(struct), "parameters": _parameters(struct)},
    }
    for name, struct in ARGS.items()
]


def call_schema(final_schema: dict[str, Any] | None = None, *, tools: bool = True) -> dict[str, Any]:
    """JSON Schema of one turn for an engine without native tool calls.

    The answer is either ``{"tool": <name>, "args": {...}}`` (one branch per tool, its
    arguments constrained) or ``{"final": <final answer>}``; only the latter without
    ``tools``. ``final_schema`` is the answer's own schema (e.g. the findings of a role);
    without it the answer is a bounded string. Every string the tools take is bounded, so
    constrained decoding cannot run away.
    """
    final = final_schema if final_schema is not None else {"type": "string", "maxLength": MAX_FINAL_CHARS}
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": name}, "args": _parameters(struct)},
            "required": ["tool", "args"],
            "additionalProperties": False,
        }
        for name, struct in (ARGS.items() if tools else ())
    ]
    branches.append(
        {
            "type": "object",
            "properties": {"final": final},
            "required": ["final"],
            "additionalProperties": False,
        }
    )
    return {"oneOf": branches}


def outcome_event(
    outcome: ToolOutcome,
    *,
    run_id: str,
    step_id: str,
    attempt: int,
    call_id: str,
    tool: str,
    args: dict[str, Any],
    ts: float,
) -> ToolResult | ToolDenied:
    """The event that records a call's outcome: ``ToolDenied`` when refused, else ``ToolResult``."""
    if outcome.denied:
        return ToolDenied(
            run_id=run_id, ts=ts, step_id=step_id, attempt=attempt,
            call_id=call_id, tool=tool, args=args, reason=outcome.denied,
        )
    return ToolResult(
        run_id=run_id, ts=ts, step_id=step_id, attempt=attempt, call_id=call_id,
        tool=tool, content=outcome.content, ok=outcome.ok, truncated=outcome.truncated,
    )


# --- the gate ------------------------------------------------------------------------------


class _Denied(Exception):
    """Raised inside a tool to refuse the call; becomes ``ToolOutcome(denied=...)``."""


def _deny(reason: str) -> ToolOutcome:
    return ToolOutcome(ok=False, denied=reason)


def _fail(message: str) -> ToolOutcome:
    return ToolOutcome(ok=False, content=message)


class ToolGate:
    """The only way a step reaches the repository: read tools over one pinned snapshot.

    Works over any ``conductor.snapshot.Snapshot``; with a ``GitSnapshot`` it also sees links,
    submodules and history (``entries``, ``read_head``, ``link_target``, ``git_log``).
    """

    def __init__(self, snapshot: Any, limits: ToolLimits | None = None):
        self.snapshot = snapshot
        self.limits = limits or ToolLimits()
        self._tools: dict[str, Callable[[Any], ToolOutcome]] = {
            "list_dir": self._list_dir,
            "read_file": self._read_file,
            "grep": self._grep,
            "glob": self._glob,
            "git_log": self._git_log,
        }
        self._kinds: dict[str, str] | None = None
        self._dirs: frozenset[str] | None = None

    def call(self, name: Any, args: Any) -> ToolOutcome:
        """Run one read tool, or refuse: never raises for anything the model may send."""
        if not isinstance(name, str) or name not in self._tools:
            return _deny(
                f"{_show_name(name)} is not a read-only tool; only {', '.join(TOOL_NAMES)} "
                "are available (nothing may be written, edited, deleted or executed)"
            )
        if not isinstance(args, dict):
            return _deny(f"bad arguments for {name}: expected a JSON object, got {type(args).__name__}")
        try:
            parsed = msgspec.convert(args, ARGS[name])
        except msgspec.ValidationError as exc:
            return _deny(f"bad arguments for {name}: {exc}")
        try:
            return self._tools[name](parsed)
        except _Denied as exc:
            return _deny(str(exc))
        except Exception as exc:  # a broken read is the model's information, not a crash
            return _fail(f"{name} failed: {type(exc).__name__}: {str(exc)[:300]}")

    # --- the tools ------------------------------------------------------------------------

    def _list_dir(self, a: ListDirArgs) -> ToolOutcome:
        path = self._path(a.path)
        kinds, dirs = self._tree()
        if path in kinds:
            if kinds[path] != "file":
                self._readable(path)  # a link out or a submodule is refused, like any read
            return _fail(f"{_show(path)} is a file, not a directory; use read_file")
        if path not in dirs:
            return _fail(f"no directory {_show(path)} in the repository")
        prefix = path + "/" if path else ""
        children: dict[str, str] = {}
        for p, kind in kinds.items():
            if p.startswith(prefix):
                rest = p[len(prefix):]
                name, sep, _ = rest.partition("/")
                children[name] = "dir" if sep else kind
        lines = []
        for name in sorted(children):
            kind = children[name]
            full = prefix + name
            if kind == "dir":
                lines.append(_show(name) + "/")
            elif kind == "link":
                inside = self._resolve(full) is not None
                lines.append(f"{_show(name)} (link{'' if inside else ' not leading to a file in the repository: not readable'})")
            elif kind == "submodule":
                lines.append(f"{_show(name)} (submodule: not readable)")
            else:
                lines.append(_show(name))
        return self._listing(lines, f"{_show(path or '.')}: {len(lines)} entries", "entries")

    def _read_file(self, a: ReadFileArgs) -> ToolOutcome:
        lim = self.limits
        path = self._readable(a.path)
        head = self._head(path, lim.read_bytes)
        if head is None:
            return _fail(f"no file {_show(path)} in the repository")
        data, size = head
        if b"\0" in data[:8000]:
            return ToolOutcome(ok=True, content=f"{_show(path)} is a binary file ({size:,} bytes): not shown")
        lines = data.decode("utf-8", "replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        partial = len(data) < size
        if partial and lines:
            lines.pop()  # the last line read may stop mid-line
        total = len(lines)
        start = a.start_line
        if a.end_line is not None and a.end_line < start:
            raise _Denied(f"bad arguments for read_file: end_line {a.end_line} is before start_line {start}")
        if start > total:
            if partial:
                return _fail(
                    f"{_show(path)} is {size:,} bytes; only its first {total} lines "
                    f"({len(data):,} bytes) can be read"
                )
            if total == 0:
                return ToolOutcome(ok=True, content=f"{_show(path)} is empty")
            return _fail(f"{_show(path)} has {total} lines; start_line {start} is past the end")
        wanted_end = total if a.end_line is None else min(a.end_line, total)
        end = min(wanted_end, start + lim.max_lines - 1)
        truncated = end < wanted_end or (partial and (a.end_line is None or a.end_line > total))
        out = []
        for n in range(start, end + 1):
            text, cut = _cut(lines[n - 1].rstrip("\r"), lim.max_line_chars)
            truncated |= cut
            out.append(f"{n:>6}\t{text}")
        of = f"{total}" if not partial else f"{total}+ (file is {size:,} bytes)"
        header = f"{_show(path)} lines {start}-{end} of {of}"
        if end < wanted_end:
            header += f"; more with start_line={end + 1}"
        return self._bounded(header + "\n" + "\n".join(out), truncated)

    def _glob(self, a: GlobArgs) -> ToolOutcome:
        pattern = self._pattern(a.pattern)
        kinds, _ = self._tree()
        candidates = sorted(p for p in kinds if kinds[p] == "file" or self._resolve(p) is not None)
        # A pattern of many "**" between literal names costs more per path than any time
        # bound would allow over a big tree: stop at the budget and say so.
        deadline = time.monotonic() + self.limits.glob_seconds
        found: list[str] = []
        for n, p in enumerate(candidates):
            if n % 256 == 0 and time.monotonic() > deadline:
                header = (
                    f"{len(found)} files match {_show(pattern)} among the first {n} of "
                    f"{len(candidates)} (matching stopped after {self.limits.glob_seconds:g}s)"
                )
                outcome = self._listing([_show(f) for f in found], header, "files")
                return ToolOutcome(ok=True, content=outcome.content, truncated=True)
            if glob_match(pattern, p):
                found.append(p)
        lines = [_show(p) for p in found]
        return self._listing(lines, f"{len(found)} files match {_show(pattern)}", "files")

    def _grep(self, a: GrepArgs) -> ToolOutcome:
        lim = self.limits
        try:
            re.compile(a.pattern)
        except re.error as exc:
            return _fail(f"invalid regular expression {a.pattern!r}: {exc}")
        where = self._path(a.path)
        pattern = self._pattern(a.glob) if a.glob is not None else None
        kinds, dirs = self._tree()
        if where in kinds:
            where = self._readable(a.path)
            candidates = [where]
        elif where in dirs:
            prefix = where + "/" if where else ""
            candidates = sorted(p for p, k in kinds.items() if k == "file" and p.startswith(prefix))
        else:
            return _fail(f"no file or directory {_show(where)} in the repository")
        if pattern is not None:
            candidates = [p for p in candidates if glob_match(pattern, p)]
        files: list[tuple[str, str]] = []
        budget, skipped, unread = lim.grep_bytes, 0, 0
        for p in candidates:
            got = self._head(p, lim.grep_file_bytes)
            if got is None:
                continue
            data, size = got
            if size > lim.grep_file_bytes or b"\0" in data[:8000]:
                skipped += 1
                continue
            if size > budget:
                unread += 1
                continue
            budget -= size
            files.append((p, data.decode("utf-8", "replace")))
        matches, timed_out = _search(a.pattern, files, lim)
        lines = [f"{_show(p)}:{n}: {_cut(t, lim.max_line_chars)[0]}" for p, n, t in matches]
        truncated = timed_out or len(matches) >= lim.max_matches or unread > 0
        notes = []
        if timed_out:
            notes.append(f"search stopped after {lim.grep_seconds:g}s; matches so far are shown")
        if len(matches) >= lim.max_matches:
            notes.append(f"stopped at {lim.max_matches} matches; narrow the pattern, path or glob")
        if skipped:
            notes.append(f"{skipped} binary or large files not searched")
        if unread:
            notes.append(f"{unread} files not searched: over the {lim.grep_bytes:,}-byte budget")
        header = f"{len(matches)} matches in {len(files)} files searched"
        if notes:
            header += " (" + "; ".join(notes) + ")"
        return self._bounded(header + ("\n" + "\n".join(lines) if lines else ""), truncated)

    def _git_log(self, a: GitLogArgs) -> ToolOutcome:
        log = getattr(self.snapshot, "git_log", None)
        if log is None:
            return _fail("this snapshot has no history")
        path = None
        if a.path is not None:
            path = self._path(a.path)
            kinds, dirs = self._tree()
            if path not in kinds and path not in dirs:
                return _fail(f"no file or directory {_show(path)} in the repository")
        lines = log(path, min(a.limit, self.limits.max_log))
        return self._bounded("\n".join(lines) if lines else "no commits", False)

    # --- paths ----------------------------------------------------------------------------

    def _path(self, raw: str) -> str:
        """A contained, canonical path ('' is the root), or a refusal."""
        from actors.snapshot import normalize

        clean = normalize(raw)
        if clean is None:
            raise _Denied(
                f"path {_show(raw)} is refused: paths are relative to the repository root, "
                "without '..', backslashes or NUL"
            )
        kinds, _ = self._tree()
        parts = clean.split("/")
        for i in range(1, len(parts)):
            through = "/".join(parts[:i])
            if kinds.get(through) in ("link", "submodule"):
                raise _Denied(f"path {_show(clean)} goes through the {kinds[through]} {_show(through)}: refused")
        return clean

    def _readable(self, raw: str) -> str:
        """A path that names a readable file (links resolved inside the tree), or a refusal."""
        path = self._path(raw)
        kinds, _ = self._tree()
        kind = kinds.get(path)
        if kind == "link":
            target = self._resolve(path)
            if target is None:
                raise _Denied(f"{_show(path)} is a link that does not lead to a file inside the repository: refused")
            return target
        if kind == "submodule":
            raise _Denied(f"{_show(path)} is a submodule: its files are not part of this snapshot")
        return path

    def _pattern(self, raw: str) -> str:
        if raw.startswith("/") or "\\" in raw or "\0" in raw or ".." in raw.split("/"):
            raise _Denied(f"glob {_show(raw)} is refused: patterns are relative, without '..' or backslashes")
        return raw

    # --- the snapshot, whatever implements it ---------------------------------------------

    def _tree(self) -> tuple[dict[str, str], frozenset[str]]:
        if self._kinds is None:
            entries = getattr(self.snapshot, "entries", None)
            if entries is not None:
                kinds = {p: e.kind for p, e in entries().items()}
            else:
                kinds = {p: "file" for p in self.snapshot.paths()}
            dirs = {""}
            for p in kinds:
                parts = p.split("/")
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            self._kinds, self._dirs = kinds, frozenset(dirs)
        assert self._dirs is not None
        return self._kinds, self._dirs

    def _resolve(self, path: str) -> str | None:
        resolve = getattr(self.snapshot, "resolve", None)
        if resolve is not None:
            return resolve(path)
        return path if self.snapshot.read(path) is not None else None

    def _head(self, path: str, limit: int) -> tuple[bytes, int] | None:
        read_head = getattr(self.snapshot, "read_head", None)
        if read_head is not None:
            return read_head(path, limit)
        data = self.snapshot.read(path)
        return None if data is None else (data[:limit], len(data))

    # --- output ---------------------------------------------------------------------------

    def _listing(self, lines: list[str], header: str, what: str) -> ToolOutcome:
        cap = self.limits.max_entries
        truncated = len(lines) > cap
        if truncated:
            header += f" (first {cap} {what} shown)"
        return self._bounded(header + ("\n" + "\n".join(lines[:cap]) if lines else ""), truncated)

    def _bounded(self, text: str, truncated: bool) -> ToolOutcome:
        cap = self.limits.max_output_chars
        if len(text) > cap:
            cut = text.rfind("\n", 0, cap)
            text = text[: cut if cut > 0 else cap] + f"\n[output cut at {cap:,} characters]"
            truncated = True
        return ToolOutcome(ok=True, content=text, truncated=truncated)


def _cut(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit] + f"…[+{len(text) - limit} chars]", True


def _show(path: str) -> str:
    """A path as the model should write it back: JSON-quoted when it holds control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return json.dumps(path, ensure_ascii=False)
    return path


def _show_name(name: Any) -> str:
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "..."


# --- grep in a child interpreter -----------------------------------------------------------

_WORKER = r"""
import json, re, sys
job = json.loads(sys.stdin.buffer.read())
rx = re.compile(job["pattern"])
left = job["max"]
out = sys.stdout
for path, text in job["files"]:
    for n, line in enumerate(text.split("\n"), 1):
        if rx.search(line):
            out.write(json.dumps([path, n, line[: job["width"]]]) + "\n")
            out.flush()
            left -= 1
            if left <= 0:
                sys.exit(0)
"""


def _search(pattern: str, files: list[tuple[str, str]], lim: ToolLimits) -> tuple[list[tuple[str, int, str]], bool]:
    """Matches (path, line number, line) and whether the time budget ran out."""
    if not files:
        return [], False
    job = json.dumps(
        {"pattern": pattern, "files": files, "max": lim.max_matches, "width": lim.max_line_chars + 1}
    ).encode()
    timed_out = False
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _WORKER],
            input=job,
            capture_output=True,
            timeout=lim.grep_seconds,
            check=False,
        )
        out = proc.stdout
    except subprocess.TimeoutExpired as exc:
        out, timed_out = exc.stdout or b"", True
    matches = []
    for raw in out.decode("utf-8", "replace").splitlines():
        try:
            path, n, text = json.loads(raw)
        except ValueError:
            continue  # a line cut by the kill
        matches.append((path, int(n), text.rstrip("\r")))
    return matches, timed_out


# --- glob matching without regular expressions ---------------------------------------------


def glob_match(pattern: str, path: str) -> bool:
    """Whether ``path`` matches the glob: ``*``/``?``/``[...]`` within a name, ``**`` across
    directories. A pattern without ``/`` is matched against the file name at any depth.

    >>> glob_match("*.py", "src/app.py"), glob_match("src/**/*.py", "src/a/b/c.py")
    (True, True)
    """
    pat: list[str] = []
    for p in pattern.split("/"):
        if p not in ("", ".") and not (p == "**" and pat[-1:] == ["**"]):  # **/** is **
            pat.append(p)
    parts = path.split("/")
    if len(pat) == 1 and pat[0] != "**":
        return _segment(_tokens(pat[0]), parts[-1])
    return _segments(tuple(pat), tuple(parts))


def _segments(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and _segment(_tokens(pat[i]), parts[j]) and go(i + 1, j + 1)

    return go(0, 0)


_STAR = ("*",)


@lru_cache(maxsize=256)
def _tokens(segment: str) -> tuple[tuple[Any, ...], ...]:
    out: list[tuple[Any, ...]] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            if not out or out[-1] != _STAR:
                out.append(_STAR)
        elif c == "?":
            out.append(("?",))
        elif c == "[" and _class_end(segment, i) > 0:
            close = _class_end(segment, i)
            body = segment[i + 1 : close]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            ranges = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    ranges.append((body[k], body[k + 2]))
                    k += 3
                else:
                    ranges.append((body[k], body[k]))
                    k += 1
            out.append(("[", negate, tuple(ranges)))
            i = close
        else:
            out.append(("=", c))
        i += 1
    return tuple(out)


def _class_end(segment: str, i: int) -> int:
    """Index of the ']' closing the class opened at ``i`` (-1 when unclosed: a literal '[')."""
    j = i + 1
    if segment[j : j + 1] in ("!", "^"):
        j += 1
    if segment[j : j + 1] == "]":
        j += 1  # a leading ']' is a member of the class
    return segment.find("]", j)


def _one(token: tuple[Any, ...], ch: str) -> bool:
    kind = token[0]
    if kind == "=":
        return token[1] == ch
    if kind == "?":
        return True
    inside = any(lo <= ch <= hi for lo, hi in token[2])
    return inside != token[1]


def _segment(tokens: tuple[tuple[Any, ...], ...], name: str) -> bool:
    """Wildcard match of one name: greedy with one backtrack point, O(len(tokens) * len(name))."""
    t = s = 0
    star, mark = -1, 0
    while s < len(name):
        if t < len(tokens) and tokens[t] != _STAR and _one(tokens[t], name[s]):
            t += 1
            s += 1
        elif t < len(tokens) and tokens[t] == _STAR:
            star, mark = t, s
            t += 1
        elif star >= 0:
            t = star + 1
            mark += 1
            s = mark
        else:
            return False
    while t < len(tokens) and tokens[t] == _STAR:
        t += 1
    return t == len(tokens)
