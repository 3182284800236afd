"""Local figures (DESIGN §8): job exit → next job start on the freed slot, and 500 no-op jobs on
8 slots against task-spooler (`tsp`) in the same run.

    python bench/bench_local.py [--smoke]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import make_project, pct, run_cli, wrapper_times  # noqa: E402


def exit_to_next_start(n: int) -> list[float]:
    """One slot, n short jobs in a row: every gap is exit of job k → start of job k+1."""
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "p", [(f"j{i:04d}", "sleep 0.05") for i in range(n)], 1)
        run_cli(project, Path(tmp) / "state", "cpu_slots: 1")
        times = wrapper_times(project)
    return [(times[i + 1][0] - times[i][1]) * 1000 for i in range(len(times) - 1)]


def drain_expbridge(n: int, slots: int) -> tuple[float, float, float]:
    """(drain, handed-over → last exit, whole command): drain is first job start → last job end
    from the wrappers' files; handed-over starts when `expbridge run` is spawned (interpreter
    start and manifest parse included), the same span tsp's figure covers from its first submit."""
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "p", [(f"n{i:04d}", "true") for i in range(n)], slots)
        spawned = time.time()
        wall = run_cli(project, Path(tmp) / "state", f"cpu_slots: {slots}")
        times = wrapper_times(project)
    last_end = max(e for _, e in times)
    return last_end - min(s for s, _ in times), last_end - spawned, wall


def drain_tsp(n: int, slots: int) -> float | None:
    tsp = shutil.which("tsp") or shutil.which("ts")
    if tsp is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TS_SOCKET": f"{tmp}/ts.sock", "TS_MAXFINISHED": str(n + 10), "TMPDIR": tmp}
        subprocess.run([tsp, "-S", str(slots)], env=env, check=True, capture_output=True)
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run([tsp, "true"], env=env, check=True, capture_output=True)
        while True:
            listing = subprocess.run([tsp, "-l"], env=env, capture_output=True, text=True).stdout
            if listing.count("finished") >= n:
                break
            time.sleep(0.02)  # each poll spawns a client: do not starve the jobs on 2 cores
        elapsed = time.perf_counter() - t0
        subprocess.run([tsp, "-K"], env=env, capture_output=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    args = ap.parse_args()
    n_lat, n_drain = (20, 100) if args.smoke else (200, 500)
    gaps = exit_to_next_start(n_lat)
    print(f"local exit→next start ({len(gaps)} gaps): p50 {pct(gaps, 50):.1f} ms, p90 {pct(gaps, 90):.1f} ms"
          f"   [goal p50 ≤ 100 ms; ARIS ≤ 60 s, ts-GPU ≤ 30 s, gpusched 5 s]", flush=True)
    drain, handed, wall = drain_expbridge(n_drain, 8)
    ts = drain_tsp(n_drain, 8)
    line = (f"{n_drain} no-op jobs, 8 slots: expbridge drain {drain:.2f} s, handed over → last exit {handed:.2f} s "
            f"(whole command incl. final reports {wall:.2f} s)")
    if ts is not None:
        line += (f"; tsp submit → all finished {ts:.2f} s; ratio {handed / ts:.2f}× like for like "
                 f"(drain only {drain / ts:.2f}×)   [goal ≤ 1.5× tsp; tsp 1.13 s for 500 on -S 2]")
    else:
        line += ", tsp not installed"
    print(line, flush=True)

if __name__ == "__main__":
    main()
