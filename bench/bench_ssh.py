"""SSH backend figures over loopback OpenSSH (DESIGN §8): needs root, sshd, screen.

    python bench/bench_ssh.py [--quick]

Prints, from the job wrappers' own started/exit timestamps:
  1. job exit -> next job start on the freed GPU (p50, p90), with a waiter per host
     (SshBackend.wait_exit) and with plain polling at the default 5 s tick;
  2. the makespan of a 3-wave grid (2 hosts x 2 fake GPUs, 12 jobs) against the ideal.
"""
from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import Handle, parse_exit_file  # noqa: E402
from backends.ssh import SshBackend  # noqa: E402
from tests.plugins.sshd import SshdPair, job, make_backend, remote, start_pair  # noqa: E402


def run_grid(pair: SshdPair, backend: SshBackend, n_jobs: int, seconds: float, mode: str,
             tick: float) -> tuple[list[tuple[str, int, float, float]], float, float]:
    """Drive n_jobs through the backend; returns (host, gpu, started, ended) per job and the span."""
    project = Path(backend.project_dir)
    pending = [job(project, f"b{i}", f"sleep {seconds}", plan=f"bench{mode}", run_ts=f"{int(time.time())}")
               for i in range(n_jobs)]
    running: dict[Handle, tuple[str, int]] = {}
    done: list[Handle] = []
    waiters: dict[str, Future] = {}
    pool = ThreadPoolExecutor(max_workers=4)
    t0 = time.time()
    deadline = time.monotonic() + 60 + 3 * n_jobs * (seconds + tick)
    while pending or running:
        if time.monotonic() > deadline:
            health = {a: (st.breaker.state, st.error) for a, st in backend.state.items()}
            raise SystemExit(f"bench stalled: {len(pending)} pending, {len(running)} running; "
                             f"hosts {health}")
        for handle, status in backend.poll(list(running)).items():
            if status.phase in ("exited", "lost"):
                running.pop(handle)
                done.append(handle)
        free = backend.slots()
        while pending and free:
            slot = free.pop(0)
            running[backend.submit(pending.pop(0), slot)] = (slot.host, slot.gpu)
        if not running:
            continue
        if mode == "tick":
            time.sleep(tick)
            continue
        for alias in {h.host for h in running}:
            if alias not in waiters:
                mine = [h for h in running if h.host == alias]
                waiters[alias] = pool.submit(backend.wait_exit, alias, mine, tick)
        finished, _ = wait(list(waiters.values()), timeout=tick + 10, return_when=FIRST_COMPLETED)
        for alias in [a for a, f in waiters.items() if f in finished]:
            waiters.pop(alias)
    pool.shutdown(wait=True)
    rows = []
    for h in done:
        host = pair.hosts[h.host]
        jd = remote(host, h.job_dir)
        started = float((jd / "started").read_text().split()[0])
        _, ended = parse_exit_file((jd / "exit").read_text())
        gpu = json.loads(h.extra)["gpu"]
        rows.append((h.host, gpu, started, ended or 0.0))
    return rows, t0, max(r[3] for r in rows)


def gaps(rows: list[tuple[str, int, float, float]]) -> list[float]:
    by_gpu: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for host, gpu, started, ended in rows:
        by_gpu.setdefault((host, gpu), []).append((started, ended))
    out = []
    for spans in by_gpu.values():
        spans.sort()
        out += [nxt[0] - prev[1] for prev, nxt in zip(spans, spans[1:])]
    return out


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(quick: bool) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with start_pair() as pair, tempfile.TemporaryDirectory() as tmp:
        for host in pair.hosts.values():
            host.as_user("mkdir", "-p", str(host.home / "code"))
        project = Path(tmp)
        backend = make_backend(pair, project, cooldown_s=0.0)
        try:
            backend.slots()  # open the connections before measuring
            rows, _, _ = run_grid(pair, backend, 8 if quick else 24, 0.5, "waiter", 5.0)
            g = gaps(rows)
            print(f"exit -> next start on the freed GPU, waiter per host: p50 {pct(g, 50):.3f} s, "
                  f"p90 {pct(g, 90):.3f} s (n={len(g)})")
            if not quick:
                rows, _, _ = run_grid(pair, backend, 12, 1.0, "tick", 5.0)
                g = gaps(rows)
                print(f"exit -> next start on the freed GPU, polling every 5 s: p50 {pct(g, 50):.3f} s, "
                      f"p90 {pct(g, 90):.3f} s (n={len(g)})")
            seconds = 2.0
            rows, t0, last = run_grid(pair, backend, 12, seconds, "waiter", 5.0)
            ideal = 3 * seconds
            print(f"3-wave grid, 2 hosts x 2 GPUs, 12 x {seconds:.0f} s jobs: makespan {last - t0:.2f} s "
                  f"vs ideal {ideal:.2f} s ({(last - t0) / ideal:.2f}x)")
        finally:
            backend.close()


if __name__ == "__main__":
    main("--quick" in sys.argv)
