"""The notifier against a real local HTTP server and a real shell command (F106)."""
from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.config import NOTIFY_EVENTS, NotifyConfig
from handlers.notify import Notifier, event_body, message_text, url_host
from tests.plugins.common import wait_for


class Hook(ThreadingHTTPServer):
    """A webhook receiver: records every request; answers `fail_first` requests with `fail_code`."""

    daemon_threads = True

    def __init__(self, fail_first: int = 0, fail_code: int = 503) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fail_first, self.fail_code = fail_first, fail_code
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/secret-token-123?key=abc"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.requests if r["code"] == 200]


class Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        with self.server.lock:
            failing = len(self.server.requests) < self.server.fail_first
            code = self.server.fail_code if failing else 200
            self.server.requests.append({"path": self.path, "body": body, "code": code,
                                         "type": self.headers.get("Content-Type")})
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server(request: pytest.FixtureRequest) -> Iterator[Hook]:
    fail_first, fail_code = getattr(request, "param", (0, 503))
    server = Hook(fail_first, fail_code)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    made: list[Notifier] = []
    yield made
    for n in made:
        n.close(timeout_s=5)
        assert n._thread is None or not n._thread.is_alive()


def make(notifiers: list[Notifier], **config: Any) -> Notifier:
    n = Notifier(NotifyConfig(**config), backoff_s=0.01)
    notifiers.append(n)
    return n


def test_webhook_receives_json_events(hook_server: Hook, notifiers: list[Notifier]) -> None:
    n = make(notifiers, webhook=hook_server.url)
    assert n.send("run_done", {"project": "p", "run": "R001", "metric": "acc=0.91"})
    assert n.send("experiment_done", {"project": "p", "text": "all 5 runs done"})
    assert n.close(timeout_s=10)
    bodies = hook_server.bodies()
    assert [b["event"] for b in bodies] == ["run_done", "experiment_done"]  # in order
    assert bodies[0]["data"] == {"project": "p", "run": "R001", "metric": "acc=0.91"}
    assert bodies[0]["text"] == "expbridge run_done: project=p, run=R001, metric=acc=0.91"
    assert bodies[1]["text"] == "all 5 runs done"
    assert bodies[0]["time"].endswith("Z")
    assert hook_server.requests[0]["type"].startswith("application/json")
    assert hook_server.requests[0]["path"] == "/hooks/secret-token-123?key=abc"
    assert (n.delivered, n.failed) == (2, 0)


@pytest.mark.parametrize("hook_server", [(2, 503)], indirect=True)
def test_failed_delivery_is_retried(hook_server: Hook, notifiers: list[Notifier]) -> None:
    n = make(notifiers, webhook=hook_server.url, max_attempts=4)
    with structlog.testing.capture_logs() as logs:
        assert n.send("run_failed", {"run": "R002", "reason": "exit 1"})
        assert n.close(timeout_s=10)
    assert [r["code"] for r in hook_server.requests] == [503, 503, 200]
    assert [b["event"] for b in hook_server.bodies()] == ["run_failed"]
    failures = [e for e in logs if e["event"] == "notify: delivery failed"]
    assert [f["attempt"] for f in failures] == [1, 2]
    assert all("secret-token" not in json.dumps(e, default=str) for e in logs)  # the URL is a secret
    assert failures[0]["sink"] == f"webhook http://127.0.0.1:{hook_server.server_address[1]}"


@pytest.mark.parametrize("hook_server", [(100, 500)], indirect=True)
def test_retries_are_bounded_and_never_raise(hook_server: Hook, notifiers: list[Notifier]) -> None:
    n = make(notifiers, webhook=hook_server.url, max_attempts=3)
    assert n.send("run_stuck", {"run": "R003"})
    assert n.close(timeout_s=10)
    assert len(hook_server.requests) == 3
    assert (n.delivered, n.failed) == (0, 1)


@pytest.mark.parametrize("hook_server", [(100, 404)], indirect=True)
def test_a_permanent_http_error_is_not_retried(hook_server: Hook, notifiers: list[Notifier]) -> None:
    n = make(notifiers, webhook=hook_server.url, max_attempts=4)
    n.send("run_done", {})
    assert n.close(timeout_s=10)
    assert len(hook_server.requests) == 1 and n.failed == 1


def test_a_dead_server_is_logged_not_raised(notifiers: list[Notifier]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = make(notifiers, webhook=f"http://127.0.0.1:{port}/x", max_attempts=2, timeout_s=2)
    with structlog.testing.capture_logs() as logs:
        assert n.send("launch_verified", {"runs": ["R001"], "gpus": [0]})
        assert n.close(timeout_s=10)
    assert n.failed == 1
    assert [e["giving_up"] for e in logs if e["event"] == "notify: delivery failed"] == [False, True]


def test_a_hung_endpoint_does_not_block_send_and_close_is_bounded(notifiers: list[Notifier]) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        n = make(notifiers, webhook=url, timeout_s=1, max_attempts=5)
        for i in range(5):
            assert n.send("run_done", {"run": f"R00{i}"})  # queued, not delivered inline
        assert n.close(timeout_s=0.2) is False  # gave up on the rest
        thread = n._thread
        assert thread is not None
        wait_for(lambda: not thread.is_alive(), timeout=10, what="notifier thread exit")
        assert n.delivered == 0
        assert not n.send("run_done", {})  # closed


def test_shell_command_gets_the_event_on_stdin(tmp_path: Path, notifiers: list[Notifier]) -> None:
    out = tmp_path / "events.jsonl"
    script = f'cat >> "{out}"; echo >> "{out}"; echo "$EB_EVENT" >> "{tmp_path}/names"'
    n = make(notifiers, command=script)
    n.send("milestone_passed", {"milestone": "M1", "verdict": "positive"})
    n.send("budget_warning", {"reasons": ["8 of 10 GPU-hours used (80%)"]})
    assert n.close(timeout_s=10)
    events = [json.loads(line) for line in out.read_text().splitlines() if line]
    assert [e["event"] for e in events] == ["milestone_passed", "budget_warning"]
    assert events[0]["data"] == {"milestone": "M1", "verdict": "positive"}
    assert (tmp_path / "names").read_text().split() == ["milestone_passed", "budget_warning"]


def test_failing_command_is_retried_then_succeeds(tmp_path: Path, notifiers: list[Notifier]) -> None:
    counter = tmp_path / "count"
    # argv form: fails on the first two calls, succeeds on the third
    code = (f"import pathlib,sys; p=pathlib.Path({str(counter)!r}); n=int(p.read_text() or 0) if p.exists() else 0;"
            " p.write_text(str(n+1)); sys.stdin.read(); sys.exit(0 if n >= 2 else 3)")
    n = make(notifiers, command=[sys.executable, "-c", code], max_attempts=4)
    n.send("run_done", {"run": "R001"})
    assert n.close(timeout_s=10)
    assert counter.read_text() == "3" and (n.delivered, n.failed) == (1, 0)


def test_missing_command_fails_without_retry(tmp_path: Path, notifiers: list[Notifier]) -> None:
    n = make(notifiers, command=[str(tmp_path / "no-such-notifier")], max_attempts=4)
    with structlog.testing.capture_logs() as logs:
        n.send("run_done", {})
        assert n.close(timeout_s=10)
    assert [e["attempt"] for e in logs if e["event"] == "notify: delivery failed"] == [1]


def test_both_sinks_and_event_filter(hook_server: Hook, tmp_path: Path, notifiers: list[Notifier]) -> None:
    out = tmp_path / "cmd.json"
    n = make(notifiers, webhook=hook_server.url, command=f'cat > "{out}"', events=["run_failed"])
    assert not n.send("run_done", {"run": "R001"})  # not subscribed
    assert n.send("run_failed", {"run": "R001"})
    assert n.close(timeout_s=10)
    assert [b["event"] for b in hook_server.bodies()] == ["run_failed"]
    assert json.loads(out.read_text())["event"] == "run_failed"


def test_off_by_default_starts_no_thread(notifiers: list[Notifier]) -> None:
    n = make(notifiers)
    assert not n.enabled
    assert not n.send("run_done", {"run": "R001"})
    assert n._thread is None and n.close() is True


def test_unknown_event_is_dropped_with_a_warning(hook_server: Hook, notifiers: list[Notifier]) -> None:
    n = make(notifiers, webhook=hook_server.url)
    with structlog.testing.capture_logs() as logs:
        assert not n.send("launched_rocket", {})
    assert logs[0]["event"] == "notify: unknown event dropped"


def test_wait_for_delivery_while_open(hook_server: Hook, notifiers: list[Notifier]) -> None:
    n = make(notifiers, webhook=hook_server.url)
    n.send("blocked", {"reason": "decision gate"})
    wait_for(lambda: n.delivered == 1, timeout=10, what="webhook delivery")
    assert [b["data"] for b in hook_server.bodies()] == [{"reason": "decision gate"}]


def test_pure_helpers() -> None:
    assert url_host("https://hooks.slack.com/services/T0/B0/XYZ?x=1") == "https://hooks.slack.com"
    assert url_host("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080"
    assert message_text("run_done", {}) == "expbridge run_done"
    body = json.loads(event_body("run_done", {"path": Path("/x"), "zh": "完成"}, 0.0))
    assert body["time"] == "1970-01-01T00:00:00Z" and body["data"] == {"path": "/x", "zh": "完成"}
    assert set(NotifyConfig().events) == set(NOTIFY_EVENTS)
    assert {"launch_verified", "run_done", "run_failed", "run_stuck", "milestone_passed",
            "experiment_done", "budget_warning"} <= set(NOTIFY_EVENTS)
