"""Run a hook (implement, review, debug, rescue, judge, ablation planner, training check, audit)
under the contract of DESIGN §5.

The hook gets EB_PROJECT, EB_PHASE, EB_MILESTONE, EB_CONTEXT_DIR and EB_OUT, runs in its own
process group with the project as cwd and stdin closed, and writes result.json under EB_OUT:

    {"status": "ok" | "failed" | ..., "findings": [{"severity", "file", "line", "issue", "fix"}], ...}

Its stdout and stderr go to log_path, where the runner adds a heartbeat line every heartbeat_s,
so a silent 16-hour hook is visible. Past timeout_s the whole group (grandchildren included) gets
SIGTERM, then SIGKILL. A string command is a shell command line from the config file; a sequence
is run as argv. Nothing from a plan or tracker is ever interpolated into it: hooks read their
inputs from the environment and the context folder.

run_hook never raises for a hook's failure: every outcome is a HookResult status. A hook's own
status word "failed", "fail" or "error" (any case) gives "failed", any other word "ok"; the word
itself stays in data["status"] (PASS/WARN/FAIL for audit, CONTINUE/WAIT/STOP for training check).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from backends.procs import read_tail, signal_group
from handlers.hook_context import CHECKLIST, prepare_context

__all__ = ["CHECKLIST", "HookResult", "blocking_findings", "parse_result", "prepare_context", "run_hook"]

STATUSES = ("ok", "failed", "timeout", "missing", "crashed", "bad_output")
BLOCKING_SEVERITIES = frozenset({"BLOCKING", "CRITICAL"})
_FAILED_WORDS = frozenset({"failed", "fail", "error"})
RESULT_FILE = "result.json"
EXPECTED = '{"status": "...", "findings": [{"severity", "file", "line", "issue", "fix"}, ...]}'
KILL_GRACE_S = 5.0
TAIL_BYTES = 2_000


@dataclass(frozen=True)
class HookResult:
    status: str        # one of STATUSES
    data: dict         # result.json as parsed, or {}
    findings: list[dict]
    out_dir: Path
    log_path: Path
    reason: str        # empty when status is "ok"
    duration_s: float


def blocking_findings(result: HookResult) -> list[dict]:
    """Findings that gate deployment: severity BLOCKING or CRITICAL, in any case."""
    return [f for f in result.findings if str(f.get("severity", "")).strip().upper() in BLOCKING_SEVERITIES]


# -- result.json: pure parsing --------------------------------------------------------------

def _finding(raw: object, index: int) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"findings[{index}] must be an object with severity, file, line, issue, fix")
    severity = raw.get("severity")
    if not isinstance(severity, str) or not severity.strip():
        raise ValueError(f"findings[{index}] has no 'severity' string (BLOCKING, CRITICAL, MAJOR, MINOR, INFO)")
    line = raw.get("line")
    try:
        line = int(line) if line is not None and not isinstance(line, bool) else None
    except (TypeError, ValueError):
        line = None  # "n/a", "12-14": keep the finding, lose only the line number
    return {**raw, "severity": severity.strip(), "line": line,
            "file": raw.get("file"), "issue": str(raw.get("issue", "")), "fix": str(raw.get("fix", ""))}


def parse_result(text: str) -> tuple[str, dict, list[dict]]:
    """(status, data, findings) from result.json text; ValueError saying what was expected."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    status = data.get("status")
    if not isinstance(status, str) or not status.strip():
        raise ValueError("has no 'status' string")
    raw_findings = data.get("findings", [])
    if not isinstance(raw_findings, list):
        raise ValueError("'findings' must be a list")
    findings = [_finding(raw, i) for i, raw in enumerate(raw_findings)]
    return ("failed" if status.strip().lower() in _FAILED_WORDS else "ok"), data, findings


# -- running the process ----------------------------------------------------------------------

def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _note(log: IO[str], text: str) -> None:
    log.write(f"[expbridge {_stamp()}] {text}\n")
    log.flush()


def _environment(project: Path, phase: str, milestone: str | None, context_dir: Path, out_dir: Path,
                 extra_env: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **extra_env,
            "EB_PROJECT": str(project.resolve()), "EB_PHASE": phase, "EB_MILESTONE": milestone or "",
            "EB_CONTEXT_DIR": str(context_dir.resolve()), "EB_OUT": str(out_dir.resolve())}


def _group_running(pgid: int) -> bool:
    """True while a non-zombie process is in the group. killpg(pgid, 0) is not enough: orphaned
    zombies keep answering it where PID 1 does not reap (containers, some sandboxes)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # exited while we looked
        state, _ppid, pgrp = raw[raw.rfind(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


def _signal_and_wait(proc: subprocess.Popen[bytes], sig: signal.Signals, wait_s: float) -> bool:
    """Signal the hook's group; True once nothing in it runs. The leader is reaped meanwhile,
    so it does not count as running."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    if not signal_group(pgid, sig):
        return True
    if sig == signal.SIGTERM:
        signal_group(pgid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    deadline = time.monotonic() + wait_s
    while True:
        proc.poll()
        if not _group_running(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the whole group, then SIGKILL what is left after the grace period."""
    if not _signal_and_wait(proc, signal.SIGTERM, grace_s):
        _signal_and_wait(proc, signal.SIGKILL, grace_s)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass  # stuck in uninterruptible sleep (a dead NFS mount): nothing more a signal can do


def _supervise(proc: subprocess.Popen[bytes], log: IO[str], phase: str, timeout_s: float,
               heartbeat_s: float, stop: threading.Event | None) -> tuple[str, str] | None:
    """Wait for the hook with heartbeats; (status, reason) if it had to be killed, None if it
    exited by itself."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= timeout_s:
            return "timeout", f"{phase} hook timed out after {timeout_s:g}s; its process group was killed"
        if stop is not None and stop.is_set():
            return "crashed", f"{phase} hook stopped after {elapsed:.1f}s: expbridge is shutting down"
        wait_s = min(heartbeat_s, timeout_s - elapsed, 0.5 if stop is not None else math.inf)
        try:
            proc.wait(timeout=max(wait_s, 0.01))
            return None
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - started
        if elapsed < timeout_s:
            _note(log, f"heartbeat: {phase} hook still running after {elapsed:.1f}s (pid {proc.pid})")


def _spawn(command: str | Sequence[str], env: dict[str, str], cwd: Path, log: IO[str]) -> subprocess.Popen[bytes]:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def _exit_reason(phase: str, code: int, log_path: Path) -> str:
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    hint = " (command not found?)" if code == 127 else ""
    return f"{phase} hook {how}{hint}; log tail ({log_path}):\n{read_tail(log_path, TAIL_BYTES).rstrip()}"


def _read_result(phase: str, out_dir: Path) -> tuple[str, dict, list[dict], str]:
    path = out_dir / RESULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "bad_output", {}, [], f"{phase} hook exited 0 but wrote no {path}; expected {EXPECTED}"
    except (OSError, UnicodeDecodeError) as exc:
        return "bad_output", {}, [], f"{phase} hook's {path} is unreadable ({exc}); expected {EXPECTED}"
    try:
        status, data, findings = parse_result(text)
    except ValueError as exc:
        return "bad_output", {}, [], f"{path}: {exc}; expected {EXPECTED}"
    reason = "" if status == "ok" else f"{phase} hook reported status {data['status']!r}"
    return status, data, findings, reason


def run_hook(command: str | Sequence[str] | None, *, project: Path, phase: str, milestone: str | None,
             context_dir: Path, out_dir: Path, log_path: Path, timeout_s: float, heartbeat_s: float,
             extra_env: Mapping[str, str] = {}, stop: threading.Event | None = None,
             kill_grace_s: float = KILL_GRACE_S) -> HookResult:
    """Run one hook to completion (blocking: call it from a worker thread). `stop`, when set,
    kills the hook as a timeout would and returns "crashed" with the reason."""
    started = time.monotonic()

    def result(status: str, reason: str, data: dict | None = None, findings: list[dict] | None = None) -> HookResult:
        return HookResult(status, data or {}, findings or [], out_dir, log_path, reason,
                          time.monotonic() - started)

    if not command:
        return result("missing", f"no {phase} hook is configured")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not pass for this run's
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = _environment(project, phase, milestone, context_dir, out_dir, extra_env)
    with log_path.open("a", encoding="utf-8") as log:
        try:
            proc = _spawn(command, env, project, log)
        except OSError as exc:  # argv[0] missing or not executable, or no project folder
            _note(log, f"{phase} hook could not start: {exc}")
            return result("missing", f"{phase} hook could not start: {exc}")
        # the command itself is not logged: config files may put credentials in it
        _note(log, f"{phase} hook started (milestone {milestone or '-'}, pid {proc.pid})")
        killed = _supervise(proc, log, phase, timeout_s, heartbeat_s, stop)
        if killed is not None:
            _note(log, killed[1])
            _kill_group(proc, kill_grace_s)
            return result(*killed)
        if _group_running(proc.pid):  # what it backgrounded must not outlive it
            _note(log, f"{phase} hook left processes behind in its group; killing them")
            _kill_group(proc, kill_grace_s)
        code = proc.returncode
        _note(log, f"{phase} hook exited with code {code} after {time.monotonic() - started:.1f}s")
    if code != 0:
        return result("crashed", _exit_reason(phase, code, log_path))
    status, data, findings, reason = _read_result(phase, out_dir)
    return result(status, reason, data, findings)
