"""Signals over real pinned repositories: what fires, on which files, and what must not fire."""

from __future__ import annotations

import pytest

from conductor.signals import SCAN_BYTES, compute, kind_of, subsystem_of

BASE = {
    "README.md": "# shop\n",
    "app/__init__.py": "",
    "app/core.py": "def total(items):\n    return sum(items)\n",
}

# (case, files added on a branch, signal, files expected to fire it, a word of its detail)
FIRES = [
    ("migration dir", {"db/migrations/0002_email.sql": "ALTER TABLE users ADD email text;\n"},
     "data", ("db/migrations/0002_email.sql",), "migration"),
    ("ORM model by content", {"app/models.py": "from sqlalchemy import Column\nid = Column(int)\n"},
     "data", ("app/models.py",), "ORM model"),
    ("Dockerfile", {"Dockerfile": "FROM python:3.11\n"}, "infra", ("Dockerfile",), "container"),
    ("CI workflow", {".github/workflows/ci.yml": "on: push\n"}, "infra",
     (".github/workflows/ci.yml",), "CI"),
    ("terraform", {"infra/main.tf": "resource \"x\" \"y\" {}\n"}, "infra", ("infra/main.tf",), "IaC"),
    ("k8s by content", {"ops.yaml": "apiVersion: apps/v1\nkind: Deployment\n"}, "infra",
     ("ops.yaml",), "k8s"),
    ("auth module by path", {"app/auth.py": "def check(u):\n    return u\n"}, "security",
     ("app/auth.py",), "auth code"),
    ("crypto by content", {"app/sign.py": "import hmac\nhmac.new(b'k')\n"}, "security",
     ("app/sign.py",), "crypto"),
    ("HTTP handler", {"app/web.py": "@app.route('/x')\ndef x():\n    pass\n"}, "security",
     ("app/web.py",), "HTTP handler"),
    ("threads", {"app/jobs.py": "import threading\nL = threading.Lock()\n"}, "concurrency",
     ("app/jobs.py",), "threads"),
    ("asyncio", {"app/io.py": "async def f():\n    await g()\n"}, "concurrency", ("app/io.py",), "async"),
    ("goroutine", {"svc/main.go": "package main\nfunc main() {\n\tgo work()\n}\n"}, "concurrency",
     ("svc/main.go",), "goroutines"),
    ("UI files", {"web/App.tsx": "export const App = () => null\n", "web/site.css": "a{}\n"}, "ui",
     ("web/App.tsx", "web/site.css"), "UI file"),
    ("outbound call", {"app/client.py": "import httpx\nhttpx.get(u, timeout=3)\n"}, "resilience",
     ("app/client.py",), "outbound calls"),
    ("interface definition", {"api/orders.proto": "syntax = \"proto3\";\n"}, "seam",
     ("api/orders.proto",), "interface definition"),
]


@pytest.mark.parametrize("case,files,signal,expected,label", FIRES, ids=[c[0] for c in FIRES])
def test_a_clear_marker_fires_its_signal_on_exactly_its_files(git_repo, case, files, signal, expected, label):
    repo = git_repo(BASE)
    repo.branch("feature")
    repo.write(files)
    repo.commit(case)
    snap = repo.pin(base="main")
    found = compute(snap, snap.changed())
    assert found.fired(signal), [s.name for s in found]
    assert found.files(signal) == expected
    assert label in found.get(signal).detail


# (case, files, signal that must stay silent)
SILENT = [
    ("SQL in a README is prose", {"README.md": "# shop\nRun CREATE TABLE users first.\n"}, "data"),
    ("docs about threads", {"docs/design.md": "We use threading.Lock() and asyncio.\n"}, "concurrency"),
    ("a test of auth is not the auth surface", {"tests/test_auth.py": "def test_ok():\n    pass\n"},
     "security"),
    ("a word inside a name", {"app/possession.py": "def own():\n    return 1\n"}, "security"),
    ("plain logic", {"app/core.py": "def total(items):\n    return sum(items) + 0\n"}, "data"),
]


@pytest.mark.parametrize("case,files,signal", SILENT, ids=[c[0] for c in SILENT])
def test_a_mention_is_not_a_marker(git_repo, case, files, signal):
    repo = git_repo(BASE)
    repo.branch("feature")
    repo.write(files)
    repo.commit(case)
    snap = repo.pin(base="main")
    found = compute(snap, snap.changed())
    assert not found.fired(signal), found.get(signal)


def test_shape_signals_count_files_subsystems_and_languages(git_repo):
    repo = git_repo(BASE)
    repo.branch("feature")
    repo.write({
        "app/core.py": "def total(items):\n    return sum(items) * 2\n",
        "billing/invoice.py": "def invoice():\n    return 1\n",
        "billing/render.ts": "export const r = 1\n",
        "tests/test_core.py": "def test_total():\n    assert True\n",
    })
    repo.commit("spread")
    snap = repo.pin(base="main")
    found = compute(snap, snap.changed())
    assert found.file_count == 4
    assert found.get("considered").detail == "4 files"
    # The test sits with the code it tests: it does not add a subsystem.
    assert found.subsystems == ("app", "billing")
    assert found.get("languages").detail == "python (3), typescript (1)"
    assert found.files("tests") == ("tests/test_core.py",)
    assert found.files("source") == ("app/core.py", "billing/invoice.py", "billing/render.ts")
    assert not found.fired("docs-only")


def test_docs_only_fires_only_when_every_considered_file_is_documentation(git_repo):
    repo = git_repo(BASE)
    repo.branch("docs")
    repo.write({"README.md": "# shop\n\nHow to run.\n", "docs/usage.rst": "Usage\n=====\n"})
    repo.commit("docs")
    snap = repo.pin(base="main")
    found = compute(snap, snap.changed())
    assert found.fired("docs-only") and not found.fired("source")

    repo.write({"app/core.py": "def total(items):\n    return 0\n"})
    repo.commit("and code")
    snap = repo.pin(base="main")
    assert not compute(snap, snap.changed()).fired("docs-only")


def test_structure_fires_on_a_new_module_or_changed_imports_in_the_diff(git_repo):
    repo = git_repo(BASE)
    repo.branch("feature")
    repo.write({"app/core.py": "def total(items):\n    return sum(items) + 1\n"})
    repo.commit("body only")
    snap = repo.pin(base="main")
    assert not compute(snap, snap.changed()).fired("structure")

    repo.write({"app/core.py": "import decimal\n\ndef total(items):\n    return sum(items) + 1\n",
                "app/tax.py": "RATE = 2\n"})
    repo.commit("new module and an import")
    snap = repo.pin(base="main")
    structure = compute(snap, snap.changed()).get("structure")
    assert structure.files == ("app/core.py", "app/tax.py")
    assert structure.detail == "new modules, changed imports"


def test_content_is_read_only_up_to_the_scan_bound(git_repo):
    filler = "x = 1\n" * (SCAN_BYTES // 6 + 10)
    repo = git_repo({"app/late.py": filler + "import threading\n",
                     "app/early.py": "import threading\n" + filler})
    snap = repo.pin()
    found = compute(snap, snap.changed())
    assert found.files("concurrency") == ("app/early.py",)


def test_symptom_words_choose_specialist_signals_without_files():
    from conductor.snapshot import MemorySnapshot

    snap = MemorySnapshot({"a.py": "x = 1\n"})
    found = compute(snap, snap.changed(), symptom="Checkout hangs intermittently under load; "
                    "the orders table gets duplicate rows")
    assert found.fired("symptom-concurrency") and found.fired("symptom-data")
    assert not found.fired("symptom-behaviour")
    assert "'intermittently'" in found.get("symptom-concurrency").detail
    assert found.files("symptom-data") == ()


def test_same_snapshot_gives_the_same_signals(git_repo):
    repo = git_repo({**BASE, "app/jobs.py": "import threading\n", "Dockerfile": "FROM x\n"})
    snap = repo.pin()
    assert compute(snap, snap.changed()).signals == compute(snap, snap.changed()).signals


@pytest.mark.parametrize("path,kind,subsystem", [
    ("app/core.py", "source", "app"),
    ("tests/test_core.py", "test", "tests"),
    ("web/app.test.tsx", "test", "web"),
    ("docs/guide.md", "doc", "docs"),
    ("LICENSE", "doc", "(root)"),
    ("package-lock.json", "manifest", "(root)"),
    ("requirements-dev.txt", "manifest", "(root)"),
    ("vendor/lib/x.go", "vendored", "vendor"),
    ("proto/x_pb2.py", "vendored", "proto"),
    ("src/billing/invoice.py", "source", "src/billing"),
    ("packages/ui/Button.tsx", "source", "packages/ui"),
    ("static/site.css", "markup", "static"),
])
def test_file_kinds_and_subsystems(path, kind, subsystem):
    assert kind_of(path) == kind
    assert subsystem_of(path) == subsystem


def test_hostile_content_costs_bounded_time(git_repo):
    """Files built to make patterns backtrack (blank lines, long runs, a huge diff) are read in
    well under a second each."""
    import time

    repo = git_repo({"README.md": "# x\n"})
    repo.branch("feature")
    repo.write({
        "a.py": "\n" * 40_000,
        "b.py": "SELECT " + " " * 40_000,
        "c.yaml": "apiVersion: v1\n" * 3_000,
        "d.py": "<" * 100_000,
        "e.py": "+\n" * 100_000,
    })
    repo.commit("hostile")
    snap = repo.pin(base="main")
    started = time.perf_counter()
    found = compute(snap, snap.changed())
    assert time.perf_counter() - started < 3.0
    assert not found.fired("data") and not found.fired("infra")
