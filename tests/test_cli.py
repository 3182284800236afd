"""The read commands and the tracker verbs, as a person would type them."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

MANIFEST = """
    jobs:
      - {id: ok, run: R001, cmd: "echo hello-from-ok"}
      - {id: bad, run: R002, cmd: "echo nope; exit 4"}
"""


def test_status_logs_wait_and_retry(project_factory) -> None:
    p = project_factory(MANIFEST, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    assert p.run().returncode == 1
    doc = json.loads(p.cli("status", "--json", "--state-dir", str(p.state)).stdout)
    assert doc[0]["runs"] == {"R001": "DONE", "R002": "FAILED"}
    assert doc[0]["blocked"][0]["reason"] == "exit 4"
    text = p.cli("status", "--state-dir", str(p.state)).stdout
    assert "R002: exit 4" in text
    logs = p.cli("logs", "R001", "--state-dir", str(p.state))
    assert "hello-from-ok" in logs.stdout
    wait = p.cli("wait", str(p.path), "--state-dir", str(p.state), "--timeout", "5")
    assert wait.returncode == 1 and "blocked" in wait.stdout
    assert p.cli("retry", "R002", "--project", str(p.path)).returncode == 0
    assert p.status_cell("R002") == "RETRY"
    assert p.run().returncode == 1
    assert p.launches("bad") == 2 and p.launches("ok") == 1


def test_skip_cancels_and_unknown_run_is_a_clear_error(project_factory) -> None:
    p = project_factory(MANIFEST, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    assert p.cli("skip", "R002", "--project", str(p.path)).returncode == 0
    result = p.run()
    assert p.job_states() == {"ok": "succeeded", "bad": "skipped"}
    assert p.status_cell("R002") == "SKIPPED"
    missing = p.cli("pause", "R999", "--project", str(p.path))
    assert missing.returncode != 0 and "R999" in missing.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def test_report_regenerates_the_results(project_factory) -> None:
    p = project_factory("""
        jobs: [{id: ok, run: R001, cmd: "echo acc=0.75 > out.log", expected_output: out.log}]
    """, [("R001", "M1", "MUST")])
    assert p.run().returncode == 0
    results = p.path / "refine-logs" / "EXPERIMENT_RESULTS.md"
    results.unlink()
    out = p.cli("report", str(p.path), "--state-dir", str(p.state))
    assert out.returncode == 0, out.stderr
    assert "acc=0.75" in results.read_text()
