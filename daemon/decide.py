"""decide(): a pure function from one project's state to the actions that move it on.

No I/O and no clock reads: the loop passes in the free slots it read from the backend and the
time. Everything here can be tested with plain values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from daemon.model import ACTIVE, FAILURE_CLASSES, Job, JobState

J = JobState
BAD_FINAL = frozenset({J.FAILED, J.STUCK, J.SKIPPED, J.CANCELLED, J.BLOCKED})
HOLDS_SLOT = frozenset({J.LAUNCHING, J.RUNNING})


@dataclass(frozen=True)
class Policy:
    delay: float
    max_attempts: int


@dataclass(frozen=True)
class Launch:
    job_id: str
    slot: str


@dataclass(frozen=True)
class Requeue:
    job_id: str


@dataclass(frozen=True)
class Block:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Unblock:
    job_id: str


Action = Launch | Requeue | Block | Unblock


@dataclass(frozen=True)
class View:
    jobs: Sequence[Job]  # one project's jobs, in plan order
    free_slots: Sequence[str]  # slot keys the backend reports free right now
    now: float
    milestones: Sequence[str] = ()  # in deploy order
    active_milestone: str | None = None  # jobs of later milestones wait; None = no milestone gate
    cap: int = 4  # parallel jobs per milestone
    not_ready: Mapping[str, str] = field(default_factory=dict)  # job_id -> unmet precondition
    held_slots: frozenset[str] = frozenset()  # paused (suspended) jobs keep their slot


def decide(view: View) -> list[Action]:
    actions: list[Action] = []
    by_phase = _by_phase(view.jobs)
    for job in view.jobs:
        if job.state is J.RETRY_WAIT and (job.next_attempt_at or 0) <= view.now:
            actions.append(Requeue(job.job_id))
        elif job.state in (J.PENDING, J.BLOCKED):
            culprit = _bad_prerequisite(job, by_phase)
            if culprit and job.state is J.PENDING:
                actions.append(Block(job.job_id, f"blocked by {culprit}"))
            elif not culprit and job.state is J.BLOCKED:
                actions.append(Unblock(job.job_id))
    actions.extend(_launches(view, by_phase, {a.job_id for a in actions}))
    return actions


def _by_phase(jobs: Sequence[Job]) -> dict[str, list[Job]]:
    out: dict[str, list[Job]] = {}
    for job in jobs:
        out.setdefault(job.phase, []).append(job)
    return out


def _prereqs(job: Job, by_phase: Mapping[str, list[Job]]) -> list[Job]:
    return [p for phase in job.spec.get("depends_on", ()) for p in by_phase.get(phase, ())]


def _bad_prerequisite(job: Job, by_phase: Mapping[str, list[Job]]) -> str | None:
    for pre in _prereqs(job, by_phase):
        if pre.state in BAD_FINAL:
            return pre.run_id or pre.job_id
    return None


def _ready(job: Job, view: View, by_phase: Mapping[str, list[Job]], rank: Mapping[str, int]) -> bool:
    if job.job_id in view.not_ready:
        return False
    if view.active_milestone is not None and job.milestone in rank:
        if rank[job.milestone] > rank.get(view.active_milestone, len(rank)):
            return False
    return all(p.state is J.SUCCEEDED for p in _prereqs(job, by_phase))


def _launches(view: View, by_phase: Mapping[str, list[Job]], touched: set[str]) -> list[Launch]:
    busy = {j.slot for j in view.jobs if j.state in HOLDS_SLOT and j.slot} | set(view.held_slots)
    free = [s for s in view.free_slots if s not in busy]
    rank = {m: i for i, m in enumerate(view.milestones)}
    active: dict[str | None, int] = {}
    for j in view.jobs:
        if j.state in ACTIVE:
            active[j.milestone] = active.get(j.milestone, 0) + 1
    out: list[Launch] = []
    for job in view.jobs:
        if not free:
            break
        if job.state is not J.PENDING or job.job_id in touched:
            continue
        if active.get(job.milestone, 0) >= view.cap or not _ready(job, view, by_phase, rank):
            continue
        out.append(Launch(job.job_id, free.pop(0)))
        active[job.milestone] = active.get(job.milestone, 0) + 1
    return out


def after_attempt(job: Job, failure: JobState, policies: Mapping[str, Policy], now: float
                  ) -> tuple[JobState, float | None, str, int]:
    """Where a failed attempt goes next: retry_wait while its class budget lasts, else final.

    Each class counts the attempts that ended in it, this one included, against its own
    max_attempts; with oom max_attempts=3, three OOMs in a row mean three launches in all. A
    deterministic crash (failed, budget 1) stays FAILED unless asked. Returns the next state,
    the retry time, the reason and the class's new count.
    """
    klass = FAILURE_CLASSES[failure]
    policy = policies[klass]
    used = job.class_attempts.get(klass, 0) + 1
    if used < policy.max_attempts:
        return J.RETRY_WAIT, now + policy.delay, f"{klass}: retry {used + 1}/{policy.max_attempts}", used
    final = J.FAILED if failure is J.FAILED else J.STUCK
    return final, None, f"{klass}: {used}/{policy.max_attempts} attempts used", used
