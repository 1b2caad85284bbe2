"""Fixtures of the durability tests: one in-process Orchestrator (scripted engine) shared by
the modules that kill actors or cut runs, and the git repository they review."""

from __future__ import annotations

import pytest

from actors.config import Settings
from durability_script import make_repo, script


@pytest.fixture(scope="session")
def orch(ray_session, tmp_path_factory):
    from actors.service import Orchestrator

    data = tmp_path_factory.mktemp("durability-data")
    # Enough model streams that a dozen resumed runs do not queue behind each other.
    settings = Settings.load({}, data_dir=str(data), max_streams=16)
    o = Orchestrator(settings, engine="scripted", script=script(tokens_per_s=40))
    yield o
    o.close()


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("durability-repo") / "repo")
