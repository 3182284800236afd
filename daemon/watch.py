"""Watch each project's refine-logs/ and post FileChanged when a plan, tracker, manifest or
proposal really changed.

Editors save in many ways (in place, temp file + rename, sed -i, vim's backup rename), so the
event type is never trusted: every created/modified/closed/moved/deleted event marks the path(s)
it names, both ends of a move included, and the file is re-read and hashed once it is complete.
A file is complete when its close (IN_CLOSE_WRITE) or a rename onto it arrives, or when it has
been quiet for debounce_ms (the only signal the polling observer gives). A hash equal to the last
one seen (ours, via ignore_next, or one already posted) posts nothing.

Threads: watchdog's observer thread only marks paths (never raises, never blocks); one worker
thread settles due paths, attaches watches and supervises the observer. post() is called from
the worker thread (and from the caller of start()/add_project() for their rescans).

A project whose refine-logs/ does not exist yet is watched at the project folder itself
(non-recursive, nothing is created) until refine-logs/ appears; a supervision pass every
second re-attaches watches whose folder appeared, vanished, or whose emitter died, and rebuilds
the observer if its thread died. A full hash rescan every rescan_s is the safety net for lost
events (inotify queue overflow, network filesystems).
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from daemon.events import FileChanged  # the core's inbox type: one class, so isinstance holds

log = structlog.get_logger(__name__)

LOGS_DIR = "refine-logs"
WATCHED_NAMES = frozenset({
    "EXPERIMENT_PLAN.md", "EXPERIMENT_TRACKER.md", "EXPERIMENT_QUEUE.yaml",
    "EXPERIMENT_QUEUE.yml", "FINAL_PROPOSAL.md",
})
TEMP_PREFIX = ".expbridge-tmp-"
_VERSIONED = re.compile(r"_\d{8}_\d{6}(?:_\d+)?\.md$")
# vim swap/backup (.x.swp, x~, 4913 probe), emacs (#x#, .#x), gedit, generic backups
_EDITOR_LITTER = re.compile(
    r"(?:\.sw[a-px]$|~$|^4913$|^#.*#$|^\.#|^\.goutputstream-|\.(?:bak|orig|tmp|swp)$)")
_SETTLE_NOW = {"closed", "moved_to"}  # the write is complete: no need to wait for quiet
# A rename from our own temp file waits this long for the writer's ignore_next() (the core calls
# it just after os.replace); a writer that never calls it (the CLI) is posted after the wait.
OWN_WRITE_GRACE_S = 0.5
_MARKING = {"created", "modified", "closed", "moved", "deleted"}
SUPERVISE_S = 1.0


def is_ignored(name: str) -> bool:
    """Versioned copies, our temp files and editor swap/backup files never count."""
    return name.startswith(TEMP_PREFIX) or bool(_VERSIONED.search(name) or _EDITOR_LITTER.search(name))


def is_watched(name: str) -> bool:
    return not is_ignored(name) and name in WATCHED_NAMES


def file_sha(path: Path) -> str | None:
    """sha256 of the file's bytes, or None when it does not exist (or is not a regular file)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


class _Marker(FileSystemEventHandler):
    """Runs on watchdog's thread: forwards event paths and never lets an exception escape,
    because one exception there kills the observer thread silently (watchdog#427)."""

    def __init__(self, owner: ProjectWatcher) -> None:
        self._owner = owner

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type not in _MARKING:
                return
            src, dest = Path(os.fsdecode(event.src_path)), os.fsdecode(event.dest_path or b"")
            self._owner._mark(src, "moved_from" if dest else event.event_type)
            if dest:
                self._owner._mark(Path(dest), "own_write" if src.name.startswith(TEMP_PREFIX) else "moved_to")
        except Exception:
            log.exception("watch.event_failed", fs_event=repr(event))


@dataclass
class _Attached:
    watch: ObservedWatch
    folder: Path  # the real path being watched: refine-logs/ or, until it exists, the project


class ProjectWatcher:
    def __init__(self, projects: list[Path], post: Callable[[FileChanged], None], *,
                 polling: bool = False, debounce_ms: int = 150, rescan_s: float = 120.0,
                 poll_interval_s: float = 1.0) -> None:
        self._post = post
        self._polling, self._poll_interval_s = polling, poll_interval_s
        self._debounce_s = debounce_ms / 1000
        self._rescan_s = rescan_s
        self._cond = threading.Condition()        # guards the maps below and the pending marks
        self._io = threading.RLock()              # serialises hashing/posting and (re)attaching
        self._projects: dict[Path, Path] = {}     # real project dir -> project as given
        self._logs: dict[Path, Path] = {}         # real refine-logs dir -> project (kept once seen)
        self._pending: dict[Path, float] = {}     # real file path -> monotonic due time
        self._attach_wanted: set[Path] = set()
        self._seen: dict[Path, str | None] = {}   # real file path -> last hash posted or ours
        self._attached: dict[Path, _Attached] = {}
        self._observer: BaseObserver | None = None
        self._handler = _Marker(self)
        self._worker: threading.Thread | None = None
        self._stopping = False
        for project in projects:
            self._register(project)

    # -- public API -------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching, then post every existing watched file (catches offline changes)."""
        with self._io:
            self._observer = self._new_observer()
            self._observer.start()
            for project in list(self._projects.values()):
                self._attach(project)
        self._worker = threading.Thread(target=self._run, name="expbridge-watch", daemon=True)
        self._worker.start()
        for project in list(self._projects.values()):
            self._rescan(project, force=True)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)
        with self._io:
            if self._observer is not None:
                self._stop_observer(self._observer)
                self._observer = None

    def ignore_next(self, path: Path, sha: str) -> None:
        """Record the hash of our own write so its events post nothing. Call it right after the
        os.replace() from a .expbridge-tmp-* file (within OWN_WRITE_GRACE_S), or before it."""
        with self._io:
            self._seen[_real(path.parent) / path.name] = sha

    def add_project(self, project: Path) -> None:
        """Watch one more project and post its existing files, as start() does."""
        self._register(project)
        if self._observer is None:
            return  # start() attaches and rescans every registered project
        with self._io:
            self._attach(project)
        self._rescan(project, force=True)

    # -- called from watchdog's thread --------------------------------------------------------

    def _mark(self, path: Path, kind: str) -> None:
        with self._cond:
            project = self._projects.get(path.parent)
            if project is not None and path.name == LOGS_DIR:
                if kind == "modified":
                    return  # a file inside it changed: that file's own event says which
                self._attach_wanted.add(project)  # refine-logs/ appeared (or went away)
            elif path.parent in self._logs and is_watched(path.name):
                now = time.monotonic()
                delay = 0.0 if kind in _SETTLE_NOW else OWN_WRITE_GRACE_S if kind == "own_write" else self._debounce_s
                self._pending[path] = now + delay
            else:
                return
            self._cond.notify_all()

    # -- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_supervise = time.monotonic() + SUPERVISE_S
        next_rescan = time.monotonic() + self._rescan_s
        while True:
            due, attach = self._wait_for_work(next_supervise)
            if due is None:
                return
            try:
                for project in attach:
                    self._reattach(project, announce=True)
                for path in due:
                    self._settle(path)
                now = time.monotonic()
                if now >= next_supervise:
                    next_supervise = now + SUPERVISE_S
                    self._supervise()
                if now >= next_rescan:
                    next_rescan = now + self._rescan_s
                    for project in list(self._projects.values()):
                        self._rescan(project, force=False)
            except Exception:
                # a bug here must not end the watch: log it, and the next pass tries again
                log.exception("watch.worker_failed")
                time.sleep(SUPERVISE_S)

    def _wait_for_work(self, next_supervise: float) -> tuple[list[Path] | None, set[Path]]:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                due = [p for p, t in self._pending.items() if t <= now]
                if due or self._attach_wanted or now >= next_supervise:
                    for path in due:
                        del self._pending[path]
                    attach, self._attach_wanted = self._attach_wanted, set()
                    return due, attach
                self._cond.wait(min([next_supervise, *self._pending.values()]) - now)
            return None, set()

    def _settle(self, path: Path, *, force: bool = False) -> None:
        """Hash the file and post it if the hash is new (force: post whatever exists)."""
        with self._cond:
            project = self._logs.get(path.parent)
        if project is None:
            return
        with self._io:
            try:
                sha = file_sha(path)
            except OSError as exc:  # unreadable right now: the next event or rescan retries
                log.warning("watch.unreadable", path=str(path), error=str(exc))
                return
            if sha is None and (force or path not in self._seen):
                return
            if not force and self._seen.get(path, "") == sha:
                return
            try:
                self._post(FileChanged(project, project / LOGS_DIR / path.name, sha))
            except Exception:
                log.exception("watch.post_failed", path=str(path))
                return  # not recorded as seen, so the next event or rescan posts it again
            self._seen[path] = sha

    def _rescan(self, project: Path, *, force: bool) -> None:
        logs = _real(project / LOGS_DIR)
        with self._cond:
            if logs not in self._logs:
                return
        for name in sorted(WATCHED_NAMES):
            self._settle(logs / name, force=force)

    # -- attaching watches and supervising the observer --------------------------------------

    def _register(self, project: Path) -> None:
        with self._cond:
            self._projects[_real(project)] = project

    def _new_observer(self) -> BaseObserver:
        if self._polling:
            return PollingObserver(timeout=self._poll_interval_s)
        return Observer()

    def _attach(self, project: Path, *, announce: bool = True) -> None:
        """Point the project's watch at refine-logs/ if it exists, else at the project folder."""
        assert self._observer is not None
        real, logs = _real(project), _real(project / LOGS_DIR)
        want = logs if logs.is_dir() else (real if real.is_dir() else None)
        current = self._attached.get(real)
        if current is not None and current.folder == want and self._emitter_alive(current.watch):
            return
        self._detach(real)
        if want is None:
            if announce or current is not None:  # once, not on every supervision pass
                log.warning("watch.project_missing", project=str(project))
            return
        try:
            watch = self._observer.schedule(self._handler, str(want), recursive=False)
        except OSError as exc:  # vanished in between, or inotify limits: supervision retries
            log.warning("watch.schedule_failed", folder=str(want), error=str(exc))
            return
        self._attached[real] = _Attached(watch, want)
        if want == logs:
            with self._cond:
                self._logs[logs] = project
        log.info("watch.attached", project=str(project), folder=str(want))

    def _detach(self, real: Path) -> None:
        current = self._attached.pop(real, None)
        if current is None:
            return
        try:
            if self._observer is not None:
                self._observer.unschedule(current.watch)
        except (KeyError, RuntimeError):
            pass  # already gone with its emitter

    def _emitter_alive(self, watch: ObservedWatch) -> bool:
        assert self._observer is not None
        return any(e.watch == watch and e.is_alive() for e in self._observer.emitters)

    def _supervise(self) -> None:
        with self._io:
            if self._stopping or self._observer is None:
                return
            if not self._observer.is_alive():
                log.error("watch.observer_died", action="restarting the observer")
                self._restart_observer()
            for project in list(self._projects.values()):
                self._reattach(project, announce=False)

    def _reattach(self, project: Path, *, announce: bool) -> None:
        with self._io:
            before = self._attached.get(_real(project))
            self._attach(project, announce=announce)
            if self._attached.get(_real(project)) is not before:
                self._rescan(project, force=False)  # events may have been missed meanwhile

    def _restart_observer(self) -> None:
        old = self._observer
        self._attached.clear()
        self._observer = self._new_observer()
        self._observer.start()
        if old is not None:
            threading.Thread(target=self._stop_observer, args=(old,), daemon=True).start()

    @staticmethod
    def _stop_observer(observer: BaseObserver) -> None:
        try:
            observer.stop()
            observer.join(timeout=5)
        except RuntimeError:
            pass  # never started
