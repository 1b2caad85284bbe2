"""Small helpers the conductor uses to look personas up and to explain a roster."""

from __future__ import annotations

from collections.abc import Mapping

from personas.loader import PersonaError
from personas.model import Persona

__all__ = ["card", "get"]


def get(name: str, personas: Mapping[str, Persona]) -> Persona:
    """The persona called ``name``; an unknown name raises ``PersonaError`` listing the known ones."""
    try:
        return personas[name]
    except KeyError:
        known = ", ".join(sorted(personas))
        raise PersonaError(name, "name", f"no such persona (known: {known})") from None


def card(persona: Persona) -> str:
    """A short description for roster reasons and catalogs: name, lens, and what it leaves to others.

    >>> from personas.model import Boundary
    >>> p = Persona(name="x", lens="Looks at x.", boundaries=(Boundary(does_not="y", use="z"),),
    ...             inputs=("files",), id_prefix="X", severities=("High",), evidence_rule=True,
    ...             yagni_rule=False, body="...")
    >>> print(card(p))
    x (X): Looks at x. Does not y (use z).
    """
    limits = " ".join(
        f"Does not {b.does_not}" + (f" (use {b.use})." if b.use else ".") for b in persona.boundaries
    )
    return f"{persona.name} ({persona.id_prefix}): {persona.lens}" + (f" {limits}" if limits else "")
