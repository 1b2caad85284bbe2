"""The command line as a user runs it: `orchestrator run`, `runs`, `show`, `cancel`, as processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.actors.hostile import fingerprint, make_repo

pytestmark = [pytest.mark.slow]

SCRIPT = {
    "tokens_per_s": 500,
    "replies": [
        {"match": ["adversarial-validator/"], "json": {"final": {"verdicts": []}}},
        {"turn": 0, "json": {"tool": "read_file", "args": {"path": "calc.py"}}},
        {"json": {"final": {"summary": "read calc.py", "findings": [{
            "id": "X-1", "severity": "High", "category": "Behavior", "title": "add subtracts",
            "claim": "add returns a - b",
            "evidence": [{"path": "calc.py", "line_start": 2, "line_end": 2, "quote": "return a - b"}],
            "recommendation": "return a + b"}]}}},
    ],
}


def orchestrator(data_dir, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def events_in(data_dir) -> int:
    path = data_dir / "events.duckdb"
    if not path.exists():
        return 0
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def repo(tmp_path):
    r = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    (r / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    return r


def test_run_prints_the_report_and_history_reopens_it(tmp_path, repo):
    data = tmp_path / "data"
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    before = fingerprint(repo)
    done = orchestrator(data, "run", "code-review", "--repo", str(repo), "--engine", "scripted",
                        "--script", str(script), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["header"]["flow"] == "code-review"
    assert "return a - b" in done.stdout
    assert fingerprint(repo) == before

    listed = orchestrator(data, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert len(runs) == 1 and runs[0]["status"] == "finished"
    run_id = runs[0]["run_id"]
    # The run was named as soon as it began, before its progress and report.
    lines = done.stderr.splitlines()
    launched = lines.index(f"orchestrator: run {run_id} launched")
    # Ray Serve's INFO lines (deploying, routing, deleting the model) are not the user's, nor
    # Ray's notice, at every start, that its token authentication is on.
    assert not [line for line in lines if line.startswith("INFO ")], done.stderr
    assert "Token authentication" not in done.stderr, done.stderr
    assert launched < next(i for i, line in enumerate(lines) if line.startswith("code-review · "))

    shown = orchestrator(data, "show", run_id, "--format", "md")
    assert shown.returncode == 0 and "calc.py:2" in shown.stdout
    html = orchestrator(data, "show", run_id, "--format", "html")
    assert html.stdout.lstrip().lower().startswith("<!doctype html")
    saved = orchestrator(data, "show", run_id, "--format", "html", "-o", str(tmp_path / "report.html"))
    assert saved.returncode == 0 and saved.stdout == ""
    assert (tmp_path / "report.html").read_text() + "\n" == html.stdout  # print's newline
    unwritable = orchestrator(data, "show", run_id, "-o", str(tmp_path))  # a directory
    assert unwritable.returncode == 1
    assert unwritable.stderr == f"orchestrator: cannot write {tmp_path}: Is a directory\n"
    # Not even the user's own -o writes into the analysed repository: not by its path, not
    # through a link that leads into it.
    (tmp_path / "into-repo").symlink_to(repo)
    for target in (repo / "review.md", tmp_path / "into-repo" / "docs" / "review.md"):
        refused = orchestrator(data, "show", run_id, "-o", str(target))
        assert refused.returncode == 2
        assert refused.stderr.startswith("orchestrator: the report file ")
        assert f"is inside the repository {repo}" in refused.stderr
        assert "write it somewhere outside the repository" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    # A hard link is a name outside for a file inside: the report takes the name with a
    # new file, and the repository's file keeps its bytes.
    os.link(repo / "calc.py", tmp_path / "linked.md")
    linked = orchestrator(data, "show", run_id, "-o", str(tmp_path / "linked.md"))
    assert linked.returncode == 0, linked.stderr
    assert (tmp_path / "linked.md").read_text() == shown.stdout.removesuffix("\n")
    assert fingerprint(repo) == before
    again = orchestrator(data, "cancel", run_id)
    assert again.returncode != 0 and "already finished" in again.stderr


def _slow_run_under_way(tmp_path, repo, data) -> subprocess.Popen:
    """An `orchestrator run` of a slow scripted review, once it is under way (its model
    deployed, its agents streaming)."""
    script = tmp_path / "script.json"
    # Each answer streams for ~20 s: the run is surely still going when it is interrupted.
    summary = "an answer slow enough to interrupt " + "and then some more " * 9
    script.write_text(json.dumps({"tokens_per_s": 2, "replies": [{"json": {"final": {
        "summary": summary, "findings": []}}}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "--data-dir", str(data), "run", "code-review", "--repo",
         str(repo), "--engine", "scripted", "--script", str(script), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Launched once its model replica is up (the launch deploys it before the run's first
    # event); a busy machine may take many seconds to get there.
    deadline = time.monotonic() + 120
    while _descendant(proc.pid, "ServeReplica") is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    time.sleep(6)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_command_cancels_the_run_and_the_history_says_so(tmp_path, repo, sig):
    data = tmp_path / "data"
    proc = _slow_run_under_way(tmp_path, repo, data)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].endswith("cancelled: interrupted")
    assert "SIGTERM received" not in err  # not Ray's native stack dump
    listed = orchestrator(data, "runs", "--json")
    runs = json.loads(listed.stdout)
    assert [(r["status"], r["error"]) for r in runs] == [("cancelled", "interrupted on the command line")]


def test_ctrl_c_pressed_again_while_cancelling_still_cancels_the_run(tmp_path, repo):
    # An impatient user presses Ctrl-C again (and again) while the first one's cancel goes on:
    # the cancel is not broken off, the last word is the run's fate and the history agrees.
    data = tmp_path / "data"
    proc = _slow_run_under_way(tmp_path, repo, data)
    proc.send_signal(signal.SIGINT)
    for _ in range(4):
        time.sleep(0.15)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    (run,) = json.loads(orchestrator(data, "runs", "--json").stdout)
    assert err.strip().splitlines()[-1] == f"orchestrator: run {run['run_id']} cancelled: interrupted"
    assert (run["status"], run["error"]) == ("cancelled", "interrupted on the command line")


def test_the_json_report_is_all_of_stdout_even_when_a_model_replica_dies(tmp_path, repo):
    # Ray's driver prints a dead worker's notice on stdout: it once came out ahead of the
    # JSON report, so a program reading ``--json`` could not parse it.
    script = tmp_path / "script.json"
    slow = {"tokens_per_s": 20, "replies": [
        {"match": ["adversarial-validator/"], "json": {"final": {"verdicts": []}}},
        {"json": {"final": {"summary": "read the whole of calc.py and found nothing to report",
                            "findings": []}}},
    ]}
    script.write_text(json.dumps(slow))
    cli = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "--data-dir", str(tmp_path / "data"), "run", "code-review",
         "--repo", str(repo), "--engine", "scripted", "--script", str(script), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        replica = None
        deadline = time.monotonic() + 120
        while replica is None and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.5)
            replica = _descendant(cli.pid, "ServeReplica")  # this run's own Ray's replica
        assert replica is not None, "no model replica came up"
        time.sleep(2)  # its agents are streaming now
        os.kill(replica, signal.SIGKILL)
        out, err = cli.communicate(timeout=240)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert "worker died" in err.lower()  # Ray's notice went to stderr
    report = json.loads(out)
    assert report["header"]["flow"] == "code-review"


def _descendant(root: int, marker: str) -> int | None:
    """A process under ``root`` whose command line holds ``marker``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/cmdline").read_text():
                    return pid
    return None


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "no-such-flow", "--repo", "{repo}"], "unknown flow"),
        (["run", "code-review", "--repo", "{missing}"], "no such repository"),
        (["run", "code-review", "--repo", "{plain}/calc.py"], "is not a directory"),
        (["run", "code-review", "--repo", "{repo}", "--band", "huge"], "band"),
        (["run", "architectural-analysis", "--repo", "{repo}"], "focus"),
        (["run", "code-review", "--repo", "{repo}", "--persona", "secruity-analyst"], "unknown persona 'secruity-analyst'"),
        (["run", "code-review", "--repo", "{repo}", "--engine", "scripted"], "needs --script"),
        # A ref git cannot resolve is told at once, not after Ray and the model have started.
        (["run", "code-review", "--repo", "{repo}", "--base", "no-such-ref"], "unknown ref 'no-such-ref' in"),
        (["run", "code-review", "--repo", "{repo}", "--base=--output=x"], "bad base ref '--output=x'"),
        (["run", "code-review", "--repo", "{plain}", "--base", "main"], "a base ref needs a git repository"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, repo, args, message):
    data = tmp_path / "data"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    args = [a.format(repo=repo, missing=tmp_path / "missing", plain=plain) for a in args]
    before = fingerprint(repo)
    done = orchestrator(data, *args, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: ") and message in lines[0].lower()
    assert not data.exists()  # refused before Ray, the log or the data directory
    assert fingerprint(repo) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--limit", "-1"], "argument --limit: must be a whole number from 1 to 100000, not '-1'"),
        (["--limit", "ten"], "argument --limit: must be a whole number"),
        (["--status", "done"], "argument --status: invalid choice: 'done'"),
    ],
)
def test_history_filters_out_of_range_are_refused_before_anything_opens(tmp_path, args, message):
    data = tmp_path / "data"
    done = orchestrator(data, "runs", *args, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert not data.exists()


def test_history_says_when_nothing_matches_and_names_the_flows_for_a_mistyped_one(tmp_path):
    from events.duckdb_log import DuckDBLog
    from events.types import RunRequested
    from projections import Projector

    data = tmp_path / "data"
    data.mkdir()
    with DuckDBLog(str(data / "events.duckdb"), Projector()) as log:
        log.append([RunRequested(run_id="r1", ts=1.0, flow="code-review", repo="/src/app")], ["k"])

    typo = orchestrator(data, "runs", "--flow", "code-reveiw", timeout=60)
    assert typo.returncode == 0 and typo.stdout.strip() == "no runs match"
    assert typo.stderr.strip() == (
        "note: no flow is named 'code-reveiw'; the flows are architectural-analysis, "
        "automated-test-planning, code-overview, code-review, gap-analysis, investigate"
    )
    none_finished = orchestrator(data, "runs", "--status", "finished", timeout=60)
    assert none_finished.stdout.strip() == "no runs match" and none_finished.stderr == ""
    listed = orchestrator(data, "runs", "--flow", "code-review", timeout=60)
    assert listed.returncode == 0 and "r1" in listed.stdout and listed.stderr == ""


def test_a_persona_directory_that_cannot_load_stops_run_before_anything_starts(tmp_path, repo):
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "mine.md").write_text("---\nid: mine\n---\nbody\n")
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "--data-dir", str(data), "run", "code-review",
         "--repo", str(repo)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ORCH_PERSONAS_DIR": str(personas)},
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"orchestrator: cannot load personas: {personas / 'mine.md'}: id: unknown field "
        "(known fields: name, lens, boundaries, inputs, id_prefix, severities, evidence_rule, "
        "yagni_rule, slice, signals, min_band)"
    ]
    assert not data.exists()  # refused before Ray, the log or the data directory


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--engine", "openai"], {}, "the openai engine needs ORCH_OPENAI_BASE_URL"),
        # Port 9 (discard) on loopback: nothing answers.
        (["--engine", "openai"], {"ORCH_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, "127.0.0.1:9"),
        (["--engine", "embedded", "--model", "{missing}.gguf"], {}, "is neither"),
    ],
)
def test_an_engine_that_cannot_run_here_is_refused_before_anything_starts(tmp_path, repo, args, env, message):
    data = tmp_path / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_OPENAI")} | env
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "--data-dir", str(data), "run", "code-review",
         "--repo", str(repo), *[a.format(missing=tmp_path / "missing") for a in args]],
        capture_output=True, text=True, timeout=60, env=environ,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("orchestrator: ") and message in lines[0]
    assert not data.exists()  # refused before Ray, the log or the data directory


@pytest.mark.parametrize("kind", ["git", "plain"])
def test_a_data_directory_inside_the_analysed_tree_is_refused_before_it_is_made(tmp_path, repo, kind):
    if kind == "plain":
        repo = tmp_path / "plain"
        repo.mkdir()
        (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    before = fingerprint(repo) if kind == "git" else sorted(p.name for p in repo.iterdir())
    data = repo / ".orchestrator"
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    done = orchestrator(data, "run", "code-review", "--repo", str(repo), "--engine", "scripted",
                        "--script", str(script), timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0] == (
        f"orchestrator: the data directory {data} is inside the repository {repo}; Orchestrator never "
        "writes into what it analyses: choose a data directory outside it (--data-dir, ORCH_DATA_DIR)"
    )
    assert not data.exists()
    assert before == (fingerprint(repo) if kind == "git" else sorted(p.name for p in repo.iterdir()))


@pytest.mark.parametrize(
    "base, message",
    # A clean tree against its own HEAD: no agent is sent to read nothing.
    [("HEAD", "code-review: nothing to analyse: no file in scope differs between 'HEAD'")],
)
def test_a_base_that_gives_nothing_to_review_is_refused_after_start_and_writes_no_event(
        tmp_path, base, message):
    repo = make_repo(tmp_path / "clean", {"calc.py": "def add(a, b):\n    return a + b\n"})
    data = tmp_path / "data"
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    done = orchestrator(data, "run", "code-review", "--repo", str(repo), "--base", base,
                        "--engine", "scripted", "--script", str(script), timeout=180)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert events_in(data) == 0
    assert not list((data / "runs").glob("*"))  # not even the snapshot it had pinned


def test_a_plain_directory_with_nothing_to_analyse_leaves_no_copy_behind(tmp_path):
    # The pin copies a plain directory into the run's data before the plan finds nothing to
    # read in it besides the document: the refused run keeps no copy.
    plain = tmp_path / "plain"
    (plain / "docs").mkdir(parents=True)
    (plain / "docs" / "spec.md").write_text("# Spec\n\nadd(a, b) returns a + b.\n")
    data = tmp_path / "data"
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    done = orchestrator(data, "run", "gap-analysis", "--repo", str(plain), "--focus", "docs/spec.md",
                        "--engine", "scripted", "--script", str(script), timeout=180)
    assert done.returncode == 2, done.stderr
    assert "nothing to analyse: no file in scope besides the document" in done.stderr.strip().splitlines()[-1]
    assert events_in(data) == 0
    assert not list((data / "runs").glob("*"))
    assert sorted(p.name for p in plain.rglob("*")) == ["docs", "spec.md"]


def test_a_data_directory_another_process_writes_is_one_clear_line(tmp_path, repo):
    # Another `orchestrator run` on the same data directory holds the log the same way.
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    with duckdb.connect(str(data / "events.duckdb")):
        done = orchestrator(data, "run", "code-review", "--repo", str(repo),
                            "--engine", "scripted", "--script", str(script), timeout=180)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("orchestrator: event log") and f"held by process {os.getpid()}" in last
    with duckdb.connect(str(data / "events.duckdb"), read_only=True) as con:  # nothing written
        assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0] == 0


def test_cancel_without_a_server_closes_the_interrupted_run(tmp_path):
    # A run cut off mid-flight (its server gone): one step streaming, one queued.
    from events.duckdb_log import DuckDBLog
    from events.types import OutputDelta, RunRequested, StepQueued, StepStarted
    from projections import Projector
    from tests.projections.projection_scenarios import planned

    data = tmp_path / "data"
    data.mkdir()
    events = [
        RunRequested(run_id="r1", ts=1.0, flow="code-review", repo="/src/app"),
        planned("r1", 2.0, "small", ("a", "junior-developer", 0), ("b", "risk-analyst", 0)),
        StepQueued(run_id="r1", ts=3.0, step_id="a", persona="junior-developer", phase="analysis"),
        StepQueued(run_id="r1", ts=3.0, step_id="b", persona="risk-analyst", phase="analysis"),
        StepStarted(run_id="r1", ts=4.0, step_id="a"),
        OutputDelta(run_id="r1", ts=5.0, step_id="a", text="half an answer", offset=0),
    ]
    with DuckDBLog(str(data / "events.duckdb"), Projector()) as log:
        log.append(events, [f"k{i}" for i in range(len(events))])

    done = orchestrator(data, "cancel", "r1", "--reason", "gave up on it", timeout=120)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(data / "events.duckdb"), read_only=True) as con:
        written = con.execute("SELECT kind, step_id FROM events WHERE seq > 6 ORDER BY seq").fetchall()
        steps = dict(con.execute("SELECT step_id, status FROM flow_steps WHERE run_id = 'r1'").fetchall())
        (run,) = con.execute("SELECT status FROM flow_runs WHERE run_id = 'r1'").fetchall()
    # Both open steps closed, then the run: what its supervisor would have written.
    assert sorted(written[:-1]) == [("step_failed", "a"), ("step_failed", "b")]
    assert written[-1] == ("run_cancelled", None)
    assert run == ("cancelled",) and set(steps.values()) == {"failed"}

    again = orchestrator(data, "cancel", "r1", timeout=120)
    assert again.returncode != 0 and "already cancelled" in again.stderr
