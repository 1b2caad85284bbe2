"""The scripted model of the durability tests, and what each step's text must end up being.

Every analyst reads ``calc.py`` with a tool call, then answers with the same finding (the
report merges them) and a summary of its own that names it: the summary is the witness that a
step's text is in the report exactly once. The validator answers without tools. The token rate
is slow enough that a kill at a random moment lands mid-stream.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

TOOL_TURN = {"tool": "read_file", "args": {"path": "calc.py"}}
FINDING = {
    "id": "X-1",
    "severity": "High",
    "category": "Behavior",
    "title": "add subtracts its arguments",
    "claim": "add returns a - b although its name says it adds",
    "evidence": [{"path": "calc.py", "line_start": 7, "line_end": 7, "quote": "return a - b"}],
    "recommendation": "return a + b",
}
VALIDATOR = {"final": {"verdicts": []}}


def marker(persona: str) -> str:
    return f"summary-of-{persona}"


def answer(persona: str) -> dict:
    summary = f"{marker(persona)}: read calc.py line by line and compared every function with its name"
    return {"final": {"summary": summary, "findings": [FINDING]}}


def personas() -> list[str]:
    from personas import load_personas

    return sorted(load_personas(None))


def script(tokens_per_s: float = 40.0, validator_tokens_per_s: float | None = None) -> dict:
    validator: dict = {"match": ["adversarial-validator/"], "json": VALIDATOR}
    if validator_tokens_per_s is not None:  # its answer is short: slow it to be killed mid-way
        validator["tokens_per_s"] = validator_tokens_per_s
    replies: list[dict] = [validator]
    for name in personas():
        if name == "adversarial-validator":
            continue
        replies.append({"match": [f"{name}/"], "turn": 0, "json": TOOL_TURN})
        replies.append({"match": [f"{name}/"], "json": answer(name)})
    return {"tokens_per_s": tokens_per_s, "replies": replies}


def expected_text(persona: str) -> str:
    """A step's whole text (every turn, in order) when it was neither cut nor duplicated."""
    if persona == "adversarial-validator":
        return json.dumps(VALIDATOR)
    return json.dumps(TOOL_TURN) + json.dumps(answer(persona))


def expected_output(persona: str) -> dict:
    """What ``StepFinished.output`` must decode to."""
    return (VALIDATOR if persona == "adversarial-validator" else answer(persona))["final"]


def make_repo(path: Path) -> Path:
    """A committed git repository whose ``calc.py`` has the bug of the scripted finding."""
    path.mkdir(parents=True)
    (path / "calc.py").write_text(
        "import threading\n\nlock = threading.Lock()\n\ndef add(a, b):\n    with lock:\n        return a - b\n"
    )
    git = ["git", "-C", str(path), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "calc"], check=True)
    return path
