"""What the core writes into people's files: tracker cells, queue_state.json, the final reports.

Tracker edits go through the byte-preserving writer with the text we wrote last time as the
expectation, so a cell a person changed since is theirs and is left alone.
"""
from __future__ import annotations

import time
from hashlib import sha256
from pathlib import Path
from typing import Any

from daemon.model import Job, JobState
from daemon.project import Project
from daemon.runs import run_notes, run_status, status_of_states
from handlers.parse import REFINE, TRACKER

J = JobState
NO_COMMAND = "no command"


def run_groups(project: Project, only: set[str] | None = None) -> dict[str, list[Job]]:
    runs = {j.run_id for j in project.jobs.values() if j.run_id} if only is None else only
    return {r: js for r in runs if (js := project.run_jobs(r))}


def metrics_text(project: Project, jobs: list[Job]) -> str:
    from handlers.collect import notes_text, run_metrics
    return notes_text(run_metrics(jobs))


def _relevant(project: Project, ids: set[str]) -> list[Job]:
    """The jobs of a big run its Status and Notes can depend on: every job that is not pending
    or succeeded, and one of each of those (so the status still sees them)."""
    out: list[Job] = []
    for state, members in project.index.by_state.items():
        hit = ids & members
        if state in (J.PENDING, J.SUCCEEDED):
            hit = set(sorted(hit)[:1])
        out += [project.jobs[i] for i in hit]
    return out


DAEMON_ONLY = frozenset({"QUEUED", "RUNNING", "DONE", "FAILED", "STUCK", "BLOCKED"})


def _current_statuses(project: Project) -> dict[str, str | None]:
    """The Status cells as the file holds them right now (normalised)."""
    from handlers.tracker import read_tracker

    path = project.path / REFINE / TRACKER
    if not path.is_file():
        return {}
    return {r.run_id: r.status for r in read_tracker(path).rows}


def tracker_edits(project: Project) -> list[Any]:
    from handlers.tracker_write import CellEdit

    cells = project.store.cells(project.key)
    current = _current_statuses(project)
    idx = project.index
    edits = []
    no_command = set(project.plan.data.get("no_command", [])) if project.plan else set()
    for run_id in sorted(project.dirty_runs):
        ids = idx.ids("r", run_id)
        jobs = [project.jobs[i] for i in sorted(ids)] if len(ids) <= 64 else _relevant(project, ids)
        if not jobs and run_id in no_command:
            last_status, last_notes = cells.get(run_id, (None, None))
            if (last_status, last_notes) != ("BLOCKED", NO_COMMAND):
                edits.append(CellEdit(run_id, status="BLOCKED", notes_eb=NO_COMMAND,
                                      expect_status=last_status, expect_notes_eb=last_notes))
            continue
        if not jobs:
            continue
        external = any(j.spec.get("external") for j in jobs)
        counts = idx.counts.get(("r", run_id))
        status = status_of_states(s for s, n in counts.items() if n > 0) if counts else run_status(jobs)
        if status == "DONE" and len(jobs) < len(ids):
            jobs = [project.jobs[i] for i in sorted(ids)]
        notes = run_notes(jobs, status, metrics_text(project, jobs) if status == "DONE" else "")
        if any(j.spec.get("overtime") for j in jobs):
            notes += "; OVERTIME (past 2x estimate)"
        last_status, last_notes = cells.get(run_id, (None, None))
        if (None if external else status) == last_status and notes == last_notes:
            continue
        row = project.inputs.rows.get(run_id) if project.inputs else None
        expect = last_status if last_status is not None else (row.status_raw.strip() if row else None)
        if current.get(run_id) in DAEMON_ONLY:
            # a status only the daemon writes is no person's command: it is a stale copy of one
            # of our writes (an editor's old buffer, a write lost with a full disk), so re-assert
            expect = None
        # the text after `eb:` is the daemon's own (DESIGN §4); the person's part is kept anyway
        edits.append(CellEdit(run_id, status=None if external else status, notes_eb=notes,
                              expect_status=None if external else expect, expect_notes_eb=None))
    return edits


def write_plan_switch(project: Project) -> str | None:
    """Insert or edit the `**expbridge**: WORD` line (the one documented edit outside a cell)."""
    word = project.pending_switch
    path = project.path / REFINE / TRACKER
    project.pending_switch = None
    if word is None or not path.is_file():
        return None
    from handlers.tracker_write import update_plan_switch

    before = path.read_bytes()
    sha = update_plan_switch(path, word)
    return sha if path.read_bytes() != before else None


def _version_once(project: Project, path: Path) -> None:
    """Versioned copy of the tracker before the daemon's first write in a pipeline run (§4)."""
    from datetime import datetime

    from handlers.versioning import append_manifest_rows, manifest_file_name, manifest_row, version_file

    assert project.plan is not None
    if project.plan.data.get("tracker_versioned"):
        return
    now = datetime.now()
    copy = version_file(path, now)
    if copy is not None:
        manifest = project.path / "MANIFEST.md"
        append_manifest_rows(manifest, [manifest_row(now, manifest_file_name(copy, manifest),
                                                     "tracker before expbridge's first write")])
    from dataclasses import replace
    project.plan = replace(project.plan, data={**project.plan.data, "tracker_versioned": True})
    project.plan_changed = True


def sync_tracker(project: Project) -> str | None:
    """Write changed run statuses into the tracker; returns the new hash, or None if unchanged."""
    path = project.path / REFINE / TRACKER
    if not project.dirty_runs or not path.is_file():
        project.dirty_runs.clear()
        return None
    from handlers.tracker_write import update_tracker

    edits = tracker_edits(project)
    project.dirty_runs.clear()
    if not edits:
        return None
    _version_once(project, path)
    before = path.read_bytes()
    # a person edited the file since our last write if it is not what we left there
    project.person_edited = sha256(before).hexdigest() != project.tracker_sha
    result, sha = update_tracker(path, edits)
    wrote = result.text.encode("utf-8") != before
    if not project.person_edited and wrote:  # a save that landed between our read and our rename
        from handlers.tracker_write import apply_edits
        expected = apply_edits(before.decode("utf-8", "surrogateescape"), edits, str(path)).text
        project.person_edited = expected != result.text
    project.tracker_sha = sha
    from daemon.upkeep import notify
    for e in result.applied:
        if e.status in ("DONE", "FAILED", "STUCK"):
            notify(project, {"DONE": "run_done", "FAILED": "run_failed", "STUCK": "run_stuck"}[e.status],
                   run=e.run_id, notes=e.notes_eb)
    ended = {e.run_id for e in result.applied if e.status in ("DONE", "FAILED", "STUCK")}
    if ended:
        from daemon.finish import log_runs
        log_runs(project, ended)
    cells = project.store.cells(project.key)
    for edit in result.applied:  # the writer may apply one cell of an edit and keep the other
        prev_status, prev_notes = cells.get(edit.run_id, (None, None))
        project.store.put_cell(project.key, edit.run_id,
                               edit.status if edit.status is not None else prev_status,
                               edit.notes_eb if edit.notes_eb is not None else prev_notes)
    for edit, why in result.skipped:
        project.note(f"{edit.run_id}: left the person's edit alone ({why})")
    return sha if wrote else None


def queue_state_doc(project: Project) -> dict[str, Any]:
    """queue_state.json in the ARIS schema, so the ARIS jq one-liner keeps working."""
    from backends.base import Handle
    from handlers.queue_state import render_queue_state

    assert project.plan is not None
    jobs = sorted(project.jobs.values(), key=lambda j: j.order)
    rows = []
    for j in jobs:
        # the fields render_job reads; asdict() would deep-copy every spec on every write
        row = {"job_id": j.job_id, "phase": j.phase, "cmd": j.cmd, "spec": j.spec, "attempt": j.attempt,
               "class_attempts": j.class_attempts, "started_at": j.started_at, "ended_at": j.ended_at,
               "reason": j.reason, "run_id": j.run_id}
        row.update(state=j.state.value, gpu=_gpu(j.slot),
                   failure_class=_last_failure(j), session=Handle.from_json(j.handle).ref if j.handle else None,
                   blocked_by=j.reason.removeprefix("blocked by ") if j.state is J.BLOCKED else None)
        rows.append(row)
    phases: dict[str, Any] = {}
    for j in jobs:
        phases.setdefault(j.phase, {"name": j.phase, "depends_on": list(j.spec.get("depends_on", []))})
    meta = {"project": project.path.name, "started": project.plan.data.get("started_at"),
            "manifest_path": str(project.path / REFINE / "EXPERIMENT_QUEUE.yaml")}
    return render_queue_state(meta, list(phases.values()), rows)


def _last_failure(job: Job) -> str | None:
    for klass in ("oom", "lost", "timeout", "failed"):
        if job.reason.startswith(klass) or f"; {klass}:" in job.reason:
            return klass
    return None


def write_queue_state(project: Project) -> None:
    from handlers.queue_state import write_queue_state as write
    if project.plan is not None:
        write(project.run_dir / "queue_state.json", queue_state_doc(project))


def _gpu(slot: str | None) -> int | None:
    if not slot:
        return None
    tail = slot.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def write_run_meta(project: Project) -> None:
    run_dir = project.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = run_dir / "run_meta.txt"
    if not meta.exists():
        import shlex
        assert project.plan is not None
        lines = [f"PROJECT_DIR={shlex.quote(str(project.path))}", f"RUN_TS={project.plan.run_ts}",
                 f"LOCAL_RUN_DIR={shlex.quote(str(run_dir))}",
                 f"STARTED={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
        meta.write_text("\n".join(lines) + "\n")
