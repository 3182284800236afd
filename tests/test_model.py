"""Every (from, to) pair of both state tables: allowed pairs pass, every other pair raises."""
from __future__ import annotations

import itertools

import pytest

from daemon.errors import InvalidTransition
from daemon.model import (JOB_TRANSITIONS, PLAN_TRANSITIONS, Job, JobState, PlanRecord, PlanState,
                          advance_job, advance_plan)

JOB_PAIRS = list(itertools.product(JobState, JobState))
PLAN_PAIRS = list(itertools.product(PlanState, PlanState))


def _job(state: JobState) -> Job:
    return Job("p", "j1", "R001", "M1", "main", "true", "/tmp", state=state)


@pytest.mark.parametrize(("src", "dst"), JOB_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in JOB_PAIRS])
def test_job_pair(src: JobState, dst: JobState) -> None:
    if dst in JOB_TRANSITIONS[src]:
        new, event = advance_job(_job(src), dst, 1.0, reason="x")
        assert (new.state, event.src, event.dst, new.reason) == (dst, src.value, dst.value, "x")
    else:
        with pytest.raises(InvalidTransition):
            advance_job(_job(src), dst, 1.0)


@pytest.mark.parametrize(("src", "dst"), PLAN_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PLAN_PAIRS])
def test_plan_pair(src: PlanState, dst: PlanState) -> None:
    plan = PlanRecord("p", "slug", "20260101T000000Z", state=src)
    if dst in PLAN_TRANSITIONS[src]:
        new, event = advance_plan(plan, dst, 1.0)
        assert (new.state, event.kind) == (dst, "plan")
    else:
        with pytest.raises(InvalidTransition):
            advance_plan(plan, dst, 1.0)


def test_pause_remembers_where_it_was() -> None:
    paused, _ = advance_job(_job(JobState.RUNNING), JobState.PAUSED, 1.0)
    assert paused.prev_state is JobState.RUNNING
    back, _ = advance_job(paused, JobState.RUNNING, 2.0)
    assert back.state is JobState.RUNNING


def test_every_state_is_in_the_tables() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert set(PLAN_TRANSITIONS) == set(PlanState)
