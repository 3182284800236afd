"""queue_state.json in the ARIS schema, the jq one-liner over it, and the queue summary.md."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from handlers.queue_state import (
    JOB_STATE_TO_QUEUE, PHASE_STATUSES, QUEUE_STATUSES, iso_z, queue_status, render_queue_state,
    queue_state_path, render_summary_md, run_ts, status_counts, write_queue_state,
)
from tests.plugins.common import unavailable

JQ_ONE_LINER = ".jobs | group_by(.status) | map({(.[0].status): length}) | add"
ARIS_JOB_KEYS = {"id", "phase", "cmd", "expected_output", "status", "gpu", "screen_name", "pid",
                 "attempts", "started", "completed", "error"}
T0 = 1_795_000_000.0  # 2026-11-18, a fixed epoch so the ISO strings are predictable


def job(job_id: str, state: str, phase: str = "main", **extra: object) -> dict:
    return {"job_id": job_id, "run_id": "R" + job_id[-3:], "phase": phase, "cmd": f"python t.py --id {job_id}",
            "state": state, "attempt": 1, "started_at": T0, "ended_at": None, "reason": "", **extra}


@pytest.mark.parametrize("state,failure,blocked_by,expected", [
    ("pending", None, None, ("pending", None)),
    ("launching", None, None, ("pending", None)),
    ("running", None, None, ("running", None)),
    ("paused", None, None, ("pending", "paused")),
    ("retry_wait", "oom", None, ("failed_oom", "CUDA OOM detected")),
    ("retry_wait", "lost", None, ("pending", None)),
    ("retry_wait", "timeout", None, ("pending", None)),
    ("succeeded", None, None, ("completed", None)),
    ("failed", "failed", None, ("failed_other", None)),
    ("stuck", "oom", None, ("stuck", None)),
    ("blocked", None, "R002", ("pending", "blocked by R002")),
    ("cancelled", None, None, ("stuck", "skipped by user")),
    ("skipped", None, None, ("stuck", "skipped by user")),
])
def test_design_table(state: str, failure: str | None, blocked_by: str | None,
                      expected: tuple[str, str | None]) -> None:
    assert queue_status(state, failure, blocked_by) == expected


def test_every_job_state_of_the_model_is_mapped() -> None:
    model = pytest.importorskip("daemon.model")
    states = {s.value for s in model.JobState}
    assert states <= set(JOB_STATE_TO_QUEUE), states - set(JOB_STATE_TO_QUEUE)
    assert {status for status, _ in JOB_STATE_TO_QUEUE.values()} <= set(QUEUE_STATUSES)


def sample_state() -> dict:
    jobs = [job(f"s{i:03d}", "succeeded", "teacher", ended_at=T0 + 600 + i) for i in range(5)]
    jobs += [
        job("s005", "succeeded", "teacher", ended_at=T0 + 900, class_attempts={"oom": 1}, attempt=2,
            failure_class="oom"),
        job("s010", "running", "student", gpu=3, session="eb-plan-s010-a1", pid=4242),
        job("s011", "retry_wait", "student", failure_class="oom", class_attempts={"oom": 1}),
        job("s012", "retry_wait", "student", failure_class="lost"),
        job("s013", "failed", "student", reason="exit 1: ValueError", ended_at=T0 + 30),
        job("s014", "stuck", "student", failure_class="oom", ended_at=T0 + 40),
        job("s015", "blocked", "student", blocked_by="R013", started_at=None, attempt=0),
        job("s016", "skipped", "student", started_at=None, attempt=0),
        job("s017", "pending", "eval", started_at=None, attempt=0, spec={"expected_output": "out/*.json"}),
    ]
    phases = [{"name": "teacher", "depends_on": []}, {"name": "student", "depends_on": "teacher"},
              {"name": "eval", "depends_on": ["student"]}]
    meta = {"project": "demo", "started": T0, "manifest_path": "refine-logs/EXPERIMENT_QUEUE.yaml"}
    return render_queue_state(meta, phases, jobs)


def test_schema_is_aris_exactly() -> None:
    state = sample_state()
    assert set(state) == {"meta", "phases", "jobs"}
    assert set(state["meta"]) == {"project", "started", "manifest_path"}
    assert state["meta"]["started"] == "2026-11-18T11:06:40Z"
    for phase in state["phases"]:
        assert set(phase) == {"name", "depends_on", "status"}
        assert phase["status"] in PHASE_STATUSES and isinstance(phase["depends_on"], list)
    for j in state["jobs"]:
        assert ARIS_JOB_KEYS <= set(j)
        assert j["status"] in QUEUE_STATUSES
        assert isinstance(j["attempts"], int)
        for key in ("started", "completed"):
            assert j[key] is None or (j[key].endswith("Z") and datetime.fromisoformat(j[key][:-1]))
    json.dumps(state)  # serialisable as is


def test_jobs_carry_our_state_and_failure_class() -> None:
    by_id = {j["id"]: j for j in sample_state()["jobs"]}
    assert by_id["s011"]["status"] == "failed_oom" and by_id["s011"]["state"] == "retry_wait"
    assert by_id["s011"]["failure_class"] == "oom"
    assert by_id["s012"]["status"] == "pending" and by_id["s012"]["failure_class"] == "lost"
    assert by_id["s013"]["error"] == "exit 1: ValueError" and by_id["s013"]["failure_class"] == "failed"
    assert by_id["s015"]["error"] == "blocked by R013"
    assert by_id["s010"]["gpu"] == 3 and by_id["s010"]["screen_name"] == "eb-plan-s010-a1"
    assert by_id["s017"]["expected_output"] == "out/*.json"


def test_phase_status_follows_aris() -> None:
    phases = {p["name"]: p for p in sample_state()["phases"]}
    assert phases["teacher"]["status"] == "completed"
    assert phases["student"]["status"] == "running"
    assert phases["student"]["depends_on"] == ["teacher"]  # a bare string is one dependency
    assert phases["eval"]["status"] == "pending"


def test_status_counts_are_the_jq_group_by() -> None:
    state = sample_state()
    expected = dict(Counter(j["status"] for j in state["jobs"]))
    assert status_counts(state) == expected
    assert expected == {"completed": 6, "running": 1, "failed_oom": 1, "pending": 3,
                        "failed_other": 1, "stuck": 2}
    assert status_counts({"jobs": []}) is None


def run_jq(path: Path) -> object:
    jq = shutil.which("jq")
    if jq is None:
        unavailable("jq not installed (apt-get install jq)")
    out = subprocess.run([jq, JQ_ONE_LINER, str(path)], capture_output=True, text=True, timeout=30,
                         check=True)
    return json.loads(out.stdout)


def test_real_jq_one_liner(tmp_path: Path) -> None:
    state = sample_state()
    path = tmp_path / "queue_state.json"
    assert write_queue_state(path, state)
    assert run_jq(path) == status_counts(state)
    empty = render_queue_state({"project": "p"}, [], [])
    assert write_queue_state(path, empty)
    assert run_jq(path) is None


def test_write_queue_state_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "run" / "queue_state.json"
    state = sample_state()
    assert write_queue_state(path, state)
    first = path.stat().st_mtime_ns
    assert not write_queue_state(path, sample_state())
    assert path.stat().st_mtime_ns == first
    assert json.loads(path.read_text()) == state
    assert [p.name for p in path.parent.iterdir()] == ["queue_state.json"]  # no temp file left


def test_iso_z_forms() -> None:
    assert iso_z(None) is None
    assert iso_z(T0 + 0.5) == "2026-11-18T11:06:40.500000Z"
    assert iso_z(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    assert iso_z("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05Z"


def test_summary_md() -> None:
    text = render_summary_md(sample_state(), T0 + 3723, [("out/*.json", 6)])
    lines = text.splitlines()
    assert lines[0] == "# Experiment Queue Summary"
    assert "**Project**: demo" in lines
    assert "**Started**: 2026-11-18T11:06:40Z" in lines
    assert "**Total wall-clock**: 1h 02m" in lines
    assert "**Jobs**: 6 completed, 1 OOM-retried then completed, 2 stuck, 1 failed, 5 not finished" in lines
    assert "| Phase | Jobs | Success | OOM retries | Duration |" in lines
    assert "| teacher | 6 | 6/6 | 1 | 15m 00s |" in lines
    assert "| eval | 1 | 0/1 | 0 | — |" in lines
    assert "- `out/*.json`: 6 file(s)" in lines
    assert lines.index("## Results Files") < lines.index("## Next Steps")


def test_run_directory_layout(tmp_path: Path) -> None:
    ts = run_ts(datetime(2026, 11, 26, 4, 6, 54))
    assert ts == "20261126T040654Z"
    assert queue_state_path(tmp_path, ts) == tmp_path / "experiment_queue" / ts / "queue_state.json"
