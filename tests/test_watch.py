"""ProjectWatcher against a real temp dir and real inotify (and the polling observer).

"Nothing was posted" is checked with a sentinel: after the no-op save and a wait longer than the
debounce, a real change to another watched file is made; every event up to the sentinel's is
collected, so a late post of the no-op file would be seen, not missed.
"""
from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.watch import FileChanged, ProjectWatcher, is_watched
from tests.plugins.common import wait_for

DEBOUNCE_MS = 150
TIMEOUT = 10.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Inbox:
    """The core's inbox as the watcher sees it: a queue fed by post()."""

    def __init__(self) -> None:
        self.q: queue.Queue[FileChanged] = queue.Queue()

    def post(self, event: FileChanged) -> None:
        self.q.put(event)

    def next(self) -> FileChanged:
        try:
            return self.q.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no FileChanged within {TIMEOUT}s") from None

    def until(self, path: Path, digest: str | None) -> list[FileChanged]:
        """Every event up to and including the one for path with that hash."""
        seen: list[FileChanged] = []
        while not seen or (seen[-1].path, seen[-1].sha) != (path, digest):
            seen.append(self.next())
        return seen

    def drain(self) -> list[FileChanged]:
        out = []
        while not self.q.empty():
            out.append(self.q.get_nowait())
        return out


def sentinel(logs: Path, inbox: Inbox) -> list[FileChanged]:
    """Wait past the debounce, make a real change, return everything posted before it."""
    time.sleep(3 * DEBOUNCE_MS / 1000)
    target = logs / "FINAL_PROPOSAL.md"
    body = f"sentinel {time.monotonic_ns()}\n".encode()
    target.write_bytes(body)
    return inbox.until(target, sha(body))[:-1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "proj" / "refine-logs").mkdir(parents=True)
    return tmp_path / "proj"


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def watching(project: Path, inbox: Inbox) -> Iterator[ProjectWatcher]:
    watcher = ProjectWatcher([project], inbox.post, debounce_ms=DEBOUNCE_MS)
    watcher.start()
    yield watcher
    watcher.stop()


def plan(project: Path) -> Path:
    return project / "refine-logs" / "EXPERIMENT_PLAN.md"


# -- pure name rules ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "EXPERIMENT_PLAN.md", "EXPERIMENT_TRACKER.md", "EXPERIMENT_QUEUE.yaml",
    "EXPERIMENT_QUEUE.yml", "FINAL_PROPOSAL.md",
])
def test_watched_names(name: str) -> None:
    assert is_watched(name)


@pytest.mark.parametrize("name", [
    "EXPERIMENT_PLAN_20261126_053000.md", "EXPERIMENT_TRACKER_20261126_053000_2.md",
    ".expbridge-tmp-abc123", ".EXPERIMENT_PLAN.md.swp", ".EXPERIMENT_PLAN.md.swx",
    "EXPERIMENT_PLAN.md~", "4913", "#EXPERIMENT_PLAN.md#", ".#EXPERIMENT_PLAN.md",
    ".goutputstream-XYZ", "EXPERIMENT_RESULTS.md", "notes.md", "experiment_plan.md",
])
def test_ignored_names(name: str) -> None:
    assert not is_watched(name)


# -- start-up rescan ------------------------------------------------------------------------

def test_rescan_at_start_posts_every_existing_watched_file(project: Path, inbox: Inbox) -> None:
    logs = project / "refine-logs"
    files = {"EXPERIMENT_PLAN.md": b"# plan\n", "EXPERIMENT_TRACKER.md": b"| a |\n",
             "EXPERIMENT_QUEUE.yaml": b"jobs: []\n"}
    for name, body in files.items():
        (logs / name).write_bytes(body)
    (logs / "EXPERIMENT_PLAN_20261126_053000.md").write_bytes(b"old\n")
    (logs / "EXPERIMENT_RESULTS.md").write_bytes(b"ours\n")
    watcher = ProjectWatcher([project], inbox.post, debounce_ms=DEBOUNCE_MS)
    watcher.start()
    try:
        # start() posts synchronously, so everything is already in the inbox
        got = {e.path.name: e for e in inbox.drain()}
    finally:
        watcher.stop()
    assert {n: e.sha for n, e in got.items()} == {n: sha(b) for n, b in files.items()}
    assert all(e.project == project and e.path == logs / e.path.name for e in got.values())


# -- the ways people save ---------------------------------------------------------------------

def test_plain_write_is_posted(watching: ProjectWatcher, project: Path, inbox: Inbox) -> None:
    plan(project).write_bytes(b"v1\n")
    assert inbox.until(plan(project), sha(b"v1\n"))[-1].project == project


def test_temp_file_and_rename(watching: ProjectWatcher, project: Path, inbox: Inbox) -> None:
    plan(project).write_bytes(b"v1\n")
    inbox.until(plan(project), sha(b"v1\n"))
    tmp = project / "refine-logs" / ".EXPERIMENT_PLAN.md.XYZ.tmp"
    tmp.write_bytes(b"v2\n")
    os.replace(tmp, plan(project))
    events = inbox.until(plan(project), sha(b"v2\n"))
    assert all(e.path == plan(project) for e in events)
    assert not [e for e in sentinel(project / "refine-logs", inbox) if e.path == plan(project)]


def test_vim_backup_rename_posts_no_deletion(watching: ProjectWatcher, project: Path,
                                            inbox: Inbox) -> None:
    plan(project).write_bytes(b"v1\n")
    inbox.until(plan(project), sha(b"v1\n"))
    backup = project / "refine-logs" / "EXPERIMENT_PLAN.md~"
    os.rename(plan(project), backup)  # vim: move the original aside, write a new file, drop ~
    plan(project).write_bytes(b"v2\n")
    backup.unlink()
    events = inbox.until(plan(project), sha(b"v2\n"))
    assert [e.sha for e in events] == [sha(b"v2\n")]


def test_sed_in_place(watching: ProjectWatcher, project: Path, inbox: Inbox) -> None:
    plan(project).write_bytes(b"lr: 1e-3\n")
    inbox.until(plan(project), sha(b"lr: 1e-3\n"))
    subprocess.run(["sed", "-i", "s/1e-3/3e-4/", str(plan(project))], check=True, timeout=30)
    assert inbox.until(plan(project), sha(b"lr: 3e-4\n"))


def test_truncate_then_write_posts_the_final_content(watching: ProjectWatcher, project: Path,
                                                     inbox: Inbox) -> None:
    plan(project).write_bytes(b"a long first version\n")
    inbox.until(plan(project), sha(b"a long first version\n"))
    with plan(project).open("r+b") as fh:
        fh.truncate(0)
        fh.flush()
        fh.write(b"short\n")
    events = inbox.until(plan(project), sha(b"short\n"))
    assert sha(b"") not in [e.sha for e in events]  # one open, one close: one complete file


def test_move_in_from_elsewhere(watching: ProjectWatcher, project: Path, inbox: Inbox,
                                tmp_path: Path) -> None:
    outside = tmp_path / "draft.md"
    outside.write_bytes(b"# dropped plan\n")
    os.rename(outside, plan(project))
    assert inbox.until(plan(project), sha(b"# dropped plan\n"))


def test_move_out_and_delete_post_none(watching: ProjectWatcher, project: Path, inbox: Inbox,
                                       tmp_path: Path) -> None:
    tracker = project / "refine-logs" / "EXPERIMENT_TRACKER.md"
    tracker.write_bytes(b"t\n")
    inbox.until(tracker, sha(b"t\n"))
    os.rename(tracker, tmp_path / "elsewhere.md")
    assert inbox.until(tracker, None)
    plan(project).write_bytes(b"p\n")
    inbox.until(plan(project), sha(b"p\n"))
    plan(project).unlink()
    assert inbox.until(plan(project), None)


# -- what must post nothing ---------------------------------------------------------------------

@pytest.mark.parametrize("when", ["before", "after"])
def test_our_own_atomic_write_is_ignored(watching: ProjectWatcher, project: Path, inbox: Inbox,
                                         when: str) -> None:
    """The core may call ignore_next before os.replace or just after it (as it does today)."""
    tracker = project / "refine-logs" / "EXPERIMENT_TRACKER.md"
    tracker.write_bytes(b"| R001 | TODO |\n")
    inbox.until(tracker, sha(b"| R001 | TODO |\n"))
    ours = b"| R001 | RUNNING |\n"
    tmp = project / "refine-logs" / ".expbridge-tmp-1234"
    tmp.write_bytes(ours)
    if when == "before":
        watching.ignore_next(tracker, sha(ours))
    os.replace(tmp, tracker)
    if when == "after":
        watching.ignore_next(tracker, sha(ours))
    assert not [e for e in sentinel(project / "refine-logs", inbox) if e.path == tracker]
    tracker.write_bytes(b"| R001 | PAUSED |\n")  # the person's next edit still counts
    assert inbox.until(tracker, sha(b"| R001 | PAUSED |\n"))


def test_a_temp_file_rename_nobody_claims_is_posted(watching: ProjectWatcher, project: Path,
                                                    inbox: Inbox) -> None:
    """`expbridge pause R001` writes the tracker from another process: the daemon must see it."""
    tracker = project / "refine-logs" / "EXPERIMENT_TRACKER.md"
    tmp = project / "refine-logs" / ".expbridge-tmp-cli"
    tmp.write_bytes(b"| R001 | PAUSED |\n")
    os.replace(tmp, tracker)
    assert inbox.until(tracker, sha(b"| R001 | PAUSED |\n"))


def test_unchanged_save_is_ignored(watching: ProjectWatcher, project: Path, inbox: Inbox) -> None:
    plan(project).write_bytes(b"same\n")
    inbox.until(plan(project), sha(b"same\n"))
    plan(project).write_bytes(b"same\n")
    os.utime(plan(project))
    assert not [e for e in sentinel(project / "refine-logs", inbox) if e.path == plan(project)]


def test_ignored_files_post_nothing(watching: ProjectWatcher, project: Path, inbox: Inbox) -> None:
    logs = project / "refine-logs"
    for name in ("EXPERIMENT_PLAN_20261126_053000.md", ".EXPERIMENT_PLAN.md.swp",
                 ".expbridge-tmp-xyz", "EXPERIMENT_RESULTS.md", "4913"):
        (logs / name).write_bytes(b"x\n")
    assert sentinel(logs, inbox) == []


def test_bursts_of_writes_are_debounced(watching: ProjectWatcher, project: Path,
                                        inbox: Inbox) -> None:
    with plan(project).open("wb") as fh:
        for i in range(5):
            fh.write(f"line {i}\n".encode())
            fh.flush()
            time.sleep(0.05)  # shorter than the debounce: still one save in progress
    body = plan(project).read_bytes()
    events = inbox.until(plan(project), sha(body))
    assert len(events) == 1, [(e.sha, sha(b"")) for e in events]
    assert not [e for e in sentinel(project / "refine-logs", inbox) if e.path == plan(project)]


# -- folders that come and go, failures that must not end the watch ---------------------------

def test_refine_logs_created_after_start(tmp_path: Path, inbox: Inbox) -> None:
    project = tmp_path / "fresh"
    project.mkdir()
    watcher = ProjectWatcher([project], inbox.post, debounce_ms=DEBOUNCE_MS)
    watcher.start()
    try:
        assert not (project / "refine-logs").exists()  # the watcher creates nothing
        (project / "refine-logs").mkdir()
        plan(project).write_bytes(b"# new\n")
        assert inbox.until(plan(project), sha(b"# new\n"))
    finally:
        watcher.stop()


def test_refine_logs_deleted_and_recreated(watching: ProjectWatcher, project: Path,
                                           inbox: Inbox) -> None:
    plan(project).write_bytes(b"one\n")
    inbox.until(plan(project), sha(b"one\n"))
    plan(project).unlink()
    (project / "refine-logs").rmdir()
    inbox.until(plan(project), None)
    (project / "refine-logs").mkdir()
    plan(project).write_bytes(b"two\n")
    assert inbox.until(plan(project), sha(b"two\n"))


def test_a_failing_post_is_logged_and_retried(project: Path) -> None:
    got: list[FileChanged] = []
    calls = {"n": 0}

    def flaky(event: FileChanged) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("inbox full")
        got.append(event)

    plan(project).write_bytes(b"v1\n")
    watcher = ProjectWatcher([project], flaky, debounce_ms=DEBOUNCE_MS)
    with capture_logs() as logs:
        watcher.start()
        try:
            assert got == []
            plan(project).write_bytes(b"v2\n")
            wait_for(lambda: got, TIMEOUT, what="the post after a failing one")
        finally:
            watcher.stop()
    assert got[0].sha == sha(b"v2\n")
    assert any(entry["event"] == "watch.post_failed" for entry in logs)


def test_an_exception_in_the_event_handler_is_logged_and_survived(
        watching: ProjectWatcher, project: Path, inbox: Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.watch as watch_module
    real = watch_module.is_watched
    calls = {"n": 0}

    def explode_once(name: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug in a filter")
        return real(name)

    monkeypatch.setattr(watch_module, "is_watched", explode_once)
    with capture_logs() as logs:
        plan(project).write_bytes(b"first\n")  # its first event hits the bug; later ones do not
        assert inbox.until(plan(project), sha(b"first\n"))
    assert any(entry["event"] == "watch.event_failed" for entry in logs)
    assert watching._observer is not None and watching._observer.is_alive()


def test_a_dead_observer_is_restarted(watching: ProjectWatcher, project: Path,
                                      inbox: Inbox) -> None:
    dead = watching._observer
    assert dead is not None
    with capture_logs() as logs:
        dead.stop()
        dead.join(timeout=5)
        plan(project).write_bytes(b"after the crash\n")
        # the restarted observer's rescan (or its inotify events) must catch the change
        assert inbox.until(plan(project), sha(b"after the crash\n"))
    assert watching._observer is not dead
    assert any(entry["event"] == "watch.observer_died" for entry in logs)
    plan(project).write_bytes(b"and later\n")
    assert inbox.until(plan(project), sha(b"and later\n"))


def test_add_project_posts_its_files(watching: ProjectWatcher, tmp_path: Path,
                                     inbox: Inbox) -> None:
    other = tmp_path / "other"
    (other / "refine-logs").mkdir(parents=True)
    plan(other).write_bytes(b"# other\n")
    watching.add_project(other)
    assert inbox.until(plan(other), sha(b"# other\n"))[-1].project == other
    plan(other).write_bytes(b"# other v2\n")
    assert inbox.until(plan(other), sha(b"# other v2\n"))


# -- network filesystems: the polling observer --------------------------------------------------

def test_polling_observer(project: Path, inbox: Inbox) -> None:
    watcher = ProjectWatcher([project], inbox.post, polling=True, debounce_ms=DEBOUNCE_MS,
                             poll_interval_s=0.2)
    watcher.start()
    try:
        plan(project).write_bytes(b"v1\n")
        inbox.until(plan(project), sha(b"v1\n"))
        tmp = project / "refine-logs" / ".expbridge-tmp-9"
        tmp.write_bytes(b"v2\n")
        os.replace(tmp, plan(project))  # seen as Deleted + Created by the polling observer
        events = inbox.until(plan(project), sha(b"v2\n"))
        assert None not in [e.sha for e in events]
    finally:
        watcher.stop()
