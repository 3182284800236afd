"""Slurm figures on a private single-node cluster: expbridge's Slurm backend next to plain sbatch.

- submit → start: from the call that submits (backend.submit / `sbatch`) to the job's first
  instruction (the wrapper's `started` file / a `date` in the plain script);
- exit → next start, Slurm-queued: n jobs that each need the whole node (both fake GPUs) are
  submitted at once, so Slurm starts job k+1 when job k ends (gap = end of k → start of k+1);
- exit → next start, expbridge-gated: one virtual slot, a poll loop that submits the next job as
  soon as poll() reports the previous one exited (what the core does with max_submitted=1).

    python bench/bench_slurm.py [--n 8] [--tick 0.2]

Needs root and slurmctld/slurmd/munge (the test fixture's recipe, reference/ECOSYSTEM.md §9).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends.base import JobSpec, Slot  # noqa: E402
from backends.slurm import LocalRunner, SlurmBackend  # noqa: E402
from backends.slurm_parse import SlurmSettings  # noqa: E402
from bench.common import pct  # noqa: E402
from tests.plugins.slurm import SlurmCluster  # noqa: E402

SLOT = Slot("slurm", None)


def _wait_file(path: Path, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().split()
            if text:
                return float(text[-1] if path.name == "exit" else text[0])
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{path} did not appear within {timeout}s")


def _spec(tmp: Path, job_id: str, cmd: str) -> JobSpec:
    return JobSpec(job_id, "bench", "20260101T000000Z", 1, cmd, str(tmp), str(tmp / "run"))


def submit_to_start_backend(backend: SlurmBackend, tmp: Path, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.time()
        handle = backend.submit(_spec(tmp, f"s{i}", "true"), SLOT)
        out.append(_wait_file(Path(handle.job_dir) / "started") - t0)
        _wait_file(Path(handle.job_dir) / "exit")
    return out


def submit_to_start_sbatch(cluster: SlurmCluster, tmp: Path, n: int) -> list[float]:
    out = []
    for i in range(n):
        mark = tmp / f"plain{i}.start"
        t0 = time.time()
        cluster.client("sbatch", "--parsable", "-o", "/dev/null", "--wrap", f"date +%s.%N > {mark}")
        out.append(_wait_file(mark) - t0)
    return out


def queued_gaps_backend(backend: SlurmBackend, tmp: Path, n: int) -> list[float]:
    handles = [backend.submit(_spec(tmp, f"q{i}", "sleep 0.5"), SLOT, overrides={"gres": 2}) for i in range(n)]
    times = [(_wait_file(Path(h.job_dir) / "started"), _wait_file(Path(h.job_dir) / "exit")) for h in handles]
    return [times[i + 1][0] - times[i][1] for i in range(n - 1)]


def queued_gaps_sbatch(cluster: SlurmCluster, tmp: Path, n: int) -> list[float]:
    for i in range(n):
        cluster.client("sbatch", "--parsable", "--gres=gpu:2", "-o", "/dev/null", "--wrap",
                       f"date +%s.%N > {tmp}/p{i}.start; sleep 0.5; date +%s.%N > {tmp}/p{i}.end")
    times = [(_wait_file(tmp / f"p{i}.start"), _wait_file(tmp / f"p{i}.end")) for i in range(n)]
    return [times[i + 1][0] - times[i][1] for i in range(n - 1)]


def gated_gaps_backend(backend: SlurmBackend, tmp: Path, n: int, tick: float) -> list[float]:
    """One job at a time, the next submitted when poll() sees the previous one exit."""
    gaps, prev_end = [], None
    for i in range(n):
        handle = backend.submit(_spec(tmp, f"g{i}", "sleep 0.5"), SLOT)
        start = _wait_file(Path(handle.job_dir) / "started")
        if prev_end is not None:
            gaps.append(start - prev_end)
        while backend.poll([handle])[handle].phase not in ("exited", "lost"):
            time.sleep(tick)
        prev_end = _wait_file(Path(handle.job_dir) / "exit")
    return gaps


def line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"  {label:<44} p50 {pct(ms, 50):8.0f} ms   p90 {pct(ms, 90):8.0f} ms   max {max(ms):8.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="jobs per measurement")
    parser.add_argument("--tick", type=float, default=0.2, help="poll interval of the gated loop (s)")
    parser.add_argument("--sched", default="", help="SchedulerParameters for the cluster, e.g. batch_sched_delay=0")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if os.geteuid() != 0:
        print("bench_slurm needs root (it starts munged, slurmctld and slurmd)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="ebslurm-bench-", dir="/tmp"))
    cluster = SlurmCluster(root, extra_conf=f"SchedulerParameters={args.sched}\n" if args.sched else "")
    try:
        cluster.start()
        backend = SlurmBackend(SlurmSettings(partition=cluster.partition), runner=LocalRunner(env=cluster.env))
        backend.preflight()
        with tempfile.TemporaryDirectory() as tmp_text:
            tmp = Path(tmp_text)
            for sub in "abcde":
                (tmp / sub).mkdir()
            print(f"Slurm {cluster.client('sbatch', '--version', check=False).stdout.strip()}, "
                  f"single node, SchedulerParameters={args.sched or '(defaults)'}, n={args.n} per row")
            print("submit -> start")
            print(line("expbridge SlurmBackend.submit", submit_to_start_backend(backend, tmp / "a", args.n)))
            print(line("plain sbatch --wrap", submit_to_start_sbatch(cluster, tmp / "b", args.n)))
            print("exit -> next start")
            print(line("expbridge, all submitted, Slurm queues", queued_gaps_backend(backend, tmp / "c", args.n)))
            print(line("plain sbatch, all submitted, Slurm queues", queued_gaps_sbatch(cluster, tmp / "d", args.n)))
            print(line(f"expbridge-gated (1 slot, poll every {args.tick}s)",
                       gated_gaps_backend(backend, tmp / "e", args.n, args.tick)))
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
