"""The tracker's view of jobs: one Status and one `eb:` Notes tail per run (DESIGN §3)."""
from __future__ import annotations

import time
from typing import Iterable, Sequence

from daemon.model import Job, JobState

J = JobState
TRACKER_STATUS = {
    J.PENDING: "QUEUED", J.LAUNCHING: "QUEUED", J.RETRY_WAIT: "QUEUED",
    J.OOM: "QUEUED", J.LOST: "QUEUED", J.TIMEOUT: "QUEUED",
    J.RUNNING: "RUNNING", J.PAUSED: "PAUSED", J.SUCCEEDED: "DONE", J.FAILED: "FAILED",
    J.STUCK: "STUCK", J.BLOCKED: "BLOCKED", J.CANCELLED: "SKIPPED", J.SKIPPED: "SKIPPED",
}
PRECEDENCE = ("PAUSED", "RUNNING", "QUEUED", "STUCK", "FAILED", "BLOCKED", "SKIPPED")


def run_status(jobs: Sequence[Job]) -> str:
    """The first of PAUSED, RUNNING, QUEUED, STUCK, FAILED, BLOCKED, SKIPPED any job has; DONE
    only when every job succeeded (success already includes its declared outputs)."""
    return status_of_states({j.state for j in jobs}) if jobs else "QUEUED"


def status_of_states(states: Iterable[JobState]) -> str:
    """run_status from the set of states a run's jobs are in (what the job index counts)."""
    present = {TRACKER_STATUS[s] for s in states}
    if not present:
        return "QUEUED"
    for status in PRECEDENCE:
        if status in present:
            return status
    return "DONE"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def run_notes(jobs: Sequence[Job], status: str, metrics_text: str = "") -> str:
    """The daemon-owned Notes tail: what a person needs at a glance, in one line."""
    if status == "DONE":
        return metrics_text or f"{len(jobs)} job(s) done"
    if status == "RUNNING":
        live = [j for j in jobs if j.state is J.RUNNING]
        where = ", ".join(f"{j.job_id} a{j.attempt} on {j.slot}" for j in live[:3])
        return f"running {where}" + (f" (+{len(live) - 3})" if len(live) > 3 else "")
    waiting = [j for j in jobs if j.state is J.RETRY_WAIT]
    if status == "QUEUED" and waiting:
        j = waiting[0]
        return f"{j.reason} at {_clock(j.next_attempt_at or 0)}"
    bad = [j for j in jobs if TRACKER_STATUS[j.state] == status and j.reason]
    if bad:
        return "; ".join(f"{j.job_id}: {j.reason}" for j in bad[:2])
    return status.lower()
