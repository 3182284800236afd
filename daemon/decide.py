"""decide(): a pure function from one project's state to the actions that move it on.

No I/O and no clock reads: the loop passes in the free slots it read from the backend and the
time. Everything here can be tested with plain values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from daemon.index import JobIndex
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
    jobs: Mapping[str, Job]  # one project's jobs by id
    index: JobIndex  # the same jobs by state, phase, milestone; pending in plan order
    free_slots: Sequence[str]  # slot keys the backend reports free right now
    now: float
    milestones: Sequence[str] = ()  # in deploy order
    active_milestone: str | None = None  # jobs of later milestones wait; None = no milestone gate
    cap: int = 4  # parallel jobs per milestone
    not_ready: Mapping[str, str] = field(default_factory=dict)  # job_id -> unmet precondition
    held_slots: frozenset[str] = frozenset()  # paused (suspended) jobs keep their slot


def decide(view: View) -> list[Action]:
    """Retries that are due, dependents to block or unblock, and launches on free slots.

    Only the jobs that can move are looked at (waiting retries, blocked jobs, pending jobs in
    plan order until the slots are used up), so the cost does not grow with the queue.
    """
    idx = view.index
    actions: list[Action] = [Requeue(i) for i in sorted(idx.by_state[J.RETRY_WAIT])
                             if (view.jobs[i].next_attempt_at or 0) <= view.now]
    bad = _bad_phases(view)
    actions += _blocks(view, bad)
    for jid in sorted(idx.by_state[J.BLOCKED]):
        job = view.jobs[jid]
        if job.reason.startswith("blocked by ") and not _culprit(job, bad):
            actions.append(Unblock(jid))
    actions += _launches(view, {a.job_id for a in actions})
    return actions


def _deps(job: Job) -> Sequence[str]:
    return job.spec.get("depends_on", ()) or ()


def _bad_phases(view: View) -> dict[str, str]:
    """Phases holding a failed, stuck, skipped or blocked job, with one culprit to name."""
    out: dict[str, str] = {}
    for (kind, phase), counts in view.index.counts.items():
        if kind != "p" or not any(counts[s] for s in BAD_FINAL):
            continue
        members = view.index.members[(kind, phase)]
        culprits = sorted(i for s in BAD_FINAL for i in view.index.by_state[s] & members)
        job = view.jobs[culprits[0]]
        out[str(phase)] = job.run_id or job.job_id
    return out


def _culprit(job: Job, bad: Mapping[str, str]) -> str | None:
    return next((bad[d] for d in _deps(job) if d in bad), None)


def _blocks(view: View, bad: Mapping[str, str]) -> list[Block]:
    if not bad:
        return []
    out: list[Block] = []
    idx = view.index
    for (kind, phase), counts in list(idx.counts.items()):
        if kind != "p" or not counts[J.PENDING]:
            continue
        members = idx.members[(kind, phase)]
        sample = view.jobs[next(iter(members))]
        culprit = _culprit(sample, bad)
        if culprit:
            out += [Block(i, f"blocked by {culprit}") for i in sorted(members & idx.by_state[J.PENDING])]
    return out


def _ready(job: Job, view: View, rank: Mapping[str, int]) -> bool:
    if job.job_id in view.not_ready:
        return False
    if view.active_milestone is not None and job.milestone in rank:
        if rank[job.milestone] > rank.get(view.active_milestone, len(rank)):
            return False
    return all(view.index.phase_all_succeeded(d) for d in _deps(job))


def _launches(view: View, touched: set[str]) -> list[Launch]:
    idx = view.index
    holding = idx.by_state[J.LAUNCHING] | idx.by_state[J.RUNNING]
    busy = {view.jobs[i].slot for i in holding} | set(view.held_slots)
    free = [s for s in view.free_slots if s not in busy]
    rank = {m: i for i, m in enumerate(view.milestones)}
    active: dict[str | None, int] = {}
    out: list[Launch] = []
    for _, jid in idx.pending:
        if not free:
            break
        job = view.jobs[jid]
        if jid in touched:
            continue
        if job.milestone not in active:
            active[job.milestone] = idx.count("m", job.milestone, ACTIVE)
        if active[job.milestone] >= view.cap or not _ready(job, view, rank):
            continue
        out.append(Launch(jid, free.pop(0)))
        active[job.milestone] += 1
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
