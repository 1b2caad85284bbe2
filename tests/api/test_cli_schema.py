"""`orchestrator schema`, as a TypeScript client's build runs it: the document, a file, a pipe."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import jsonschema
import pytest

from api.cli import main
from events import encode
from events.types import KINDS, OutputDelta, StepFailed


def test_events_only_is_the_union_and_validates_what_the_log_writes(capsys):
    assert main(["schema", "--events-only"]) == 0
    doc = json.loads(capsys.readouterr().out)
    tags = {
        tag
        for member in doc["$defs"].values()
        for tag in member.get("properties", {}).get("kind", {}).get("enum", [])
    }
    assert tags == KINDS
    validator = jsonschema.Draft202012Validator(doc)
    for event in (
        OutputDelta(run_id="r1", ts=1.0, step_id="s1", text="hello", offset=0),
        StepFailed(run_id="r1", ts=2.0, step_id="s1", error="engine down", retryable=True),
    ):
        validator.validate(json.loads(encode(event)))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"kind": "file_written", "run_id": "r1", "ts": 1.0})


def test_the_full_document_carries_frames_and_events_and_o_writes_the_same_or_says_why_not(tmp_path, capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"ClientFrame", "ServerFrame", "AgentEvent"} <= set(printed["$defs"])
    out = tmp_path / "schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text()) == printed
    assert main(["schema", "-o", str(tmp_path / "missing" / "schema.json")]) == 1
    assert capsys.readouterr().err == f"orchestrator: cannot write {tmp_path}/missing/schema.json: No such file or directory\n"


def test_a_reader_that_stops_early_ends_it_quietly():
    # `orchestrator schema | head -1`: the reader closes the pipe while the command still has
    # most of the document to write (the pipe shrunk to one page, so it cannot all fit first);
    # the command stops with the shell's SIGPIPE status, not a traceback.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "schema"], stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    reader = os.fdopen(read_end, "rb")
    assert reader.read(1) == b"{"
    reader.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
