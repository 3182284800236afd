"""Process-group helpers for jobs started on this machine (local backend, loopback tests).

A pid alone is not an identity: pids are reused. A handle records the pid and its start time
(field 22 of /proc/<pid>/stat), and nothing is signalled unless both still match (F104).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses; everything after the last ')' is fixed-format
    return raw[raw.rfind(")") + 2:].split()


def start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def identity(pid: int) -> str | None:
    st = start_time(pid)
    return f"{pid}:{st}" if st else None


def is_ours(ref: str) -> bool:
    """True when the process named by 'pid:starttime' is alive and is the one we started."""
    pid_text, _, st = ref.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X") and start_time(pid) == st


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def terminate_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after the grace period."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    signal_group(pgid, signal.SIGCONT)  # a stopped group cannot act on SIGTERM
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL)


def read_tail(path: Path, nbytes: int = 10_000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
