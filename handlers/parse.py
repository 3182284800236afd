"""The parse phase: read the plan, tracker and manifest of one project into job definitions.

Jobs come from the manifest (`run:` ties them to tracker rows) or from a tracker Command column.
Nothing outside these files is ever queued (F12). Milestones are ordered by the plan when it
names them, otherwise naturally (M0, M1, ..., M10).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.diagnostics import Diagnostic, has_errors

REFINE = "refine-logs"
PLAN, TRACKER, QUEUE = "EXPERIMENT_PLAN.md", "EXPERIMENT_TRACKER.md", "EXPERIMENT_QUEUE.yaml"
SANITY_WORDS = re.compile(r"sanity|smoke|冒烟|健全", re.I)


@dataclass(frozen=True)
class JobInput:
    job_id: str
    run_id: str | None
    milestone: str | None
    phase: str
    cmd: str
    cwd: str
    must: bool
    spec: dict[str, Any]


@dataclass
class Inputs:
    project: Path
    jobs: list[JobInput] = field(default_factory=list)
    milestones: list[str] = field(default_factory=list)
    milestone_names: dict[str, str] = field(default_factory=dict)
    milestone_costs: dict[str, float] = field(default_factory=dict)
    milestone_stages: dict[str, str] = field(default_factory=dict)
    sanity: str | None = None
    no_command: list[str] = field(default_factory=list)  # tracker runs with nothing to run
    rows: dict[str, Any] = field(default_factory=dict)  # run_id -> tracker Row
    diagnostics: list[Diagnostic] = field(default_factory=list)
    cap: int | None = None  # manifest max_parallel
    gpus: list[int] | None = None
    threshold_mib: int | None = None
    oom_retry: tuple[float, int] | None = None
    conda: str | None = None
    conda_hook: str | None = None
    budget_hours: float | None = None
    plan_title: str = ""
    found: list[str] = field(default_factory=list)
    plan_switch: str | None = None
    sha: str = ""  # of the plan and the manifest: a new version restarts the pipeline

    @property
    def usable(self) -> bool:
        return not has_errors(self.diagnostics) and bool(self.jobs or self.no_command)


def _natural(m: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m))


_parsed: dict[tuple[str, str], tuple[int, int, Any]] = {}


def _cached(kind: str, path: Path, read: Any) -> Any:
    """Re-parse a file only when it changed: tracker writes re-read the inputs often, and a
    10,000-job manifest must not be parsed again for each of them."""
    st = path.stat()
    key = (kind, str(path))
    hit = _parsed.get(key)
    if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
        return hit[2]
    value = read(path)
    _parsed[key] = (st.st_mtime_ns, st.st_size, value)
    return value


def load_inputs(project: Path) -> Inputs:
    from handlers.manifest import all_jobs, load_manifest
    from handlers.plan import read_plan
    from handlers.tracker import read_tracker

    inputs = Inputs(project)
    refine = project / REFINE
    plan = None
    if (refine / PLAN).is_file():
        plan, diags = _cached("plan", refine / PLAN, read_plan)
        inputs.diagnostics += diags
        inputs.found.append(PLAN)
    else:
        inputs.diagnostics.append(Diagnostic(str(refine / PLAN), 0, "error", "no experiment plan found"))
    if (refine / TRACKER).is_file():
        tracker = read_tracker(refine / TRACKER)
        inputs.diagnostics += tracker.diagnostics
        inputs.rows = {r.run_id: r for r in tracker.rows}
        inputs.plan_switch = tracker.plan_switch
        inputs.found.append(TRACKER)
    manifest = None
    qpath = next((refine / n for n in (QUEUE, "EXPERIMENT_QUEUE.yml") if (refine / n).is_file()), None)
    if qpath is not None:
        manifest, diags = _cached("manifest", qpath, lambda p: load_manifest(p, project))
        inputs.diagnostics += diags
        inputs.found.append(qpath.name)
    if plan is not None:
        _from_plan(inputs, plan)
    if manifest is not None:
        _from_manifest(inputs, manifest, all_jobs(manifest))
    _from_tracker(inputs)
    _order_milestones(inputs)
    inputs.sha = _content_sha(refine / PLAN, qpath)
    return inputs


def _content_sha(*paths: Path | None) -> str:
    import hashlib
    h = hashlib.sha256()
    for path in paths:
        if path is not None and path.is_file():
            h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _from_plan(inputs: Inputs, plan: Any) -> None:
    inputs.plan_title = plan.title or ""
    inputs.budget_hours = plan.budget.total_gpu_hours if plan.budget else None
    for m in plan.milestones:
        inputs.milestones.append(m.id)
        inputs.milestone_names[m.id] = m.name or m.id
        inputs.milestone_stages[m.id] = m.stage
        if m.cost_hours:
            inputs.milestone_costs[m.id] = m.cost_hours
        if inputs.sanity is None and (m.stage == "sanity" or SANITY_WORDS.search(m.name or "")):
            inputs.sanity = m.id


def _from_manifest(inputs: Inputs, manifest: Any, jobs: list[Any]) -> None:
    inputs.cap = manifest.max_parallel
    inputs.gpus = list(manifest.gpus) if manifest.gpus is not None else None
    inputs.threshold_mib = manifest.gpu_free_threshold_mib
    inputs.oom_retry = (manifest.oom_retry.delay, manifest.oom_retry.max_attempts)
    inputs.conda, inputs.conda_hook = manifest.conda, manifest.conda_hook
    for jd in jobs:
        row = inputs.rows.get(jd.run) if jd.run else None
        milestone = jd.milestone or (row.milestone if row is not None else None)
        spec = {
            "expected_output": list(jd.expected_output), "depends_on": list(jd.depends_on),
            "est_hours": jd.est_hours, "success": jd.success, "gate": jd.gate,
            "preconditions": [p.model_dump() for p in jd.preconditions], "line": jd.line,
        }
        must = not (row is not None and row.priority == "nice")
        inputs.jobs.append(JobInput(jd.id, jd.run, milestone, jd.phase, jd.cmd, jd.cwd, must, spec))


def _from_tracker(inputs: Inputs) -> None:
    covered = {j.run_id for j in inputs.jobs if j.run_id}
    from backends.base import SAFE_ID

    for run_id, row in inputs.rows.items():
        if run_id in covered:
            continue
        if row.command and SAFE_ID.match(run_id):
            spec = {"expected_output": [], "depends_on": [], "line": row.line}
            inputs.jobs.append(JobInput(run_id, run_id, row.milestone, row.milestone or "tracker",
                                        row.command, str(inputs.project), row.priority != "nice", spec))
        else:
            inputs.no_command.append(run_id)


def _order_milestones(inputs: Inputs) -> None:
    seen = list(dict.fromkeys(inputs.milestones))
    extra = sorted({j.milestone for j in inputs.jobs if j.milestone and j.milestone not in seen}, key=_natural)
    inputs.milestones = seen + extra
    if inputs.sanity is None and inputs.milestones and inputs.milestones[0] in ("M0",):
        inputs.sanity = inputs.milestones[0]
