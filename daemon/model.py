"""The two state machines, each as one table, and the one function that moves them.

Nothing else changes a job's or a plan's state: the core loop calls `advance()`, which checks the
table and returns the new value plus the event row the store writes in the same transaction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Mapping

from daemon.errors import InvalidTransition


class JobState(str, Enum):
    PENDING = "pending"
    LAUNCHING = "launching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OOM = "oom"
    LOST = "lost"
    TIMEOUT = "timeout"
    RETRY_WAIT = "retry_wait"
    STUCK = "stuck"
    BLOCKED = "blocked"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


J = JobState
_HOLDABLE = (J.PENDING, J.LAUNCHING, J.RUNNING, J.RETRY_WAIT, J.BLOCKED)
_STOPPABLE = (*_HOLDABLE, J.PAUSED, J.OOM, J.LOST, J.TIMEOUT)

JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    J.PENDING: frozenset({J.LAUNCHING, J.BLOCKED, J.PAUSED, J.CANCELLED, J.SKIPPED}),
    J.LAUNCHING: frozenset({J.RUNNING, J.SUCCEEDED, J.FAILED, J.OOM, J.LOST, J.TIMEOUT,
                            J.PAUSED, J.CANCELLED, J.SKIPPED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.OOM, J.LOST, J.TIMEOUT, J.PAUSED,
                          J.CANCELLED, J.SKIPPED}),
    J.OOM: frozenset({J.RETRY_WAIT, J.STUCK, J.CANCELLED, J.SKIPPED, J.PAUSED}),
    J.LOST: frozenset({J.RETRY_WAIT, J.STUCK, J.CANCELLED, J.SKIPPED, J.PAUSED}),
    J.TIMEOUT: frozenset({J.RETRY_WAIT, J.STUCK, J.CANCELLED, J.SKIPPED, J.PAUSED}),
    J.RETRY_WAIT: frozenset({J.PENDING, J.PAUSED, J.CANCELLED, J.SKIPPED, J.BLOCKED}),
    J.BLOCKED: frozenset({J.PENDING, J.PAUSED, J.CANCELLED, J.SKIPPED}),
    # paused returns to where it was held; a running job that could not be suspended is requeued
    J.PAUSED: frozenset({J.PENDING, J.RUNNING, J.RETRY_WAIT, J.BLOCKED, J.SUCCEEDED, J.FAILED,
                         J.OOM, J.LOST, J.TIMEOUT, J.CANCELLED, J.SKIPPED}),
    # final states leave only through a person's TODO/RETRY, which resets the attempt counters
    J.FAILED: frozenset({J.RETRY_WAIT, J.STUCK, J.PENDING}),
    J.STUCK: frozenset({J.PENDING}),
    J.SUCCEEDED: frozenset({J.PENDING}),
    J.CANCELLED: frozenset({J.PENDING}),
    J.SKIPPED: frozenset({J.PENDING}),
}

FINAL = frozenset({J.SUCCEEDED, J.FAILED, J.STUCK, J.CANCELLED, J.SKIPPED})
ACTIVE = frozenset({J.LAUNCHING, J.RUNNING})
# the failure classes that end an attempt and may be retried by policy
FAILURE_CLASSES = {J.OOM: "oom", J.LOST: "lost", J.TIMEOUT: "timeout", J.FAILED: "failed"}


class PlanState(str, Enum):
    PARSING = "parsing"
    IMPLEMENTING = "implementing"
    REVIEWING = "reviewing"
    AWAITING_APPROVAL = "awaiting_approval"
    SANITY = "sanity"
    DEPLOYING = "deploying"
    PLANNING_ABLATIONS = "planning_ablations"
    FINISHING = "finishing"
    DONE = "done"
    PAUSED = "paused"
    BLOCKED = "blocked"
    FAILED = "failed"


P = PlanState
_WORKING = (P.PARSING, P.IMPLEMENTING, P.REVIEWING, P.AWAITING_APPROVAL, P.SANITY, P.DEPLOYING,
            P.PLANNING_ABLATIONS, P.FINISHING)
_ANYWHERE = frozenset({P.PAUSED, P.BLOCKED, P.FAILED, P.PARSING})

PLAN_TRANSITIONS: Mapping[PlanState, frozenset[PlanState]] = {
    P.PARSING: frozenset({P.IMPLEMENTING, P.REVIEWING, P.AWAITING_APPROVAL, P.SANITY, P.DEPLOYING}) | _ANYWHERE,
    P.IMPLEMENTING: frozenset({P.REVIEWING, P.AWAITING_APPROVAL, P.SANITY, P.DEPLOYING}) | _ANYWHERE,
    P.REVIEWING: frozenset({P.IMPLEMENTING, P.AWAITING_APPROVAL, P.SANITY, P.DEPLOYING}) | _ANYWHERE,
    P.AWAITING_APPROVAL: frozenset({P.SANITY, P.DEPLOYING}) | _ANYWHERE,
    P.SANITY: frozenset({P.SANITY, P.DEPLOYING, P.FINISHING}) | _ANYWHERE,
    # deploying -> deploying is the move to the next milestone
    P.DEPLOYING: frozenset({P.DEPLOYING, P.PLANNING_ABLATIONS, P.FINISHING}) | _ANYWHERE,
    P.PLANNING_ABLATIONS: frozenset({P.DEPLOYING, P.FINISHING}) | _ANYWHERE,
    P.FINISHING: frozenset({P.DONE}) | _ANYWHERE,
    P.DONE: frozenset({P.PARSING}),
    P.PAUSED: frozenset(_WORKING) | frozenset({P.BLOCKED, P.FAILED}),
    P.BLOCKED: frozenset(_WORKING) | frozenset({P.PAUSED, P.FAILED}),
    P.FAILED: frozenset({P.PARSING}),
}


@dataclass(frozen=True)
class Event:
    """A row of the append-only events table."""

    kind: str  # "job" | "plan" | "command" | "note"
    project: str
    subject: str
    src: str
    dst: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


def check(kind: str, table: Mapping[Any, frozenset[Any]], src: Any, dst: Any) -> None:
    if dst not in table.get(src, frozenset()):
        raise InvalidTransition(kind, getattr(src, "value", str(src)), getattr(dst, "value", str(dst)))


def advance_job(job: "Job", dst: JobState, now: float, **changes: Any) -> tuple["Job", Event]:
    """The only way a job changes state."""
    check("job", JOB_TRANSITIONS, job.state, dst)
    prev = job.state if dst is J.PAUSED else job.prev_state
    new = replace(job, state=dst, prev_state=prev, updated_at=now, **changes)
    detail = {k: v for k, v in changes.items() if isinstance(v, (str, int, float, type(None)))}
    return new, Event("job", job.project, job.job_id, job.state.value, dst.value, detail, now)


def advance_plan(plan: "PlanRecord", dst: PlanState, now: float, **changes: Any) -> tuple["PlanRecord", Event]:
    """The only way a plan's pipeline changes phase."""
    check("plan", PLAN_TRANSITIONS, plan.state, dst)
    prev = plan.state if dst in (P.PAUSED, P.BLOCKED) and plan.state not in (P.PAUSED, P.BLOCKED) else plan.prev_state
    new = replace(plan, state=dst, prev_state=prev, updated_at=now, **changes)
    detail = {k: v for k, v in changes.items() if isinstance(v, (str, int, float, type(None)))}
    return new, Event("plan", plan.project, plan.slug, plan.state.value, dst.value, detail, now)


@dataclass(frozen=True)
class Job:
    project: str
    job_id: str
    run_id: str | None
    milestone: str | None
    phase: str
    cmd: str
    cwd: str
    state: JobState = J.PENDING
    prev_state: JobState | None = None
    attempt: int = 0  # launches so far; max_attempts counts these, the first included
    class_attempts: Mapping[str, int] = field(default_factory=dict)
    next_attempt_at: float | None = None
    slot: str | None = None
    handle: str | None = None  # Handle JSON, persisted the moment it exists
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    updated_at: float = 0.0
    spec: Mapping[str, Any] = field(default_factory=dict)  # expected_output, depends_on, est_hours, ...
    must: bool = True
    order: int = 0

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class PlanRecord:
    project: str
    slug: str
    run_ts: str
    state: PlanState = P.PARSING
    prev_state: PlanState | None = None
    milestone: str | None = None
    reason: str = ""
    plan_sha: str = ""
    updated_at: float = 0.0
    data: Mapping[str, Any] = field(default_factory=dict)
