"""Shared bench helpers: synthetic projects, the CLI as a real process, wrapper timestamps."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = "# Experiment Plan\n\n## Run Order and Milestones\n\n| Milestone | Goal | Runs | Decision Gate | Cost |\n|---|---|---|---|---|\n| M1: Main | g | r | none | ~0.1h |\n"


def make_project(root: Path, jobs: list[tuple[str, str]], max_parallel: int) -> Path:
    refine = root / "refine-logs"
    refine.mkdir(parents=True, exist_ok=True)
    (refine / "EXPERIMENT_PLAN.md").write_text(PLAN)
    (refine / "EXPERIMENT_TRACKER.md").write_text(
        "# Experiment Tracker\n\n| Run ID | Milestone | Status | Notes |\n|---|---|---|---|\n| R001 | M1 | TODO | |\n")
    lines = [f"max_parallel: {max_parallel}", "jobs:"]
    lines += [f"  - {{id: {jid}, run: R001, milestone: M1, cmd: {cmd!r}}}" for jid, cmd in jobs]
    (refine / "EXPERIMENT_QUEUE.yaml").write_text("\n".join(lines) + "\n")
    return root


def run_cli(project: Path, state: Path, *overrides: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EXPBRIDGE_STATE_DIR": str(state)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "run", str(project), "--state-dir", str(state),
                          *overrides], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"expbridge run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def wrapper_times(project: Path) -> list[tuple[float, float]]:
    """(started, ended) of every attempt, from the wrapper's own files."""
    out = []
    for job_dir in project.glob("experiment_queue/*/jobs/*/a*"):
        started = float((job_dir / "started").read_text().split()[0])
        ended = float((job_dir / "exit").read_text().split()[1])
        out.append((started, ended))
    return sorted(out)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
