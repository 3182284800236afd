"""Reader for `refine-logs/EXPERIMENT_QUEUE.yaml`, the ARIS experiment-queue manifest.

Accepts the grid-spec YAML and the manifest JSON of ARIS §2.8 with every key its docs show,
fixes the reference's drops (§3.13 item 9), and adds our `run:`, `est_hours`, `gate:`,
`success:` and `milestone:`. Every problem becomes a Diagnostic with the file line, read from
ruamel's round-trip nodes; nothing here raises on user input.
"""
from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from backends.base import SAFE_ID
from handlers import manifest_expand as mx
from handlers.diagnostics import Diagnostic
from handlers.manifest_read import CHECKABLE, RawPre, Reader, Spec, load_tree

IMPLICIT_PHASE = "main"
TOP_KEYS = frozenset({
    "project", "cwd", "conda", "conda_hook", "ssh", "default_cmd", "gpus", "max_parallel",
    "gpu_free_threshold_mib", "oom_retry", "preconditions", "jobs", "grid", "template", "phases",
    "analyze_on_complete", "milestone", "gate", "_path"})
PHASE_KEYS = frozenset({"name", "depends_on", "grid", "template", "jobs", "gate", "milestone",
                        "cwd", "preconditions"})


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    delay: float = 120
    max_attempts: int = 3


class Precondition(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: str
    path: str  # a glob; relative ones are relative to the job's cwd
    line: int


class JobDef(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    phase: str
    cmd: str
    cwd: str
    run: str | None = None
    milestone: str | None = None
    expected_output: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    est_hours: float | None = None
    success: str | dict | None = None
    gate: str | dict | None = None
    preconditions: tuple[Precondition, ...] = ()
    line: int = 0


class PhaseDef(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    depends_on: tuple[str, ...] = ()
    jobs: tuple[JobDef, ...] = ()
    gate: str | dict | None = None
    milestone: str | None = None
    line: int = 0


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)
    file: str
    project: str
    cwd: str
    conda: str | None = None
    conda_hook: str | None = None
    ssh: str | None = None
    default_cmd: str | None = None
    gpus: tuple[int, ...] | None = None
    max_parallel: int | None = None
    gpu_free_threshold_mib: int = 500
    oom_retry: RetryPolicy = RetryPolicy()
    preconditions: tuple[Precondition, ...] = ()
    phases: tuple[PhaseDef, ...] = ()
    analyze_on_complete: bool = False


@dataclass
class _Base:
    """Manifest-level settings every job inherits."""

    cwd: str
    remote: bool
    default_cmd: str | None
    preconditions: list[RawPre] = field(default_factory=list)
    milestone: str | None = None
    gate: str | dict | None = None


# ---------------------------------------------------------------------------------- public API

def load_manifest(path: Path, project_dir: Path) -> tuple[Manifest | None, list[Diagnostic]]:
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        return None, [Diagnostic(str(path), 0, "error", f"cannot read the manifest: {e.strerror or e}")]
    return parse_manifest(text, str(path), project_dir)


def parse_manifest(text: str, file: str, project_dir: Path) -> tuple[Manifest | None, list[Diagnostic]]:
    """Never raises: every problem is a Diagnostic; None only when nothing usable was found."""
    r = Reader(file)
    try:
        manifest = _parse(text, r, project_dir)
    except Exception as e:  # a reader bug must not take the daemon down; the fuzz test hunts these
        r.error(0, f"internal error reading the manifest ({type(e).__name__}: {e})")
        manifest = None
    return manifest, r.result()


def all_jobs(m: Manifest) -> list[JobDef]:
    return [job for phase in m.phases for job in phase.jobs]


def output_globs(job: JobDef) -> list[str]:
    """The job's expected outputs as absolute globs (relative ones are under the job's cwd)."""
    return [_under(p, job.cwd) for p in job.expected_output]


def unmet_preconditions(job: JobDef) -> list[str]:
    """Why the job may not start yet, one reason per precondition that does not hold.

    Checks this machine's files; for an ssh manifest the caller runs the same globs on the server.
    """
    reasons = []
    for pre in job.preconditions:
        if pre.type not in CHECKABLE:
            reasons.append(f"precondition type {pre.type!r} (manifest line {pre.line}) cannot be "
                           f"checked; expected one of {', '.join(CHECKABLE)}")
            continue
        pattern = os.path.expanduser(_under(pre.path, job.cwd))
        found = glob.glob(pattern, recursive=True)
        if pre.type == "dir_exists":
            found = [f for f in found if os.path.isdir(f)]
        if not found:
            reasons.append(f"{pre.type}: nothing matches {pattern} (manifest line {pre.line})")
    return reasons


# ---------------------------------------------------------------------------------- top level

def _parse(text: str, r: Reader, project_dir: Path) -> Manifest | None:
    root = load_tree(text, r)
    if root is None:
        return None
    if not r.is_map(root):
        r.error(r.node_line(root) or 1, "expected a mapping of manifest keys (project, cwd, phases "
                f"or jobs, ...), got {r.kind_name(root)}")
        return None
    r.unknown_keys(root, TOP_KEYS, "manifest")
    ssh = r.get(root, "ssh", "str")
    base = _Base(cwd=_resolve_cwd(r, root, project_dir, bool(ssh)), remote=bool(ssh),
                 default_cmd=r.get(root, "default_cmd", "str"),
                 preconditions=r.preconditions(root), milestone=r.get(root, "milestone", "str"),
                 gate=r.get(root, "gate", "gate"))
    phases = _read_phases(r, root, base)
    _check_graph(r, phases)
    _check_ids(r, phases)
    if not any(p.jobs for p in phases):
        r.error(r.node_line(root) or 1, "the manifest declares no jobs; expected top-level `jobs`, "
                "`grid` + `template`, or `phases` with `jobs` or `grid` + `template`")
    hook = r.get(root, "conda_hook", "str")
    return Manifest(
        file=r.file, project=r.get(root, "project", "str") or project_dir.name or "unknown",
        cwd=base.cwd, conda=r.get(root, "conda", "str"), ssh=ssh, default_cmd=base.default_cmd,
        conda_hook=mx.wrap_conda_hook(hook) if hook and hook.strip() else None,
        gpus=_gpus(r, root), max_parallel=r.get(root, "max_parallel", "posint"),
        gpu_free_threshold_mib=_default(r.get(root, "gpu_free_threshold_mib", "natural"), 500),
        oom_retry=_retry(r, root), analyze_on_complete=bool(r.get(root, "analyze_on_complete", "bool")),
        preconditions=tuple(Precondition(type=p.type, path=p.path, line=p.line) for p in base.preconditions),
        phases=tuple(phases))


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _resolve_cwd(r: Reader, root: Any, project_dir: Path, remote: bool) -> str:
    cwd = r.get(root, "cwd", "str")
    if not remote:
        return _under(cwd or ".", str(project_dir.resolve()), keep_home=False)
    # With ssh the scheduler runs on the server, so ARIS reads a relative cwd from the remote home.
    if not cwd:
        r.warn(r.node_line(root) or 1, "ssh is set but cwd is not; jobs run in the remote home ~")
    cwd = cwd or "."
    return cwd if cwd.startswith(("/", "~")) else posixpath.normpath(posixpath.join("~", cwd))


def _under(path: str, base: str, keep_home: bool = True) -> str:
    """Join a relative path onto base; `~` stays for the target host's shell unless local."""
    if path.startswith("~"):
        return path if keep_home else os.path.expanduser(path)
    return posixpath.normpath(posixpath.join(base, path))


def _gpus(r: Reader, root: Any) -> tuple[int, ...] | None:
    value = r.get(root, "gpus", "gpus")
    return tuple(value) if value is not None else None


def _retry(r: Reader, root: Any) -> RetryPolicy:
    node = r.get_node(root, "oom_retry", "map")
    if node is None:
        return RetryPolicy()
    r.unknown_keys(node, frozenset({"delay", "max_attempts"}), "oom_retry")
    return RetryPolicy(delay=_default(r.get(node, "delay", "nonneg", "oom_retry."), 120),
                       max_attempts=_default(r.get(node, "max_attempts", "posint", "oom_retry."), 3))


# ---------------------------------------------------------------------------------- phases

def _read_phases(r: Reader, root: Any, base: _Base) -> list[PhaseDef]:
    phases = []
    if any(root.get(k) is not None for k in ("jobs", "grid", "template")):
        # ARIS loads only phases[].jobs, so a top-level `jobs` manifest ran nothing (§3.13 item 8).
        ctx = _PhaseCtx(IMPLICIT_PHASE, (), base.gate, base.milestone, base.cwd, base.preconditions, base)
        phases.append(_read_phase(r, root, ctx, r.node_line(root) or 1))
    seq = r.get_node(root, "phases", "list")
    for i, node in enumerate(seq or []):
        line = r.item_line(seq, i)
        if not r.is_map(node):
            r.error(line, f"phases[{i}]: expected a mapping with name, depends_on and jobs or grid + "
                    f"template, got {r.kind_name(node)}")
            continue
        phases.append(_read_phase(r, node, _phase_ctx(r, node, i, line, base), line))
    return phases


def _phase_ctx(r: Reader, node: Any, index: int, line: int, base: _Base) -> _PhaseCtx:
    r.unknown_keys(node, PHASE_KEYS, f"phase {index + 1}")
    name = r.get(node, "name", "str")
    if not name:
        name = f"phase{index + 1}"
        r.error(line, f"phases[{index}] has no `name`; expected a phase name (called it {name!r})")
    deps = tuple(r.get(node, "depends_on", "strlist") or ())  # a bare string is one phase (F39)
    cwd = r.get(node, "cwd", "str")
    return _PhaseCtx(
        name, deps, _default(r.get(node, "gate", "gate"), base.gate),
        r.get(node, "milestone", "str") or base.milestone,
        _under(cwd, base.cwd, keep_home=base.remote) if cwd else base.cwd,
        base.preconditions + r.preconditions(node), base)


def _read_phase(r: Reader, node: Any, ctx: _PhaseCtx, line: int) -> PhaseDef:
    jobs = []
    seq = r.get_node(node, "jobs", "list")
    for i, item in enumerate(seq or []):
        spec = r.job_spec(item, r.item_line(seq, i), f"{ctx.name}.jobs[{i}]")
        if spec is None:
            continue
        job = _make_job(r, spec, {}, spec.get("id"), ctx)
        if job:
            jobs.append(job)
    jobs.extend(_grid_jobs(r, node, ctx))
    if not jobs:
        r.warn(line, f"phase {ctx.name!r} has no jobs; expected `jobs` or `grid` + `template`")
    return PhaseDef(name=ctx.name, depends_on=ctx.deps, jobs=tuple(jobs), gate=ctx.gate,
                    milestone=ctx.milestone, line=line)


@dataclass
class _PhaseCtx:
    name: str
    deps: tuple[str, ...]
    gate: str | dict | None
    milestone: str | None
    cwd: str
    preconditions: list[RawPre]
    base: _Base


def _grid_jobs(r: Reader, node: Any, ctx: _PhaseCtx) -> list[JobDef]:
    grid = r.grid(node)
    tnode = r.get_node(node, "template", "map")
    if tnode is None:
        if grid is not None:
            r.error(r.key_line(node, "grid"), f"phase {ctx.name!r} has a `grid` but no `template`; "
                    "expected a template with cmd (and id) using ${var} placeholders")
        return []
    spec = r.job_spec(tnode, r.key_line(node, "template"), f"{ctx.name}.template")
    if spec is None:
        return []
    combos = mx.grid_combos(grid) if grid is not None else [{}]
    if "id" in spec.values:
        ids = [mx.substitute(spec["id"], c) for c in combos]
    elif grid is not None:
        # ARIS build_manifest raised KeyError here, even on its own Wave Chaining example.
        ids = mx.uniquify([mx.default_job_id(ctx.name, c) for c in combos])
    else:
        ids = [mx.safe_id_part(ctx.name) or "job"]
    return [j for c, jid in zip(combos, ids) if (j := _make_job(r, spec, c, jid, ctx))]


# ---------------------------------------------------------------------------------- one job

def _make_job(r: Reader, spec: Spec, combo: dict[str, Any], jid: Any, ctx: _PhaseCtx) -> JobDef | None:
    if jid is None or jid == "":
        r.error(spec.line, f"{spec.where}: a job needs an `id`")
        return None
    jid = mx.text_of(jid)
    args = mx.substitute(spec.get("args") or {}, combo)
    cmd = spec.get("cmd") or ctx.base.default_cmd
    if cmd is None:
        r.error(spec.line, f"job {jid!r} has no `cmd` and the manifest has no `default_cmd`; "
                "expected one of them")
        cmd = ""
    cmd = mx.join_cmd(mx.text_of(mx.substitute(cmd, combo)), args)
    outputs = [mx.text_of(mx.substitute(o, combo)) for o in
               (spec.get("expected_output") or []) + (spec.get("output_check") or [])]
    cwd = spec.get("cwd")
    cwd = _under(mx.text_of(mx.substitute(cwd, combo)), ctx.cwd, ctx.base.remote) if cwd else ctx.cwd
    pre_vars = {**{k: v for k, v in args.items() if not isinstance(v, (dict, list))}, **combo,
                "id": jid}
    return JobDef(
        id=jid, phase=ctx.name, cmd=cmd, cwd=cwd, depends_on=ctx.deps, gate=ctx.gate,
        run=_opt_text(spec, "run", combo), milestone=_opt_text(spec, "milestone", combo) or ctx.milestone,
        expected_output=tuple(dict.fromkeys(outputs)), est_hours=_est_hours(r, spec, combo),
        success=mx.substitute(spec.get("success"), combo),
        preconditions=tuple(_fill_pre(r, p, pre_vars) for p in ctx.preconditions + spec.pres),
        line=spec.line)


def _opt_text(spec: Spec, key: str, combo: dict[str, Any]) -> str | None:
    value = spec.get(key)
    return None if value is None else mx.text_of(mx.substitute(value, combo))


def _est_hours(r: Reader, spec: Spec, combo: dict[str, Any]) -> float | None:
    value = mx.substitute(spec.get("est_hours"), combo)
    if value is None:
        return None
    try:
        hours = float(value)
    except (TypeError, ValueError):
        hours = -1.0
    if not (0 <= hours < float("inf")) or isinstance(value, bool):
        r.error(spec.key_line("est_hours"), f"est_hours must be a number of hours >= 0, got {value!r}")
        return None
    return hours


def _fill_pre(r: Reader, pre: RawPre, variables: dict[str, Any]) -> Precondition:
    path, missing = mx.fill_braces(pre.path, variables)
    if missing:
        names = ", ".join("{" + m + "}" for m in dict.fromkeys(missing))
        r.warn(pre.line, f"precondition path {pre.path!r}: {names} is not a grid variable or arg "
               "of the jobs it applies to, so it is matched as the wildcard *")
    return Precondition(type=pre.type, path=path, line=pre.line)


# ---------------------------------------------------------------------------------- checks

def _check_ids(r: Reader, phases: list[PhaseDef]) -> None:
    seen: dict[str, JobDef] = {}
    for job in (j for p in phases for j in p.jobs):
        if not SAFE_ID.match(job.id):
            r.error(job.line, f"job id {job.id!r} is not usable as a session and file name; expected "
                    "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 128 "
                    "characters" + (" (is a ${var} not in the grid?)" if "${" in job.id else ""))
        first = seen.setdefault(job.id, job)
        if first is job:
            continue
        if first.line == job.line:
            r.error(job.line, f"the template gives several grid jobs the same id {job.id!r}; "
                    "expected a template.id using every grid variable")
        else:
            r.error(job.line, f"duplicate job id {job.id!r} (first defined at line {first.line}); "
                    "ids must be unique across the manifest")


def _check_graph(r: Reader, phases: list[PhaseDef]) -> None:
    by_name: dict[str, PhaseDef] = {}
    for phase in phases:
        if phase.name in by_name:
            r.error(phase.line, f"duplicate phase name {phase.name!r} (first at line "
                    f"{by_name[phase.name].line})" + (" (top-level jobs form the implicit phase "
                    f"{IMPLICIT_PHASE!r})" if phase.name == IMPLICIT_PHASE else ""))
        by_name.setdefault(phase.name, phase)
    for phase in phases:
        for dep in phase.depends_on:
            if dep not in by_name:
                r.error(phase.line, f"phase {phase.name!r} depends on {dep!r}, which is not a phase; "
                        f"expected one of {sorted(by_name)}")
    cycle = mx.find_cycle({p.name: p.depends_on for p in by_name.values()})
    if cycle:
        r.error(by_name[cycle[0]].line, f"phases depend on each other in a cycle: {' -> '.join(cycle)}")
