"""Synthetic projects in a temp directory, and the CLI run as a real process against them."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.plugins.common import REPO

PLAN = """# Experiment Plan

**Problem**: test
**Method Thesis**: test

## Run Order and Milestones

| Milestone | Goal | Runs | Decision Gate | Cost |
|---|---|---|---|---|
{rows}
"""


@dataclass
class Proj:
    path: Path
    state: Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the CLI

    @property
    def tracker(self) -> Path:
        return self.path / "refine-logs" / "EXPERIMENT_TRACKER.md"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env={**cli_env(self.state), **self.env})

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO, env={**cli_env(self.state), **self.env},
                                start_new_session=True)

    def run(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.cli("run", str(self.path), "--state-dir", str(self.state), *extra, timeout=timeout)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.state / "state.db")
        conn.row_factory = sqlite3.Row
        return conn

    def job_states(self) -> dict[str, str]:
        if not (self.state / "state.db").exists():
            return {}
        try:
            with self.db() as conn:
                return {r["job_id"]: r["state"] for r in conn.execute("SELECT job_id, state FROM jobs")}
        except sqlite3.OperationalError:  # the controller has not created its schema yet
            return {}

    def launches(self, job_id: str) -> int:
        with self.db() as conn:
            return conn.execute("SELECT COUNT(*) FROM events WHERE kind='job' AND subject=? AND dst='launching'",
                                (job_id,)).fetchone()[0]

    def status_cell(self, run_id: str) -> str:
        for line in self.tracker.read_text().splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 2 and cells[1] == run_id:
                return cells[-3]
        raise AssertionError(f"{run_id} not in tracker")


def cli_env(state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["EXPBRIDGE_STATE_DIR"] = str(state)
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # jobs' `python` is ours
    return env


def make_project(root: Path, manifest: str, runs: list[tuple[str, str, str]],
                 milestones: list[tuple[str, str]] | None = None) -> Proj:
    """runs: (run_id, milestone, priority)."""
    refine = root / "proj" / "refine-logs"
    refine.mkdir(parents=True)
    ms = milestones or sorted({(m, m) for _, m, _ in runs})
    (refine / "EXPERIMENT_PLAN.md").write_text(PLAN.format(
        rows="\n".join(f"| {mid}: {name} | g | r | gate | ~0.1h |" for mid, name in ms)))
    table = ["| Run ID | Milestone | Purpose | Priority | Status | Notes |", "|---|---|---|---|---|---|"]
    table += [f"| {r} | {m} | test | {p} | TODO | |" for r, m, p in runs]
    (refine / "EXPERIMENT_TRACKER.md").write_text("# Experiment Tracker\n\n" + "\n".join(table) + "\n")
    (refine / "EXPERIMENT_QUEUE.yaml").write_text(textwrap.dedent(manifest))
    return Proj(root / "proj", root / "state")


def fake_gpus(root: Path, n: int = 1) -> dict[str, str]:
    """A fake nvidia-smi (GPUs are the one part nothing here can run) reporting n idle GPUs."""
    bin_dir = root / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    rows = "\\n".join(f"{i}, GPU-fake-{i}, 0, 16000" for i in range(n))
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}


@pytest.fixture
def project_factory(tmp_path: Path):
    def factory(manifest: str, runs: list[tuple[str, str, str]], milestones=None) -> Proj:
        return make_project(tmp_path, manifest, runs, milestones)
    return factory
