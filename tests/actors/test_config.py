"""Settings as a person sets them: ``ORCH_*`` variables and flags, bad values refused up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

from actors.config import ConfigError, Settings


def test_variables_are_read_typed_and_flags_win():
    s = Settings.load(
        {"ORCH_PORT": "9000", "ORCH_MODEL_TIMEOUT": "2.5", "ORCH_REPO_ROOTS": "/a:/b", "ORCH_STEP_TURNS": "3"},
        step_turns=4,
    )
    assert (s.port, s.model_timeout, s.repo_roots, s.step_turns) == (9000, 2.5, ("/a", "/b"), 4)
    assert Settings.load({"ORCH_PORT": "0", "ORCH_COPY_LIMIT_BYTES": "0"}).port == 0  # 0: any free port


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("ORCH_PORT", "70000", "<= 65535"),
        ("ORCH_PORT", "-1", ">= 0"),
        ("ORCH_MAX_STREAMS", "0", ">= 1"),
        ("ORCH_STEP_TURNS", "0", ">= 1"),
        ("ORCH_STEP_MAX_TOKENS", "-5", ">= 1"),
        ("ORCH_CONTEXT_TOKENS", "0", ">= 1"),
        ("ORCH_MODEL_TIMEOUT", "0", "> 0"),
        ("ORCH_VLLM_REPLICAS", "0", ">= 1"),
        ("ORCH_MAX_REQUEST_BYTES", "0", ">= 1"),
        ("ORCH_COPY_LIMIT_BYTES", "-1", ">= 0"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_variable(variable, value, expected):
    with pytest.raises(ConfigError) as caught:
        Settings.load({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}=") and "refused" in message and expected in message


@pytest.mark.parametrize("token", ["pässwort", "two words", "tab\there"])
def test_a_token_no_http_header_can_carry_is_refused_without_being_echoed(token):
    # Servers read headers as Latin-1: such a token would only ever match in a URL.
    with pytest.raises(ConfigError) as caught:
        Settings.load({"ORCH_TOKEN": token})
    assert str(caught.value) == "ORCH_TOKEN is refused: use printable ASCII without spaces"
    assert Settings.load({"ORCH_TOKEN": "s3cret-Token_1~"}).token == "s3cret-Token_1~"


@pytest.mark.parametrize(
    "env, args, said",
    [
        ({"ORCH_MAX_STREAMS": "0"}, ["runs"], "orchestrator: ORCH_MAX_STREAMS=0 is refused"),
        ({}, ["serve", "--port", "70000"], "argument --port: must be a port number from 0 to 65535"),
    ],
)
def test_a_bad_value_stops_the_command_before_it_writes_anything(tmp_path, env, args, said):
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "--data-dir", str(data), *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert said in done.stderr.strip().splitlines()[-1]
    assert not data.exists()
