"""`expbridge run` as a real process on real local jobs: retries, blocking, outside kills,
the controller lock, and a kill -9 between launch and exit."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.plugins.common import wait_for

pytestmark = pytest.mark.slow


def test_oom_is_retried_then_succeeds(project_factory) -> None:
    manifest = """
        cwd: .
        oom_retry: {delay: 0.2, max_attempts: 3}
        jobs:
          - id: flaky
            run: R001
            milestone: M1
            cmd: "if [ ! -f seen ]; then touch seen; echo 'RuntimeError: CUDA out of memory. Tried to allocate 1 GiB'; exit 1; fi; echo ok > out.txt"
            expected_output: out.txt
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    result = p.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert p.job_states() == {"flaky": "succeeded"}
    assert p.launches("flaky") == 2
    assert p.status_cell("R001") == "DONE"


def test_failed_prerequisite_blocks_dependents(project_factory) -> None:
    manifest = """
        cwd: .
        phases:
          - name: teacher
            jobs: [{id: teach, run: R001, cmd: "echo broken >&2; exit 1"}]
          - name: student
            depends_on: teacher
            jobs: [{id: learn, run: R002, cmd: "touch student-ran"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    result = p.run()
    assert result.returncode == 1
    assert p.job_states() == {"teach": "failed", "learn": "blocked"}
    assert not (p.path / "student-ran").exists()
    assert (p.status_cell("R001"), p.status_cell("R002")) == ("FAILED", "BLOCKED")
    assert "R001" in result.stderr and "blocked by R001" in p.tracker.read_text()


def test_missing_output_is_a_failure_with_the_reason(project_factory) -> None:
    manifest = """
        jobs: [{id: quiet, run: R001, cmd: "true", expected_output: "results/*.json"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    assert p.run().returncode == 1
    assert p.job_states() == {"quiet": "failed"}
    assert "expected output missing: results/*.json" in p.tracker.read_text()


def test_job_killed_from_outside_is_failed(project_factory) -> None:
    manifest = """
        jobs: [{id: victim, run: R001, cmd: "sleep 60 & echo $! > victim.pid; wait $!"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    proc = p.popen("run", str(p.path), "--state-dir", str(p.state))
    try:
        pid_file = p.path / "victim.pid"
        wait_for(pid_file.exists, timeout=20, what="job to start")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert p.job_states() == {"victim": "failed"}
    assert "exit 137" in p.tracker.read_text()


def test_second_controller_on_the_same_project_refuses(project_factory) -> None:
    manifest = """
        jobs: [{id: slow, run: R001, cmd: "sleep 3"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    first = p.popen("run", str(p.path), "--state-dir", str(p.state))
    try:
        wait_for((p.path / "refine-logs" / ".expbridge.lock").exists, timeout=20, what="lock")
        wait_for(lambda: p.job_states().get("slow") == "running", timeout=20, what="job running")
        second = p.run(timeout=30)
        assert second.returncode != 0
        assert f"held by pid {first.pid}" in second.stderr
        out, _ = first.communicate(timeout=30)
        assert first.returncode == 0, out
    finally:
        first.kill()


def test_kill_9_mid_run_then_restart_adopts_and_never_reruns(project_factory) -> None:
    manifest = """
        max_parallel: 2
        jobs:
          - {id: a, run: R001, cmd: "echo run >> a.count; sleep 2; echo done > a.out", expected_output: a.out}
          - {id: b, run: R001, cmd: "echo run >> b.count; sleep 2; echo done > b.out", expected_output: b.out}
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    first = p.popen("run", str(p.path), "--state-dir", str(p.state))
    try:
        wait_for(lambda: (p.path / "a.count").exists() and (p.path / "b.count").exists(), timeout=20,
                 what="both jobs started")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    result = p.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert p.job_states() == {"a": "succeeded", "b": "succeeded"}
    for name in ("a", "b"):
        assert (p.path / f"{name}.count").read_text() == "run\n"
        assert p.launches(name) == 1
    exits = list(p.path.glob("experiment_queue/*/jobs/*/a*/exit"))
    assert len(exits) == 2


def test_row_without_a_command_is_blocked_with_the_reason(project_factory) -> None:
    manifest = """
        jobs: [{id: a, run: R001, cmd: "true"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    result = p.run()
    assert result.returncode == 1
    assert "R002: BLOCKED no command" in result.stderr
    assert p.status_cell("R002") == "BLOCKED" and "eb: no command" in p.tracker.read_text()
    assert p.status_cell("R001") == "DONE"


def test_state_older_than_a_day_is_resumed_with_a_warning(project_factory) -> None:
    manifest = """
        jobs: [{id: a, run: R001, cmd: "true"}, {id: b, run: R002, cmd: "exit 1"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    assert p.run().returncode == 1
    with p.db() as conn:
        conn.execute("UPDATE plans SET updated_at = updated_at - 90000, state='deploying'")
    again = p.run()
    assert "warning: resuming state last updated 25 h ago" in again.stdout
    assert p.launches("a") == 1


def test_overtime_is_flagged_and_does_not_hold_back_the_next_milestone(project_factory) -> None:
    manifest = """
        max_parallel: 2
        phases:
          - name: slow
            milestone: M1
            jobs: [{id: slow, run: R001, cmd: "sleep 6; echo acc=0.7 > slow.done", est_hours: 0.0002, expected_output: slow.done}]
          - name: next
            milestone: M2
            jobs: [{id: next, run: R002, cmd: "test ! -e slow.done && touch next.ran"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST"), ("R002", "M2", "MUST")])
    result = p.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OVERTIME" in result.stdout
    assert (p.path / "next.ran").exists()  # M2 ran while the overtime M1 job was still going
    assert "OVERTIME (past 2x estimate)" in p.tracker.read_text()
    assert "acc=0.7" in p.tracker.read_text()  # results waited for the overtime job
    log = (p.path / "refine-logs" / "EXPERIMENT_LOG.md").read_text()
    assert "## Experiment: R001" in log and "## Experiment: R002" in log


def test_rows_at_first_sight(project_factory) -> None:
    manifest = """
        jobs:
          - {id: outside, run: R001, cmd: "touch outside.ran"}
          - {id: done, run: R002, cmd: "touch done.ran"}
          - {id: odd, run: R003, cmd: "touch odd.ran"}
    """
    p = project_factory(manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST"), ("R003", "M1", "MUST")])
    text = p.tracker.read_text()
    text = text.replace("| R001 | M1 | test | MUST | TODO |", "| R001 | M1 | test | MUST | RUNNING |")
    text = text.replace("| R002 | M1 | test | MUST | TODO |", "| R002 | M1 | test | MUST | DONE |")
    text = text.replace("| R003 | M1 | test | MUST | TODO |", "| R003 | M1 | test | MUST | WEIRD-STATE |")
    p.tracker.write_text(text)
    p.run()
    assert not any((p.path / f).exists() for f in ("outside.ran", "done.ran", "odd.ran"))
    after = p.tracker.read_text()
    assert p.status_cell("R001") == "RUNNING" and "running outside expbridge? set TODO to run it here" in after
    assert p.status_cell("R003") == "WEIRD-STATE" and "unrecognised status 'WEIRD-STATE'" in after
    assert "| R002 | M1 | test | MUST | DONE | |" in after  # not ours: left exactly as it was
    assert p.launches("outside") == p.launches("done") == p.launches("odd") == 0
