"""Fixtures shared by the whole suite: one local Ray instance per test session, data dirs."""

from __future__ import annotations

import os
import signal

import pytest

# Child processes (the CLI, crash harnesses, `serve`) and Ray's workers must run this tree's
# code, not whichever checkout the environment's editable install points at (another clone
# installing itself into the same interpreter re-points it): put this tree first for them too.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))

# A suite started as a shell's background job (`pytest &` without job control) inherits Ctrl-C
# ignored, and so would every command it starts: Python then sets no KeyboardInterrupt
# handler, and the tests that press Ctrl-C on a command would see it ignored. Give the
# session, and through it its commands, the terminal's usual Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (starting one costs ~4 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            namespace="orchestrator-tests",
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch):
    """Tests see only the ORCH_* variables they set themselves."""
    for key in list(os.environ):
        if key.startswith("ORCH_"):
            monkeypatch.delenv(key, raising=False)
