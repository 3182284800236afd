"""Bringing a finished attempt back from a host: its log, its wrapper files and its outputs.

Outputs are the job's `expected_output` globs, expanded on the host inside the job's cwd. The
patterns are expanded by the remote shell's globbing only (an unquoted variable, never eval), so
a pattern cannot run anything.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from backends.codesync import rsync_path
from backends.sshconn import SshPool
from backends.sshscripts import home_path, q
from daemon.errors import BackendError, UnsafeValue


def fetch(pool: SshPool, alias: str, job_dir: str, log: str, dest: Path, remote_cwd: str,
          local_cwd: str, outputs: Sequence[str], timeout: float) -> None:
    parts = PurePosixPath(job_dir).parts
    job_id, attempt = parts[-2], parts[-1]
    local_job = dest / "jobs" / job_id / attempt
    local_job.mkdir(parents=True, exist_ok=True)
    (dest / "logs").mkdir(parents=True, exist_ok=True)
    _rsync(pool, alias, [rsync_path(job_dir) + "/"], local_job, timeout)
    _rsync(pool, alias, [rsync_path(log)], dest / "logs", timeout, missing_ok=True)
    if outputs and remote_cwd and local_cwd:
        found = list_outputs(pool, alias, remote_cwd, outputs, timeout)
        if found:
            with tempfile.NamedTemporaryFile("w", suffix=".files") as listing:
                listing.write("\n".join(found) + "\n")
                listing.flush()
                Path(local_cwd).mkdir(parents=True, exist_ok=True)
                _rsync(pool, alias, [rsync_path(remote_cwd) + "/"], Path(local_cwd), timeout,
                       extra=[f"--files-from={listing.name}"])


def list_outputs(pool: SshPool, alias: str, remote_cwd: str, patterns: Sequence[str],
                 timeout: float) -> list[str]:
    for pat in patterns:
        if pat.startswith("/") or ".." in PurePosixPath(pat).parts or "\n" in pat:
            raise UnsafeValue(f"expected_output {pat!r} must be a relative path inside the job's cwd")
    assigns = "\n".join(f"eb_pat={q(p)}\nfor f in $eb_pat; do [ -e \"$f\" ] && printf '%s\\n' \"$f\"; done"
                        for p in patterns)
    script = f'cd "$HOME" && cd -- {home_path(remote_cwd)} || exit 0\nset +f\nIFS=\'\n\'\n{assigns}\n'
    result = pool.run(alias, script, timeout)
    return [line for line in result.stdout.splitlines() if line]


def _rsync(pool: SshPool, alias: str, sources: list[str], dest: Path, timeout: float,
           missing_ok: bool = False, extra: Sequence[str] = ()) -> None:
    argv = ["rsync", "-rlpt", *extra, "-e", pool.rsync_shell(alias),
            *(pool.rsync_target(alias, s) for s in sources), f"{dest}/"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 4,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"{alias}: fetch timed out", retryable=True) from exc
    if done.returncode == 23 and missing_ok:  # partial transfer: the file does not exist
        return
    if done.returncode != 0:
        raise BackendError(f"{alias}: fetch failed ({done.returncode}): {done.stderr.strip()[-400:]}",
                           retryable=True)
