"""The core loop: one inbox, one thread that changes state, a pure decide() in the middle.

Watchers, job waiters, timers and the CLI only post events. Each batch of events is applied in
one SQLite transaction; launches are marked `launching` and committed before the backend is
called, so a crash can never lose track of a started job (restart adopts it by its run dir).
"""
from __future__ import annotations

import queue
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from backends.base import Handle, JobSpec, Slot
from daemon import events as ev
from daemon import hookflow, outputs, steer, upkeep
from daemon.errors import ExpbridgeError, StoreError
from daemon.model import ACTIVE, JobState, PlanState
from daemon.project import Project
from daemon.store import DirLock, Store
from daemon.waiters import Waiters
from daemon.edges import BackendEdges

J, P = JobState, PlanState
TERMINAL_PLAN = (P.DONE, P.BLOCKED, P.FAILED, P.AWAITING_APPROVAL)
JOB_DIR = re.compile(r"/jobs/([^/]+)/a(\d+)$")
TRACKER_WRITE_INTERVAL_S = 0.25
STALE_STATE_H = 24.0
STORE_RETRY_S = 2.0
IDLE_WAKE_S = 30.0  # an idle loop still wakes now and then, so the watchdog sees it alive


class Core(BackendEdges):
    def __init__(self, state_dir: Path, projects: Sequence[tuple[Path, Any]],
                 make_backend: Callable[[Any, Path, Callable[[Handle], None]], Any],
                 *, once: bool = False, watch: bool = True, tick_s: float = 1.0,
                 on_line: Callable[[str, str], None] | None = None,
                 watch_polling: bool = False, debounce_ms: int = 150) -> None:
        self.state_dir = state_dir
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.store = Store(state_dir / "state.db")
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="eb-io")
        self.once, self.watch, self.tick_s = once, watch, tick_s
        self.on_line = on_line or (lambda project, line: None)
        self.locks: list[DirLock] = []
        self.projects: dict[str, Project] = {}
        self.waiters: dict[str, Waiters] = {}
        self.last_tracker_write: dict[str, float] = {}
        self.write_due: dict[str, float] = {}  # project -> when a postponed tracker write is due
        self.last_state_write: dict[str, float] = {}
        self.watcher: Any = None
        self.specs = projects
        self.make_backend = make_backend
        self.stopping = False
        self.watch_polling, self.debounce_ms = watch_polling, debounce_ms
        self.on_ready: Callable[[], Any] = lambda: None
        self.on_beat: Callable[[], Any] = lambda: None

    # -- lifecycle -------------------------------------------------------------------------------
    def post(self, event: Any) -> None:
        self.inbox.put(event)

    def open(self) -> None:
        for path, settings in self.specs:
            path = path.resolve()
            self.locks.append(DirLock(path / "refine-logs" / ".expbridge.lock").acquire())
            key = str(path)
            backend = self.make_backend(settings, path, self._exit_callback(key))
            project = Project(path, settings, backend, self.store)
            self.projects[key] = project
            if Waiters.supported(backend):
                self.waiters[key] = Waiters(key, backend, lambda k: self.post(ev.PollNow(k)))
        with self.store.transaction():
            for project in self.projects.values():
                self._warn_if_stale(project)
                self._safe(project, project.reload)
                self._recover(project)
                # a write deferred before a crash lived only in memory: rewrite our runs once
                project.dirty_runs.update(project.own_runs())
                hook = project.plan.data.get("hook") if project.plan else None
                if hook:  # the daemon stopped while a hook ran: run it again
                    project.plan = replace(project.plan, data={**project.plan.data, "hook": None})
                    hookflow.enter(project, project.plan.state)
                project.flush()
        if self.watch:
            self._start_watcher()

    def _exit_callback(self, key: str) -> Callable[[Handle], None]:
        def on_exit(handle: Handle) -> None:
            m = JOB_DIR.search(handle.job_dir)
            if m:
                self.post(ev.JobExited(key, m.group(1), int(m.group(2))))
        return on_exit

    def _start_watcher(self) -> None:
        try:
            from daemon.watch import ProjectWatcher
        except ImportError:
            return
        self.watcher = ProjectWatcher([Path(k) for k in self.projects], self.post,
                                      polling=self.watch_polling, debounce_ms=self.debounce_ms)
        self.watcher.start()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for waiter in self.waiters.values():
            waiter.close()
        for project in self.projects.values():
            upkeep.close(project)
        # a network call a hung host left open must not hold the exit: state is already committed
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        for lock in self.locks:
            lock.release()

    def _warn_if_stale(self, project: Project) -> None:
        """ARIS F99: state older than a day is resumed, but said so, with the choice named."""
        plan = project.plan
        if plan is None or plan.state in (P.DONE, P.FAILED):
            return
        age_h = (time.time() - plan.updated_at) / 3600
        if age_h > STALE_STATE_H:
            project.note(f"warning: resuming state last updated {age_h:.0f} h ago ({plan.state.value}); "
                         "running jobs are adopted and nothing is rerun. To start fresh instead, stop "
                         "expbridge and use a new --state-dir")

    def _recover(self, project: Project) -> None:
        """Adopt what is still running, finish what ended while we were away, never relaunch."""
        for job in list(project.jobs.values()):
            if job.state not in (*ACTIVE, J.PAUSED) or (job.state is J.PAUSED and not job.handle):
                continue
            handle = Handle.from_json(job.handle) if job.handle else None
            if handle is None and job.state is J.LAUNCHING:
                adopt = getattr(project.backend, "adopt", None)
                slot = Slot.from_key(job.slot) if job.slot else None
                handle = adopt(project.spec_for(job), slot) if adopt else None
                if handle is None:
                    project.launch_failed(job.job_id, job.attempt, "daemon stopped before the launch was recorded")
                    continue
                project.launched(job.job_id, job.attempt, handle)
                project.note(f"adopted {job.job_id} a{job.attempt} after restart")
            if handle is not None:
                status = project.backend.poll([handle])[handle]
                project.apply_status(job.job_id, job.attempt, status)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        self.open()
        self.on_ready()
        ticker = self._start_ticker()
        try:
            self.post(ev.Tick())
            while not self.stopping:
                # the loop sleeps until an event arrives; it wakes by itself only for a
                # postponed tracker write (ticks are events from the scheduler)
                due = [*self.write_due.values()]
                timeout = max(0.0, min(due) - time.monotonic()) if due else IDLE_WAKE_S
                batch = self._drain(timeout)
                try:
                    self.step(batch)
                except StoreError as exc:
                    self._store_failed(exc)
                self.on_beat()
                if self.once and self._all_settled():
                    break
        finally:
            ticker.shutdown(wait=False)
            self._final_writes()
            self.close()

    def _start_ticker(self) -> Any:
        """APScheduler only ticks the loop (DESIGN §2): retry times and state live in SQLite,
        because its persisted date jobs are dropped across restarts."""
        from apscheduler.schedulers.background import BackgroundScheduler

        ticker = BackgroundScheduler(daemon=True)
        ticker.add_job(lambda: self.post(ev.Tick()), "interval", seconds=self.tick_s,
                       max_instances=1, coalesce=True, misfire_grace_time=None)
        ticker.start()
        return ticker

    def _store_failed(self, exc: StoreError) -> None:
        """The state database refused a commit (a full disk): stop launching, say why, and pick
        up again from what was committed. Nothing uncommitted was launched; jobs started before
        are found again the way a restart finds them."""
        for project in self.projects.values():
            project.note(f"state store unavailable, not launching until it is writable: {exc}")
            project.undo_uncommitted_launches()
            self._safe(project, lambda p=project: self._write_files(p, force=True))
        time.sleep(STORE_RETRY_S)

    def _drain(self, timeout: float) -> list[Any]:
        try:
            batch = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < 1000:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def step(self, batch: list[Any]) -> None:
        work: list[tuple[Project, JobSpec, Slot]] = []
        cancels: list[tuple[Project, Handle]] = []
        with self.store.transaction():
            for event in batch:
                self._handle(event, cancels)
            for project in self.projects.values():
                self._safe(project, lambda p=project: steer.drive(p, self._finish))
                slots = self._free_slots(project)
                specs = self._safe(project, lambda p=project, s=slots: p.schedule(s, self._not_ready(p))) or []
                work.extend((project, spec, slot) for spec, slot in specs)
                project.flush()
        for project, spec, slot in work:
            self._submit(project, spec, slot)
        for project, handle in cancels:
            self.pool.submit(project.backend.cancel, handle)
        for project in self.projects.values():
            for req in project.hook_requests:
                self.pool.submit(self._run_hook, project, req)
            project.hook_requests.clear()
        for project in self.projects.values():
            self._write_files(project)
            waiter = self.waiters.get(project.key)
            if waiter is not None:
                waiter.publish([Handle.from_json(j.handle) for j in project.active_jobs(*ACTIVE) if j.handle])

    def _handle(self, event: Any, cancels: list[tuple[Project, Handle]]) -> None:
        if isinstance(event, ev.Stop):
            self.stopping = True
            return
        if isinstance(event, ev.Tick):
            for project in self.projects.values():
                self._safe(project, lambda p=project: upkeep.tick(p, cancels))
                self._poll(project)
            return
        if isinstance(event, ev.FileChanged):
            project = self.projects.get(str(event.project.resolve()))
            if project is not None:
                self._safe(project, project.reload)
                self._safe(project, lambda: steer.apply_tracker_commands(project, event.sha, cancels))
            return
        project = self.projects.get(getattr(event, "project", ""))
        if project is None:
            return
        if isinstance(event, hookflow.HookDone):
            self._safe(project, lambda: hookflow.done(project, event))
        elif isinstance(event, ev.JobExited):
            job = project.jobs.get(event.job_id)
            if job is not None and job.handle and job.attempt == event.attempt:
                handle = Handle.from_json(job.handle)
                project.apply_status(job.job_id, job.attempt, project.backend.poll([handle])[handle])
        elif isinstance(event, ev.Launched):
            project.launched(event.job_id, event.attempt, event.handle)
        elif isinstance(event, ev.LaunchError):
            project.launch_failed(event.job_id, event.attempt, event.error)
        elif isinstance(event, ev.Polled):
            self._apply_polled(project, event.statuses)
        elif isinstance(event, ev.PollNow):
            self._poll(project)
        elif isinstance(event, ev.Fetched):
            for job_id, error in event.errors.items():
                project.note(f"{job_id}: fetching outputs failed: {error}")
            for job_id, (attempt, status) in event.statuses.items():
                project.fetched.add((job_id, attempt))
                project.apply_status(job_id, attempt, status)
        elif isinstance(event, ev.Control):
            result = self._safe(project, lambda: steer.control(project, event, cancels))
            if event.reply is not None:
                event.reply.put(result)

    # -- edges: backends and files ---------------------------------------------------------------
    def _write_files(self, project: Project, force: bool = False) -> None:
        now = time.monotonic()
        if not project.dirty_runs and not force and project.pending_switch is None:
            return
        last = self.last_tracker_write.get(project.key, 0.0)
        if not force and now - last < TRACKER_WRITE_INTERVAL_S:
            # batch bursts of changes into one write, but never leave one unwritten
            self.write_due[project.key] = last + TRACKER_WRITE_INTERVAL_S
            return
        self.write_due.pop(project.key, None)
        self.last_tracker_write[project.key] = now
        switched = self._safe(project, lambda: outputs.write_plan_switch(project))
        sha = self._safe(project, lambda: outputs.sync_tracker(project)) or switched
        if sha:
            tracker = project.path / "refine-logs" / "EXPERIMENT_TRACKER.md"
            if self.watcher is not None:
                self.watcher.ignore_next(tracker, sha)
            # what we wrote may carry a person's edit made just before (the writer re-applies
            # our cells on their text), so it is read back like any other change
            if project.person_edited:
                self.post(ev.FileChanged(project.path, tracker, sha))
        # queue_state.json renders every job: with a big queue, write it less often (never stale
        # for long, and always at the end), so its cost does not grow with each transition
        every = max(TRACKER_WRITE_INTERVAL_S, len(project.jobs) / 2000)
        if force or now - self.last_state_write.get(project.key, 0.0) >= every:
            self.last_state_write[project.key] = now
            self._safe(project, lambda: outputs.write_queue_state(project))
        with self.store.transaction():
            project.flush()
        for line in project.log:
            self.on_line(project.key, line)
        project.log.clear()

    def _final_writes(self) -> None:
        for project in self.projects.values():
            self._write_files(project, force=True)

    def _finish(self, project: Project) -> None:
        from daemon.finish import finish
        self._safe(project, lambda: finish(project))

    def _all_settled(self) -> bool:
        for project in self.projects.values():
            if project.plan is None or project.plan.state not in TERMINAL_PLAN:
                return False
            if any(j.state in ACTIVE for j in project.jobs.values()):
                return False
        return True

    def _safe(self, project: Project, fn: Callable[[], Any]) -> Any:
        """A bad input or hook in one project blocks that project, never the daemon."""
        try:
            return fn()
        except StoreError as exc:  # the database is full or locked: transient, never a plan block
            project.note(f"error (will retry): {exc}")
            return None
        except ExpbridgeError as exc:
            reason = str(exc)
        except OSError as exc:  # a full disk or a vanished folder: say so and try again next step
            project.note(f"error (will retry): {exc}")
            return None
        except Exception as exc:  # a bug must not take the other projects down with it
            reason = f"internal error: {exc!r}"
            project.note("".join(traceback.format_exception(exc)).rstrip())
        project.note(f"error: {reason}")
        if project.plan is not None and project.plan.state is not P.BLOCKED:
            project.set_plan(P.BLOCKED, reason=reason[:300])
        return None

