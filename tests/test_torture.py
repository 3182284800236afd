"""Crash torture (DESIGN §9): kill -9 the controller at random moments during a plan of 100 short
jobs, restart it each time, and prove from the events table and the jobs' own files that every
job ran exactly once, to completion, and that the tracker says what the store says."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.runs import run_status
from daemon.store import Store
from tests.plugins.projects import Proj, make_project

pytestmark = pytest.mark.slow
N_JOBS = 100
KILLS = 20
SEED = int(os.environ.get("EB_TORTURE_SEED", "0")) or random.randrange(1, 10**6)


def torture_project(root: Path) -> Proj:
    # each job leaves a mark of every start in its own file: the command's own witness
    jobs = "\n".join(
        f"  - {{id: j{i:03d}, run: R{i:03d}, milestone: M1, "
        f"cmd: 'echo $$ >> marks/j{i:03d}; sleep 0.{random.Random(i).randint(2, 6)}'}}"
        for i in range(N_JOBS))
    p = make_project(root, f"cwd: .\nmax_parallel: 8\njobs:\n{jobs}\n",
                     [(f"R{i:03d}", "M1", "MUST") for i in range(N_JOBS)])
    (p.path / "marks").mkdir()
    return p


def kill_loop(p: Proj, rng: random.Random) -> int:
    """Start `expbridge run`, kill -9 it after a random delay (startup and recovery included),
    KILLS times; a run that finishes before its kill is not counted."""
    kills = 0
    attempts = 0
    while kills < KILLS and attempts < KILLS * 3:
        attempts += 1
        proc = p.popen("run", str(p.path), "--state-dir", str(p.state), "cpu_slots: 4")
        time.sleep(rng.uniform(0.05, 0.6))  # 20 kills land well inside ~10 s of work on 4 slots
        if proc.poll() is not None:
            proc.communicate(timeout=10)
            break  # the plan finished: nothing left to interrupt
        os.killpg(proc.pid, signal.SIGKILL)  # the controller only: jobs live in their own sessions
        proc.communicate(timeout=10)
        kills += 1
    return kills


@dataclass
class Torture:
    proj: Proj
    kills: int
    final: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def torture(tmp_path_factory: pytest.TempPathFactory) -> Torture:
    p = torture_project(tmp_path_factory.mktemp("torture"))
    kills = kill_loop(p, random.Random(SEED))
    return Torture(p, kills, p.run("cpu_slots: 8", timeout=120))


def test_kill_9_twenty_times_every_job_runs_exactly_once(torture: Torture) -> None:
    p, kills, final = torture.proj, torture.kills, torture.final
    with p.db() as conn:
        launches = Counter(r[0] for r in conn.execute(
            "SELECT subject FROM events WHERE kind='job' AND dst='launching'"))
        successes = Counter(r[0] for r in conn.execute(
            "SELECT subject FROM events WHERE kind='job' AND dst='succeeded'"))
    marks = {f.name: f.read_text().split() for f in (p.path / "marks").iterdir()}
    started = Counter(d.parts[-2] for d in p.path.glob("experiment_queue/*/jobs/*/a*") if (d / "started").exists())
    exits = {d.parts[-2]: (d / "exit").read_text().split()[0]
             for d in p.path.glob("experiment_queue/*/jobs/*/a*") if (d / "exit").exists()}
    dup_launches = sum(n - 1 for n in launches.values())
    print(f"\ncrash torture (seed {SEED}; EB_TORTURE_SEED reruns it): {kills} kill -9s, {len(marks)} jobs ran, "
          f"{sum(len(m) for m in marks.values())} command starts, {dup_launches} extra launch events "
          f"(relaunches of attempts that never started are allowed; marks prove single runs), final run exit {final.returncode}")
    assert kills >= KILLS, f"only {kills} kills landed before the plan finished"
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    ids = {f"j{i:03d}" for i in range(N_JOBS)}
    assert set(marks) == ids
    twice = {j: m for j, m in marks.items() if len(m) != 1}
    assert not twice, f"commands started more than once: {twice}"
    assert started == Counter({j: 1 for j in ids}), "an attempt dir with `started` per job, exactly one"
    assert exits == {j: "0" for j in ids}, "every job's own exit file says 0"
    assert successes == Counter({j: 1 for j in ids}), "exactly one succeeded event per job"
    assert p.job_states() == {j: "succeeded" for j in ids}


def test_after_the_torture_the_tracker_matches_the_store(torture: Torture) -> None:
    assert torture.final.returncode == 0
    _tracker_matches_store(torture.proj)


def _tracker_matches_store(p: Proj) -> None:
    store = Store(p.state / "state.db")
    try:
        jobs = store.jobs(str(p.path.resolve()))
    finally:
        store.close()
    by_run: dict[str, list] = {}
    for j in jobs:
        by_run.setdefault(j.run_id, []).append(j)
    mismatched = {r: (p.status_cell(r), run_status(js)) for r, js in by_run.items()
                  if p.status_cell(r) != run_status(js)}
    assert not mismatched, f"tracker vs store: {mismatched}"
    assert set(by_run) == {f"R{i:03d}" for i in range(N_JOBS)}
    assert all(p.status_cell(r) == "DONE" for r in by_run)



def test_marks_dir_is_what_the_jobs_write(tmp_path: Path) -> None:
    """The witness the torture relies on: one uninterrupted run leaves exactly one mark per job,
    and the tracker matches the store when nobody is killed."""
    p = make_project(tmp_path, "cwd: .\njobs:\n  - {id: solo, run: R001, cmd: 'echo $$ >> marks/solo'}\n",
                     [("R001", "M1", "MUST")])
    (p.path / "marks").mkdir()
    assert p.run().returncode == 0
    assert len((p.path / "marks" / "solo").read_text().split()) == 1
    assert p.status_cell("R001") == "DONE"
