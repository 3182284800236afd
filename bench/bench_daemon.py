"""Daemon figures (DESIGN §8): plan saved → first job started; restart with 1,000 jobs (8
running) → reconciled, with nothing killed or relaunched; an idle daemon watching 20 projects.

    python bench/bench_daemon.py [--smoke] [--only drop,restart,idle]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PLAN, make_project, pct  # noqa: E402
from bench.daemon_proc import Daemon, kill_jobs  # noqa: E402

TRACKER = "# Experiment Tracker\n\n| Run ID | Milestone | Status | Notes |\n|---|---|---|---|\n| R001 | M1 | TODO | |\n"


def _wait(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _started_at(project: Path) -> float | None:
    for f in project.glob("experiment_queue/*/jobs/*/a1/started"):
        text = f.read_text().strip()
        if text:
            return float(text.split()[0])
    return None


def _plan_state(state: Path, project: Path) -> str | None:
    try:
        with sqlite3.connect(state / "state.db", timeout=5) as conn:
            row = conn.execute("SELECT state FROM plans WHERE project=?", (str(project.resolve()),)).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def drop_plan(project: Path) -> float:
    """Write the tracker and manifest, then the plan last (what a person saves last); returns
    the wall-clock moment the plan was saved."""
    refine = project / "refine-logs"
    (refine / "EXPERIMENT_TRACKER.md").write_text(TRACKER)
    (refine / "EXPERIMENT_QUEUE.yaml").write_text("jobs:\n  - {id: first, run: R001, milestone: M1, cmd: 'true'}\n")
    (refine / "EXPERIMENT_PLAN.md").write_text(PLAN)
    return time.time()


def plan_to_first_start(n: int) -> list[float]:
    """One daemon watching n empty projects; a plan is dropped into each in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        projects = [Path(tmp) / f"p{i:02d}" for i in range(n)]
        for p in projects:
            (p / "refine-logs").mkdir(parents=True)
        state = Path(tmp) / "state"
        daemon = Daemon(state, projects)
        out = []
        try:
            daemon.wait_ready()
            time.sleep(0.5)  # let the first tick settle, as a long-running daemon would be
            for p in projects:
                saved = drop_plan(p)
                _wait(lambda: _started_at(p) is not None, 30, f"first job of {p.name}")
                out.append((_started_at(p) - saved) * 1000)  # type: ignore[operator]
                _wait(lambda: _plan_state(state, p) == "done", 30, f"{p.name} done")
        finally:
            daemon.stop()
    return out


def restart_reconcile(n_jobs: int, running: int) -> dict[str, float]:
    """n_jobs queued, `running` of them running; kill -9 the daemon, restart it, and time
    spawn → READY=1 (sent once every job is reconciled)."""
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "p", [(f"j{i:05d}", "sleep 120") for i in range(n_jobs)], running)
        state = Path(tmp) / "state"
        try:
            first = Daemon(state, [project], cpu_slots=str(running))
            first.wait_ready()
            _wait(lambda: len(list(project.glob("experiment_queue/*/jobs/*/a1/started"))) >= running, 120,
                  f"{running} jobs running")
            time.sleep(0.5)
            pids_before = _live_pids(project)
            first.stop(9)
            second = Daemon(state, [project], cpu_slots=str(running))
            ready = second.wait_ready(120)
            time.sleep(1.0)  # give a wrong restart time to kill or relaunch something
            pids_after = _live_pids(project)
            attempts = len(list(project.glob("experiment_queue/*/jobs/*/a*")))
            with sqlite3.connect(state / "state.db") as conn:
                launches = conn.execute("SELECT COUNT(*) FROM events WHERE kind='job' AND dst='launching'").fetchone()[0]
                adopted_running = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()[0]
            second.stop()
        finally:
            kill_jobs(project)
    return {"ready_s": ready, "running_before": len(pids_before), "killed": len(pids_before - pids_after),
            "relaunched": launches - running, "attempt_dirs": attempts, "running_after": adopted_running}


def _live_pids(project: Path) -> set[int]:
    out = set()
    for f in project.glob("experiment_queue/*/jobs/*/a*/pid"):
        pid = int(f.read_text().split()[0])
        if os.path.exists(f"/proc/{pid}") and not (f.parent / "exit").exists():
            out.add(pid)
    return out


def idle(n_projects: int, seconds: float) -> dict[str, float]:
    """A daemon whose n projects have all finished, left alone for `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        projects = [make_project(Path(tmp) / f"p{i:02d}", [("only", "true")], 1) for i in range(n_projects)]
        state = Path(tmp) / "state"
        daemon = Daemon(state, projects)
        try:
            daemon.wait_ready()
            for p in projects:
                _wait(lambda p=p: _plan_state(state, p) == "done", 60, f"{p.name} done")
            time.sleep(1.0)
            cpu0, t0 = daemon.cpu_seconds(), time.perf_counter()
            time.sleep(seconds)
            cpu, wall = daemon.cpu_seconds() - cpu0, time.perf_counter() - t0
            rss = daemon.peak_rss_mib()
        finally:
            daemon.stop()
    return {"cpu_s": cpu, "wall_s": wall, "cpu_pct": 100 * cpu / wall, "peak_rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    ap.add_argument("--only", default="drop,restart,idle")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "drop" in only:
        lat = plan_to_first_start(5 if args.smoke else 20)
        print(f"plan saved → first job started ({len(lat)} drops): p50 {pct(lat, 50):.0f} ms, p90 {pct(lat, 90):.0f} ms"
              f"   [goal p50 ≤ 200 ms; ARIS 60 s poll, gpusched 5 s]", flush=True)
    if "restart" in only:
        n = 200 if args.smoke else 1000
        r = restart_reconcile(n, 8)
        print(f"restart with {n} jobs ({r['running_before']} running): reconciled (spawn → READY) in {r['ready_s']:.2f} s; "
              f"killed {r['killed']}, relaunched {r['relaunched']}, still running {r['running_after']}"
              f"   [goal ≤ 2 s, 0 killed or relaunched; pueue and ARIS lose running jobs]", flush=True)
    if "idle" in only:
        secs = 30 if args.smoke else 60
        r = idle(20, secs)
        print(f"idle daemon, 20 projects, {r['wall_s']:.0f} s: CPU {r['cpu_s']:.2f} s ({r['cpu_pct']:.2f} %), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB   [goal ~0 % CPU, RSS ≤ 100 MB]", flush=True)


if __name__ == "__main__":
    main()
