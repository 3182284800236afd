"""`expbridge validate [PROJECT|FILE] [--json] [--preflight]`: show what expbridge understood.

It reads the plan, the tracker and the queue manifest with the same readers the daemon uses,
ties them together (milestone -> tracker runs -> manifest jobs) and prints what was understood,
then every warning and error as `file:line: severity: what was expected`. Exit 0 when the inputs
are usable (no errors), 1 otherwise. Nothing is written.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.diagnostics import Diagnostic, has_errors
from handlers.plan import Plan, read_plan, summary_line

PLAN, TRACKER, MANIFEST = "EXPERIMENT_PLAN.md", "EXPERIMENT_TRACKER.md", "EXPERIMENT_QUEUE.yaml"
_CLOSED = {"DONE", "SKIPPED"}


@dataclass
class _Inputs:
    project: Path
    plan: Path | None = None
    tracker: Path | None = None
    manifest: Path | None = None
    diags: list[Diagnostic] = field(default_factory=list)


def _shown(path: str | Path) -> str:
    """A path as the user will click it: relative to the working directory when under it."""
    text = str(path)
    if not text:
        return text
    absolute = Path(text).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return text


def _resolve(target: Path) -> _Inputs:
    """Which files to read: a project's three files, or the one file named."""
    target = target.absolute()
    if target.is_dir():
        project = target.parent if target.name == "refine-logs" else target
        refine = project / "refine-logs"
        found = _Inputs(project)
        for attr, name, severity, why in (
                ("plan", PLAN, "error", "expected the plan written by /experiment-plan"),
                ("tracker", TRACKER, "warning", "runs will come from the manifest only"),
                ("manifest", MANIFEST, "warning", "commands will come from the tracker's Command column or the implement hook")):
            path = refine / name
            if path.is_file():
                setattr(found, attr, path)
            else:
                found.diags.append(Diagnostic(str(path), 0, severity, f"not found; {why}"))
        return found
    project = target.parent.parent if target.parent.name == "refine-logs" else target.parent
    found = _Inputs(project)
    kind = _kind(target)
    if not target.is_file():
        found.diags.append(Diagnostic(str(target), 0, "error", "not found; expected a project directory or a plan, tracker or manifest file"))
    elif kind is None:
        found.diags.append(Diagnostic(str(target), 0, "error", "unknown file kind; expected *PLAN*.md, *TRACKER*.md or a .yaml/.yml manifest"))
    else:
        setattr(found, kind, target)
    return found


def _kind(path: Path) -> str | None:
    name = path.name.upper()
    if name.endswith((".YAML", ".YML")):
        return "manifest"
    if "TRACKER" in name:
        return "tracker"
    if "PLAN" in name or name.endswith(".MD"):
        return "plan"
    return None


# ---------------------------------------------------------------- reading

def _read_tracker(path: Path, diags: list[Diagnostic]) -> Any:
    from handlers.tracker import read_tracker

    try:
        tracker = read_tracker(path)
    except OSError as exc:
        diags.append(Diagnostic(str(path), 0, "error", f"cannot read the tracker: {exc.strerror or exc}"))
        return None
    diags.extend(tracker.diagnostics)
    return tracker


def _read_manifest(path: Path, project: Path, diags: list[Diagnostic]) -> tuple[Any, list[Any]]:
    from handlers.manifest import all_jobs, load_manifest

    manifest, found = load_manifest(path, project)
    diags.extend(found)
    return manifest, (all_jobs(manifest) if manifest is not None else [])


def build_report(target: Path, preflight: bool = False) -> dict:
    """Everything validate knows about a project or file, as one JSON-ready dict."""
    inputs = _resolve(Path(target))
    diags = list(inputs.diags)
    plan: Plan | None = None
    if inputs.plan:
        plan, found = read_plan(inputs.plan)
        diags.extend(found)
    tracker = _read_tracker(inputs.tracker, diags) if inputs.tracker else None
    manifest, jobs = _read_manifest(inputs.manifest, inputs.project, diags) if inputs.manifest else (None, [])
    rows = list(tracker.rows) if tracker is not None else []
    diags.extend(_cross_check(plan, tracker, rows, jobs, inputs))
    report: dict[str, Any] = {
        "target": _shown(Path(target)),
        "project": _shown(inputs.project) or ".",
        "files": {k: _shown(v) if v else None for k, v in
                  (("plan", inputs.plan), ("tracker", inputs.tracker), ("manifest", inputs.manifest))},
        "summary": summary_line(plan) if plan is not None else None,
        "plan": _plan_view(plan) if plan is not None else None,
        "milestones": _milestone_view(plan, rows, jobs),
        "runs": [_run_view(r, tracker.file, jobs) for r in rows] if tracker is not None else [],
        "jobs": [_job_view(j, manifest.file) for j in jobs] if manifest is not None else [],
        "manifest": _manifest_view(manifest),
    }
    if preflight:
        report["preflight"] = _preflight(jobs)
    report["diagnostics"] = [{**d.as_dict(), "file": _shown(d.file)} for d in diags]
    report["errors"] = sum(1 for d in diags if d.severity == "error")
    report["warnings"] = sum(1 for d in diags if d.severity == "warning")
    report["usable"] = not has_errors(diags)
    return report


# ---------------------------------------------------------------- views

def _plan_view(plan: Plan) -> dict[str, Any]:
    return {
        "file": _shown(plan.file), "title": plan.title, "shape": plan.shape, "language": plan.language,
        "date": plan.date, "problem": plan.problem, "method_thesis": plan.method_thesis,
        "claims": [{"id": c.id, "blocks": c.blocks, "line": c.line} for c in plan.claims],
        "blocks": [{"id": b.id, "number": b.number, "name": b.name, "priority": b.priority,
                    "fields": sorted(b.fields), "extension": b.extension, "line": b.line} for b in plan.blocks],
        "budget": plan.budget.model_dump(),
        "risks": len(plan.risks),
    }


def _same_milestone(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and a.strip().upper() == b.strip().upper()


def _row_milestone(row: Any, known: set[str]) -> str | None:
    """The plan milestone a tracker row belongs to: its Milestone cell, or else a run id that
    starts with a milestone id ("M1a" -> M1, seen in trackers that use milestones as run ids)."""
    value = (row.milestone or "").strip()
    if value.upper() in known:
        return value.upper()
    match = re.match(r"^(M\d+)(?!\d)", row.run_id or "", re.I)
    if match and match.group(1).upper() in known:
        return match.group(1).upper()
    return value or None


def _milestone_view(plan: Plan | None, rows: list[Any], jobs: list[Any]) -> list[dict[str, Any]]:
    if plan is None:
        return []
    view = []
    known = {m.id.upper() for m in plan.milestones}
    for m in plan.milestones:
        runs = list(dict.fromkeys(r.run_id for r in rows if _same_milestone(_row_milestone(r, known), m.id)))
        count = sum(1 for j in jobs if (j.run in runs) or _same_milestone(j.milestone, m.id))
        view.append({"id": m.id, "name": m.name, "stage": m.stage, "priority": m.priority,
                     "cost_hours": m.cost_hours, "decision_gate": m.decision_gate, "line": m.line,
                     "runs": runs, "jobs": count})
    return view


def _run_view(row: Any, file: str, jobs: list[Any]) -> dict[str, Any]:
    return {"run_id": row.run_id, "status_raw": row.status_raw, "status": row.status,
            "milestone": row.milestone, "priority": row.priority, "command": row.command,
            "file": _shown(file), "line": row.line, "table": row.table, "ragged": row.ragged,
            "jobs": [j.id for j in jobs if j.run == row.run_id]}


def _job_view(job: Any, file: str) -> dict[str, Any]:
    return {"id": job.id, "phase": job.phase, "run": job.run, "milestone": job.milestone,
            "cmd": job.cmd, "cwd": _shown(job.cwd), "est_hours": job.est_hours,
            "depends_on": list(job.depends_on), "expected_output": list(job.expected_output),
            "file": _shown(file), "line": job.line}


def _manifest_view(manifest: Any) -> dict[str, Any] | None:
    if manifest is None:
        return None
    return {"file": _shown(manifest.file), "project": manifest.project,
            "max_parallel": manifest.max_parallel, "gpus": list(manifest.gpus) if manifest.gpus is not None else None,
            "phases": [{"name": p.name, "jobs": len(p.jobs), "depends_on": list(p.depends_on)} for p in manifest.phases]}


# ---------------------------------------------------------------- cross-checks

def _cross_check(plan: Plan | None, tracker: Any, rows: list[Any], jobs: list[Any],
                 inputs: _Inputs) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    if plan is not None and plan.milestones and tracker is not None:
        known = {m.id.upper() for m in plan.milestones}
        reported: set[str] = set()
        for row in rows:
            value = _row_milestone(row, known) or ""
            if value and value.upper() not in known and value.upper() not in reported:
                reported.add(value.upper())
                diags.append(Diagnostic(tracker.file, row.line, "warning",
                                        f"run {row.run_id} is in milestone {value!r}, which the plan's run order does not define ({', '.join(m.id for m in plan.milestones)})"))
    run_ids = {r.run_id for r in rows}
    if tracker is not None:
        for job in jobs:
            if job.run and job.run not in run_ids:
                diags.append(Diagnostic(inputs.manifest and str(inputs.manifest) or "", job.line, "warning",
                                        f"job {job.id} has run: {job.run}, but no tracker row has that run id; its status will not be written anywhere"))
    with_jobs = {j.run for j in jobs if j.run}
    bare = [r for r in rows if r.run_id and r.status not in _CLOSED and not r.command and r.run_id not in with_jobs]
    if bare:
        shown = ", ".join(r.run_id for r in bare[:8]) + (f" and {len(bare) - 8} more" if len(bare) > 8 else "")
        diags.append(Diagnostic(tracker.file, bare[0].line, "warning",
                                f"{len(bare)} open run(s) have no command ({shown}): no Command cell and no manifest job with their run id; "
                                "they go to the implement hook, or are BLOCKED with 'eb: no command' when there is none"))
    if inputs.plan and inputs.tracker is None and inputs.manifest is None and inputs.project.joinpath("refine-logs").is_dir():
        diags.append(Diagnostic(str(inputs.plan), 0, "warning", "no tracker and no manifest: nothing can run until the implement hook writes commands"))
    return diags


def _preflight(jobs: list[Any]) -> dict[str, Any]:
    """The checks that need no backend. Reachability, conda and free GPUs are the backend's
    preflight, run by the daemon core before the first launch; they are listed, not faked."""
    from handlers.manifest import unmet_preconditions

    blocked = []
    for job in jobs:
        reasons = list(unmet_preconditions(job))
        if job.cwd and not job.cwd.startswith(("~", "$")) and "@" not in job.cwd and not Path(job.cwd).is_dir():
            reasons.append(f"cwd {_shown(job.cwd)} does not exist on this machine (fine if the job runs remotely)")
        if reasons:
            blocked.append({"job": job.id, "run": job.run, "reasons": reasons})
    return {"checked": ["manifest preconditions (file_exists/dir_exists globs)", "local cwd exists"],
            "not_checked": ["backend reachability (ssh/slurm/vast/modal)", "conda environment",
                            "free GPUs >= max_parallel"],
            "note": "the backend checks run in `expbridge run`/the daemon before the first launch (F63)",
            "blocked": blocked}


# ---------------------------------------------------------------- text

def render_text(report: dict) -> str:
    out = [f"project: {report['project']}"]
    for kind, path in report["files"].items():
        out.append(f"  {kind}: {path or '(none)'}")
    if report.get("summary"):
        out.append("")
        out.append(report["summary"])
    out += _render_plan(report)
    out += _render_runs(report)
    if "preflight" in report:
        out += _render_preflight(report["preflight"])
    if report["diagnostics"]:
        out.append("")
        out += [_diag_line(d) for d in report["diagnostics"]]
    out.append("")
    verdict = "usable" if report["usable"] else "NOT usable"
    out.append(f"{verdict}: {report['errors']} error(s), {report['warnings']} warning(s)")
    return "\n".join(out) + "\n"


def _diag_line(d: dict) -> str:
    where = f"{d['file']}:{d['line']}" if d["line"] else d["file"]
    return f"{where}: {d['severity']}: {d['message']}"


def _render_plan(report: dict) -> list[str]:
    plan = report.get("plan")
    if not plan:
        return []
    out = [f"plan: {plan['title'] or '(untitled)'} [shape {plan['shape']}, {plan['language']}]",
           f"  claims: {', '.join(c['id'] for c in plan['claims']) or '(none)'}",
           f"  blocks: {len(plan['blocks'])}"]
    for b in plan["blocks"]:
        out.append(f"    {b['id']}: {b['name'][:60]} [{b['priority'] or 'no priority'}] (line {b['line']})")
    budget = plan["budget"]
    hours = budget["total_gpu_hours"]
    out.append(f"  budget: {'unknown' if hours is None else f'{hours:g}'} GPU-hours"
               + (f" (line {budget['line']})" if budget["line"] else ""))
    out.append(f"  milestones: {len(report['milestones'])}")
    for m in report["milestones"]:
        cost = f", ~{_hours(m['cost_hours'])}" if m["cost_hours"] is not None else ""
        out.append(f"    {m['id']} {m['name'][:50]} [{m['stage']}{cost}] runs: {len(m['runs'])}, jobs: {m['jobs']} (line {m['line']})")
    return out


def _hours(hours: float) -> str:
    return f"{round(hours * 60)} min" if 0 < hours < 1 else f"{hours:g}h"


def _render_runs(report: dict) -> list[str]:
    out = []
    if report["runs"]:
        out.append(f"runs: {len(report['runs'])}")
        for r in report["runs"]:
            status = r["status"] or "?"
            out.append(f"  {r['run_id']:<12} {status:<8} {r['status_raw'][:30]!r:<34} milestone {r['milestone'] or '-'}, "
                       f"jobs: {len(r['jobs'])} ({r['file']}:{r['line']})")
    if report["jobs"]:
        out.append(f"jobs: {len(report['jobs'])}")
        for j in report["jobs"]:
            out.append(f"  {j['id']:<16} phase {j['phase']}, run {j['run'] or '-'}: {j['cmd'][:60]} ({j['file']}:{j['line']})")
    return out


def _render_preflight(pre: dict) -> list[str]:
    out = ["", "preflight (partial): checked " + "; ".join(pre["checked"]),
           "  not checked here: " + "; ".join(pre["not_checked"]) + f" — {pre['note']}"]
    if not pre["blocked"]:
        out.append("  no job is blocked by the checks above")
    for b in pre["blocked"]:
        out.append(f"  blocked {b['job']} (run {b['run'] or '-'}): " + "; ".join(b["reasons"]))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="expbridge validate", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default=".", help="project directory (with refine-logs/) or one plan/tracker/manifest file")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--preflight", action="store_true", help="also report jobs whose preconditions do not hold")
    args = parser.parse_args(argv)
    report = build_report(Path(args.target), preflight=args.preflight)
    if args.json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 0 if report["usable"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
