"""The core loop's edges toward the backends and hooks: launches, polls, fetches and hook runs.

Each either runs inline (a local backend answers in milliseconds) or in the worker pool, and
always reports back by posting an event: nothing here changes state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from backends.base import Handle, JobSpec, Slot
from daemon import events as ev
from daemon import hookflow, outputs
from daemon.errors import BackendError, ExpbridgeError
from daemon.model import JobState
from daemon.project import Project

J = JobState


class BackendEdges:
    pool: Any
    post: Callable[[Any], None]
    _safe: Callable[..., Any]

    def _apply_polled(self, project: Project, statuses: Any) -> None:
        """Local results apply at once; a remote job's outputs are fetched back first, in a
        worker thread, so its success can be judged on real files (DESIGN §6)."""
        remote = project.backend.name not in ("local", "fake")
        to_fetch = {}
        for job_id, (attempt, status) in statuses.items():
            ended = status.phase in ("exited", "lost")
            if remote and ended and (job_id, attempt) not in project.fetched:
                to_fetch[job_id] = (attempt, status)
            else:
                project.apply_status(job_id, attempt, status)
        if to_fetch:
            handles = {jid: Handle.from_json(project.jobs[jid].handle) for jid in to_fetch
                       if project.jobs.get(jid) and project.jobs[jid].handle}
            self.pool.submit(self._fetch, project, to_fetch, handles)

    def _fetch(self, project: Project, statuses: Any, handles: dict[str, Handle]) -> None:
        errors = {}
        for job_id, handle in handles.items():
            try:
                project.backend.fetch(handle, project.run_dir)
            except Exception as exc:  # reported, and the job is judged on what did arrive
                errors[job_id] = str(exc)[:300]
        self.post(ev.Fetched(project.key, statuses, errors))

    def _run_hook(self, project: Project, req: hookflow.HookRequest) -> None:
        try:
            result = hookflow.run_request(project, req)
        except Exception as exc:  # the hook runner itself failed: report it as a crashed hook
            from handlers.hooks import HookResult
            result = HookResult("crashed", {}, [], Path("."), Path("."), f"hook runner error: {exc!r}", 0.0)
        self.post(hookflow.HookDone(project.key, req, result))

    def _free_slots(self, project: Project) -> list[str]:
        if project.launch_allowed() is None or not project.index.by_state[J.PENDING]:
            return []
        try:
            keys = [s.key for s in project.backend.slots()]
        except (BackendError, OSError) as exc:
            keys, problem = [], str(exc)
        else:
            problem = getattr(project.backend, "problem", "")
        if problem != project.slots_problem:  # said once, not on every step
            project.slots_problem = problem
            if problem:
                project.note(f"waiting for slots: {problem}")
        return keys

    def _not_ready(self, project: Project) -> dict[str, str]:
        try:
            from handlers.manifest import Precondition, unmet_preconditions
        except ImportError:
            return {}
        out: dict[str, str] = {}
        for jid in project.with_preconditions & project.index.by_state[J.PENDING]:
            job = project.jobs[jid]
            pre = job.spec.get("preconditions")
            if pre:
                reasons = unmet_preconditions_for(job, pre, Precondition, unmet_preconditions)
                if reasons:
                    out[job.job_id] = "; ".join(reasons)
        return out

    def _submit(self, project: Project, spec: JobSpec, slot: Slot) -> None:
        def go() -> None:
            try:
                if spec.attempt == 1:
                    outputs.write_run_meta(project)
                handle = project.backend.submit(spec, slot)
            except (ExpbridgeError, OSError) as exc:
                self.post(ev.LaunchError(project.key, spec.job_id, spec.attempt, str(exc),
                                         getattr(exc, "retryable", False)))
                return
            self.post(ev.Launched(project.key, spec.job_id, spec.attempt, handle))
        if project.backend.name in ("local", "fake"):
            go()  # a local launch takes milliseconds; a thread hop would only add latency
        else:
            self.pool.submit(go)

    def _poll(self, project: Project) -> None:
        active = {j.job_id: (j.attempt, Handle.from_json(j.handle)) for j in project.active_jobs() if j.handle}
        if not active:
            return
        def go() -> None:
            try:
                result = project.backend.poll([h for _, h in active.values()])
            except (ExpbridgeError, OSError) as exc:
                project.note(f"poll failed: {exc}")
                return
            statuses = {jid: (att, result[h]) for jid, (att, h) in active.items() if h in result}
            self.post(ev.Polled(project.key, statuses))
        if project.backend.name in ("local", "fake"):
            go()
        else:
            self.pool.submit(go)



def unmet_preconditions_for(job: Any, pre: Any, model: Any, check: Callable[[Any], list[str]]) -> list[str]:
    class _J:  # the manifest check reads only .preconditions and .cwd
        preconditions = tuple(model(**p) for p in pre)
        cwd = job.cwd
    return check(_J())
