"""The shape of a persona: frontmatter fields plus the prompt body."""

from __future__ import annotations

import msgspec


class Boundary(msgspec.Struct, frozen=True, kw_only=True):
    """Something the persona must not do, and the sibling persona that does it instead."""

    does_not: str
    use: str = ""


class Persona(msgspec.Struct, frozen=True, kw_only=True):
    """A read-only specialist: its lens, its limits, its vocabulary, and its prompt body."""

    name: str
    lens: str  # one line
    boundaries: tuple[Boundary, ...]
    inputs: tuple[str, ...]
    id_prefix: str  # e.g. "SEC", "S", "DATA"
    severities: tuple[str, ...]  # the persona's own vocabulary, most severe first
    evidence_rule: bool
    yagni_rule: bool
    body: str  # posture, protocols, clear-line when nothing is found, output format
    # Where the persona's slice of the files comes from (a signal name, or "all"/"source").
    slice: str = "all"
    # For user personas: the signals that choose them, and the smallest band they join at.
    signals: tuple[str, ...] = ()
    min_band: str = "small"
    source: str = ""  # the file it was loaded from
