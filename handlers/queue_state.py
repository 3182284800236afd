"""`queue_state.json` and the queue `summary.md`, in the ARIS formats (ARIS_SPEC §2.9, §2.10).

The JSON keeps ARIS's monitoring one-liner working:
    jq '.jobs | group_by(.status) | map({(.[0].status): length}) | add'
Our own job state and last failure class ride along as extra keys, which ARIS readers ignore.

Input jobs are mappings with the field names of `daemon.model.Job` (`job_id`, `phase`, `cmd`,
`state`, `attempt`, `class_attempts`, `started_at`, `ended_at`, `reason`, `spec`) plus, when the
core knows them, `failure_class`, `gpu`, `session`, `pid` and `blocked_by`. Times are epoch
seconds, datetimes or ISO strings.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from handlers.versioning import atomic_write

QUEUE_STATUSES = ("pending", "running", "completed", "failed_oom", "failed_other", "stuck")
PHASE_STATUSES = ("pending", "running", "completed")
# job state -> (queue status, error); DESIGN §3. retry_wait and blocked are refined in queue_status().
JOB_STATE_TO_QUEUE: Mapping[str, tuple[str, str | None]] = {
    "pending": ("pending", None),
    "launching": ("pending", None),
    "running": ("running", None),
    "paused": ("pending", "paused"),
    "retry_wait": ("pending", None),
    "succeeded": ("completed", None),
    "failed": ("failed_other", None),
    # the moment between an attempt ending and the retry policy deciding
    "oom": ("failed_oom", "CUDA OOM detected"),
    "lost": ("failed_other", "lost"),
    "timeout": ("failed_other", "timeout"),
    "stuck": ("stuck", None),
    "blocked": ("pending", "blocked"),
    "cancelled": ("stuck", "skipped by user"),
    "skipped": ("stuck", "skipped by user"),
}
_FINAL_QUEUE = ("completed", "stuck")


def run_ts(now: datetime) -> str:
    """ARIS's `RUN_TS=$(date -u +%Y%m%dT%H%M%SZ)`: one value per run of the plan."""
    moment = now.astimezone(timezone.utc) if now.tzinfo else now
    return f"{moment:%Y%m%dT%H%M%SZ}"


def queue_state_path(project: Path, ts: str) -> Path:
    """`<project>/experiment_queue/<RUN_TS>/queue_state.json` (DESIGN §3)."""
    return project / "experiment_queue" / ts / "queue_state.json"


def queue_status(state: str, failure_class: str | None = None,
                 blocked_by: str | None = None, reason: str = "") -> tuple[str, str | None]:
    """The ARIS status and error for one of our job states."""
    status, error = JOB_STATE_TO_QUEUE.get(state, ("pending", f"unknown state {state}"))
    if state == "retry_wait":
        if failure_class == "oom":
            return "failed_oom", reason or "CUDA OOM detected"
        return "pending", reason or None
    if state == "blocked":
        return status, f"blocked by {blocked_by}" if blocked_by else "blocked"
    if state in ("failed", "stuck") and reason:
        return status, reason
    return status, error


def iso_z(value: float | int | datetime | str | None) -> str | None:
    """`2026-11-26T04:06:54.335925Z`, the form ARIS writes (`utcnow().isoformat()+"Z"`)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        moment = value.astimezone(timezone.utc) if value.tzinfo else value
    else:
        moment = datetime.fromtimestamp(float(value), timezone.utc)
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _state(job: Mapping[str, Any]) -> str:
    state = job.get("state", "pending")
    return str(getattr(state, "value", state))


def _failure_class(job: Mapping[str, Any], state: str) -> str | None:
    if job.get("failure_class"):
        return str(job["failure_class"])
    return {"oom": "oom", "lost": "lost", "timeout": "timeout", "failed": "failed"}.get(state)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def render_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """One job in the ARIS shape, plus `state`, `failure_class`, `run` and `oom_retries`."""
    state = _state(job)
    failure = _failure_class(job, state)
    status, error = queue_status(state, failure, job.get("blocked_by"), str(job.get("reason") or ""))
    spec = job.get("spec") or {}
    expected = job.get("expected_output", spec.get("expected_output"))
    oom_retries = (job.get("class_attempts") or {}).get("oom", 0)
    return {
        "id": str(job.get("job_id", job.get("id", ""))),
        "phase": str(job.get("phase") or ""),
        "cmd": str(job.get("cmd") or ""),
        "expected_output": None if expected is None else str(expected),
        "status": status,
        "gpu": _int_or_none(job.get("gpu")),
        "screen_name": job.get("session"),
        "pid": _int_or_none(job.get("pid")),
        "attempts": int(job.get("attempt", job.get("attempts", 0)) or 0),
        "started": iso_z(job.get("started_at")),
        "completed": iso_z(job.get("ended_at")),
        "error": error,
        "state": state,
        "failure_class": failure,
        "run": job.get("run_id"),
        "oom_retries": int(oom_retries or 0),
    }


def phase_status(job_statuses: Sequence[str]) -> str:
    """ARIS: running once a job has started, completed when all are completed or stuck."""
    if job_statuses and all(s in _FINAL_QUEUE for s in job_statuses):
        return "completed"
    if any(s != "pending" for s in job_statuses):
        return "running"
    return "pending"


def render_queue_state(meta: Mapping[str, Any], phases: Sequence[Mapping[str, Any]],
                       jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole queue_state.json document; phases named only by jobs are added in job order."""
    rendered = [render_job(j) for j in jobs]
    names = [str(p["name"]) for p in phases]
    names += [n for n in dict.fromkeys(j["phase"] for j in rendered) if n not in names]
    deps = {str(p["name"]): _as_list(p.get("depends_on")) for p in phases}
    return {
        "meta": {
            "project": str(meta.get("project", "unknown")),
            "started": iso_z(meta.get("started")),
            "manifest_path": None if meta.get("manifest_path") is None else str(meta["manifest_path"]),
        },
        "phases": [
            {"name": n, "depends_on": deps.get(n, []),
             "status": phase_status([j["status"] for j in rendered if j["phase"] == n])}
            for n in names
        ],
        "jobs": rendered,
    }


def _as_list(value: Any) -> list[str]:
    """ARIS's SKILL shows `depends_on: teacher` as a bare string; it means a one-item list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def status_counts(state: Mapping[str, Any]) -> dict[str, int] | None:
    """What the ARIS jq one-liner prints (None, like jq's `add` of nothing, when there are no jobs)."""
    counts: dict[str, int] = {}
    for job in sorted(state.get("jobs", []), key=lambda j: str(j["status"])):
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return counts or None


def write_queue_state(path: Path, state: Mapping[str, Any]) -> bool:
    """Write atomically when the content changed; True when the file was written."""
    text = json.dumps(state, indent=2, ensure_ascii=False) + "\n"
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(path, text)
    return True


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.rstrip("Z"))
    except ValueError:
        return None


def _span(jobs: Sequence[Mapping[str, Any]]) -> float | None:
    starts = [t for j in jobs if (t := _parse_iso(j.get("started")))]
    ends = [t for j in jobs if (t := _parse_iso(j.get("completed")))]
    if not starts or not ends:
        return None
    return (max(ends) - min(starts)).total_seconds()


def render_summary_md(state: Mapping[str, Any], completed: float | datetime | str,
                      results_files: Sequence[tuple[str, int]] = (),
                      next_steps: Sequence[str] = ()) -> str:
    """The queue `summary.md` (ARIS §2.10) for a finished run of the plan.

    `results_files` lists (glob, count) pairs for the `## Results Files` section.
    """
    jobs = list(state.get("jobs", []))
    done = [j for j in jobs if j["status"] == "completed"]
    oom_then_done = [j for j in done if j.get("oom_retries", 0) > 0]
    stuck = [j for j in jobs if j["status"] == "stuck"]
    failed = [j for j in jobs if j["status"] == "failed_other"]
    unfinished = [j for j in jobs if j["status"] in ("pending", "running", "failed_oom")]
    started = state.get("meta", {}).get("started")
    ended = iso_z(completed)
    wall = None
    if (s := _parse_iso(started)) and (e := _parse_iso(ended)):
        wall = (e - s).total_seconds()
    job_line = f"{len(done)} completed, {len(oom_then_done)} OOM-retried then completed, {len(stuck)} stuck"
    if failed:
        job_line += f", {len(failed)} failed"
    if unfinished:
        job_line += f", {len(unfinished)} not finished"
    lines = [
        "# Experiment Queue Summary", "",
        f"**Project**: {state.get('meta', {}).get('project', 'unknown')}",
        f"**Started**: {started or '—'}",
        f"**Completed**: {ended}",
        f"**Total wall-clock**: {_duration(wall)}",
        f"**Jobs**: {job_line}", "",
        "## Phases", "",
        "| Phase | Jobs | Success | OOM retries | Duration |",
        "|-------|------|---------|-------------|----------|",
    ]
    for phase in state.get("phases", []):
        members = [j for j in jobs if j["phase"] == phase["name"]]
        ok = sum(1 for j in members if j["status"] == "completed")
        ooms = sum(int(j.get("oom_retries", 0)) for j in members)
        lines.append(f"| {_cell(phase['name'])} | {len(members)} | {ok}/{len(members)} | {ooms} "
                     f"| {_duration(_span(members))} |")
    lines += ["", "## Results Files", ""]
    lines += [f"- `{glob}`: {count} file(s)" for glob, count in results_files] or ["- none declared"]
    lines += ["", "## Next Steps", ""]
    lines += [f"- {step}" for step in next_steps] or [
        "- `/analyze-results` on the collected outputs (see refine-logs/EXPERIMENT_RESULTS.md)",
        "- sync artifacts back from remote hosts before destroying rented instances",
    ]
    return "\n".join(lines) + "\n"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
