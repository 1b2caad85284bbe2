"""A valid user persona to start from, and a way to write one into a directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

BODY = "## Posture\n\nAssume a licence is incompatible until shown otherwise.\n"


@pytest.fixture
def good() -> dict:
    """Frontmatter of a valid user persona (a fresh copy per test, free to change)."""
    return {
        "name": "license-auditor",
        "lens": "Checks that every dependency's licence allows how the project ships.",
        "boundaries": [{"does_not": "prove exploit paths", "use": "adversarial-security-analyst"}],
        "inputs": ["dependency manifests and lock files"],
        "id_prefix": "LIC",
        "severities": ["Blocks release", "Needs review", "Fine"],
        "evidence_rule": True,
        "yagni_rule": False,
        "slice": "manifests",
        "signals": ["manifests"],
        "min_band": "medium",
    }


def write_persona(directory: Path, fields: dict, body: str = BODY, name: str | None = None) -> Path:
    """Write ``<name>.md`` (the persona's own name unless given) and return its path."""
    path = directory / f"{name or fields['name']}.md"
    path.write_text("---\n" + yaml.safe_dump(fields, sort_keys=False) + "---\n" + body)
    return path


@pytest.fixture
def write():
    return write_persona
