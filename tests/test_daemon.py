"""The daemon as a real process in a temp directory: watch, steer by editing the tracker,
survive kill -9, keep local jobs alive, keep one bad project from stopping the others."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.plugins.common import REPO, wait_for
from tests.plugins.projects import PLAN, Proj, cli_env

pytestmark = pytest.mark.slow
QUICKSTART = REPO / "examples" / "quickstart"


def start_daemon(state: Path, *projects: Path, extra: tuple[str, ...] = (), env: dict | None = None
                 ) -> subprocess.Popen[str]:
    args = ["daemon", "--state-dir", str(state), "--backend", "local", *extra]
    for p in projects:
        args += ["--project", str(p)]
    import sys
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or cli_env(state),
                            start_new_session=True)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def plan_state(proj: Proj) -> str | None:
    if not (proj.state / "state.db").exists():
        return None
    try:
        with proj.db() as conn:
            row = conn.execute("SELECT state FROM plans WHERE project=?", (str(proj.path.resolve()),)).fetchone()
    except sqlite3.OperationalError:  # the daemon has not created its schema yet
        return None
    return row[0] if row else None


def quickstart_copy(root: Path, name: str = "qs") -> Proj:
    dest = root / name
    (dest / "refine-logs").mkdir(parents=True)
    shutil.copy(QUICKSTART / "train.py", dest / "train.py")
    return Proj(dest, root / "state")


def drop_plan(proj: Proj) -> None:
    for name in ("EXPERIMENT_TRACKER.md", "EXPERIMENT_QUEUE.yaml", "EXPERIMENT_PLAN.md"):
        shutil.copy(QUICKSTART / "refine-logs" / name, proj.path / "refine-logs" / name)


def test_dropping_the_plan_runs_it_to_completion(tmp_path: Path) -> None:
    proj = quickstart_copy(tmp_path)
    daemon = start_daemon(proj.state, proj.path)
    try:
        wait_for(lambda: plan_state(proj) is not None, timeout=15, what="daemon start")
        drop_plan(proj)
        wait_for(lambda: plan_state(proj) == "done", timeout=60, what="plan done")
        for run in ("R001", "R002", "R003", "R004"):
            wait_for(lambda r=run: proj.status_cell(r) == "DONE", timeout=5, what=f"{run} DONE in the tracker")
        assert "acc=" in proj.tracker.read_text()
    finally:
        out = stop(daemon)
    assert daemon.returncode == 0, out


def _pause_project(root: Path) -> Proj:
    refine = root / "p" / "refine-logs"
    refine.mkdir(parents=True)
    (refine / "EXPERIMENT_PLAN.md").write_text(PLAN.format(rows="| M1: Main | g | R001 | none | ~0.1h |"))
    (refine / "EXPERIMENT_TRACKER.md").write_text(
        "# Experiment Tracker\n\n| Run ID | Milestone | Status | Notes |\n|---|---|---|---|\n| R001 | M1 | TODO | mine |\n")
    (refine / "EXPERIMENT_QUEUE.yaml").write_text(
        "jobs:\n  - id: counter\n    run: R001\n    cmd: 'for i in $(seq 1 30); do echo $i >> ticks; sleep 0.1; done; echo 30 > final.txt'\n"
        "    expected_output: final.txt\n")
    return Proj(root / "p", root / "state")


def test_paused_row_stops_the_process_and_todo_resumes_it(tmp_path: Path) -> None:
    proj = _pause_project(tmp_path)
    daemon = start_daemon(proj.state, proj.path)
    try:
        wait_for(lambda: (proj.path / "ticks").exists(), timeout=20, what="job running")
        pid_file = next(proj.path.glob("experiment_queue/*/jobs/counter/a1/pid"))
        pid = int(pid_file.read_text())
        assert proj.cli("pause", "R001", "--project", str(proj.path)).returncode == 0
        wait_for(lambda: _proc_state(pid) == "T", timeout=10, what="state T")
        wait_for(lambda: proj.status_cell("R001") == "PAUSED", timeout=10, what="PAUSED written back")
        ticks = (proj.path / "ticks").read_text()
        time.sleep(0.5)
        assert (proj.path / "ticks").read_text() == ticks  # really stopped
        with proj.db() as conn:
            assert conn.execute("SELECT slot FROM jobs").fetchone()[0] is not None  # slot kept
        assert proj.cli("resume", "R001", "--project", str(proj.path)).returncode == 0
        wait_for(lambda: plan_state(proj) == "done", timeout=30, what="plan done")
        assert (proj.path / "ticks").read_text().split() == [str(i) for i in range(1, 31)]
        wait_for(lambda: proj.status_cell("R001") == "DONE", timeout=5, what="DONE in the tracker")
        assert "| mine; eb:" in proj.tracker.read_text()  # the person's note survives
        assert proj.launches("counter") == 1
    finally:
        stop(daemon)


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_daemon_stop_leaves_jobs_alive_and_restart_finishes_without_reruns(tmp_path: Path, sig: int) -> None:
    proj = _pause_project(tmp_path)
    daemon = start_daemon(proj.state, proj.path)
    try:
        wait_for(lambda: (proj.path / "ticks").exists(), timeout=20, what="job running")
        pid = int(next(proj.path.glob("experiment_queue/*/jobs/counter/a1/pid")).read_text())
    finally:
        stop(daemon, sig)
    assert _proc_state(pid) in ("S", "R"), "the job died with the daemon"
    daemon = start_daemon(proj.state, proj.path)
    try:
        wait_for(lambda: plan_state(proj) == "done", timeout=30, what="plan done after restart")
    finally:
        stop(daemon)
    assert proj.launches("counter") == 1
    assert len(list(proj.path.glob("experiment_queue/*/jobs/counter/a*"))) == 1
    assert (proj.path / "ticks").read_text().split() == [str(i) for i in range(1, 31)]


def test_malformed_project_is_blocked_while_another_completes(tmp_path: Path) -> None:
    good = quickstart_copy(tmp_path, "good")
    drop_plan(good)
    bad = Proj(tmp_path / "bad", good.state)
    (bad.path / "refine-logs").mkdir(parents=True)
    (bad.path / "refine-logs" / "EXPERIMENT_PLAN.md").write_text(PLAN.format(rows="| M1: Main | g | R001 | none | ~0.1h |"))
    (bad.path / "refine-logs" / "EXPERIMENT_QUEUE.yaml").write_text("jobs:\n  - id: [unclosed\n")
    daemon = start_daemon(good.state, good.path, bad.path)
    try:
        wait_for(lambda: plan_state(good) == "done", timeout=60, what="good project done")
        assert plan_state(bad) == "blocked"
        status = good.cli("status", "--state-dir", str(good.state), "--json")
        assert "EXPERIMENT_QUEUE.yaml:3: error: not valid YAML" in status.stdout
        (bad.path / "refine-logs" / "EXPERIMENT_QUEUE.yaml").write_text(
            "jobs:\n  - {id: fixed, run: R001, cmd: 'true'}\n")
        (bad.path / "refine-logs" / "EXPERIMENT_TRACKER.md").write_text(
            "# T\n\n| Run ID | Status | Notes |\n|---|---|---|\n| R001 | TODO | |\n")
        wait_for(lambda: plan_state(bad) == "done", timeout=30, what="fixed project done")
    finally:
        stop(daemon)


def test_notify_socket_gets_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    proj = _pause_project(tmp_path)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    env = {**cli_env(proj.state), "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    daemon = start_daemon(proj.state, proj.path, env=env)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while not {"READY=1", "WATCHDOG=1"} <= set(seen) and time.monotonic() < deadline:
            seen += sock.recv(4096).decode().split("\n")
    finally:
        stop(daemon)
    deadline = time.monotonic() + 5
    while "STOPPING=1" not in seen and time.monotonic() < deadline:
        try:
            seen += sock.recv(4096).decode().split("\n")
        except socket.timeout:
            break
    sock.close()
    assert {"READY=1", "WATCHDOG=1", "STOPPING=1"} <= set(seen), seen


def test_sighup_with_a_bad_config_keeps_the_old_one(tmp_path: Path) -> None:
    proj = _pause_project(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"defaults:\n  backend: local\nprojects:\n  - path: {proj.path}\n")
    daemon = start_daemon(proj.state, extra=("--config", str(config)))
    try:
        wait_for(lambda: plan_state(proj) is not None, timeout=15, what="daemon start")
        config.write_text("defaults:\n  backend: local\n  no_such_key: 1\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: plan_state(proj) == "done", timeout=30, what="plan still runs after bad reload")
    finally:
        out = stop(daemon)
    assert "config reload failed, keeping the old one" in out
    assert "no_such_key" in out and "config.yaml:3" in out


def test_a_new_plan_version_starts_a_new_run_without_redoing_work(tmp_path: Path) -> None:
    proj = _pause_project(tmp_path)
    daemon = start_daemon(proj.state, proj.path)
    try:
        wait_for(lambda: plan_state(proj) == "done", timeout=30, what="first run done")
        queue = proj.path / "refine-logs" / "EXPERIMENT_QUEUE.yaml"
        queue.write_text(queue.read_text() + "  - {id: extra, run: R001, cmd: 'touch extra.ran'}\n")
        wait_for(lambda: (proj.path / "extra.ran").exists(), timeout=20, what="the new job")
        wait_for(lambda: plan_state(proj) == "done", timeout=20, what="second run done")
    finally:
        stop(daemon)
    assert proj.launches("counter") == 1 and proj.launches("extra") == 1
    assert len(list(proj.path.glob("experiment_queue/*/run_meta.txt"))) == 2
    assert list(proj.path.glob("refine-logs/EXPERIMENT_TRACKER_20*.md"))  # versioned before our first write
