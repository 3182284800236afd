"""Budget, training check, notifications and the audit, through `expbridge run`."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.plugins.projects import fake_gpus

pytestmark = pytest.mark.slow


def config(tmp: Path, body: str) -> tuple[str, ...]:
    cfg = tmp / "config.yaml"
    cfg.write_text("defaults:\n  backend: local\n" + body)
    return ("--config", str(cfg))


def test_hard_gpu_hour_budget_stops_new_launches(project_factory, tmp_path: Path) -> None:
    manifest = """
        max_parallel: 1
        jobs:
          - {id: first, run: R001, cmd: "sleep 2"}
          - {id: second, run: R002, cmd: "true"}
    """
    p = project_factory(manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    p.env = fake_gpus(tmp_path, 1)
    cfg = config(tmp_path, "  budget: {gpu_hours: 0.0001, hard_stop: true}\n")
    result = p.run(*cfg)
    assert "budget:" in result.stdout
    assert p.job_states() == {"first": "succeeded", "second": "pending"}
    status = json.loads(p.cli("status", "--json", "--state-dir", str(p.state)).stdout)
    assert result.returncode == 1


def test_nan_loss_is_stopped_by_the_training_check(project_factory, tmp_path: Path) -> None:
    manifest = """
        jobs:
          - {id: diverge, run: R001, cmd: "for i in 1 2 3; do echo step=$i loss=0.5; done; echo step=4 loss=nan; sleep 30"}
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    cfg = config(tmp_path, "  training_check_s: 0.5\n  wandb: {enabled: true}\n")
    result = p.run(*cfg)
    assert result.returncode == 1
    assert p.job_states() == {"diverge": "failed"}
    assert "training check: STOP" in p.tracker.read_text()


class _Sink(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Sink.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def test_webhook_gets_launch_run_and_experiment_events(project_factory, tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Sink.received.clear()
    try:
        p = project_factory("""
            jobs: [{id: one, run: R001, cmd: "echo acc=0.5"}]
        """, [("R001", "M1", "MUST")])
        cfg = config(tmp_path, f"  notify: {{webhook: 'http://127.0.0.1:{server.server_port}/hook'}}\n")
        result = p.run(*cfg)
        assert result.returncode == 0, result.stdout + result.stderr
        events = {e["event"] for e in _Sink.received}
        assert {"launch_verified", "run_done", "experiment_done"} <= events, events
    finally:
        server.shutdown()


def test_audit_hook_verdict_is_shown_next_to_the_results(project_factory, tmp_path: Path) -> None:
    audit = {"date": "2026-11-26", "auditor": "test", "overall_verdict": "WARN", "integrity_status": "warn",
             "checks": {k: {"status": "PASS", "details": ""} for k in
                        ("gt_provenance", "score_normalization", "result_existence", "dead_code", "scope")}}
    script = tmp_path / "audit.sh"
    script.write_text("#!/bin/sh\ncat > \"$EB_OUT/EXPERIMENT_AUDIT.json\" <<'JSON'\n" + json.dumps(audit)
                      + "\nJSON\necho '{\"status\": \"ok\", \"findings\": []}' > \"$EB_OUT/result.json\"\n")
    p = project_factory("""
        jobs: [{id: one, run: R001, cmd: "true"}]
    """, [("R001", "M1", "MUST")])
    cfg = config(tmp_path, f"  hooks: {{audit: 'sh {script}'}}\n")
    result = p.run(*cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    results = (p.path / "refine-logs" / "EXPERIMENT_RESULTS.md").read_text()
    assert "Integrity audit: WARN" in results
    assert (p.path / "EXPERIMENT_AUDIT.json").exists()
