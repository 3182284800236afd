"""Periodic upkeep of a project, run on each tick: the budget ledger (it can stop launches),
the training-quality check of running jobs, and notifications. Kept out of the core loop so
the loop only routes events."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from backends.base import Handle
from daemon.model import JobState
from daemon.project import Project

J = JobState


def notifier(project: Project) -> Any:
    """One notifier per project, created on first use (no thread when notifications are off)."""
    if getattr(project, "_notifier", None) is None:
        from handlers.notify import Notifier
        project._notifier = Notifier(project.settings.notify)  # type: ignore[attr-defined]
    return project._notifier  # type: ignore[attr-defined]


def notify(project: Project, event: str, **payload: Any) -> None:
    if getattr(project.settings, "notify", None) is None:
        return
    notifier(project).send(event, {"project": project.key, **payload})


def close(project: Project) -> None:
    n = getattr(project, "_notifier", None)
    if n is not None:
        n.close(timeout_s=5.0)


# -- budget -----------------------------------------------------------------------------------
def budget_check(project: Project, now: float) -> None:
    """Update the ledger; over a hard GPU-hour budget no new job launches (DESIGN §4, F81)."""
    from handlers.budget import build_ledger, check, new_marks, render

    budget = getattr(project.settings, "budget", None)
    if budget is None or project.plan is None:
        return
    records = [{"job_id": j.job_id, "run_id": j.run_id, "milestone": j.milestone,
                "started_at": j.started_at, "ended_at": j.ended_at,
                "gpus": 0 if (j.slot or "").rpartition(":")[2].startswith("cpu") else 1}
               for j in project.jobs.values() if j.started_at]
    plan_hours = project.inputs.budget_hours if project.inputs else None
    ledger = build_ledger(records, budget, plan_hours, now, project.inputs.milestone_costs if project.inputs else None)
    verdict = check(ledger, budget)
    seen = project.plan.data.get("budget_marks", [])
    for mark in new_marks(seen, verdict):
        project.note(f"budget: {'; '.join(verdict.reasons)}")
        notify(project, "budget_warning", mark=mark, reasons=verdict.reasons)
    marks = sorted(set(seen) | set(verdict.marks))
    text = render(ledger, verdict)
    if marks != seen or project.plan.data.get("budget") != text or project.budget_stop != (not verdict.may_launch):
        project.plan = replace(project.plan, data={**project.plan.data, "budget_marks": marks, "budget": text})
        project.plan_changed = True
        project.budget_stop = not verdict.may_launch
    _block_on_budget(project, verdict.reasons)


def _block_on_budget(project: Project, reasons: list[str]) -> None:
    from daemon.model import PlanState as P

    plan = project.plan
    if plan is None or not project.budget_stop or plan.state not in (P.SANITY, P.DEPLOYING):
        return
    if any(j.state is J.PENDING for j in project.jobs.values()):
        project.set_plan(P.BLOCKED, reason=f"budget: {'; '.join(reasons)}"[:300])


# -- training check ---------------------------------------------------------------------------
def training_check(project: Project, now: float, cancels: list[tuple[Project, Handle]]) -> None:
    """ARIS training-check (F85): only when W&B or a training-check hook is configured.

    A clearly broken run (NaN/Inf, divergence) is stopped; unclear cases are logged for the hook.
    """
    from handlers.training_check import check_log

    settings = project.settings
    wandb_on = bool(getattr(getattr(settings, "wandb", None), "enabled", False))
    if not wandb_on and not getattr(getattr(settings, "hooks", None), "training_check", None):
        return
    every = float(getattr(settings, "training_check_s", 600))
    for job in project.active_jobs(J.RUNNING):
        if not job.handle:
            continue
        last = float(job.spec.get("checked_at", 0) or 0)
        if now - last < every:
            continue
        handle = Handle.from_json(job.handle)
        verdict = check_log(Path(handle.log_path)) if Path(handle.log_path).exists() else None
        project._keep(replace(job, spec={**job.spec, "checked_at": now}))
        if verdict is None:
            continue
        if verdict.decision == "STOP":
            reason = f"training check: STOP: {'; '.join(verdict.reasons)[:200]}"
            project.note(f"{job.job_id}: {reason}")
            cancels.append((project, handle))
            project.set_job(job, J.FAILED, reason=reason, ended_at=now)
        elif verdict.needs_review:
            project.note(f"{job.job_id}: training check WAIT (needs review): {'; '.join(verdict.reasons)[:200]}")


def tick(project: Project, cancels: list[tuple[Project, Handle]]) -> None:
    from daemon.model import PlanState as P

    plan = project.plan
    idle = plan is None or (plan.state not in (P.SANITY, P.DEPLOYING)
                            and not (plan.state is P.BLOCKED and plan.reason.startswith("budget:")))
    if idle and not project.active_jobs():
        return  # nothing runs and nothing may launch: an idle project costs nothing per tick
    now = time.time()
    project.flag_overtime(now)
    # the ledger walks every started job: with a big queue, recompute it less often
    if now - getattr(project, "_budget_at", 0.0) >= max(1.0, len(project.jobs) / 1000):
        project._budget_at = now  # type: ignore[attr-defined]
        budget_check(project, now)
    training_check(project, now, cancels)
