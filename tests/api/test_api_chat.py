"""Send to chat: once per request id, recorded as an event, posted to a real webhook on
loopback that fails transiently once; refused before the report exists."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apitest_support import Server, api_settings, error_of, free_port, max_seq, settled_seq, wait_status

pytestmark = pytest.mark.ray


class Webhook:
    """A tiny HTTP server that records every POST; ``fail`` lists the statuses of the next
    answers (then 200)."""

    def __init__(self):
        self.posts: list[dict] = []
        self.fail: list[int] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append({"body": json.loads(body), "content_type": self.headers["Content-Type"]})
                status = hook.fail.pop(0) if hook.fail else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hook():
    with Webhook() as h:
        yield h


@pytest.fixture(scope="module")
def server(backend, repos_root, hook):
    with Server(backend, api_settings(backend, repos_root, chat_webhook_url=hook.url)) as srv:
        yield srv


@pytest.fixture(scope="module")
def finished(server):
    with server.client() as http:
        run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo", "thread": "t-42"}).json()["run_id"]
        assert wait_status(http, run_id)["status"] == "finished"
    return run_id


def sent_events(http, run_id):
    records = http.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json()["records"]
    return [r for r in records if r["event"]["kind"] == "report_sent"]


def test_a_send_posts_once_after_a_transient_failure_and_is_recorded(server, hook, finished):
    hook.posts.clear()
    hook.fail[:] = [503]  # the first attempt fails transiently
    with server.client() as http:
        resp = http.post(f"/api/runs/{finished}/send", json={"request_id": "req-1"})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["ok"] is True and out["repeated"] is False and out["seq"] > 0
        assert out["target"].startswith("thread:t-42") and "webhook:127.0.0.1" in out["target"]
        assert len(hook.posts) == 2  # one 503, one retry that landed
        body = hook.posts[-1]["body"]
        assert hook.posts[-1]["content_type"] == "application/json"
        assert set(body) == {"run_id", "title", "markdown"} and body["run_id"] == finished
        assert "code-review" in body["title"]
        assert body["markdown"] == http.get(f"/api/runs/{finished}/report").text

        # The same request id again: the first outcome, no second post, no second event.
        before = settled_seq(server.backend)
        again = http.post(f"/api/runs/{finished}/send", json={"request_id": "req-1"}).json()
        assert again == {**out, "repeated": True}
        assert len(hook.posts) == 2 and max_seq(server.backend) == before
        events = sent_events(http, finished)
        assert [e["event"]["request_id"] for e in events] == ["req-1"]
        assert events[0]["seq"] == out["seq"] and events[0]["event"].get("ok", True) is True  # a default is left out of the JSON


def test_concurrent_sends_with_one_request_id_post_once(server, hook, finished):
    hook.posts.clear()
    with server.client() as http:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: http.post(f"/api/runs/{finished}/send", json={"request_id": "req-2"}).json(), range(6)))
        assert len(hook.posts) == 1
        assert sorted(a["repeated"] for a in answers) == [False] + [True] * 5
        assert len({a["seq"] for a in answers}) == 1
        assert [e["event"]["request_id"] for e in sent_events(http, finished)].count("req-2") == 1


def test_a_webhook_that_refuses_is_not_retried_and_the_failure_is_recorded(server, hook, finished):
    hook.posts.clear()
    hook.fail[:] = [400]
    with server.client() as http:
        out = http.post(f"/api/runs/{finished}/send", json={"request_id": "req-3"}).json()
        assert out["ok"] is False and "400" in out["detail"]
        assert len(hook.posts) == 1
        (event,) = [e for e in sent_events(http, finished) if e["event"]["request_id"] == "req-3"]
        assert event["event"]["ok"] is False


def test_an_unreachable_webhook_is_retried_then_recorded_as_failed(backend, repos_root, finished):
    down = f"http://127.0.0.1:{free_port()}/nobody-listens"
    with Server(backend, api_settings(backend, repos_root, chat_webhook_url=down)) as srv, srv.client() as http:
        out = http.post(f"/api/runs/{finished}/send", json={"request_id": "req-4"}).json()
        assert out["ok"] is False and "unreachable" in out["detail"] and "3 attempts" in out["detail"]


def test_without_a_webhook_the_report_goes_to_the_thread_only(backend, repos_root, finished):
    with Server(backend, api_settings(backend, repos_root)) as srv, srv.client() as http:
        out = http.post(f"/api/runs/{finished}/send", json={"request_id": "req-5"}).json()
        assert out["ok"] is True and out["target"] == "thread:t-42"


def test_sending_before_the_report_exists_or_with_a_bad_body_writes_nothing(server, hook):
    hook.posts.clear()
    with server.client() as http:
        run_id = http.post("/api/runs", json={"flow": "code-review", "repo": "demo"}).json()["run_id"]
        assert error_of(http.post(f"/api/runs/{run_id}/send", json={"request_id": "early"})) == (409, "not_ready")
        http.post(f"/api/runs/{run_id}/cancel")
        assert wait_status(http, run_id)["status"] == "cancelled"
        before = settled_seq(server.backend)  # the run is over: the log is quiet now
        assert error_of(http.post(f"/api/runs/{run_id}/send", json={"request_id": "late"})) == (409, "not_ready")
        assert error_of(http.post(f"/api/runs/{run_id}/send", json={})) == (422, "invalid_body")
        assert error_of(http.post(f"/api/runs/{run_id}/send", json={"request_id": ""})) == (422, "invalid_body")
        assert error_of(http.post(f"/api/runs/{run_id}/send", json={"request_id": "x" * 129})) == (422, "invalid_body")
        assert max_seq(server.backend) == before
        assert sent_events(http, run_id) == []
    assert hook.posts == []


def test_a_send_keeps_no_lock_once_done_so_request_ids_cannot_pile_up(backend, finished):
    # One lock per request id was kept for ever: any caller could grow the server's memory
    # by sending with new ids, even to runs that do not exist.
    from actors.service import NotFound
    from api.chat import ChatSender

    sender = ChatSender(backend)
    for n in range(200):
        with pytest.raises(NotFound):
            sender.send("no-such-run", f"flood-{n}")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: sender.send(finished, "req-6"), range(4)))
    assert sorted(a["repeated"] for a in answers) == [False, True, True, True]
    assert sender._locks == {}
    assert sender.send(finished, "req-6")["repeated"] is True  # the log remembers, not the lock
