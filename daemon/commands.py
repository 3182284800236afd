"""What each `expbridge` subcommand does. Read commands open SQLite directly; `run` and `daemon`
drive the same Core; tracker verbs edit the Status cell, the one control path people use too."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from daemon.errors import ConfigError, ExpbridgeError, InputError
from daemon.model import JobState, PlanState

VERB_WORD = {"pause": "PAUSED", "resume": "TODO", "skip": "SKIPPED", "retry": "RETRY"}
TERMINAL = (PlanState.DONE, PlanState.BLOCKED, PlanState.FAILED)


def dispatch(args: Any) -> int:
    if args.cmd in ("run", "daemon"):
        from daemon.log import setup_logging
        config = _config(args)
        setup_logging(config.log_level if config else "info", config.log_format if config else "auto")
    if args.cmd == "validate":
        from handlers.validate import main as validate_main
        return validate_main(args.rest)
    if args.cmd == "tracker":
        from handlers.tracker_cli import main as tracker_main
        return tracker_main(args.rest)
    table: dict[str, Callable[[Any], int]] = {
        "run": cmd_run, "daemon": cmd_daemon, "status": cmd_status, "logs": cmd_logs,
        "wait": cmd_wait, "approve": cmd_approve, "hosts": cmd_hosts, "report": cmd_report,
        "pause": cmd_verb, "resume": cmd_verb, "skip": cmd_verb, "retry": cmd_verb,
    }
    return table[args.cmd](args)


# -- configuration ----------------------------------------------------------------------------
def _config(args: Any) -> Any:
    from daemon.config import load_config
    return load_config(Path(args.config)) if getattr(args, "config", None) else None


def _state_dir(args: Any, config: Any) -> Path:
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    from daemon.config import default_state_dir
    return default_state_dir(config)


def _flag_overrides(args: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if getattr(args, "backend", None):
        out["backend"] = args.backend
    return out


def settings_for(args: Any, config: Any, project: Path, default_backend: str | None) -> Any:
    from daemon.config import parse_override, resolve_settings
    overrides = dict(parse_override(o) for o in getattr(args, "overrides", []) or [])
    overrides.update(_flag_overrides(args))
    settings = resolve_settings(config, project, overrides)
    if settings.backend is None and default_backend is not None:
        settings = settings.model_copy(update={"backend": default_backend})
    return _apply_backend_flags(args, settings)


def _apply_backend_flags(args: Any, settings: Any) -> Any:
    if getattr(args, "hosts", None):
        from pydantic import ValidationError

        from daemon.config import SshHost
        try:
            hosts = [SshHost(alias=a.strip()) for a in args.hosts.split(",") if a.strip()]
        except ValidationError as exc:
            raise ConfigError(f"--hosts {args.hosts!r}: {exc.errors()[0]['msg']}") from None
        ssh = settings.ssh.model_copy(update={"hosts": hosts, "ssh_config": args.ssh_config or settings.ssh.ssh_config})
        settings = settings.model_copy(update={"ssh": ssh})
    if getattr(args, "partition", None) or getattr(args, "slurm_host", None):
        slurm = settings.slurm.model_copy(update={k: v for k, v in (("partition", args.partition),
                                                                      ("login_host", args.slurm_host)) if v})
        settings = settings.model_copy(update={"slurm": slurm})
    return settings


def _backend_maker(settings_backend_default: str | None = None) -> Callable[..., Any]:
    from backends.registry import make_backend

    def make(settings: Any, path: Path, on_exit: Callable[..., None]) -> Any:
        name = settings.backend or settings_backend_default
        if name is None:
            from backends.fake import FakeBackend  # never launches: the plan blocks on "no backend"
            return FakeBackend(n_slots=0)
        backend = make_backend(name, settings, path, on_exit)
        backend.preflight()
        return backend
    return make


# -- run and daemon ---------------------------------------------------------------------------
def _printer(tty: bool) -> Callable[[str, str], None]:
    def show(project: str, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} {Path(project).name}: {line}" if tty else f"{stamp} {line}", flush=True)
    return show


def _install_signals(core: Any, on_hup: Callable[[], None] | None = None) -> None:
    from daemon.events import Stop

    def stop(signum: int, _frame: Any) -> None:
        core.post(Stop(signal.Signals(signum).name))
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if on_hup is not None:
        signal.signal(signal.SIGHUP, lambda s, f: on_hup())


def cmd_run(args: Any) -> int:
    from daemon.core import Core

    project = Path(args.project).resolve()
    if not (project / "refine-logs").is_dir():
        raise InputError(f"{project}: no refine-logs/ folder (expected refine-logs/EXPERIMENT_PLAN.md)")
    config = _config(args)
    settings = settings_for(args, config, project, default_backend=None if args.config else "local")
    state_dir = _state_dir(args, config)
    core = Core(state_dir, [(project, settings)], _backend_maker(), once=True,
                tick_s=min(1.0, settings.poll_interval_s), on_line=_printer(sys.stdout.isatty()))
    _install_signals(core)
    print(f"expbridge: running {project} on {settings.backend} (state in {state_dir})", flush=True)
    core.run()
    return _run_result(state_dir, str(project))


def _run_result(state_dir: Path, key: str) -> int:
    from daemon.runs import run_status
    from daemon.store import Store

    store = Store(state_dir / "state.db")
    try:
        plan = store.plan(key)
        jobs = store.jobs(key)
    finally:
        store.close()
    groups: dict[str, list[Any]] = {}
    for j in jobs:
        groups.setdefault(j.run_id or j.job_id, []).append(j)
    # every must-run run DONE; a run a person skipped counts as their decision, not a failure
    failed = {r: js for r, js in groups.items()
              if any(j.must for j in js) and run_status(js) not in ("DONE", "SKIPPED")}
    no_command = plan.data.get("no_command", []) if plan else []
    state = plan.state.value if plan else "unknown"
    if plan is not None and plan.state is PlanState.AWAITING_APPROVAL:
        print(f"expbridge: waiting for approval: run `expbridge approve {key}`, then run again", file=sys.stderr)
        return 1
    if plan is not None and plan.state is PlanState.DONE and not failed and not no_command:
        print(f"expbridge: done: {len(groups)} run(s), every must-run run DONE")
        return 0
    print(f"expbridge: plan {state}" + (f": {plan.reason}" if plan and plan.reason else ""), file=sys.stderr)
    for run_id in no_command:
        print(f"  {run_id}: BLOCKED no command", file=sys.stderr)
    for run_id, js in sorted(failed.items()):
        reasons = "; ".join(f"{j.job_id}: {j.state.value} {j.reason}".strip() for j in js if j.state is not JobState.SUCCEEDED)
        print(f"  {run_id}: {run_status(js)} {reasons}", file=sys.stderr)
    return 1


def cmd_daemon(args: Any) -> int:
    from daemon import sdnotify
    from daemon.core import Core

    config = _config(args)
    paths = [Path(p) for p in args.project] or [Path(e.path) for e in (config.projects if config else [])]
    if not paths:
        raise ConfigError("no projects: pass --project DIR or list projects in the config file")
    specs = [(p.resolve(), settings_for(args, config, p.resolve(), default_backend=None)) for p in paths]
    state_dir = _state_dir(args, config)
    from daemon.store import DirLock
    lock = DirLock(state_dir / "daemon.lock").acquire()
    from daemon.log import get_logger
    log = get_logger("expbridge")
    core = Core(state_dir, specs, _backend_maker(), once=False, tick_s=min(s.poll_interval_s for _, s in specs),
                on_line=lambda project, line: log.info(line, project=project),
                watch_polling=bool(config and config.watch.polling),
                debounce_ms=config.watch.debounce_ms if config else 150)
    _install_signals(core, on_hup=lambda: _reload(core, args))
    core.on_ready = lambda: sdnotify.notify("READY=1")
    core.on_beat = _watchdog_pinger()
    try:
        core.run()
    finally:
        sdnotify.notify("STOPPING=1")
        lock.release()
    return 0


def _watchdog_pinger() -> Callable[[], None]:
    """WATCHDOG=1 from the core loop (so a stuck loop is noticed), at most every half interval."""
    from daemon import sdnotify

    interval = sdnotify.watchdog_interval_s()
    last = [0.0]

    def beat() -> None:
        now = time.monotonic()
        if interval is not None and now - last[0] >= interval:
            last[0] = now
            sdnotify.notify("WATCHDOG=1")
    return beat


def _reload(core: Any, args: Any) -> None:
    """SIGHUP: re-read the config; a bad one keeps the old settings and says why."""
    try:
        config = _config(args)
        for key, project in core.projects.items():
            project.settings = settings_for(args, config, Path(key), default_backend=None)
        print("expbridge: config reloaded", flush=True)
    except ExpbridgeError as exc:
        print(f"expbridge: config reload failed, keeping the old one: {exc}", file=sys.stderr, flush=True)


# -- read commands ----------------------------------------------------------------------------
def _open_store(args: Any) -> Any:
    from daemon.store import Store
    state_dir = _state_dir(args, None if not getattr(args, "config", None) else _config(args))
    if not (state_dir / "state.db").exists():
        raise InputError(f"no state at {state_dir} (nothing has run yet, or pass --state-dir)")
    return Store(state_dir / "state.db")


def status_doc(store: Any, only: str | None = None) -> list[dict[str, Any]]:
    from daemon.runs import run_status
    out = []
    for plan in store.plans():
        if only and plan.project != only:
            continue
        jobs = store.jobs(plan.project)
        by_state: dict[str, int] = {}
        for j in jobs:
            by_state[j.state.value] = by_state.get(j.state.value, 0) + 1
        runs: dict[str, list[Any]] = {}
        for j in jobs:
            runs.setdefault(j.run_id or j.job_id, []).append(j)
        out.append({
            "project": plan.project, "phase": plan.state.value, "milestone": plan.milestone,
            "reason": plan.reason, "run_ts": plan.run_ts, "jobs": by_state,
            "runs": {r: run_status(js) for r, js in sorted(runs.items())},
            "waiting_for": "approval" if plan.state is PlanState.AWAITING_APPROVAL else None,
            "blocked": [{"job": j.job_id, "run": j.run_id, "reason": j.reason} for j in jobs
                        if j.state in (JobState.BLOCKED, JobState.STUCK, JobState.FAILED)],
            "orphaned": [j.job_id for j in jobs if j.spec.get("orphaned")],
            "no_command": plan.data.get("no_command", []),
            "summary": plan.data.get("summary"),
        })
    return out


def cmd_status(args: Any) -> int:
    store = _open_store(args)
    try:
        doc = status_doc(store, str(Path(args.project).resolve()) if args.project else None)
    finally:
        store.close()
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for p in doc:
        where = f" {p['milestone']}" if p["milestone"] else ""
        print(f"{p['project']}: {p['phase']}{where}" + (f" ({p['reason']})" if p["reason"] else ""))
        print("  jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(p["jobs"].items())))
        for b in p["blocked"]:
            print(f"  {b['run'] or b['job']}: {b['reason']}")
        for job in p["orphaned"]:
            print(f"  {job}: orphaned (row removed)")
        if p["summary"]:
            print("  " + p["summary"].replace("\n", "\n  "))
    return 0


def cmd_logs(args: Any) -> int:
    from backends.base import Handle
    store = _open_store(args)
    try:
        jobs = [j for j in store.jobs() if args.target in (j.job_id, j.run_id)
                and (not args.project or j.project == str(Path(args.project).resolve()))]
        if not jobs:
            raise InputError(f"no job or run named {args.target!r}")
        for job in jobs:
            if not job.handle:
                print(f"== {job.job_id}: {job.state.value} (not started)")
                continue
            path = Path(Handle.from_json(job.handle).log_path)
            print(f"== {job.job_id} a{job.attempt} ({job.state.value}): {path}")
            _show_log(path, args.follow and job.state in (JobState.RUNNING, JobState.LAUNCHING), store, job)
    finally:
        store.close()
    return 0


def _show_log(path: Path, follow: bool, store: Any, job: Any) -> None:
    pos = 0
    while True:
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
        if not follow:
            return
        current = next((j for j in store.jobs(job.project) if j.job_id == job.job_id), None)
        if current is None or current.state not in (JobState.RUNNING, JobState.LAUNCHING, JobState.PAUSED):
            follow = False
        time.sleep(0.5)


def cmd_wait(args: Any) -> int:
    key = str(Path(args.project).resolve())
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while True:
        store = _open_store(args)
        try:
            plan = store.plan(key)
        finally:
            store.close()
        if plan is not None and plan.state in (*TERMINAL, PlanState.AWAITING_APPROVAL):
            print(f"{key}: {plan.state.value}" + (f" ({plan.reason})" if plan.reason else ""))
            return 0 if plan.state is PlanState.DONE else 1
        if deadline is not None and time.monotonic() > deadline:
            print(f"{key}: still {plan.state.value if plan else 'not started'}", file=sys.stderr)
            return 3
        time.sleep(0.5)


# -- tracker edits ----------------------------------------------------------------------------
def _tracker(project: str) -> Path:
    path = Path(project) / "refine-logs" / "EXPERIMENT_TRACKER.md"
    if not path.is_file():
        raise InputError(f"{path}: no tracker (expected refine-logs/EXPERIMENT_TRACKER.md)")
    return path


def cmd_verb(args: Any) -> int:
    from handlers.tracker_write import CellEdit, update_tracker
    result, _ = update_tracker(_tracker(args.project), [CellEdit(args.run, status=VERB_WORD[args.cmd])])
    if not result.applied:
        why = result.skipped[0][1] if result.skipped else "no such run"
        raise InputError(f"{_tracker(args.project)}: run {args.run!r}: {why}")
    print(f"{args.run}: Status set to {VERB_WORD[args.cmd]}")
    return 0


def cmd_approve(args: Any) -> int:
    from handlers.tracker_write import update_plan_switch
    path = _tracker(args.project)
    update_plan_switch(path, "APPROVED")  # byte-preserving: CRLF files stay CRLF
    print(f"{path}: plan approved")
    return 0


def cmd_report(args: Any) -> int:
    """Rebuild the reports from the state store and the jobs' result files. Safe beside a
    running controller: the files are versioned and replaced atomically."""
    from backends.fake import FakeBackend
    from daemon.finish import write_results, write_summary
    from daemon.project import Project

    project_dir = Path(args.project).resolve()
    store = _open_store(args)
    try:
        config = _config(args)
        project = Project(project_dir, settings_for(args, config, project_dir, "local"), FakeBackend(0), store)
        if project.plan is None:
            raise InputError(f"{project_dir}: nothing has run here yet (no plan in the state store)")
        project.reload()
        from datetime import datetime
        write_results(project, datetime.now())
        write_summary(project)
    finally:
        store.close()
    print(f"{project_dir}/refine-logs/EXPERIMENT_RESULTS.md regenerated")
    return 0


def cmd_hosts(args: Any) -> int:
    from backends.hosts import hosts_report
    config = _config(args)
    settings = settings_for(args, config, Path.cwd(), default_backend="ssh")
    from backends.registry import make_backend
    backend = make_backend("ssh", settings, Path.cwd(), lambda h: None)
    report = hosts_report(backend)
    print(json.dumps(report, indent=2) if args.json else "\n".join(
        f"{h.get('alias')}: {'up' if h.get('reachable') else 'DOWN'} {h.get('gpus', '')}" for h in report))
    return 0
