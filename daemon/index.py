"""Indexes over one project's jobs, kept up to date on every change, so the hot path touches
only the jobs that matter (pending in order, active, one phase or milestone) and a transition
costs the same with 100 or 10,000 jobs queued."""
from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from typing import Iterable

from daemon.model import FINAL, Job, JobState

J = JobState
Key = tuple[str, str | None]  # ("m", milestone) | ("p", phase) | ("r", run)


class JobIndex:
    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self.by_state: dict[JobState, set[str]] = {s: set() for s in JobState}
        self.pending: list[tuple[int, str]] = []  # (order, job_id), sorted
        self.counts: dict[Key, Counter[JobState]] = {}
        self.members: dict[Key, set[str]] = {}
        for job in jobs:
            self.add(job)

    @staticmethod
    def keys(job: Job) -> tuple[Key, Key, Key]:
        return ("m", job.milestone), ("p", job.phase), ("r", job.run_id or job.job_id)

    def add(self, job: Job) -> None:
        self.by_state[job.state].add(job.job_id)
        if job.state is J.PENDING:
            insort(self.pending, (job.order, job.job_id))
        for key in self.keys(job):
            self.counts.setdefault(key, Counter())[job.state] += 1
            self.members.setdefault(key, set()).add(job.job_id)

    def remove(self, job: Job) -> None:
        self.by_state[job.state].discard(job.job_id)
        if job.state is J.PENDING:
            i = bisect_left(self.pending, (job.order, job.job_id))
            if i < len(self.pending) and self.pending[i] == (job.order, job.job_id):
                del self.pending[i]
        for key in self.keys(job):
            self.counts[key][job.state] -= 1
            self.members[key].discard(job.job_id)

    def update(self, old: Job | None, new: Job) -> None:
        if old is not None:
            if old.state is new.state and self.keys(old) == self.keys(new) and old.order == new.order:
                return
            self.remove(old)
        self.add(new)

    # -- questions the hot path asks ----------------------------------------------------------------
    def ids(self, kind: str, key: str | None) -> set[str]:
        return self.members.get((kind, key), set())

    def count(self, kind: str, key: str | None, states: Iterable[JobState]) -> int:
        c = self.counts.get((kind, key))
        return sum(c[s] for s in states) if c else 0

    def size(self, kind: str, key: str | None) -> int:
        return len(self.members.get((kind, key), ()))

    def open_count(self, kind: str, key: str | None) -> int:
        """Jobs that are neither final nor blocked."""
        return self.size(kind, key) - self.count(kind, key, (*FINAL, J.BLOCKED))

    def milestones(self) -> list[str | None]:
        return [k for (kind, k) in self.members if kind == "m" and self.members[(kind, k)]]

    def phase_all_succeeded(self, phase: str) -> bool:
        return self.count("p", phase, (J.SUCCEEDED,)) == self.size("p", phase)
