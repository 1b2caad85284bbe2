"""Every REST route against a real server and the real Orchestrator (scripted engine).

Bad input is a 4xx with a stable code and a JSON error, and writes no event: the log's
highest ``seq`` is unchanged after it.
"""

from __future__ import annotations

import json
import os

import pytest
import websockets.sync.client as ws_sync
from websockets.exceptions import InvalidStatus

from apitest_support import Server, api_settings, error_of, max_seq, recv_frames, settled_seq, wait_status

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def server(backend, repos_root):
    with Server(backend, api_settings(backend, repos_root)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def finished_run(http, repos_root):
    """One code review launched over REST and run to its end."""
    resp = http.post("/api/runs", json={"flow": "code-review", "repo": "demo", "text": "look at the handler"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["repo"] == str((repos_root / "demo").resolve())
    row = wait_status(http, body["run_id"])
    assert row["status"] == "finished", row
    return body["run_id"]


def test_launch_then_read_the_run_its_steps_and_its_events(http, finished_run):
    detail = http.get(f"/api/runs/{finished_run}").json()
    run, steps = detail["run"], detail["steps"]
    assert run["run_id"] == finished_run and run["flow"] == "code-review"
    assert run["request_text"] and "look at the handler" in run["request_text"]
    assert run["band"] in ("small", "medium", "large") and run["band_reason"]
    assert len(run["commit"]) == 40 and run["model"] == "scripted"
    assert steps and {s["status"] for s in steps} == {"finished"}
    assert detail["seq"] >= run["last_seq"] > 0

    page = http.get(f"/api/runs/{finished_run}/events").json()
    seqs = [r["seq"] for r in page["records"]]
    assert seqs == sorted(set(seqs)) and page["last_seq"] == seqs[-1] == run["last_seq"]
    kinds = [r["event"]["kind"] for r in page["records"]]
    assert kinds[0] == "run_requested" and kinds[-1] == "run_finished"
    assert {"run_planned", "output_delta", "tool_called", "tool_denied", "step_finished"} <= set(kinds)
    assert all(r["event"]["run_id"] == finished_run for r in page["records"])

    # Paging: after= and limit= walk the same records.
    walked, after = [], 0
    while True:
        part = http.get(f"/api/runs/{finished_run}/events", params={"after": after, "limit": 25}).json()
        walked += [r["seq"] for r in part["records"]]
        if not part["more"]:
            break
        after = part["last_seq"]
    assert walked == seqs
    tail = http.get(f"/api/runs/{finished_run}/events", params={"after": seqs[-2]}).json()
    assert [r["seq"] for r in tail["records"]] == [seqs[-1]] and tail["more"] is False


def test_history_lists_and_filters_runs(http, finished_run):
    runs = http.get("/api/runs").json()["runs"]
    assert finished_run in [r["run_id"] for r in runs]
    assert [r["created_ts"] for r in runs] == sorted((r["created_ts"] for r in runs), reverse=True)

    def ids(**params):
        resp = http.get("/api/runs", params=params)
        assert resp.status_code == 200, resp.text
        return [r["run_id"] for r in resp.json()["runs"]]

    assert finished_run in ids(flow="code-review", status="finished")
    assert finished_run not in ids(flow="investigate")
    assert finished_run not in ids(status="running")
    assert finished_run in ids(q="LOOK AT THE")  # text search ignores case
    assert finished_run not in ids(q="no such words anywhere")
    created = http.get(f"/api/runs/{finished_run}").json()["run"]["created_ts"]
    assert finished_run in ids(since=created - 1, until=created + 1)
    assert finished_run not in ids(since=created + 1)
    assert ids(limit=1, offset=0) and len(ids(limit=1)) == 1


def test_report_in_three_formats_with_their_content_types(http, finished_run):
    md = http.get(f"/api/runs/{finished_run}/report")
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert "code-review" in md.text and "app.py" in md.text

    js = http.get(f"/api/runs/{finished_run}/report", params={"format": "json"})
    assert js.headers["content-type"].startswith("application/json")
    assert isinstance(js.json(), dict)

    html = http.get(f"/api/runs/{finished_run}/report", params={"format": "html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "<" in html.text and "content-disposition" not in html.headers
    assert "default-src 'none'" in html.headers["content-security-policy"]

    for fmt in ("md", "json", "html"):
        saved = http.get(f"/api/runs/{finished_run}/report", params={"format": fmt, "download": 1})
        assert saved.headers["content-disposition"] == f'attachment; filename="{finished_run}-report.{fmt}"'


def test_a_report_before_the_run_ends_is_not_ready_and_cancel_works_once(http, backend):
    run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"]
    assert error_of(http.get(f"/api/runs/{run_id}/report")) == (409, "not_ready")
    first = http.post(f"/api/runs/{run_id}/cancel", json={"reason": "changed my mind"})
    assert first.status_code == 200 and first.json() == {"run_id": run_id, "cancelled": True}
    row = wait_status(http, run_id)
    assert row["status"] == "cancelled" and "changed my mind" in row["error"]
    before = settled_seq(backend)
    again = http.post(f"/api/runs/{run_id}/cancel")  # no body: the reason is optional
    assert again.json() == {"run_id": run_id, "cancelled": False}
    assert max_seq(backend) == before


def test_unknown_runs_and_routes_are_json_404s(http):
    for path in ("/api/runs/nope", "/api/runs/nope/events", "/api/runs/nope/report", "/api/nothing-here"):
        assert error_of(http.get(path)) == (404, "not_found"), path
    assert error_of(http.post("/api/runs/nope/cancel")) == (404, "not_found")
    assert error_of(http.post("/api/runs/nope/send", json={"request_id": "x"})) == (404, "not_found")
    assert error_of(http.delete("/api/runs")) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (b"[]", 422, "invalid_body"),
        (b'{"repo": "demo"}', 422, "invalid_body"),  # no flow
        (b'{"flow": "code-review", "repo": "demo", "colour": "red"}', 422, "invalid_body"),
        (b'{"flow": "code-review", "repo": "demo", "band": "huge"}', 422, "invalid_body"),
        (b'{"flow": "code-review", "repo": 7}', 422, "invalid_body"),
        (b'{"flow": "no-such-flow", "repo": "demo"}', 422, "unknown_flow"),
        (b'{"flow": "investigate", "repo": "demo"}', 422, "missing_input"),
        (b'{"flow": "code-review", "repo": "demo", "symptom": "it crashes"}', 422, "bad_input"),
        (b'{"flow": "code-review", "repo": "demo", "paths": ["../etc"]}', 422, "bad_input"),
        (b'{"flow": "code-review", "repo": "demo", "base": "no-such-branch"}', 422, "bad_repository"),
        (b'{"flow": "code-review", "repo": "../../"}', 403, "repo_outside_roots"),
        (b'{"flow": "code-review", "repo": "/etc"}', 403, "repo_outside_roots"),
        (b'{"flow": "code-review", "repo": "escape"}', 403, "repo_outside_roots"),
        (b'{"flow": "code-review", "repo": "missing"}', 422, "repo_not_found"),
        (b'{"flow": "code-review", "repo": "demo/README.md"}', 422, "repo_not_directory"),
        (b'{"flow": "code-review", "repo": "demo", "engine": "gpt-99"}', 422, "invalid_body"),
    ],
)
def test_bad_launches_are_refused_with_a_code_and_write_nothing(http, backend, repos_root, tmp_path, body, status, code):
    if not (repos_root / "escape").exists():
        os.symlink(tmp_path, repos_root / "escape")  # a link inside the roots leading out
    before = settled_seq(backend)
    resp = http.post("/api/runs", content=body, headers={"content-type": "application/json"})
    assert error_of(resp) == (status, code), resp.text
    assert max_seq(backend) == before


def test_bodies_must_be_json_and_bounded(http, backend, server):
    before = settled_seq(backend)
    resp = http.post("/api/runs", content=b"flow=code-review", headers={"content-type": "application/x-www-form-urlencoded"})
    assert error_of(resp) == (415, "unsupported_media_type")
    big = json.dumps({"flow": "code-review", "repo": "demo", "text": "x" * (server.settings.max_request_bytes + 10)})
    assert error_of(http.post("/api/runs", content=big, headers={"content-type": "application/json"})) == (413, "body_too_large")
    # Streamed without a Content-Length, the bound still holds.
    chunks = (b"x" * 65536 for _ in range(server.settings.max_request_bytes // 65536 + 2))
    assert error_of(http.post("/api/runs", content=chunks, headers={"content-type": "application/json"})) == (413, "body_too_large")
    assert max_seq(backend) == before


@pytest.mark.parametrize(
    "path",
    ["/api/runs?limit=0", "/api/runs?limit=501", "/api/runs?status=sleeping", "/api/runs?since=-1",
     "/api/runs?offset=-3", "/api/runs?since=nan", "/api/runs/x/events?after=-1", "/api/runs/x/report?format=pdf"],
)
def test_bad_query_parameters_are_422(http, path):
    assert error_of(http.get(path)) == (422, "invalid_parameter")


def test_catalogs_info_analytics_and_schema(http, finished_run, repos_root):
    flows = http.get("/api/flows").json()
    assert {f["name"] for f in flows} >= {
        "code-review", "architectural-analysis", "investigate", "code-overview", "gap-analysis", "automated-test-planning",
    }
    assert all(f["description"] and isinstance(f["inputs"], list) for f in flows)
    personas = http.get("/api/personas").json()
    assert len(personas) > 5 and all(p["name"] for p in personas)

    analytics = http.get("/api/analytics").json()
    by_flow = {r["flow"]: r for r in analytics["analytics_flow"]}
    assert by_flow["code-review"]["finished"] >= 1
    assert analytics["analytics_persona"]

    info = http.get("/api/info").json()
    assert info["default_repo"] == str((repos_root / "demo").resolve())
    assert info["auth"] is False and "scripted" in info["engines"]

    schema = http.get("/api/schema").json()
    assert {"ClientFrame", "ServerFrame", "AgentEvent", "SnapshotFrame", "EventFrame"} <= set(schema["$defs"])


def test_the_openapi_document_describes_every_route_and_body(http):
    doc = http.get("/api/openapi.json").json()
    assert set(doc["paths"]) == {
        "/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/events", "/api/runs/{run_id}/report",
        "/api/runs/{run_id}/cancel", "/api/runs/{run_id}/send", "/api/flows", "/api/personas",
        "/api/analytics", "/api/info", "/api/schema",
    }
    schemas = doc["components"]["schemas"]
    launch = doc["paths"]["/api/runs"]["post"]
    assert launch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/LaunchBody")
    assert launch["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/Launched")
    assert schemas["LaunchBody"]["additionalProperties"] is False
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith("4"):
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), (path, method, status)
    assert "HTTPValidationError" not in schemas


# --- the guard, over HTTP -------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(backend, repos_root):
    with Server(backend, api_settings(backend, repos_root, token="s3cret-token")) as srv:
        yield srv


def test_with_a_token_every_api_call_and_the_websocket_need_it(locked, finished_run):
    with locked.client() as c:
        assert error_of(c.get("/api/runs")) == (401, "unauthorized")
        assert error_of(c.get("/api/runs", headers={"Authorization": "Bearer wrong"})) == (401, "unauthorized")
        assert error_of(c.post("/api/runs", json={"flow": "code-review", "repo": "demo"})) == (401, "unauthorized")
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/runs", params={"token": "s3cret-token"}).status_code == 200
        assert c.get(f"/api/runs/{finished_run}/report", params={"token": "s3cret-token"}).status_code == 200
        page = c.get("/")  # the pane itself holds no data
        assert page.status_code == 200 and "<orch-app>" in page.text
        # Nor does the API's description; its docs page fetches it without the token.
        assert c.get("/api/openapi.json").json()["paths"]["/api/runs"]
        docs = c.get("/api/docs")
        assert docs.status_code == 200 and "/api/openapi.json" in docs.text
    with pytest.raises(InvalidStatus) as refused:
        ws_sync.connect(locked.ws_url).close()
    assert refused.value.response.status_code == 403
    with ws_sync.connect(locked.ws_url + "?token=s3cret-token") as ws:
        ws.send(json.dumps({"type": "ping", "id": "p"}))
        assert any(f["type"] == "pong" for f in recv_frames(ws, 10))


def test_a_chat_app_on_an_allowed_origin_can_read_its_refusals_too(backend, repos_root):
    # The origin as a person might type it (capitals, a trailing slash) is the one browsers
    # send; a refusal (no token, a body too big) carries the CORS header like an answer, or
    # the chat app sees only "failed to fetch".
    settings = api_settings(backend, repos_root, token="s3cret-token", max_request_bytes=1000)
    chat = {"Origin": "http://chat.example"}
    with Server(backend, settings, allow_origins=("http://Chat.example/",)) as srv, srv.client() as c:
        ok = c.get("/api/flows", headers={**chat, "Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://chat.example"
        no_token = c.get("/api/flows", headers=chat)
        assert error_of(no_token) == (401, "unauthorized")
        assert no_token.headers["access-control-allow-origin"] == "http://chat.example"
        too_big = c.post("/api/runs", headers={**chat, "Authorization": "Bearer s3cret-token"},
                         json={"flow": "code-review", "repo": "x" * 2000})
        assert too_big.status_code == 413
        assert too_big.headers["access-control-allow-origin"] == "http://chat.example"
        preflight = c.options("/api/runs", headers={**chat, "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://chat.example"
        other = c.get("/api/flows", headers={"Origin": "http://evil.example", "Authorization": "Bearer s3cret-token"})
        assert "access-control-allow-origin" not in other.headers


def test_cross_site_requests_and_foreign_host_names_are_refused(server, backend):
    before = settled_seq(backend)
    with server.client() as c:
        evil = {"Origin": "http://evil.example"}
        resp = c.post("/api/runs", json={"flow": "code-review", "repo": "demo"}, headers=evil)
        assert error_of(resp) == (403, "bad_origin")
        same = {"Origin": server.url}
        assert c.get("/api/flows", headers=same).status_code == 200
        # DNS rebinding: a page on evil.example resolved to 127.0.0.1 still sends its own name.
        assert error_of(c.get("/api/runs", headers={"Host": "evil.example"})) == (421, "bad_host")
    assert max_seq(backend) == before
    with pytest.raises(InvalidStatus):
        ws_sync.connect(server.ws_url, origin="http://evil.example").close()
    with ws_sync.connect(server.ws_url, origin=server.url) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert any(f["type"] == "pong" for f in recv_frames(ws, 10))


def test_the_pane_is_served_with_a_strict_content_security_policy(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = http.get("/orch.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert http.get("/js/run-pane.js").status_code == 200
    assert http.get("/orch.css").status_code == 200
