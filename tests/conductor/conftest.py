"""Fixtures for conductor tests: real git repositories built in the test, pinned the way a run
pins them (``actors.snapshot.pin``), the builtin personas, and requests. In a test::

    repo = git_repo({"app.py": "x = 1\\n"})      # one commit on main
    repo.branch("feature")
    repo.write({"b.py": "y = 2\\n"})
    repo.commit("add b")
    snap = repo.pin(base="main")                  # considers b.py
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from events.types import RunRequested


class GitRepo:
    """A git repository in a temporary directory, driven with the git command line."""

    def __init__(self, path: Path, work: Path, pins: list):
        self.path = path
        self._work = work
        self._pins = pins
        self._n = itertools.count(1)

    def git(self, *args: str) -> str:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
            "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
            "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
        }
        proc = subprocess.run(
            ["git", "-C", str(self.path), *args], env=env, capture_output=True, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.decode()}")
        return proc.stdout.decode()

    def write(self, files: dict[str, str | bytes]) -> None:
        for rel, content in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)

    def remove(self, *paths: str) -> None:
        for rel in paths:
            (self.path / rel).unlink()

    def commit(self, message: str = "change") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def branch(self, name: str) -> None:
        self.git("checkout", "-q", "-b", name)

    def pin(self, *, base: str | None = None, paths: tuple[str, ...] = ()):
        """Pin the repository as a run would (its own work directory outside the repo)."""
        from actors.snapshot import pin

        snap = pin(self.path, base=base, paths=paths, work_dir=self._work / f"run-{next(self._n)}")
        self._pins.append(snap)
        return snap


@pytest.fixture
def git_repo(tmp_path):
    """Factory: ``git_repo(files, message="initial")`` commits ``files`` on ``main``."""
    pins: list = []
    count = itertools.count(1)

    def make(files: dict[str, str | bytes], message: str = "initial") -> GitRepo:
        n = next(count)
        path = tmp_path / f"repo-{n}"
        path.mkdir()
        repo = GitRepo(path, tmp_path / f"work-{n}", pins)
        repo.git("init", "-q", "-b", "main")
        repo.write(files)
        repo.commit(message)
        return repo

    yield make
    for snap in pins:
        snap.close()


@pytest.fixture(scope="session")
def personas():
    from personas import load_personas

    return load_personas()


@pytest.fixture
def make_request():
    """Factory: ``make_request(flow, **fields)`` -> a ``RunRequested`` with a fixed id and time."""

    def make(flow: str, **fields) -> RunRequested:
        fields.setdefault("repo", "/repo")
        return RunRequested(run_id="run-1", ts=1.0, flow=flow, **fields)

    return make
