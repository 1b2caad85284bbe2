"""Signals from a tree a hostile repository shapes: directory names and directory counts must
neither change the band by their spelling nor make planning slow."""

from __future__ import annotations

import time

from conductor import signals
from conductor.plan import plan
from conductor.snapshot import MemorySnapshot
from events.types import RunRequested

CODE = "def f(x):\n    return x\n"


def test_a_directory_named_with_commas_is_one_subsystem(personas):
    plain = MemorySnapshot({"api/x.py": CODE})
    commas = MemorySnapshot({"a, b, c, d/x.py": CODE})
    assert signals.compute(commas, commas.changed()).subsystems == ("a, b, c, d",)
    # The name of a directory does not change how large the change looks.
    req = RunRequested(run_id="r", ts=0.0, flow="code-review", repo=".")
    bands = [plan(req, s, personas, model="m", engine="e", ts=1.0).band for s in (plain, commas)]
    assert bands == ["small", "small"]


def test_subsystems_are_listed_in_name_order():
    snap = MemorySnapshot({"b/x.py": CODE, "a/y.py": CODE, "z.py": CODE, "src/app/m.py": CODE})
    assert signals.compute(snap, snap.changed()).subsystems == ("(root)", "a", "b", "src/app")


def _reference_deployables(snapshot, considered):
    """The straightforward all-pairs version: what the signal must keep meaning."""
    units = set()
    for p in snapshot.paths():
        parts = p.split("/")
        if len(parts) >= 2 and (parts[-1].lower().startswith("dockerfile") or signals.is_manifest(p)):
            units.add(signals.subsystem_of(p) if parts[0].lower() in signals._CONTAINERS else parts[0])
    touched = sorted({u for u in units for p in considered if p.startswith(u + "/")})
    if len(touched) < 2:
        return None
    return tuple(p for p in considered if any(p.startswith(u + "/") for u in touched)), touched


def test_deployable_units_are_found_as_before():
    files = {
        "api/package.json": "{}", "api/src/x.ts": CODE, "web/Dockerfile": "FROM x",
        "web/app.py": CODE, "services/pay/go.mod": "", "services/pay/main.go": CODE,
        "services/mail.go": CODE, "services/go.mod": "", "packages/ui/package.json": "{}",
        "apix/y.py": CODE, "README.md": "", "Dockerfile": "", "tools/z.py": CODE,
        "src/a/b/pyproject.toml": "", "src/a/b/c.py": CODE, "src/a/d.py": CODE,
    }
    snap = MemorySnapshot(files)
    for considered in (tuple(sorted(files)), ("api/src/x.ts", "apix/y.py"),
                       ("services/pay/main.go", "services/mail.go"), ("src/a/d.py", "web/app.py")):
        got = signals._deployables(snap, considered)
        want = _reference_deployables(snap, considered)
        if want is None:
            assert got is None
        else:
            assert got.files == want[0]
            assert got.detail == "deployable units: " + ", ".join(want[1])


def test_thousands_of_units_are_matched_in_near_linear_time():
    # 8,000 one-file units, each with its own manifest, and 8,000 docs outside them: the
    # all-pairs versions did 64 million prefix tests each here (about 20 s for the units);
    # looking up each path's own top directories takes well under a second.
    files = {}
    for i in range(8000):
        files[f"m{i:05d}/a.py"] = CODE
        files[f"m{i:05d}/package.json"] = "{}"
        files[f"zdocs/d{i:05d}.md"] = "doc\n"
    snap = MemorySnapshot(files)
    considered = tuple(sorted(files))
    started = time.perf_counter()
    seam = signals._deployables(snap, considered)
    code_subsystems = sorted({signals.subsystem_of(p) for p in considered if p.endswith(".py")})
    unfamiliar = signals._unfamiliar(snap, considered, code_subsystems)
    assert time.perf_counter() - started < 2.0
    assert seam is not None and len(seam.files) == 16000
    assert unfamiliar is not None
