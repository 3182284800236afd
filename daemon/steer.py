"""How people steer a project: Status-cell commands, the CLI verbs, and the pipeline's moves.

Commands act on a run (all of its jobs). PAUSED suspends running jobs where the backend can
(SIGSTOP, scontrol suspend) and otherwise stops and requeues them; TODO resumes or requeues;
RETRY requeues failed work with fresh attempt counters; SKIP cancels.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from backends.base import Handle
from daemon import hookflow, pipeline, upkeep
from daemon.model import FINAL, Job, JobState, PlanState
from daemon.project import Project

J, P = JobState, PlanState
HOLD = (J.PENDING, J.LAUNCHING, J.RUNNING, J.RETRY_WAIT, J.BLOCKED)
JUDGING = "judging"  # gate_failure's answer while the judge hook decides a prose gate


def run_jobs(project: Project, run_id: str) -> list[Job]:
    return project.run_jobs(run_id)


def pause(project: Project, run_id: str, cancels: list[Handle]) -> int:
    n = 0
    for job in run_jobs(project, run_id):
        if job.state not in HOLD:
            continue
        if job.state is J.RUNNING and job.handle:
            handle = Handle.from_json(job.handle)
            if project.backend.suspend(handle):
                project.set_job(job, J.PAUSED, reason="paused: suspended")
            else:
                cancels.append(handle)
                paused = project.set_job(job, J.PAUSED, reason="paused: stopped and requeued (backend cannot suspend)")
                project._keep(replace(paused, prev_state=J.PENDING, handle=None, slot=None))
        else:
            project.set_job(job, J.PAUSED, reason="paused")
        n += 1
    return n


def resume(project: Project, run_id: str) -> int:
    """TODO: resume what is paused, requeue anything else that is not running."""
    n = 0
    for job in run_jobs(project, run_id):
        if job.state is J.PAUSED:
            back = job.prev_state or J.PENDING
            if back is J.RUNNING and job.handle and not project.backend.resume(Handle.from_json(job.handle)):
                back = J.PENDING
            project.set_job(job, back, reason="")
            n += 1
        elif job.state in FINAL or job.state is J.BLOCKED:
            n += requeue(project, job)
    return n


def requeue(project: Project, job: Job) -> int:
    if job.state is J.PENDING:
        return 0
    project.set_job(job, J.PENDING, reason="", class_attempts={}, next_attempt_at=None,
                    spec={k: v for k, v in job.spec.items() if k != "external"})
    return 1


def retry(project: Project, run_id: str) -> int:
    return sum(requeue(project, j) for j in run_jobs(project, run_id)
               if j.state in (J.FAILED, J.STUCK, J.BLOCKED, J.SKIPPED, J.CANCELLED))


def skip(project: Project, run_id: str, cancels: list[Handle]) -> int:
    n = 0
    for job in run_jobs(project, run_id):
        if job.final:
            continue
        if job.state in (J.RUNNING, J.LAUNCHING, J.PAUSED) and job.handle:
            cancels.append(Handle.from_json(job.handle))
        project.set_job(job, J.SKIPPED, reason="skipped by user")
        n += 1
    return n


def command(project: Project, verb: str, run_id: str, cancels: list[Handle]) -> int:
    if verb == "pause":
        return pause(project, run_id, cancels)
    if verb == "resume":
        return resume(project, run_id)
    if verb == "retry":
        return retry(project, run_id)
    if verb == "skip":
        return skip(project, run_id, cancels)
    raise ValueError(f"unknown command {verb!r}")


def flow_of(project: Project) -> pipeline.Flow:
    inputs = project.inputs
    assert inputs is not None and project.plan is not None
    sanity = inputs.sanity if getattr(project.settings, "sanity_first", True) else None
    return pipeline.Flow(inputs.milestones, sanity, bool(getattr(project.settings, "auto_deploy", True)),
                         bool(project.plan.data.get("approved")))


def drive(project: Project, finish: Any) -> None:
    """Take every pipeline move the jobs allow now (a milestone with nothing left moves at once)."""
    for _ in range(64):  # bounded: there are at most a few dozen milestones
        plan = project.plan
        if plan is None or project.inputs is None:
            return
        if plan.state is P.FINISHING:  # entered from a hook's outcome rather than a move here
            if project.index.by_state[J.RUNNING] or project.index.by_state[J.LAUNCHING]:
                return
            if hookflow.audit_pending(project):
                return
            finish(project)
            project.set_plan(P.DONE, milestone=None, reason="")
            upkeep.notify(project, "experiment_done", summary=project.plan.data.get("summary"))
            continue
        move = _move(project, plan.state, plan.milestone)
        if move is None:
            return
        if move.dst in (P.DEPLOYING, P.FINISHING, P.PLANNING_ABLATIONS) and plan.state in (P.SANITY, P.DEPLOYING):
            project.note(f"milestone {plan.milestone} passed")
            upkeep.notify(project, "milestone_passed", milestone=plan.milestone)
        if move.dst is P.BLOCKED:
            upkeep.notify(project, "blocked", reason=move.reason)
        if move.dst is P.AWAITING_APPROVAL:
            upkeep.notify(project, "awaiting_approval")
        project.set_plan(move.dst, milestone=move.milestone, reason=move.reason)
        if move.dst in (P.IMPLEMENTING, P.REVIEWING):
            hookflow.enter(project, move.dst)
        if move.dst is P.AWAITING_APPROVAL:
            checkpoint(project)



def gate_failure(project: Project, milestone: str | None, jobs: list[Any], flow: pipeline.Flow) -> str | None:
    """A milestone's machine-readable `gate:` (DESIGN §3): the reason it failed, or None.

    A gate a person approved passes. Without a machine gate the milestone passes with a note.
    """
    from handlers.collect import run_metrics, verdict
    from handlers.criteria import parse_criterion

    assert project.plan is not None
    if milestone in project.plan.data.get("gates_approved", []):
        return None
    mine = pipeline.jobs_of(milestone, project.index, project.jobs, flow)
    gates = {str(j.spec["gate"]): j.spec["gate"] for j in mine if j.spec.get("gate")}
    if not gates:
        return None
    runs: dict[str, list[Any]] = {}
    for j in jobs:
        runs.setdefault(j.run_id or j.job_id, []).append(j)
    metrics = {r: run_metrics(js) for r, js in runs.items()}
    own = {j.run_id or j.job_id for j in mine}
    for spec in gates.values():
        crit = parse_criterion(spec)
        for run_id in sorted(own):
            rm = metrics[run_id]
            result = verdict(rm.__class__(rm.metrics, rm.key, crit, rm.problems), metrics)
            if result is None or result.outcome == "pass":
                continue
            if result.outcome == "needs_review":
                judged = project.plan.data.get("gates_judged", {}).get(str(milestone))
                if judged is None and hookflow.hook_command(project, "judge"):
                    if hookflow.pending(project) is None:
                        hookflow.request(project, "judge", milestone, findings=(str(spec),))
                    return JUDGING
                if judged is not None and judged[0] != "pass":
                    return f"judge: {judged[1]}"
                if judged is None:
                    project.note(f"decision gate {milestone}: {spec!r} needs review (prose); passing with a note")
                continue
            return f"{run_id}: {result.reason}"
    project.note(f"decision gate {milestone} passed")
    return None


def _is_main(project: Project, milestone: str | None) -> bool:
    inputs = project.inputs
    return inputs is not None and milestone is not None and inputs.milestone_stages.get(milestone) == "main"


def _after_main(project: Project, milestone: str | None, jobs: list[Any], flow: pipeline.Flow) -> pipeline.Move | None:
    """F94: a positive main result goes to the ablation planner; anything else skips it, said so."""
    from handlers.collect import run_metrics, verdict
    from handlers.criteria import milestone_verdict

    if not hookflow.hook_command(project, "ablation_planner") or project.plan.data.get("ablations_planned"):  # type: ignore[union-attr]
        return None
    runs: dict[str, list[Any]] = {}
    for j in jobs:
        runs.setdefault(j.run_id or j.job_id, []).append(j)
    metrics = {r: run_metrics(js) for r, js in runs.items()}
    mine = {j.run_id or j.job_id for j in pipeline.jobs_of(milestone, project.index, project.jobs, flow)}
    verdicts = [v for r in mine if (v := verdict(metrics[r], metrics)) is not None]
    outcome = milestone_verdict(verdicts)
    if outcome != "positive":
        project.note(f"ablation planning skipped: the main result ({milestone}) is {outcome}")
        project.plan = replace(project.plan, data={**project.plan.data, "ablations_planned": True})  # type: ignore[arg-type]
        project.plan_changed = True
        return None
    hookflow.plan_ablations(project, milestone)
    return pipeline.Move(P.PLANNING_ABLATIONS, milestone)


def checkpoint(project: Project) -> None:
    """The AUTO_DEPLOY checkpoint: what would run, and what it would cost, before anything does."""
    inputs = project.inputs
    assert inputs is not None
    project.pending_switch = "AWAITING_APPROVAL"
    total = 0
    for m in inputs.milestones:
        runs = {j.run_id for j in project.jobs.values() if j.milestone == m}
        jobs = sum(1 for j in project.jobs.values() if j.milestone == m)
        total += jobs
        project.note(f"checkpoint: {m} {inputs.milestone_names.get(m, '')}: {len(runs)} run(s), {jobs} job(s)")
    hours = f"~{inputs.budget_hours:g} GPU-hours" if inputs.budget_hours is not None else "unknown GPU-hours"
    project.note(f"checkpoint: {total} job(s) in all, {hours}; approve with `expbridge approve {project.path}`"
                 " or set **expbridge**: APPROVED in the tracker")


def _move(project: Project, state: PlanState, milestone: str | None) -> pipeline.Move | None:
    flow = flow_of(project)
    idx, jobs = project.index, project.jobs
    assert project.plan is not None
    hooks_done = bool(project.plan.data.get("hooks_done"))
    if state is P.PARSING:
        if getattr(project.settings, "backend", None) is None:
            return pipeline.Move(P.BLOCKED, None, "needs input (no backend)")
        first_hook = None if hooks_done else hookflow.after_parse_phase(project)
        return pipeline.Move(first_hook) if first_hook else pipeline.after_parse(flow)
    if state in (P.IMPLEMENTING, P.REVIEWING):
        if hooks_done:
            return pipeline.after_parse(flow)
        hookflow.enter(project, state)
        return None
    if state is P.AWAITING_APPROVAL:
        return pipeline.first_work(flow) if flow.approved else None
    if state in (P.SANITY, P.DEPLOYING):
        move = pipeline.step(state, milestone, idx, jobs, flow)
        if move is not None and move.dst is P.FINISHING and (idx.by_state[J.RUNNING] or idx.by_state[J.LAUNCHING]):
            return None  # an overtime job may still be running: results wait for it
        if move is not None and move.dst is not P.BLOCKED:
            failed_gate = gate_failure(project, milestone, list(jobs.values()), flow)
            if failed_gate is JUDGING:
                return None  # the judge hook is deciding the gate
            if failed_gate:
                return pipeline.Move(P.BLOCKED, milestone, f"decision gate {milestone}: {failed_gate}")
            if state is P.DEPLOYING and _is_main(project, milestone):
                return _after_main(project, milestone, list(jobs.values()), flow) or move
        if state is P.SANITY and move is not None and move.dst is P.BLOCKED:
            failed = pipeline.milestone_failures(milestone, idx, jobs, flow)
            if hookflow.sanity_failed(project, milestone, failed):
                return None
            attempts = int(project.plan.data.get("sanity_attempt", 1))
            return pipeline.Move(P.BLOCKED, milestone, f"{move.reason} (after {attempts} attempt(s))")
        if state is P.DEPLOYING and move is not None and move.dst is P.BLOCKED:
            if hookflow.deploy_failed(project, milestone, pipeline.milestone_failures(milestone, idx, jobs, flow)):
                return None
        return move
    if state is P.BLOCKED and project.plan.reason.startswith("decision gate") and milestone in project.plan.data.get("gates_approved", []):
        return pipeline.next_milestone(milestone, flow)
    if state is P.BLOCKED and project.plan.reason.startswith("budget:") and not project.budget_stop:
        return pipeline.Move(project.plan.prev_state or P.DEPLOYING, milestone)
    if state is P.BLOCKED and project.plan.prev_state in (P.SANITY, P.DEPLOYING):
        if project.plan.reason.startswith(("sanity failed", "milestone")) and pipeline.unblocked(milestone, idx, jobs, flow):
            return pipeline.Move(project.plan.prev_state, milestone)
    return None


def apply_tracker_commands(project: Project, sha: str | None, cancels: list[Handle]) -> None:
    """Status cells a person changed since our last write are commands, each consumed once."""
    from daemon.model import Event
    from handlers.status_vocab import command_of

    inputs = project.inputs
    if inputs is None:
        return
    _plan_switch(project, getattr(inputs, "plan_switch", None))
    cells = project.store.cells(project.key)
    for run_id, row in inputs.rows.items():
        last_status, last_notes = cells.get(run_id, (None, None))
        raw = row.status_raw.strip()
        if last_status is None or raw == last_status:
            continue
        verb = command_of(row.status)
        if verb is None:
            project.note(f"{run_id}: status {raw!r} is not a command; left as it is")
            continue
        if project.store.command_seen(project.key, run_id, raw, sha or ""):
            continue
        n = command(project, verb, run_id, cancels)
        project.events.append(Event("command", project.key, run_id, raw, sha or "", {"verb": verb, "jobs": n}))
        project.note(f"{run_id}: {raw} -> {verb} ({n} job(s))")
        project.store.put_cell(project.key, run_id, raw, last_notes)
        project.dirty_runs.add(run_id)


def _plan_switch(project: Project, word: str | None) -> None:
    plan = project.plan
    if plan is None or word is None:
        return
    if word == "APPROVED" and plan.state is P.BLOCKED and plan.reason.startswith("decision gate"):
        approved = [*plan.data.get("gates_approved", []), plan.milestone]
        project.plan = replace(plan, data={**plan.data, "gates_approved": approved, "approved": True})
        project.plan_changed = True
        project.note(f"decision gate {plan.milestone} approved by a person")
    elif word == "APPROVED" and not plan.data.get("approved"):
        project.plan = replace(plan, data={**plan.data, "approved": True})
        project.plan_changed = True
        project.note("plan approved")
    elif word == "PAUSED" and plan.state not in (P.PAUSED, P.DONE, P.FAILED):
        project.set_plan(P.PAUSED, reason="paused by the plan switch")
    elif word in ("RUNNING", "APPROVED") and plan.state is P.PAUSED:
        project.set_plan(plan.prev_state or P.PARSING, reason="")


def control(project: Project, event: Any, cancels: list[Handle]) -> Any:
    if event.verb == "approve":
        _plan_switch(project, "APPROVED")
        return "approved"
    return command(project, event.verb, str(event.args.get("run")), cancels)
