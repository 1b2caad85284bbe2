"""The roster: spine plus personas chosen by signal within the band's caps, each with its reason
and only its domain's slice of the files."""

from __future__ import annotations

import pytest

from conductor.flows import FLOWS
from conductor.plan import plan

BASE = {
    "README.md": "# shop\n",
    "pyproject.toml": "[project]\nname = 'shop'\n",
    "app/__init__.py": "",
    "app/core.py": "def total(items):\n    return sum(items)\n",
    "tests/test_core.py": "from app.core import total\n\ndef test_total():\n    assert total([1]) == 1\n",
}


def _plan(repo, loaded, make_request, flow="code-review", base="main", **fields):
    snap = repo.pin(base=base, paths=fields.get("paths", ()))
    return plan(make_request(flow, base=base, **fields), snap, loaded, model="m", engine="e", ts=2.0)


def _branch(git_repo, files, base=None, message="change"):
    repo = git_repo(base or BASE)
    repo.branch("feature")
    repo.write(files)
    repo.commit(message)
    return repo


def _roster(planned):
    return {e.persona: e for e in planned.roster}


def _step(planned, persona):
    (step,) = [s for s in planned.steps if s.persona == persona]
    return step


def test_a_migration_in_the_diff_rosters_the_data_engineer_on_the_data_files(git_repo, personas, make_request):
    repo = _branch(git_repo, {
        "db/migrations/0002_add_email.sql": "ALTER TABLE users ADD COLUMN email text;\n",
        "app/core.py": "def total(items):\n    return sum(items) + 0\n",
    })
    planned = _plan(repo, personas, make_request)
    entry = _roster(planned)["data-engineer"]
    assert entry.reason.startswith("chosen: the files touch schema, migrations")
    assert "db/migrations/0002_add_email.sql" in entry.reason
    assert _step(planned, "data-engineer").files == ("db/migrations/0002_add_email.sql",)


def test_a_docs_only_change_rosters_no_test_engineer(git_repo, personas, make_request):
    repo = _branch(git_repo, {"README.md": "# shop\n\nHow to run it.\n", "docs/usage.md": "Run it.\n"})
    planned = _plan(repo, personas, make_request)
    assert "test-engineer" not in _roster(planned)
    assert set(_roster(planned)) == {"junior-developer", "adversarial-security-analyst",
                                     "adversarial-validator"}


def test_a_forced_large_band_still_chooses_only_by_signal(git_repo, personas, make_request):
    repo = _branch(git_repo, {"app/core.py": "def total(items):\n    return sum(items) + 1\n"})
    planned = _plan(repo, personas, make_request, band="large")
    assert planned.band == "large"
    flow = FLOWS["code-review"]
    fired = {s.name for s in planned.signals}
    chosen = [e for e in planned.roster if e.reason.startswith("chosen")]
    assert [e.persona for e in chosen] == ["test-engineer"]
    for entry in chosen:
        (choice,) = [c for c in flow.choices if c.persona == entry.persona]
        assert set(choice.signals) & fired
    for untouched in ("data-engineer", "devops-engineer", "concurrency-analyst", "on-call-engineer"):
        assert untouched not in _roster(planned)


EVERY_DOMAIN = {
    "app/auth.py": "import hmac\n\ndef sign(k, m):\n    return hmac.new(k, m)\n",
    "app/models.py": "from sqlalchemy import Column\nid = Column(int)\n",
    "web/App.tsx": "export const App = () => null\n",
    "Dockerfile": "FROM python:3.11\n",
    "app/client.py": "import httpx\n\ndef get(u):\n    return httpx.get(u, timeout=3)\n",
    "api/orders.proto": "syntax = \"proto3\";\n",
    "svc/worker.py": "def run():\n    return 1\n",
}


def test_a_forced_large_band_keeps_its_cap(git_repo, personas, make_request):
    repo = git_repo({**BASE, "docs/spec.md": "# Spec\nOrders are signed.\n", **EVERY_DOMAIN})
    planned = plan(make_request("gap-analysis", band="large", focus="docs/spec.md"), repo.pin(),
                   personas, model="m", engine="e", ts=2.0)
    flow = FLOWS["gap-analysis"]
    chosen = [e.persona for e in planned.roster if e.reason.startswith("chosen")]
    choices = [c.persona for c in flow.choices]
    assert len(chosen) == flow.caps.large == 5
    assert chosen == choices[:5]  # strongest first, in the flow's order
    (note,) = [n for n in planned.notes if n.startswith("cap of")]
    assert note == "cap of 5 specialists at large band reached; left out " + ", ".join(choices[5:])


def test_a_forced_small_band_keeps_its_cap_and_names_who_was_left_out(git_repo, personas, make_request):
    repo = _branch(git_repo, {
        "app/jobs.py": "import threading\n\ndef f(x):\n    try:\n        return int(x)\n    except ValueError:\n        raise\n",
        "db/migrations/0002.sql": "ALTER TABLE u ADD e text;\n",
    })
    planned = _plan(repo, personas, make_request, band="small")
    chosen = [e.persona for e in planned.roster if e.reason.startswith("chosen")]
    assert chosen == ["test-engineer", "concurrency-analyst"]
    (note,) = [n for n in planned.notes if n.startswith("cap of")]
    assert note.startswith("cap of 2 specialists at small band reached; left out data-engineer")
    assert note.endswith("a larger band would seat them")


def test_a_named_persona_joins_outside_the_cap_and_an_unknown_one_is_skipped(git_repo, personas, make_request):
    repo = _branch(git_repo, {"app/core.py": "def total(items):\n    return sum(items) + 1\n"})
    planned = _plan(repo, personas, make_request, band="small",
                    personas=("information-architect", "no-such-persona"))
    roster = _roster(planned)
    assert roster["information-architect"].reason == "named in the request"
    assert roster["information-architect"].phase == "review"
    assert "no-such-persona" not in roster
    assert any("'no-such-persona' named in the request is not known; skipped" in n for n in planned.notes)
    assert _step(planned, "information-architect").wave == 1


def test_config_extra_agents_compete_on_signals_and_count_against_the_cap(git_repo, personas, make_request):
    config = "## Extra Agents\n- han-core:user-experience-designer\n- devops-engineer\n- ghost-agent\n"
    repo = _branch(git_repo, {"web/App.tsx": "export const App = () => null\n",
                              "app/core.py": "def total(items):\n    return sum(items) + 1\n"},
                   base={**BASE, ".han/config.md": config})
    planned = _plan(repo, personas, make_request, band="medium")
    roster = _roster(planned)
    ux = roster["user-experience-designer"]
    assert ux.reason.startswith("extra agent from .han/config.md (ui: web/App.tsx")
    assert _step(planned, "user-experience-designer").files == ("web/App.tsx",)
    # devops-engineer's domain is untouched: it does not sit, and the plan says why.
    assert "devops-engineer" not in roster
    assert any(n.startswith(".han/config.md: extra agent devops-engineer not seated") for n in planned.notes)
    assert ".han/config.md: extra agent 'ghost-agent' is not a known persona; skipped" in planned.notes

    # At small band the two seats go to the flow's own choices; the extra is left out, by name.
    planned = _plan(repo, personas, make_request, band="small")
    assert "user-experience-designer" not in _roster(planned)
    (note,) = [n for n in planned.notes if n.startswith("cap of")]
    assert "left out user-experience-designer" in note


USER_PERSONA = """---
name: ledger-auditor
lens: Checks that every money movement in the code is recorded twice and balances.
boundaries:
  - does_not: review the schema
    use: data-engineer
inputs:
  - the files that move money
id_prefix: LED
severities: [Unbalanced, Unrecorded, Cosmetic]
evidence_rule: true
yagni_rule: false
slice: all
signals: [{signal}]
min_band: {min_band}
---

## Posture

Assume a cent goes missing somewhere.

## Output

Answer with JSON in the schema the conductor gives you.
"""


@pytest.mark.parametrize("signal,min_band,band,seated,note", [
    ("data", "small", "medium", True, None),
    ("infra", "small", "medium", False, None),
    ("data", "large", "medium", False, "ledger-auditor left out at medium band: data fired, but it joins from large"),
])
def test_user_personas_compete_on_their_own_signals(git_repo, make_request, tmp_path,
                                                    signal, min_band, band, seated, note):
    from personas import load_personas

    extra = tmp_path / "my-personas"
    extra.mkdir()
    (extra / "ledger-auditor.md").write_text(USER_PERSONA.format(signal=signal, min_band=min_band))
    personas = load_personas(extra)
    repo = _branch(git_repo, {"app/models.py": "from sqlalchemy import Column\nid = Column(int)\n"})
    planned = _plan(repo, personas, make_request, band=band)
    roster = _roster(planned)
    assert ("ledger-auditor" in roster) is seated
    if seated:
        assert roster["ledger-auditor"].reason == "user persona (data: app/models.py)"
    if note:
        assert note in planned.notes


def test_each_persona_reads_only_its_domain_slice(git_repo, personas, make_request):
    repo = _branch(git_repo, {
        "app/core.py": "import threading\n\nL = threading.Lock()\n\ndef total(items):\n    return sum(items)\n",
        "app/models.py": "from sqlalchemy import Column\nid = Column(int)\n",
        "README.md": "# shop\nchanged\n",
    })
    planned = _plan(repo, personas, make_request, band="large")
    considered = set(planned.considered)
    assert considered == {"README.md", "app/core.py", "app/models.py"}
    assert _step(planned, "junior-developer").files == ("README.md", "app/core.py", "app/models.py")
    assert _step(planned, "concurrency-analyst").files == ("app/core.py",)
    assert _step(planned, "data-engineer").files == ("app/models.py",)
    # security reads the change plus every dependency manifest, changed or not
    assert "pyproject.toml" in _step(planned, "adversarial-security-analyst").files
    # the test engineer reads the source and the tests that exercise it, changed or not
    assert _step(planned, "test-engineer").files == ("app/core.py", "app/models.py", "tests/test_core.py")
    # structure reads source only: no README
    assert "README.md" not in _step(planned, "structural-analyst").files
