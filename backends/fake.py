"""An in-memory backend with scriptable outcomes, for tests and `--dry-run`.

It reads the few shapes the tests use from the command text: `sleep S` sets the duration,
`exit N` the exit code, and a CUDA OOM message makes the attempt end as OOM.
"""
from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from backends.base import Handle, JobSpec, RunStatus, Slot, classify_exit


@dataclass
class _Job:
    spec: JobSpec
    started: float
    duration: float
    code: int
    state: str = "running"  # running | suspended | cancelled
    paused_at: float | None = None


class FakeBackend:
    name = "fake"

    def __init__(self, n_slots: int = 4, gpus: bool = False) -> None:
        self.n_slots, self.gpus = n_slots, gpus
        self.jobs: dict[str, _Job] = {}
        self.launches: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def preflight(self) -> None:
        return None

    def slots(self) -> list[Slot]:
        return [Slot("fake", i if self.gpus else None) for i in range(self.n_slots)]

    def submit(self, job: JobSpec, slot: Slot) -> Handle:
        job.validate()
        sleep = re.search(r"sleep\s+(\d+(?:\.\d+)?)", job.cmd)
        code = re.search(r"exit\s+(\d+)", job.cmd)
        with self._lock:
            ref = f"fake-{next(self._ids)}"
            self.jobs[ref] = _Job(job, time.monotonic(), float(sleep.group(1)) if sleep else 0.0,
                                  int(code.group(1)) if code else 0)
            self.launches.append(job.session)
        return Handle("fake", ref, "fake", job.job_dir, job.log_path)

    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]:
        return {h: self._status(h) for h in handles}

    def _status(self, handle: Handle) -> RunStatus:
        job = self.jobs.get(handle.ref)
        if job is None:
            return RunStatus("lost", None, "lost", "unknown to the fake backend")
        if job.state == "cancelled":
            return RunStatus("exited", -15, "cancelled")
        if job.state == "suspended":
            return RunStatus("suspended")
        if time.monotonic() - job.started < job.duration:
            return RunStatus("running")
        return RunStatus("exited", job.code, classify_exit(job.code, job.spec.cmd))

    def cancel(self, handle: Handle) -> None:
        if handle.ref in self.jobs:
            self.jobs[handle.ref].state = "cancelled"

    def suspend(self, handle: Handle) -> bool:
        job = self.jobs.get(handle.ref)
        if job is None or job.state != "running":
            return False
        job.state, job.paused_at = "suspended", time.monotonic()
        return True

    def resume(self, handle: Handle) -> bool:
        job = self.jobs.get(handle.ref)
        if job is None or job.state != "suspended":
            return False
        job.started += time.monotonic() - (job.paused_at or time.monotonic())
        job.state = "running"
        return True

    def fetch(self, handle: Handle, dest: Path) -> None:
        return None
