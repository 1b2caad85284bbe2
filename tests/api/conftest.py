"""The API tests' fixtures: one real Orchestrator (scripted engine) per session, and the
repository root the test servers allow.

Starting the backend costs seconds (Ray, the event log actor, the model deployment), so one
backend serves every module; each module runs its own server around it with its own settings
(token, roots, webhook), which is what the API layer owns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.config import Settings
from apitest_support import SCRIPT, make_repo


@pytest.fixture(scope="session")
def repos_root(tmp_path_factory) -> Path:
    """The repository root of the test servers, holding one repository, ``demo``."""
    root = tmp_path_factory.mktemp("repos")
    make_repo(root / "demo")
    return root


@pytest.fixture(scope="session")
def backend(ray_session, tmp_path_factory):
    """The real Orchestrator with the scripted engine, shared by every API test module."""
    from actors.service import Orchestrator

    data = tmp_path_factory.mktemp("api-data")
    orch = Orchestrator(Settings(data_dir=str(data), engine="scripted"), engine="scripted", script=SCRIPT)
    yield orch
    orch.close()


