"""The pipeline's next move for one plan, as a pure function of its jobs (DESIGN §3).

parsing → [implementing] → [reviewing] → [awaiting_approval] → sanity → deploying(Mk)… → finishing
→ done. Hook-driven phases are entered only when their hook is configured; a phase whose work is
done moves on in the same step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from daemon.index import JobIndex
from daemon.model import Job, JobState, PlanState

J, P = JobState, PlanState
# a run a person skipped is their decision, not a failure that should stop the plan
BAD = frozenset({J.FAILED, J.STUCK, J.BLOCKED})


@dataclass(frozen=True)
class Move:
    dst: PlanState
    milestone: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Flow:
    milestones: Sequence[str]
    sanity: str | None  # the sanity milestone, when sanity_first applies
    auto_deploy: bool = True
    approved: bool = False


def _keys(milestone: str | None, idx: JobIndex, flow: Flow) -> list[str | None]:
    """A milestone's index keys; jobs that name no known milestone belong to the last one."""
    keys = [milestone]
    if flow.milestones and milestone == flow.milestones[-1]:
        keys += [m for m in idx.milestones() if m not in flow.milestones]
    return keys


def jobs_of(milestone: str | None, idx: JobIndex, jobs: Mapping[str, Job], flow: Flow) -> list[Job]:
    return [jobs[i] for k in _keys(milestone, idx, flow) for i in sorted(idx.ids("m", k))]


def after_parse(flow: Flow) -> Move:
    if not flow.auto_deploy and not flow.approved:
        return Move(P.AWAITING_APPROVAL, None, "waiting for approval")
    return first_work(flow)


def first_work(flow: Flow) -> Move:
    if flow.sanity is not None:
        return Move(P.SANITY, flow.sanity)
    return next_milestone(None, flow)


def next_milestone(current: str | None, flow: Flow) -> Move:
    order = [m for m in flow.milestones if m != flow.sanity]
    if current in order:
        order = order[order.index(current) + 1:]
    if not order:
        return Move(P.FINISHING)
    return Move(P.DEPLOYING, order[0])


def milestone_failures(milestone: str | None, idx: JobIndex, jobs: Mapping[str, Job], flow: Flow) -> list[Job]:
    bad = set().union(*(idx.by_state[st] for st in BAD))
    ids = sorted(i for k in _keys(milestone, idx, flow) for i in idx.ids("m", k) & bad)
    return [jobs[i] for i in ids if jobs[i].must]


def milestone_done(milestone: str | None, idx: JobIndex, jobs: Mapping[str, Job], flow: Flow) -> bool:
    """Every job final or blocked; an OVERTIME job still running no longer holds it (F87)."""
    for key in _keys(milestone, idx, flow):
        still_open = idx.open_count("m", key)
        if still_open and still_open > sum(1 for i in idx.ids("m", key) & idx.by_state[J.RUNNING]
                                           if jobs[i].spec.get("overtime")):
            return False
    return True


def step(state: PlanState, milestone: str | None, idx: JobIndex, jobs: Mapping[str, Job], flow: Flow) -> Move | None:
    """The move out of a working phase once its jobs allow it; None means stay."""
    if state is P.SANITY or state is P.DEPLOYING:
        if not milestone_done(milestone, idx, jobs, flow):
            return None
        bad = milestone_failures(milestone, idx, jobs, flow)
        if bad:
            what = ", ".join(f"{j.run_id or j.job_id} {j.state.value}" for j in bad[:3])
            kind = "sanity" if state is P.SANITY else f"milestone {milestone}"
            return Move(P.BLOCKED, milestone, f"{kind} failed: {what}")
        return next_milestone(milestone, flow)
    return None


def unblocked(milestone: str | None, idx: JobIndex, jobs: Mapping[str, Job], flow: Flow) -> bool:
    """A plan blocked on a milestone resumes once a person has requeued its failed work."""
    return not milestone_done(milestone, idx, jobs, flow)
