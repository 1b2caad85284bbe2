"""The project's ``.han/config.md``, read from the pinned snapshot, so Han users keep their
settings: ``default-swarm-size`` in the YAML front matter and the ``## Extra Agents`` list.

Configuration never fails a run. Content we recognise but cannot use (malformed front matter,
an unknown key, a blank or invalid value) gives a one-line note naming the file, and at most
``MAX_NOTES`` such notes are kept (then one counts the rest); settings that
only matter to flows that write files (``output-directory``, ``writing-voice``) are ignored
without a word, because our flows return their reports. Only the project file is read: a
personal file lives outside the repository, and the conductor reads nothing but the snapshot.

>>> cfg = parse("---\\ndefault-swarm-size: Large\\n---\\n## Extra Agents\\n- han-core:data-engineer\\n")
>>> cfg.band, cfg.extra_agents, cfg.notes
('large', ('data-engineer',), ())
"""

from __future__ import annotations

import codecs
import re

import msgspec
import yaml

from conductor.snapshot import Snapshot
from events.types import Band

__all__ = ["CONFIG_PATH", "MAX_NOTES", "HanConfig", "capped", "parse", "read"]

CONFIG_PATH = ".han/config.md"
MAX_BYTES = 64 * 1024  # a configuration file is a few lines; read no more than this
_BANDS = ("small", "medium", "large")
_IGNORED_KEYS = ("output-directory", "writing-voice")  # Han keys for flows that write files
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
MAX_NOTES = 20  # notes kept from one file; the rest are counted in one closing note
_SHOWN = 60  # characters of the file's own text quoted in a note
_COMMENT = ("#", "(", "-", "\u2014", "//")  # what may follow a name on its line
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")


class HanConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the project's configuration asks for, and what could not be used."""

    present: bool = False
    band: Band | None = None  # None: classify from the signals
    dynamic: bool = False  # the file said ``dynamic`` (classify) in so many words
    extra_agents: tuple[str, ...] = ()  # persona names, lower-case, in file order, no repeats
    notes: tuple[str, ...] = ()
    path: str = CONFIG_PATH


def read(snapshot: Snapshot) -> HanConfig:
    """The configuration in the snapshot, or an empty one when there is no such file."""
    got = snapshot.read_head(CONFIG_PATH, MAX_BYTES)
    if got is None:
        return HanConfig()
    data, size = got
    try:
        # When the read stopped at the limit, the cut may fall inside a character: an
        # incremental decoder keeps back only that partial character and still refuses bad bytes.
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=size <= len(data))
    except UnicodeDecodeError:
        return HanConfig(present=True, notes=(f"{CONFIG_PATH}: not UTF-8 text; ignored",))
    config = parse(text)
    if size > MAX_BYTES:
        note = f"{CONFIG_PATH}: larger than {MAX_BYTES // 1024} KB; only its start was read"
        config = msgspec.structs.replace(config, notes=(*config.notes, note))
    return config


def parse(text: str, path: str = CONFIG_PATH) -> HanConfig:
    notes: list[str] = []
    front, body = _split_front_matter(text, path, notes)
    band, dynamic = _band(front, path, notes)
    extras = _extra_agents(body, path, notes)
    return HanConfig(
        present=True, band=band, dynamic=dynamic, extra_agents=extras,
        notes=tuple(capped(notes, path)), path=path,
    )


def capped(notes: list[str], path: str = CONFIG_PATH) -> list[str]:
    """The first ``MAX_NOTES`` notes and one that counts the rest: a file of thousands of bad
    lines must not flood the plan."""
    if len(notes) <= MAX_NOTES:
        return notes
    more = len(notes) - MAX_NOTES
    return [*notes[:MAX_NOTES], f"{path}: … and {more} more note{'s' if more != 1 else ''} like these"]


def _text(value: object) -> str:
    """``str(value)``, except for an integer past Python's digit limit, which ``str`` refuses."""
    try:
        return str(value)
    except ValueError:
        return "(a number too long to show)"


def _shown(value: object) -> str:
    """The file's own text, quoted and cut short, for a one-line note."""
    text = _text(value)
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


def _split_front_matter(text: str, path: str, notes: list[str]) -> tuple[dict, str]:
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, text
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        notes.append(f"{path}: the front matter has no closing '---'; its settings were ignored")
        return {}, text
    head, body = "\n".join(lines[1:end]), "\n".join(lines[end + 1 :])
    try:
        fields = yaml.safe_load(head) if head.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        notes.append(f"{path}: the front matter is not valid YAML{where}; its settings were ignored")
        return {}, body
    except (RecursionError, ValueError, OverflowError):
        # Valid YAML that Python cannot hold: nesting past the recursion limit, an integer
        # past the digit limit of int/str conversion.
        notes.append(f"{path}: the front matter is nested too deeply or holds a number too large "
                     "to read; its settings were ignored")
        return {}, body
    if not isinstance(fields, dict):
        notes.append(f"{path}: the front matter is not a list of 'key: value' settings; ignored")
        return {}, body
    out = {}
    for key, value in fields.items():
        name = _text(key).strip().lower()
        if name == "default-swarm-size" or name in _IGNORED_KEYS:
            out[name] = value
        else:
            notes.append(f"{path}: unknown setting {_shown(key)} ignored")
    return out, body


def _band(front: dict, path: str, notes: list[str]) -> tuple[Band | None, bool]:
    if "default-swarm-size" not in front:
        return None, False
    raw = front["default-swarm-size"]
    if raw is not None and not isinstance(raw, (str, int, float, bool)):
        notes.append(f"{path}: default-swarm-size is not a single word; sizing from the code instead")
        return None, False
    text = "" if raw is None else _text(raw).strip()
    value = text.lower()
    if not value:
        notes.append(f"{path}: default-swarm-size is blank; sizing from the code instead")
        return None, False
    if value == "dynamic":
        return None, True
    if value in _BANDS:
        return value, False  # type: ignore[return-value]
    notes.append(
        f"{path}: default-swarm-size {_shown(text)} is not small, medium, large or "
        "dynamic; sizing from the code instead"
    )
    return None, False


def _heading(line: str) -> str | None:
    """The text of a Markdown heading line (``## Extra Agents ##``), or None for any other line.

    Plain string operations, so a line of any length costs linear time; a regular expression
    for the closing hashes (lazy text, then optional spaces, hashes and spaces) backtracks
    cubically on a long run of spaces."""
    hashes = len(line) - len(line.lstrip("#"))
    if not 1 <= hashes <= 6 or not line[hashes : hashes + 1].isspace():
        return None
    # The text, without the optional closing run of hashes and the spaces around it.
    return line[hashes:].strip().rstrip("#").rstrip()


def _extra_agents(body: str, path: str, notes: list[str]) -> tuple[str, ...]:
    names: list[str] = []
    inside = False
    for line in body.splitlines():
        heading = _heading(line)
        if heading is not None:
            inside = heading.lower() == "extra agents"
            continue
        if not inside or not line.strip():
            continue
        item = _ITEM.match(line)
        raw = (item.group(1) if item else line).strip().strip("`").strip()
        # ``plugin:agent`` or a bare name, optionally followed by a comment.
        token, _, rest = raw.partition(" ")
        name = token.strip("`,;").rsplit(":", 1)[-1].lower()
        rest = rest.strip()
        if not _NAME.match(name) or (rest and not rest.startswith(_COMMENT)):
            notes.append(f"{path}: {_shown(raw)} under Extra Agents is not an agent name; skipped")
            continue
        if name not in names:
            names.append(name)
    return tuple(names)
