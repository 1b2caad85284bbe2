"""``orchestrator personas`` as a person runs it: a real process, with and without a user dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys



def orchestrator(*args: str, personas_dir: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["COLUMNS"] = "120"
    if personas_dir:
        env["ORCH_PERSONAS_DIR"] = personas_dir
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "personas", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_json_lists_the_23_builtins_in_full():
    done = orchestrator("--json")
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert len(entries) == 23
    by_name = {e["name"]: e for e in entries}
    sec = by_name["adversarial-security-analyst"]
    assert sec["id_prefix"] == "SEC" and sec["slice"] == "security"
    assert sec["severities"] == ["Critical", "High", "Medium"]
    assert sec["body"].startswith("## Posture")
    assert sec["boundaries"][0].keys() == {"does_not", "use"}


def test_table_shows_user_personas_next_to_the_builtins(tmp_path, good, write):
    write(tmp_path, good)

    done = orchestrator(personas_dir=str(tmp_path))

    assert done.returncode == 0, done.stderr
    assert "24 personas" in done.stdout
    assert "license-auditor (user)" in done.stdout
    assert "LIC" in done.stdout and "risk-analyst" in done.stdout
    assert "risk-analyst (user)" not in done.stdout


def test_a_bad_user_persona_fails_with_one_line_naming_file_and_field(tmp_path, good, write):
    bad = write(tmp_path, {**good, "slice": "everything"})

    done = orchestrator("--json", personas_dir=str(tmp_path))

    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"{bad}: slice: " in lines[0]
