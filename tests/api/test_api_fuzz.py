"""Fuzz every operation of the OpenAPI document with schemathesis (valid and invalid inputs):
no 5xx, responses as documented, and a rejected request writes no event."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from apitest_support import Server, api_settings, max_seq, settled_seq, wait_status

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def server(backend, repos_root):
    with Server(backend, api_settings(backend, repos_root)) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")

# The log's last seq after the previous example, when that example left the log quiet (it was
# quiet before it, and the example wrote nothing). Only after one that may have set writes
# going (an accepted launch, cancel or send) does the next wait for the log to settle, which
# takes 0.3 s at least: hundreds of examples, most of them refused or reads.
_quiet_seq: dict[str, int | None] = {"seq": None}


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_breaks_the_api_or_writes_when_refused(case, server):
    before = _quiet_seq["seq"]
    _quiet_seq["seq"] = None  # unknown until this example has passed its checks
    if before is None or before != max_seq(server.backend):
        before = settled_seq(server.backend)
    response = case.call(base_url=server.url, timeout=30)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )
    if response.status_code == 201:  # a generated launch that was valid: let it end quietly
        run_id = response.json()["run_id"]
        with server.client() as http:
            http.post(f"/api/runs/{run_id}/cancel")
            wait_status(http, run_id)
    elif response.status_code >= 400 or case.method.upper() == "GET":
        assert max_seq(server.backend) == before, (case.method, case.path, response.status_code)
        _quiet_seq["seq"] = before
