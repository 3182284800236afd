"""The finishing phase: results, the log, the queue summary and the ARIS Phase 6 handoff."""
from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime

from daemon.model import Job
from daemon.outputs import queue_state_doc, run_groups
from daemon.project import Project
from daemon.runs import run_status
from handlers.collect import RunMetrics, notes_text, run_metrics, verdict
from handlers.parse import REFINE


def handoff_summary(project: Project) -> str:
    """The ARIS Phase 6 summary (F95), for the log and `expbridge status`."""
    groups = run_groups(project)
    must = [r for r, js in groups.items() if any(j.must for j in js)]
    done = [r for r in must if run_status(groups[r]) == "DONE"]
    lines = [f"plan {project.plan.slug if project.plan else '?'} finished: "
             f"{len(done)}/{len(must)} must-run experiments completed"]
    for run_id, jobs in sorted(groups.items()):
        status = run_status(jobs)
        extra = notes_text(run_metrics(jobs)) if status == "DONE" else "; ".join(
            j.reason for j in jobs if j.reason)[:160]
        lines.append(f"  {run_id}: {status} {extra}".rstrip())
    lines.append("next: /auto-review-loop" if len(done) == len(must) else "next: fix the failed runs, then RETRY them")
    return "\n".join(lines)


def finish(project: Project) -> None:
    summary = handoff_summary(project)
    for line in summary.splitlines():
        project.note(line)
    assert project.plan is not None
    project.plan = replace(project.plan, data={**project.plan.data, "summary": summary})
    project.plan_changed = True
    now = datetime.now()
    write_results(project, now)
    write_summary(project)


def log_runs(project: Project, run_ids: set[str]) -> None:
    """EXPERIMENT_LOG.md: a full entry for every run that ended, failures included (F92/F93),
    plus the compact entry when `compact` is on. Each entry is written once per outcome."""
    from handlers.results_md import compact_log_entry, full_log_entry
    from handlers.versioning import append_text

    path = project.path / REFINE / "EXPERIMENT_LOG.md"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for run in run_results(project, run_ids):
        if run.status not in ("DONE", "FAILED", "STUCK"):  # type: ignore[attr-defined]
            continue
        jobs = run_groups(project)[run.run_id]  # type: ignore[attr-defined]
        marker = f"<!-- eb:{run.run_id}:{run.status}:{max(j.attempt for j in jobs)} -->"  # type: ignore[attr-defined]
        verdict = run.verdict.outcome if run.verdict else "inconclusive"  # type: ignore[attr-defined]
        text = full_log_entry(run, stamp)  # type: ignore[arg-type]
        if getattr(project.settings, "compact", False):
            text = compact_log_entry(run, stamp, verdict) + text  # type: ignore[arg-type]
        append_text(path, f"{marker}\n{text}\n---\n\n", unless_contains=marker)


def run_results(project: Project, only: set[str] | None = None) -> list[object]:
    from handlers.results_md import RunResult

    groups = run_groups(project)
    metrics: dict[str, RunMetrics] = {r: run_metrics(js) for r, js in groups.items()}
    inputs = project.inputs
    out = []
    for run_id, jobs in sorted(groups.items()):
        if only is not None and run_id not in only:
            continue
        rm = metrics[run_id]
        row = inputs.rows.get(run_id) if inputs else None
        milestone = jobs[0].milestone or "M?"
        out.append(RunResult(
            run_id=run_id, milestone=milestone,
            milestone_name=inputs.milestone_names.get(milestone, milestone) if inputs else milestone,
            system=_system(row, jobs), status=run_status(jobs), metrics=rm.metrics, key_metric=rm.key,
            verdict=verdict(rm, metrics), reproduce=jobs[0].cmd, config=jobs[0].phase,
            error="; ".join(j.reason for j in jobs if j.reason) or None, must=any(j.must for j in jobs),
            jobs=len(jobs), baseline_run=rm.criterion.baseline_run if rm.criterion else None,
            overtime=any(j.spec.get("overtime") for j in jobs)))
    return out


def _system(row: object, jobs: list[Job]) -> str:
    cells = getattr(row, "cells", {}) or {}
    for name, value in cells.items():
        if name.lower().startswith(("system", "variant", "method")) and value.strip():
            return value.strip()
    return jobs[0].phase


def write_results(project: Project, now: datetime) -> None:
    from handlers.criteria import milestone_verdict
    from handlers.results_md import render_results
    from handlers.versioning import write_output

    runs = run_results(project)
    by_milestone: dict[str, list[object]] = {}
    for run in runs:
        if run.verdict is not None:  # type: ignore[attr-defined]
            by_milestone.setdefault(run.milestone, []).append(run.verdict)  # type: ignore[attr-defined]
    verdicts = {m: milestone_verdict(vs) for m, vs in by_milestone.items()}  # type: ignore[arg-type]
    inputs = project.inputs
    audit = project.plan.data.get("audit") if project.plan else None
    text = render_results(inputs.plan_title if inputs else "", time.strftime("%Y-%m-%d"), runs, verdicts,  # type: ignore[arg-type]
                          getattr(project.settings, "language", "en"), project.path.name,
                          notes=[audit] if audit else [])
    write_output(project.path / REFINE / "EXPERIMENT_RESULTS.md", text, now, project.path / "MANIFEST.md",
                 description="results of the experiment bridge")


def write_summary(project: Project) -> None:
    from handlers.queue_state import render_summary_md
    from handlers.versioning import atomic_write

    atomic_write(project.run_dir / "summary.md", render_summary_md(queue_state_doc(project), time.time()))
