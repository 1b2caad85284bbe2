"""The personas: one Markdown file each (frontmatter + prompt body) and their loader.

>>> personas = load_personas()
>>> personas["structural-analyst"].id_prefix
'S'
"""

from personas.cards import card, get
from personas.loader import BANDS, SLICES, PersonaError, load_personas, parse_persona
from personas.model import Boundary, Persona

__all__ = [
    "BANDS",
    "SLICES",
    "Boundary",
    "Persona",
    "PersonaError",
    "card",
    "get",
    "load_personas",
    "parse_persona",
]
