"""Scale figures (DESIGN §8): enqueue 10,000 jobs from one manifest, and the cost of one state
transition with 100 vs 10,000 jobs queued (pueue#573 grew 5× from an empty to a 2,000 queue).

The core runs in this process, as `expbridge run` drives it (1 s ticks, local backend, 8 slots,
no-op jobs), and stops after a fixed number of launches. The per-transition cost is the time
between the first and the last of those launches divided by the job transitions (events rows)
in that window: decide(), advance(), the SQLite commit, the tracker and queue_state.json
writes and the process spawns, everything one transition costs.

    python bench/bench_scale.py [--smoke]
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends.registry import make_backend  # noqa: E402
from bench.common import make_project  # noqa: E402
from daemon import events as ev  # noqa: E402
from daemon.config import resolve_settings  # noqa: E402
from daemon.core import Core  # noqa: E402

SLOTS = 8


def _core(project: Path, state: Path) -> Core:
    settings = resolve_settings(None, project, {"backend": "local", "cpu_slots": str(SLOTS)})
    return Core(state, [(project, settings)], lambda s, p, on_exit: make_backend("local", s, p, on_exit),
                once=False, watch=False, tick_s=1.0)


def _launch_times(state: Path) -> list[float]:
    with sqlite3.connect(state / "state.db", timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT ts FROM events WHERE kind='job' AND dst='launching' ORDER BY seq")]


def measure(n_queued: int, launches: int, limit_s: float) -> dict[str, float]:
    """Open a project with n_queued no-op jobs (timed: the enqueue), run the core until it has
    made `launches` launches (or limit_s passed), and cost the transitions in between."""
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "p", [(f"j{i:05d}", "true") for i in range(n_queued)], SLOTS)
        state = Path(tmp) / "state"
        core = _core(project, state)
        t0 = time.perf_counter()
        core.open()
        enqueue = time.perf_counter() - t0
        core.open = lambda: None  # type: ignore[method-assign]  # run() below must not open twice
        runner = threading.Thread(target=core.run, daemon=True)
        runner.start()
        deadline = time.monotonic() + limit_s
        while len(_launch_times(state)) < launches and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.05)
        core.post(ev.Stop("bench"))
        runner.join(timeout=120)
        times = _launch_times(state)[:launches]
        if len(times) < 2:
            plan = next(iter(core.projects.values())).plan
            raise SystemExit(f"only {len(times)} launch(es) in {limit_s:.0f} s with {n_queued} queued "
                             f"(plan {plan.state.value if plan else '?'}: {plan.reason if plan else ''})")
        with sqlite3.connect(state / "state.db") as conn:
            n_events = conn.execute("SELECT COUNT(*) FROM events WHERE kind='job' AND ts > ? AND ts <= ?",
                                    (times[0], times[-1])).fetchone()[0]
        _wait_jobs(project)
    window = times[-1] - times[0]
    return {"enqueue_s": enqueue, "per_transition_ms": 1000 * window / max(n_events, 1),
            "transitions": n_events, "launches": len(times), "window_s": window}


def _wait_jobs(project: Path) -> None:
    """The no-op jobs end by themselves; wait for the last ones before the temp dir goes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = list(project.glob("experiment_queue/*/jobs/*/a*/pid"))
        if all((p.parent / "exit").exists() for p in pids):
            return
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    args = ap.parse_args()
    big, launches, limit = (2000, 40, 60.0) if args.smoke else (10_000, 80, 300.0)
    small = measure(100, launches, limit)  # fewer launches than jobs: the queue never runs dry
    large = measure(big, launches, limit)
    print(f"enqueue {big} jobs from one manifest: {large['enqueue_s']:.2f} s"
          f"   [goal ≤ 2 s; pueue 500 adds: 2.3 s → 12.2 s with 2,000 queued]", flush=True)
    ratio = large["per_transition_ms"] / small["per_transition_ms"]
    print(f"per-transition cost: {small['per_transition_ms']:.2f} ms with 100 queued "
          f"({small['transitions']} transitions), {large['per_transition_ms']:.2f} ms with {big} queued "
          f"({large['transitions']} transitions over {large['launches']} launches in {large['window_s']:.1f} s); ratio {ratio:.2f}   [goal ratio ≤ 1.5; pueue 5.3×]", flush=True)


if __name__ == "__main__":
    main()
