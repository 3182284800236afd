"""Persistent state: SQLite in WAL mode, one transaction per event batch.

Rows mirror the frozen Job and PlanRecord values; the core keeps them in memory and writes only
what changed, so a transition costs the same whatever the queue length. The events table is
append-only: it is the history the tests (and people) read to prove nothing ran twice.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator, Sequence

from daemon.errors import LockHeld, StoreError
from daemon.model import Event, Job, JobState, PlanRecord, PlanState

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    project TEXT PRIMARY KEY, slug TEXT NOT NULL, run_ts TEXT NOT NULL, state TEXT NOT NULL,
    prev_state TEXT, milestone TEXT, reason TEXT NOT NULL, plan_sha TEXT NOT NULL,
    updated_at REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    project TEXT NOT NULL, job_id TEXT NOT NULL, run_id TEXT, milestone TEXT, phase TEXT NOT NULL,
    cmd TEXT NOT NULL, cwd TEXT NOT NULL, state TEXT NOT NULL, prev_state TEXT,
    attempt INTEGER NOT NULL, class_attempts TEXT NOT NULL, next_attempt_at REAL, slot TEXT,
    handle TEXT, exit_code INTEGER, reason TEXT NOT NULL, started_at REAL, ended_at REAL,
    updated_at REAL NOT NULL, spec TEXT NOT NULL, must INTEGER NOT NULL, "order" INTEGER NOT NULL,
    PRIMARY KEY (project, job_id));
CREATE TABLE IF NOT EXISTS cells (
    project TEXT NOT NULL, run_id TEXT NOT NULL, status TEXT, notes_eb TEXT,
    PRIMARY KEY (project, run_id));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
    project TEXT NOT NULL, subject TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_subject ON events (project, subject);
"""

_JOB_FIELDS = [f.name for f in fields(Job)]
_PLAN_FIELDS = [f.name for f in fields(PlanRecord)]


def _job_row(job: Job) -> tuple[Any, ...]:
    values = []
    for name in _JOB_FIELDS:
        v = getattr(job, name)
        if name in ("class_attempts", "spec"):
            v = json.dumps(dict(v), sort_keys=True)
        elif name in ("state", "prev_state"):
            v = v.value if v is not None else None
        elif name == "must":
            v = int(v)
        values.append(v)
    return tuple(values)


def _job_from_row(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["class_attempts"] = json.loads(d["class_attempts"])
    d["spec"] = json.loads(d["spec"])
    d["state"] = JobState(d["state"])
    d["prev_state"] = JobState(d["prev_state"]) if d["prev_state"] else None
    d["must"] = bool(d["must"])
    return Job(**d)


def _plan_row(plan: PlanRecord) -> tuple[Any, ...]:
    out = []
    for name in _PLAN_FIELDS:
        v = getattr(plan, name)
        if name in ("state", "prev_state"):
            v = v.value if v is not None else None
        elif name == "data":
            v = json.dumps(dict(v), sort_keys=True)
        out.append(v)
    return tuple(out)


def _plan_from_row(row: sqlite3.Row) -> PlanRecord:
    d = dict(row)
    d["state"] = PlanState(d["state"])
    d["prev_state"] = PlanState(d["prev_state"]) if d["prev_state"] else None
    d["data"] = json.loads(d["data"])
    return PlanRecord(**d)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                      timeout=10.0)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: state database unusable: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot begin a transaction: {exc}") from exc
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # a full disk shows up here
            self._rollback()
            raise StoreError(f"{self.path}: commit failed: {exc}") from exc

    def _rollback(self) -> None:
        if self.db.in_transaction:  # sqlite may already have rolled back on its own (SQLITE_FULL)
            self.db.execute("ROLLBACK")

    def put_jobs(self, jobs: Sequence[Job]) -> None:
        cols = ", ".join(f'"{n}"' for n in _JOB_FIELDS)
        marks = ", ".join("?" for _ in _JOB_FIELDS)
        self.db.executemany(f"INSERT OR REPLACE INTO jobs ({cols}) VALUES ({marks})", [_job_row(j) for j in jobs])

    def put_plan(self, plan: PlanRecord) -> None:
        cols = ", ".join(_PLAN_FIELDS)
        marks = ", ".join("?" for _ in _PLAN_FIELDS)
        self.db.execute(f"INSERT OR REPLACE INTO plans ({cols}) VALUES ({marks})", _plan_row(plan))

    def add_events(self, events: Sequence[Event]) -> None:
        self.db.executemany(
            "INSERT INTO events (ts, kind, project, subject, src, dst, detail) VALUES (?,?,?,?,?,?,?)",
            [(e.ts, e.kind, e.project, e.subject, e.src, e.dst, json.dumps(dict(e.detail), default=str))
             for e in events])

    def put_cell(self, project: str, run_id: str, status: str | None, notes_eb: str | None) -> None:
        try:
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?,?,?,?)", (project, run_id, status, notes_eb))
        except sqlite3.OperationalError as exc:  # a full disk: the caller retries on a later write
            raise StoreError(f"{self.path}: cannot record a tracker write: {exc}") from exc

    def cells(self, project: str) -> dict[str, tuple[str | None, str | None]]:
        rows = self.db.execute("SELECT run_id, status, notes_eb FROM cells WHERE project=?", (project,))
        return {r["run_id"]: (r["status"], r["notes_eb"]) for r in rows}

    def jobs(self, project: str | None = None) -> list[Job]:
        if project is None:
            rows = self.db.execute('SELECT * FROM jobs ORDER BY project, "order"')
        else:
            rows = self.db.execute('SELECT * FROM jobs WHERE project=? ORDER BY "order"', (project,))
        return [_job_from_row(r) for r in rows]

    def plans(self) -> list[PlanRecord]:
        return [_plan_from_row(r) for r in self.db.execute("SELECT * FROM plans ORDER BY project")]

    def plan(self, project: str) -> PlanRecord | None:
        row = self.db.execute("SELECT * FROM plans WHERE project=?", (project,)).fetchone()
        return _plan_from_row(row) if row else None

    def events(self, project: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM events WHERE 1=1", []
        if project:
            sql, args = sql + " AND project=?", [*args, project]
        if kind:
            sql, args = sql + " AND kind=?", [*args, kind]
        rows = self.db.execute(sql + " ORDER BY seq", args)
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    def command_seen(self, project: str, run_id: str, cell: str, sha: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM events WHERE kind='command' AND project=? AND subject=? AND src=? AND dst=?",
            (project, run_id, cell, sha)).fetchone()
        return row is not None

    def close(self) -> None:
        self.db.close()


class DirLock:
    """An exclusive flock; a second holder is refused with the first holder's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> "DirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(str(self.path), f"pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
