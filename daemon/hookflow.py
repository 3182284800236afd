"""The pipeline's hook-driven steps (DESIGN §5): implement, review, and sanity debug/rescue.

A step asks for a hook by recording it in the plan's data (so a restart runs it again) and
returning a HookRequest; the core runs it in a worker thread and posts HookDone back. The
outcome of each hook is decided here, in one place.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from daemon.model import JobState, PlanState
from daemon.project import Project
from handlers.parse import REFINE

J, P = JobState, PlanState
MAX_SANITY_ATTEMPTS = 3


@dataclass(frozen=True)
class HookRequest:
    project: str
    phase: str  # implement | review | debug | rescue
    milestone: str | None
    token: int
    failure_logs: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class HookDone:
    project: str
    request: HookRequest
    result: Any  # handlers.hooks.HookResult


def hook_command(project: Project, phase: str) -> Any:
    hooks = getattr(project.settings, "hooks", None)
    return getattr(hooks, phase, None) if hooks is not None else None


def pending(project: Project) -> str | None:
    return (project.plan.data.get("hook") or {}).get("phase") if project.plan else None


def request(project: Project, phase: str, milestone: str | None, **extra: Any) -> HookRequest:
    """Record that `phase` must run; the core picks requests up after the batch commits."""
    assert project.plan is not None
    token = int(project.plan.data.get("hook_token", 0)) + 1
    req = HookRequest(project.key, phase, milestone, token, **extra)
    _set_data(project, hook={"phase": phase, "milestone": milestone, "token": token}, hook_token=token)
    project.hook_requests.append(req)
    project.note(f"{phase} hook started" + (f" for {milestone}" if milestone else ""))
    return req


def _set_data(project: Project, **changes: Any) -> None:
    assert project.plan is not None
    project.plan = replace(project.plan, data={**project.plan.data, **changes})
    project.plan_changed = True


def clone_base_repo(project: Project) -> str | None:
    """ARIS BASE_REPO: clone the given repository into base_repo/ before implementing; an
    existing base_repo/ is kept as it is (it may hold the person's work). Returns a problem."""
    import subprocess

    url = getattr(project.settings, "base_repo", False)
    dest = project.path / "base_repo"
    if not url or url is True or dest.exists():
        return None
    try:
        out = subprocess.run(["git", "clone", "--depth", "1", "--", str(url), str(dest)],
                             capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot clone base_repo {url}: {exc}"
    return None if out.returncode == 0 else f"cannot clone base_repo {url}: {out.stderr.strip()[-300:]}"


def run_request(project: Project, req: HookRequest) -> Any:
    """Worker-thread side: prepare the context and run the hook to completion."""
    from handlers.hook_context import prepare_context
    from handlers.hooks import HookResult, run_hook

    assert project.plan is not None
    if req.phase == "implement":
        problem = clone_base_repo(project)
        if problem:
            return HookResult("crashed", {}, [], Path("."), Path("."), problem, 0.0)
    base = project.run_dir / "hooks" / f"{req.phase}-{req.token}"
    plan_file = project.path / REFINE / "EXPERIMENT_PLAN.md"
    extra = {"findings.json": json.dumps(list(req.findings), indent=1)} if req.findings else {}
    context = prepare_context(base / "context", project.path, req.phase,
                              plan_excerpt=plan_file.read_text(encoding="utf-8", errors="replace")
                              if plan_file.is_file() else None,
                              extra_files=extra, failure_logs=[Path(p) for p in req.failure_logs])
    hooks = project.settings.hooks
    return run_hook(hook_command(project, req.phase), project=project.path, phase=req.phase,
                    milestone=req.milestone, context_dir=context, out_dir=base / "out",
                    log_path=project.run_dir / "logs" / f"hook-{req.phase}-{req.token}.log",
                    timeout_s=hooks.timeout_s, heartbeat_s=hooks.heartbeat_s)


# -- starting hook phases ---------------------------------------------------------------------
def after_parse_phase(project: Project) -> PlanState | None:
    """The first hook phase after parsing, or None to go straight to deployment."""
    if hook_command(project, "implement"):
        return P.IMPLEMENTING
    if getattr(project.settings, "code_review", True) and hook_command(project, "review"):
        return P.REVIEWING
    return None


def enter(project: Project, phase: PlanState) -> None:
    """Start the hook a phase needs, unless one is already recorded as running."""
    if pending(project) is not None:
        return
    if phase is P.IMPLEMENTING:
        findings = tuple(project.plan.data.get("review_findings", ())) if project.plan else ()
        request(project, "implement", None, findings=findings)
    elif phase is P.REVIEWING:
        request(project, "review", None)


# -- outcomes ---------------------------------------------------------------------------------
def done(project: Project, event: HookDone) -> None:
    """Apply a finished hook; a result for a request we no longer wait for is ignored."""
    hook = (project.plan.data.get("hook") or {}) if project.plan else {}
    if hook.get("token") != event.request.token:
        return
    _set_data(project, hook=None)
    result, phase = event.result, event.request.phase
    project.note(f"{phase} hook: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    if phase == "implement":
        _implemented(project, result)
    elif phase == "review":
        _reviewed(project, result)
    elif phase in ("debug", "rescue"):
        _rescued(project, event.request, result)
    elif phase == "judge":
        verdict = str(result.data.get("verdict", "")).lower() if result.status == "ok" else ""
        reason = str(result.data.get("reason") or result.reason or "no reason given")
        if verdict not in ("pass", "fail"):  # a judge that cannot say: the gate passes with a note
            project.note(f"judge gave no verdict for {event.request.milestone} ({reason}); passing with a note")
            verdict = "pass"
        judged = {**project.plan.data.get("gates_judged", {}), str(event.request.milestone): [verdict, reason]}
        _set_data(project, gates_judged=judged)
    elif phase == "audit":
        _audited(project, result)
    elif phase == "ablation_planner":
        _ablations_planned(project, event.request, result)


def _next_after_implement(project: Project) -> PlanState | None:
    if getattr(project.settings, "code_review", True) and hook_command(project, "review"):
        return P.REVIEWING
    return None


def _implemented(project: Project, result: Any) -> None:
    if result.status != "ok":
        project.set_plan(P.BLOCKED, reason=f"implement hook {result.status}: {result.reason}"[:300])
        return
    nxt = _next_after_implement(project)
    if nxt is not None:
        project.set_plan(nxt)
        enter(project, nxt)
    else:
        _set_data(project, hooks_done=True)


def _reviewed(project: Project, result: Any) -> None:
    from handlers.hooks import blocking_findings

    rounds = int(project.plan.data.get("review_round", 0)) + 1 if project.plan else 1
    _write_review(project, result, rounds)
    if result.status in ("missing", "crashed", "timeout", "bad_output"):
        project.note(f"review recorded [local-only]: {result.reason}")
        _set_data(project, hooks_done=True, review_round=rounds)
        return
    blocking = blocking_findings(result)
    if not blocking:
        _set_data(project, hooks_done=True, review_round=rounds, review_findings=[])
        return
    texts = [f"{f.get('severity')}: {f.get('file')}:{f.get('line')}: {f.get('issue')}" for f in blocking]
    if rounds >= 2 or not hook_command(project, "implement"):
        _set_data(project, review_round=rounds)
        project.set_plan(P.BLOCKED, reason=f"review: {len(blocking)} blocking finding(s): {texts[0]}"[:300])
        return
    _set_data(project, review_round=rounds, review_findings=texts)
    project.set_plan(P.IMPLEMENTING)
    enter(project, P.IMPLEMENTING)


def _write_review(project: Project, result: Any, round_no: int) -> None:
    from handlers.versioning import append_text

    lines = [f"\n## Round {round_no} — {time.strftime('%Y-%m-%d %H:%M')}", ""]
    if result.status != "ok":
        lines.append(f"[local-only] reviewer unavailable: {result.status}: {result.reason}")
    else:
        lines += ["| Severity | File:line | Issue | Fix | Status |", "|---|---|---|---|---|"]
        for f in result.findings:
            cells = [str(f.get("severity", "")), f"{f.get('file', '')}:{f.get('line', '')}", str(f.get("issue", "")),
                     str(f.get("fix", "")), "open"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    path = project.path / REFINE / "EXPERIMENT_CODE_REVIEW.md"
    if not path.exists():
        lines.insert(0, "# Experiment Code Review\n")
    append_text(path, "\n".join(lines) + "\n")


# -- sanity: debug after attempt 1, rescue after attempt 2, stop after 3 ----------------------
def sanity_failed(project: Project, milestone: str | None, failed: list[Any]) -> bool:
    """Ask for the debug or rescue hook; False when there is none left and the plan must stop."""
    assert project.plan is not None
    attempt = int(project.plan.data.get("sanity_attempt", 1))
    phase = {1: "debug", 2: "rescue"}.get(attempt)
    if attempt >= MAX_SANITY_ATTEMPTS or phase is None or not hook_command(project, phase):
        return False
    if pending(project) is None:
        logs = tuple(_log_of(j) for j in failed if j.handle)
        request(project, phase, milestone, failure_logs=logs)
    return True


def deploy_failed(project: Project, milestone: str | None, failed: list[Any]) -> bool:
    """F25: with rescue_on_failure, a failed milestone gets one rescue round before it blocks."""
    assert project.plan is not None
    if not getattr(project.settings, "rescue_on_failure", True) or not hook_command(project, "rescue"):
        return False
    rescued = project.plan.data.get("rescued", [])
    if milestone in rescued:
        return pending(project) == "rescue"
    if pending(project) is None:
        _set_data(project, rescued=[*rescued, milestone])
        request(project, "rescue", milestone, failure_logs=tuple(_log_of(j) for j in failed if j.handle))
    return True


def _log_of(job: Any) -> str:
    from backends.base import Handle
    return Handle.from_json(job.handle).log_path


def _rescued(project: Project, req: HookRequest, result: Any) -> None:
    from daemon.steer import requeue

    assert project.plan is not None
    if result.status != "ok":
        project.set_plan(P.BLOCKED, reason=f"sanity failed; {req.phase} hook {result.status}: {result.reason}"[:300])
        return
    attempt = int(project.plan.data.get("sanity_attempt", 1))
    if project.plan.state is P.SANITY:
        attempt += 1
        _set_data(project, sanity_attempt=attempt)
    for job in list(project.jobs.values()):
        if job.milestone == req.milestone and job.state in (J.FAILED, J.STUCK, J.BLOCKED):
            requeue(project, job)
    project.note(f"{'sanity attempt ' + str(attempt) if project.plan.state is P.SANITY else 'retrying ' + str(req.milestone)}"
                 f" after the {req.phase} hook")


# -- ablation planning (F94): after a positive main milestone ------------------------------------
def plan_ablations(project: Project, milestone: str | None) -> bool:
    """Ask the ablation planner once, after the main milestone; False when it does not apply."""
    assert project.plan is not None
    if not hook_command(project, "ablation_planner") or project.plan.data.get("ablations_planned"):
        return False
    _set_data(project, ablations_planned=True)
    request(project, "ablation_planner", milestone)
    return True


def _ablations_planned(project: Project, req: HookRequest, result: Any) -> None:
    from datetime import datetime

    from daemon import pipeline
    from daemon.steer import flow_of
    from handlers.ablation import apply_ablations

    notes: list[str] = []
    new: list[str] = []
    if result.status == "ok":
        new = apply_ablations(project.path, result.out_dir, datetime.now(), notes=notes)
    else:
        notes.append(f"ablation planner {result.status}: {result.reason}")
    for line in notes:
        project.note(f"ablation planning: {line}")
    project.note(f"ablation planning added {len(new)} run(s): {', '.join(new) or 'none'}")
    move = pipeline.next_milestone(req.milestone, flow_of(project))
    project.set_plan(move.dst, milestone=move.milestone)


# -- integrity audit (F103): advisory, never blocks ------------------------------------------------
def audit_pending(project: Project) -> bool:
    """True while the audit hook must run or is running before the final reports."""
    assert project.plan is not None
    if not hook_command(project, "audit") or project.plan.data.get("audit_done"):
        return False
    if pending(project) is None:
        request(project, "audit", None)
    return True


def _audited(project: Project, result: Any) -> None:
    from datetime import datetime

    from handlers.audit import audit_line, publish_audit, read_audit

    line = f"Integrity audit: not available ({result.status}: {result.reason})"
    if result.status == "ok":
        publish_audit(result.out_dir, project.path, datetime.now(), project.path / "MANIFEST.md")
        line = audit_line(read_audit(project.path))
    project.note(line)
    _set_data(project, audit_done=True, audit=line)
