"""One project's controller: its jobs and pipeline in memory, every change through advance().

Only the core thread calls into this class. I/O it does itself is cheap and local (reading the
inputs, checking outputs); backend calls that may block are handed back to the core as work.
"""
from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from backends.base import Handle, JobSpec, RunStatus, Slot
from daemon.decide import Block, Launch, Policy, Requeue, Unblock, View, after_attempt, decide
from daemon.model import (ACTIVE, FAILURE_CLASSES, Event, Job, JobState, PlanRecord, PlanState,
                          advance_job, advance_plan)
from daemon.index import JobIndex
from daemon.store import Store
from handlers.parse import Inputs, JobInput, load_inputs

J, P = JobState, PlanState
OUTCOME_STATE = {"ok": J.SUCCEEDED, "failed": J.FAILED, "oom": J.OOM, "lost": J.LOST,
                 "timeout": J.TIMEOUT}
FIRST_SIGHT_REASON = " in the tracker before expbridge saw it"
FIRST_SIGHT = {"DONE": J.SUCCEEDED, "SKIPPED": J.SKIPPED, "FAILED": J.FAILED, "STUCK": J.STUCK}


def slugify(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "plan"
    return slug[:48]


def run_stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


class Project:
    def __init__(self, path: Path, settings: Any, backend: Any, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path.resolve()
        self.key = str(self.path)
        self.settings, self.backend, self.store, self.clock = settings, backend, store, clock
        self.jobs: dict[str, Job] = {j.job_id: j for j in store.jobs(self.key)}
        self.index = JobIndex(self.jobs.values())  # the hot path never scans every job
        self.with_preconditions = {j.job_id for j in self.jobs.values() if j.spec.get("preconditions")}
        self.plan: PlanRecord | None = store.plan(self.key)
        self.inputs: Inputs | None = None
        self.events: list[Event] = []
        self.changed: dict[str, Job] = {}
        self.plan_changed = False
        self.dirty_runs: set[str] = set()
        self.log: list[str] = []  # human-readable lines for the CLI and the structured log
        self.hook_requests: list[Any] = []  # hooks to run once the batch commits
        self.pending_switch: str | None = None  # a plan-switch word to write into the tracker
        self.fetched: set[tuple[str, int]] = set()  # remote attempts whose outputs came back
        self.slots_problem = ""  # why the backend offers no slots, as last said
        self.budget_stop = False  # the ledger says no new launches (hard GPU-hour budget)
        self.tracker_sha: str | None = None  # the tracker as our last write left it
        self.person_edited = True  # until we know better, a write is read back

    # -- state changes: the only two entry points ----------------------------------------------
    def set_job(self, job: Job, dst: JobState, **changes: Any) -> Job:
        new, event = advance_job(job, dst, self.clock(), **changes)
        self._keep(new)
        self.events.append(event)
        return new

    def _keep(self, job: Job) -> None:
        self.index.update(self.jobs.get(job.job_id), job)
        self.jobs[job.job_id] = job
        if job.spec.get("preconditions"):
            self.with_preconditions.add(job.job_id)
        self.changed[job.job_id] = job
        if job.run_id:
            self.dirty_runs.add(job.run_id)

    def set_plan(self, dst: PlanState, **changes: Any) -> None:
        assert self.plan is not None
        self.plan, event = advance_plan(self.plan, dst, self.clock(), **changes)
        self.plan_changed = True
        self.events.append(event)
        self.note(f"plan {event.src} -> {event.dst}" + (f" ({self.plan.reason})" if self.plan.reason else ""))

    def note(self, line: str) -> None:
        self.log.append(line)

    def flush(self) -> None:
        """Write what changed; the caller holds the transaction."""
        if self.changed:
            self.store.put_jobs(list(self.changed.values()))
        if self.plan_changed and self.plan is not None:
            self.store.put_plan(self.plan)
        if self.events:
            self.store.add_events(self.events)
        self.changed.clear()
        self.events.clear()
        self.plan_changed = False

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        assert self.plan is not None
        return self.path / "experiment_queue" / self.plan.run_ts

    def reload(self) -> None:
        """Re-read the plan, tracker and manifest, and reconcile jobs with them."""
        inputs = load_inputs(self.path)
        now = self.clock()
        if self.plan is None:
            self.plan = PlanRecord(self.key, slugify(self.path.name), run_stamp(now), updated_at=now,
                                   data={"started_at": now})
            self.plan_changed = True
        if not inputs.usable:
            if not self.jobs and self.inputs is None or inputs.jobs == [] and inputs.no_command == []:
                self.inputs = self.inputs or inputs
            first = next((d for d in inputs.diagnostics if d.severity == "error"), None)
            reason = f"input error: {first}" if first else "needs input (nothing to run)"
            if self.plan.state is not P.BLOCKED or self.plan.reason != reason:
                self.set_plan(P.BLOCKED, reason=reason)
            return
        self.inputs = inputs
        self._restart_on_new_plan(inputs)
        self._reconcile_jobs(inputs)
        self._note_no_command(inputs)
        if self.plan.state is P.BLOCKED and self.plan.reason.startswith(("input error", "needs input")):
            self.set_plan(P.PARSING, reason="")

    def _reconcile_jobs(self, inputs: Inputs) -> None:
        order = 0
        cells = self.store.cells(self.key)
        for ji in inputs.jobs:
            order += 1
            job = self.jobs.get(ji.job_id)
            if job is None:
                self._create(ji, order, inputs, cells)
            elif job.state is J.PENDING and (job.cmd != ji.cmd or job.cwd != ji.cwd):
                self.note(f"warning: {ji.job_id}: command changed before start; using the new one")
                self._keep(replace(job, cmd=ji.cmd, cwd=ji.cwd, spec=ji.spec, order=order))
            elif job.order != order or job.milestone != ji.milestone or job.must != ji.must:
                self._keep(replace(job, order=order, milestone=ji.milestone, must=ji.must, spec=ji.spec))
        self._remember_first_sight(inputs)
        known = {ji.job_id for ji in inputs.jobs}
        for job in self.jobs.values():
            if job.job_id not in known and not job.spec.get("orphaned"):
                self._keep(replace(job, spec={**job.spec, "orphaned": True}))
                self.note(f"{job.job_id}: orphaned (row removed); it is not cancelled")

    def _restart_on_new_plan(self, inputs: Inputs) -> None:
        """A new version of the plan or manifest after the last run ended starts a new run of
        the pipeline (a new RUN_TS). Work already done is not redone: only new jobs launch."""
        assert self.plan is not None
        sha = inputs.sha
        if not self.plan.plan_sha:
            self.plan = replace(self.plan, plan_sha=sha)
            self.plan_changed = True
        elif sha != self.plan.plan_sha and self.plan.state in (P.DONE, P.FAILED):
            now = self.clock()
            self.set_plan(P.PARSING, plan_sha=sha, run_ts=run_stamp(now), reason="",
                          data={"started_at": now})
            self.note("new plan version: starting a new run")
        elif sha != self.plan.plan_sha:
            self.plan = replace(self.plan, plan_sha=sha)
            self.plan_changed = True

    def _note_no_command(self, inputs: Inputs) -> None:
        """Open rows with nothing to run are BLOCKED with the reason, never silently dropped."""
        open_rows = [r for r in inputs.no_command
                     if (inputs.rows[r].status or "TODO") in ("TODO", "QUEUED", "BLOCKED")]
        assert self.plan is not None
        if open_rows != self.plan.data.get("no_command", []):
            self.plan = replace(self.plan, data={**self.plan.data, "no_command": open_rows})
            self.plan_changed = True
            self.dirty_runs.update(open_rows)
            for run_id in open_rows:
                self.note(f"{run_id}: no command (add a job with `run: {run_id}` to EXPERIMENT_QUEUE.yaml,"
                          " or a Command column to the tracker)")

    def _remember_first_sight(self, inputs: Inputs) -> None:
        """Record each row's Status as first seen, so a person's edit made before our first
        write is still recognised as theirs (and as a command)."""
        cells = self.store.cells(self.key)
        for run_id, row in inputs.rows.items():
            if run_id not in cells:
                self.store.put_cell(self.key, run_id, row.status_raw.strip(), None)

    def _create(self, ji: JobInput, order: int, inputs: Inputs, cells: dict[str, Any]) -> None:
        row = inputs.rows.get(ji.run_id) if ji.run_id else None
        state, reason, spec = J.PENDING, "", dict(ji.spec)
        # a row whose Status we wrote ourselves is no person's verdict on new work
        if ji.run_id and cells.get(ji.run_id, (None, None))[1] is not None:
            row = None
        status = row.status if row is not None else None
        if status in FIRST_SIGHT:
            state, reason = FIRST_SIGHT[status], f"{status}{FIRST_SIGHT_REASON}"
        elif status == "RUNNING":
            state, reason, spec["external"] = J.BLOCKED, "running outside expbridge? set TODO to run it here", True
        elif row is not None and status is None and row.status_raw.strip():
            state, reason, spec["external"] = J.BLOCKED, f"unrecognised status {row.status_raw.strip()!r}", True
        elif status == "PAUSED":
            state = J.PAUSED
        job = Job(self.key, ji.job_id, ji.run_id, ji.milestone, ji.phase, ji.cmd, ji.cwd, state=state,
                  prev_state=J.PENDING if state is J.PAUSED else None, reason=reason, spec=spec,
                  must=ji.must, order=order, updated_at=self.clock())
        self._keep(job)
        if state in FIRST_SIGHT.values() and job.run_id:
            self.dirty_runs.discard(job.run_id)  # a person's verdict: nothing of ours to write
        self.events.append(Event("job", self.key, job.job_id, "new", state.value, {"cmd": ji.cmd}))

    # -- backend results -------------------------------------------------------------------------
    def launched(self, job_id: str, attempt: int, handle: Handle) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state is not J.LAUNCHING:
            return
        self.set_job(job, J.RUNNING, handle=handle.to_json(), started_at=self.clock())
        from daemon.upkeep import notify
        notify(self, "launch_verified", job=job_id, attempt=attempt, slot=job.slot, cmd=job.cmd)
        self.note(f"launched {job_id} a{attempt} on {job.slot}: {job.cmd} (est {job.spec.get('est_hours') or '?'} h)")

    def launch_failed(self, job_id: str, attempt: int, error: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state is not J.LAUNCHING:
            return
        self.note(f"launch of {job_id} a{attempt} failed: {error}")
        self._end_attempt(self.set_job(job, J.LOST, reason=f"launch failed: {error}"), J.LOST)

    def apply_status(self, job_id: str, attempt: int, status: RunStatus) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state not in (*ACTIVE, J.PAUSED):
            return
        if status.phase in ("pending", "running", "suspended"):
            return
        if status.outcome == "cancelled":
            dst, reason = J.FAILED, "cancelled outside expbridge"
        else:
            dst = OUTCOME_STATE.get(status.outcome or "lost", J.LOST)
            reason = status.detail or ("" if dst is J.SUCCEEDED else f"exit {status.exit_code}")
        if dst is J.SUCCEEDED:
            missing = self._missing_outputs(job)
            if missing:
                dst, reason = J.FAILED, f"exit 0 but expected output missing: {missing}"
        job = self.set_job(job, dst, exit_code=status.exit_code, ended_at=status.ended_at or self.clock(),
                           reason=reason)
        if dst in FAILURE_CLASSES:
            self._end_attempt(job, dst)

    def _end_attempt(self, job: Job, failure: JobState) -> None:
        nxt, when, reason, used = after_attempt(job, failure, self.policies(), self.clock())
        counts = {**job.class_attempts, FAILURE_CLASSES[failure]: used}
        if nxt is J.FAILED and job.state is J.FAILED:
            self._keep(replace(job, class_attempts=counts))
            return
        self.set_job(job, nxt, next_attempt_at=when, class_attempts=counts,
                     reason=f"{job.reason}; {reason}" if job.reason else reason)

    def _missing_outputs(self, job: Job) -> str:
        started = (job.started_at or 0) - 2.0
        for pattern in job.spec.get("expected_output", []):
            full = pattern if os.path.isabs(pattern) else os.path.join(job.cwd, pattern)
            if not any(os.path.getmtime(p) >= started for p in glob.glob(full) if os.path.exists(p)):
                return pattern
        return ""

    def policies(self) -> dict[str, Policy]:
        retry = getattr(self.settings, "retry", None)
        out = {}
        for klass, default in (("oom", (120, 3)), ("lost", (10, 3)), ("timeout", (0, 1)), ("failed", (0, 1))):
            p = getattr(retry, klass, None)
            out[klass] = Policy(p.delay, p.max_attempts) if p is not None else Policy(*default)
        if self.inputs is not None and self.inputs.oom_retry is not None:
            out["oom"] = Policy(*self.inputs.oom_retry)
        return out

    def active_jobs(self, *states: JobState) -> list[Job]:
        """Jobs in the given states (default: launching, running, paused) via the index."""
        ids = set().union(*(self.index.by_state[s] for s in (states or (*ACTIVE, J.PAUSED))))
        return [self.jobs[i] for i in sorted(ids)]

    def own_runs(self) -> set[str]:
        """Runs whose Status is ours to write: not a person's verdict seen at first sight."""
        theirs = FIRST_SIGHT_REASON
        return {j.run_id for j in self.jobs.values()
                if j.run_id and not j.reason.endswith(theirs) and not j.spec.get("external")}

    def run_jobs(self, run_id: str) -> list[Job]:
        return [self.jobs[i] for i in sorted(self.index.ids("r", run_id))]

    def undo_uncommitted_launches(self) -> None:
        """After a failed commit no backend was called: jobs marked launching in that batch go
        back to pending (and their launch events are dropped). Every other change stays in
        memory and is written by the next commit that succeeds."""
        for job_id in list(self.index.by_state[J.LAUNCHING]):
            job = self.jobs[job_id]
            if job.handle is None and job_id in self.changed:
                self._keep(replace(job, state=J.PENDING, attempt=job.attempt - 1, slot=None))
        self.events = [e for e in self.events if not (e.kind == "job" and e.dst == J.LAUNCHING.value
                                                      and self.jobs[e.subject].state is J.PENDING)]

    def flag_overtime(self, now: float) -> None:
        """A job past twice its estimate is flagged (F87): it keeps running, but it no longer
        holds back the next milestone."""
        for job in self.active_jobs(J.RUNNING):
            est = job.spec.get("est_hours") or self._milestone_share(job)
            if (job.state is J.RUNNING and est and job.started_at and not job.spec.get("overtime")
                    and now - job.started_at > 2 * est * 3600):
                self._keep(replace(job, spec={**job.spec, "overtime": True}))
                self.note(f"{job.job_id}: OVERTIME (running {((now - job.started_at) / 3600):.2f} h, estimate {est:g} h)")

    def _milestone_share(self, job: Job) -> float | None:
        """Without a per-job estimate: the milestone's cost divided by its runs."""
        costs = self.inputs.milestone_costs if self.inputs else {}
        cost = costs.get(job.milestone or "")
        runs = {self.jobs[i].run_id for i in self.index.ids("m", job.milestone)}
        return cost / max(1, len(runs)) if cost else None

    # -- scheduling ------------------------------------------------------------------------------
    def launch_allowed(self) -> str | None:
        if self.plan is None:
            return None
        if self.plan.state is P.SANITY or self.plan.state is P.DEPLOYING:
            return self.plan.milestone or ""
        return None

    def schedule(self, free_slots: list[str], not_ready: dict[str, str]) -> list[tuple[JobSpec, Slot]]:
        """Run decide() and turn its launches into specs; jobs are marked launching first."""
        active = self.launch_allowed()
        inputs = self.inputs
        allowed = active is not None and not self.budget_stop
        view = View(self.jobs, self.index, free_slots if allowed else [], self.clock(),
                    inputs.milestones if inputs else (), active or None, self.cap(), not_ready,
                    frozenset(j.slot for j in (self.jobs[i] for i in self.index.by_state[J.PAUSED])
                              if j.slot and j.prev_state is J.RUNNING))
        work: list[tuple[JobSpec, Slot]] = []
        for action in decide(view):
            job = self.jobs[action.job_id]
            if isinstance(action, Requeue):
                self.set_job(job, J.PENDING)
            elif isinstance(action, Block):
                self.set_job(job, J.BLOCKED, reason=action.reason)
            elif isinstance(action, Unblock):
                self.set_job(job, J.PENDING, reason="")
            elif isinstance(action, Launch):
                job = self.set_job(job, J.LAUNCHING, attempt=job.attempt + 1, slot=action.slot,
                                   handle=None, exit_code=None, reason="", started_at=None, ended_at=None)
                work.append((self.spec_for(job), Slot.from_key(action.slot)))
        return work

    def cap(self) -> int:
        if self.inputs is not None and self.inputs.cap:
            return self.inputs.cap
        return int(getattr(self.settings, "max_parallel_runs", 4) or 4)

    def spec_for(self, job: Job) -> JobSpec:
        assert self.plan is not None
        inputs = self.inputs
        return JobSpec(job_id=job.job_id, plan=self.plan.slug, run_ts=self.plan.run_ts,
                       attempt=job.attempt, cmd=job.cmd, cwd=job.cwd, run_dir=str(self.run_dir),
                       env={"EB_PROJECT": self.key, "EB_RUN": job.run_id or ""},
                       conda_env=(inputs.conda if inputs else None) or getattr(self.settings, "conda", None),
                       conda_hook=(inputs.conda_hook if inputs else None) or getattr(self.settings, "conda_hook", None),
                       est_hours=job.spec.get("est_hours"),
                       expected_output=tuple(job.spec.get("expected_output", ())))
