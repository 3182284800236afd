"""decide() and the retry policy as pure functions: plain values in, actions out."""
from __future__ import annotations

from dataclasses import replace

from daemon.decide import Block, Launch, Policy, Requeue, Unblock, after_attempt, decide
from daemon.decide import View as _View
from daemon.index import JobIndex
from daemon.model import Job, JobState

J = JobState
POLICIES = {"oom": Policy(120, 3), "lost": Policy(10, 3), "timeout": Policy(0, 1), "failed": Policy(0, 1)}


def View(jobs: list[Job], free: list[str], **kw: object) -> _View:  # noqa: N802 (reads like the class)
    ordered = [Job(**{**j.__dict__, "order": i}) for i, j in enumerate(jobs)]
    return _View({j.job_id: j for j in ordered}, JobIndex(ordered), free, **kw)  # type: ignore[arg-type]


def job(jid: str, state: JobState = J.PENDING, milestone: str = "M1", phase: str = "p",
        deps: tuple[str, ...] = (), **kw: object) -> Job:
    return Job("proj", jid, jid.upper(), milestone, phase, "true", "/tmp", state=state,
               spec={"depends_on": list(deps)}, **kw)  # type: ignore[arg-type]


def test_fills_free_slots_in_order_and_skips_held_ones() -> None:
    jobs = [job("a", J.RUNNING, slot="h:0"), job("b"), job("c"), job("d")]
    actions = decide(View(jobs, ["h:0", "h:1", "h:2"], now=0, cap=8))
    assert actions == [Launch("b", "h:1"), Launch("c", "h:2")]


def test_milestone_gate_and_cap() -> None:
    jobs = [job("a", milestone="M1"), job("b", milestone="M1"), job("c", milestone="M2")]
    view = View(jobs, ["s:0", "s:1", "s:2"], now=0, milestones=["M1", "M2"], active_milestone="M1", cap=1)
    assert decide(view) == [Launch("a", "s:0")]


def test_dependency_waits_then_blocks_on_failure_and_unblocks_on_retry() -> None:
    pre, dep = job("a", J.RUNNING, phase="first"), job("b", phase="second", deps=("first",))
    assert decide(View([pre, dep], ["s:1"], now=0)) == []
    failed = replace(pre, state=J.FAILED)
    assert decide(View([failed, dep], ["s:1"], now=0)) == [Block("b", "blocked by A")]
    blocked = replace(dep, state=J.BLOCKED, reason="blocked by A")
    assert decide(View([replace(pre, state=J.PENDING), blocked], [], now=0)) == [Unblock("b")]


def test_retry_wait_requeues_only_when_due() -> None:
    waiting = job("a", J.RETRY_WAIT, next_attempt_at=100.0)
    assert decide(View([waiting], [], now=99.0)) == []
    assert decide(View([waiting], [], now=100.0)) == [Requeue("a")]


def test_not_ready_preconditions_are_not_launched() -> None:
    jobs = [job("a"), job("b")]
    assert decide(View(jobs, ["s:0"], now=0, not_ready={"a": "missing ckpt"})) == [Launch("b", "s:0")]


def test_oom_budget_counts_launches_including_the_first() -> None:
    j = job("a", J.OOM)
    state, when, _, used = after_attempt(j, J.OOM, POLICIES, now=10.0)
    assert (state, when, used) == (J.RETRY_WAIT, 130.0, 1)
    j = replace(j, class_attempts={"oom": 2})
    state, when, reason, used = after_attempt(j, J.OOM, POLICIES, now=10.0)
    assert (state, when, used) == (J.STUCK, None, 3) and "3/3" in reason


def test_deterministic_failure_is_not_rerun() -> None:
    state, when, _, _ = after_attempt(job("a", J.FAILED), J.FAILED, POLICIES, now=0)
    assert (state, when) == (J.FAILED, None)


def test_lost_is_retried_after_its_delay() -> None:
    state, when, _, _ = after_attempt(job("a", J.LOST), J.LOST, POLICIES, now=5.0)
    assert (state, when) == (J.RETRY_WAIT, 15.0)


def test_a_row_blocked_for_another_reason_is_not_unblocked() -> None:
    outside = job("a", J.BLOCKED, reason="running outside expbridge? set TODO to run it here")
    assert decide(View([outside], ["s:0"], now=0)) == []


def test_launch_scan_stops_when_the_slots_are_used_up() -> None:
    jobs = [job(f"j{i:05d}") for i in range(20000)]
    actions = decide(View(jobs, ["s:0", "s:1"], now=0, cap=8))
    assert actions == [Launch("j00000", "s:0"), Launch("j00001", "s:1")]
