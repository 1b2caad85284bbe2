"""Load and validate personas: the builtins shipped in this package, plus a user directory.

A persona file is ``<name>.md``: YAML frontmatter between ``---`` lines (the fields of
``personas.model.Persona``, except ``body`` and ``source``, which the loader fills in) and a
Markdown body (the prompt). Every file is validated; the first problem raises ``PersonaError``
naming the file and the field.

A user persona may not reuse a builtin's name: that is refused, naming both files. Silently
replacing a builtin would change what every flow's spine does without the run saying so; a
user who wants a variant gives it its own name and id prefix.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from personas.model import Boundary, Persona

__all__ = ["BANDS", "SLICES", "PersonaError", "load_personas", "parse_persona"]

# The slices of the snapshot a persona can be handed; the conductor maps each to files.
SLICES: dict[str, str] = {
    "all": "every file in scope",
    "source": "first-party source files: no tests, docs, generated or vendored files",
    "runtime": "source files with runtime logic: handlers, services, data flow, error paths",
    "tests": "the source files in scope and the tests that exercise them",
    "data": "schema, migrations, queries, ORM models and data-access code",
    "infra": "container files, infrastructure code, CI/CD, deploy scripts, observability config",
    "security": "every file in scope plus all dependency manifests and lock files",
    "ui": "templates, components, styles and client-side scripts",
    "docs": "documentation: Markdown, reStructuredText, decision records, READMEs",
    "concurrency": "files using threads, async, actors, locks, queues, timers or shared state",
    "manifests": "package manifests, lock files, build and tool configuration",
}
BANDS = ("small", "medium", "large")

MAX_FILE_BYTES = 256 * 1024  # a persona file is a few KB; the builtins are under 8 KB
# The fields every prompt of the persona carries whole (only the body is ever shortened), so
# they stay small: (most entries, most characters per entry). The builtins use a fraction.
_LIMITS: dict[str, tuple[int, int]] = {
    "lens": (1, 500),
    "severities": (10, 40),
    "inputs": (12, 300),
    "boundaries": (16, 300),
    "signals": (16, 60),
}

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_PREFIX = re.compile(r"^[A-Z]{1,6}$")
_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?(.*)\Z", re.S | re.M)
# Filled in by the loader, never written in a file.
_LOADER_FIELDS = ("body", "source")
_FIELDS = {f.name: f for f in msgspec.structs.fields(Persona)}
_BOUNDARY_FIELDS = {f.name for f in msgspec.structs.fields(Boundary)}


class PersonaError(ValueError):
    """A persona file that cannot be used; the message names the file and the field."""

    def __init__(self, source: str, field: str, problem: str):
        super().__init__(f"{source}: {field}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem


def parse_persona(text: str, source: str, expected_name: str | None = None) -> Persona:
    """One persona from the text of its file; ``source`` names the file in errors."""
    match = _FRONTMATTER.match(text)
    if match is None:
        raise PersonaError(source, "frontmatter", "the file must start with a '---' block")
    head, body = match.groups()
    try:
        fields = yaml.safe_load(head)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (frontmatter line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PersonaError(source, "frontmatter", f"not valid YAML{line}: {problem}") from None
    except (RecursionError, ValueError, OverflowError):
        # Valid YAML that Python cannot hold: nesting past the recursion limit, or an integer
        # past the digit limit of int/str conversion.
        raise PersonaError(source, "frontmatter",
                           "nested too deeply or holds a number too large to read") from None
    if not isinstance(fields, dict):
        raise PersonaError(source, "frontmatter", "must be a mapping of field: value")
    _check_keys(fields, source)

    try:
        persona = msgspec.convert({**fields, "body": body.strip(), "source": source}, Persona)
    except msgspec.ValidationError as exc:
        field, problem = _split_validation(str(exc))
        raise PersonaError(source, field, problem) from None
    _check_values(persona, source, expected_name)
    return persona


def load_personas(extra_dir: str | Path | None = None) -> dict[str, Persona]:
    """The builtin personas plus those in ``extra_dir`` (every ``*.md`` file in it), by name.

    Raises ``PersonaError`` for the first invalid file, a user persona reusing a builtin's
    name, two personas sharing an id prefix, or a boundary naming a persona that does not exist.
    """
    personas = dict(_builtins())
    if extra_dir:
        directory = Path(extra_dir)
        if not directory.is_dir():
            raise PersonaError(str(directory), "personas_dir", "is not a directory")
        for path in sorted(directory.glob("*.md")):
            persona = _read(_read_file(path), str(path), path.stem)
            if persona.name in personas:
                other = personas[persona.name].source
                raise PersonaError(
                    str(path),
                    "name",
                    f"{persona.name!r} is already defined by {other}; give it another name",
                )
            personas[persona.name] = persona
    _check_together(personas.values())
    return personas


@functools.cache
def _builtins() -> tuple[tuple[str, Persona], ...]:
    # importlib.resources, so the files are found however the package is installed.
    root = importlib.resources.files("personas")
    loaded = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".md"):
            name = entry.name[: -len(".md")]
            loaded.append((name, _read(entry.read_bytes(), f"personas/{entry.name}", name)))
    return tuple(loaded)


def _read_file(path: Path) -> bytes:
    """The bytes of a user persona file; anything that is not a readable file of a sensible
    size (a directory, a dangling link, a device) is a ``PersonaError`` naming it."""
    if not path.is_file():  # a directory, a device, a pipe, a link to nothing
        raise PersonaError(str(path), "file", "is not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PersonaError(str(path), "file", f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise PersonaError(str(path), "file", f"larger than {MAX_FILE_BYTES // 1024} KB")
    return data


def _read(data: bytes, source: str, name: str) -> Persona:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PersonaError(source, "file", f"not UTF-8 text ({exc.reason})") from None
    return parse_persona(text, source, expected_name=name)


def _check_keys(fields: dict[Any, Any], source: str) -> None:
    for key in fields:
        if key not in _FIELDS or key in _LOADER_FIELDS:
            known = ", ".join(k for k in _FIELDS if k not in _LOADER_FIELDS)
            name = key if isinstance(key, str) else type(key).__name__  # str(int) may refuse
            raise PersonaError(source, name[:60], f"unknown field (known fields: {known})")
    for name, info in _FIELDS.items():
        if name not in _LOADER_FIELDS and info.required and name not in fields:
            raise PersonaError(source, name, "missing required field")
    boundaries = fields.get("boundaries")
    if isinstance(boundaries, list):
        for i, item in enumerate(boundaries):
            if isinstance(item, dict):
                for key in item:
                    if key not in _BOUNDARY_FIELDS:
                        raise PersonaError(
                            source, f"boundaries[{i}].{key}", "unknown field (use does_not, use)"
                        )


def _split_validation(message: str) -> tuple[str, str]:
    """msgspec says "Expected `str`, got `int` - at `$.lens`"; return ("lens", the problem)."""
    problem, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return "frontmatter", message
    return where.rstrip("`"), problem


def _check_values(p: Persona, source: str, expected_name: str | None) -> None:
    def fail(field: str, problem: str) -> None:
        raise PersonaError(source, field, problem)

    if not _NAME.match(p.name):
        fail("name", f"{p.name!r} must be lower-case words joined by hyphens")
    if expected_name is not None and p.name != expected_name:
        fail("name", f"{p.name!r} does not match the file name {expected_name!r}")
    if not p.lens.strip() or "\n" in p.lens.strip():
        fail("lens", "must be one non-empty line")
    if not _PREFIX.match(p.id_prefix):
        fail("id_prefix", f"{p.id_prefix!r} must be 1-6 upper-case letters")
    if not p.severities or any(not s.strip() for s in p.severities):
        fail("severities", "must be a non-empty list of non-empty names, most severe first")
    if len(set(p.severities)) != len(p.severities):
        fail("severities", "lists the same severity twice")
    if not p.inputs or any(not i.strip() for i in p.inputs):
        fail("inputs", "must be a non-empty list of non-empty lines")
    for i, b in enumerate(p.boundaries):
        if not b.does_not.strip():
            fail(f"boundaries[{i}].does_not", "must not be empty")
        if b.use == p.name:
            fail(f"boundaries[{i}].use", "names the persona itself")
    if p.slice not in SLICES:
        fail("slice", f"{p.slice!r} is not one of {', '.join(SLICES)}")
    if p.min_band not in BANDS:
        fail("min_band", f"{p.min_band!r} is not one of {', '.join(BANDS)}")
    for field, (most, longest) in _LIMITS.items():
        value = getattr(p, field)
        entries = [value] if isinstance(value, str) else [
            b.does_not + b.use if isinstance(b, Boundary) else b for b in value
        ]
        if len(entries) > most:
            fail(field, f"has {len(entries)} entries; at most {most} are allowed")
        if any(len(e) > longest for e in entries):
            fail(field, f"has an entry longer than {longest} characters")
    if not p.body:
        fail("body", "is empty; the body is the persona's prompt")


def _check_together(personas: Iterable[Persona]) -> None:
    """Rules across files: unique id prefixes, boundaries that name a real persona."""
    personas = list(personas)
    names = {p.name for p in personas}
    prefixes: dict[str, Persona] = {}
    for p in personas:
        if p.id_prefix in prefixes:
            other = prefixes[p.id_prefix]
            raise PersonaError(
                p.source, "id_prefix", f"{p.id_prefix!r} is already used by {other.source}"
            )
        prefixes[p.id_prefix] = p
        for i, b in enumerate(p.boundaries):
            if b.use and b.use not in names:
                raise PersonaError(
                    p.source, f"boundaries[{i}].use", f"no persona named {b.use!r}"
                )
