"""Local backend: jobs in their own sessions (setsid) on this machine, exits reported at once.

Each job is started through wrapper.sh in a new session, so it outlives the daemon (the system
unit uses KillMode=process) and can be signalled as one process group. A waiter thread per job
calls `on_exit` the moment the wrapper ends, so the next job does not wait for a poll tick.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from backends import procs
from backends.reaper import Reaper
from backends.base import (WRAPPER, Handle, JobSpec, RunStatus, Slot, classify_exit,
                           parse_exit_file, substitute_gpu)
from backends.gpus import QUERY_ARGS, free_gpus, parse_gpu_csv
from daemon.errors import BackendUnavailable, LaunchFailed

ExitCallback = Callable[[Handle], None]
# bash runs the wrapper directly when present (its re-exec from sh would cost another exec)
SHELL = shutil.which("bash") or shutil.which("sh") or "/bin/sh"
_DEVNULL_STDIO = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]


class LocalBackend:
    name = "local"

    def __init__(self, *, gpus: list[int] | None = None, threshold_mib: int = 500,
                 nvidia_smi: str = "nvidia-smi", cpu_slots: int | None = None,
                 launch_timeout_s: float = 10.0, cancel_grace_s: float = 5.0,
                 on_exit: ExitCallback | None = None) -> None:
        self.allowed_gpus = gpus
        self.threshold_mib = threshold_mib
        self.nvidia_smi = nvidia_smi
        self.cpu_slots = cpu_slots or os.cpu_count() or 1
        self.launch_timeout_s = launch_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.on_exit = on_exit
        self.problem = ""  # why slots() offered nothing, when a person must act
        self._reaper = Reaper(self._exited)

    def _exited(self, handle: Handle) -> None:
        if self.on_exit is not None:
            self.on_exit(handle)

    # -- capacity ---------------------------------------------------------------------------
    def preflight(self) -> None:
        if not WRAPPER.is_file():
            raise BackendUnavailable(f"job wrapper missing at {WRAPPER}")
        if shutil.which("sh") is None:
            raise BackendUnavailable("no POSIX sh on PATH")

    def has_gpus(self) -> bool:
        return shutil.which(self.nvidia_smi) is not None

    def slots(self) -> list[Slot]:
        """Free GPUs by nvidia-smi, or CPU slots on a machine without one. When nothing can be
        offered for a reason a person must fix, `problem` says so (never a silent CPU fallback
        for a project that asked for GPUs)."""
        self.problem = ""
        if not self.has_gpus():
            if self.allowed_gpus is None:
                return [Slot("local", None, i) for i in range(self.cpu_slots)]
            self.problem = f"gpus {self.allowed_gpus} are configured but {self.nvidia_smi!r} is not on PATH"
            return []
        try:
            out = subprocess.run([self.nvidia_smi, *QUERY_ARGS], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.problem = f"{self.nvidia_smi} failed: {exc}"
            return []
        gpus = parse_gpu_csv(out)
        if not gpus:
            self.problem = f"{self.nvidia_smi} printed nothing readable: {out.strip()[:120]!r}"
        return [Slot("local", i) for i in free_gpus(gpus, self.threshold_mib, self.allowed_gpus)]

    # -- lifecycle --------------------------------------------------------------------------
    def submit(self, job: JobSpec, slot: Slot) -> Handle:
        job.validate()
        job_dir, log = Path(job.job_dir), Path(job.log_path)
        job_dir.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [SHELL, str(WRAPPER), str(job_dir), str(log), job.cwd,
                "" if slot.gpu is None else str(slot.gpu), job.conda_hook or "", job.conda_env or "",
                substitute_gpu(job.cmd, slot)]
        env = {**os.environ, **job.env, "EB_JOB": job.job_id, "EB_ATTEMPT": str(job.attempt)}
        try:
            # posix_spawn (vfork underneath) costs a fraction of fork+exec from a large parent,
            # which is most of a short job's launch time; setsid gives the job its own group
            pid = os.posix_spawn(SHELL, argv, env, setsid=True, file_actions=_DEVNULL_STDIO)
        except OSError as exc:
            raise LaunchFailed(f"{job.job_id}: cannot start wrapper: {exc}") from exc
        ident = procs.identity(pid) or f"{pid}:?"
        handle = Handle("local", ident, "local", str(job_dir), str(log))
        self._reaper.track(pid, handle, time.monotonic() + self.launch_timeout_s)
        return handle

    def adopt(self, job: JobSpec, slot: Slot | None = None, grace_s: float = 2.0) -> Handle | None:
        """Find an attempt whose launch was not recorded (the daemon died mid-launch).

        The wrapper writes its pid within milliseconds of starting, so a short grace covers a
        launch that was still in flight; the cmdline check makes sure the pid is that wrapper.
        """
        job_dir = Path(job.job_dir)
        deadline = time.monotonic() + grace_s
        while not _nonempty(job_dir / "pid") and not (job_dir / "exit").exists():
            if not job_dir.exists() or time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        try:
            pid = int((job_dir / "pid").read_text())
        except (OSError, ValueError):
            pid = 0
        ident = procs.identity(pid) if pid and _cmdline_has(pid, str(job_dir)) else None
        return Handle("local", ident or f"{pid}:gone", "local", str(job_dir), job.log_path)

    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]:
        return {h: job_dir_status(h) for h in handles}

    def cancel(self, handle: Handle) -> None:
        if procs.is_ours(handle.ref):
            procs.terminate_group(_pgid(handle), self.cancel_grace_s)

    def suspend(self, handle: Handle) -> bool:
        return procs.is_ours(handle.ref) and procs.signal_group(_pgid(handle), signal.SIGSTOP)

    def resume(self, handle: Handle) -> bool:
        return procs.is_ours(handle.ref) and procs.signal_group(_pgid(handle), signal.SIGCONT)

    def fetch(self, handle: Handle, dest: Path) -> None:
        return None  # outputs are already where the job wrote them


def _nonempty(path: Path) -> bool:
    """pid and started are written in place by the wrapper: empty means still being written."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _pgid(handle: Handle) -> int:
    return int(handle.ref.partition(":")[0])


def job_dir_status(handle: Handle) -> RunStatus:
    """Status of a job on this machine from its wrapper files and its pid identity.

    The pid is checked before the exit file: the wrapper writes `exit` before it dies, so a dead
    pid with no exit file really means the job was lost, not that we read in between.
    """
    job_dir = Path(handle.job_dir)
    alive = procs.is_ours(handle.ref)
    started = _read_float(job_dir / "started")
    parsed = _read_exit(job_dir)
    if parsed is not None:
        code, ended = parsed
        outcome = classify_exit(code, procs.read_tail(Path(handle.log_path)))
        return RunStatus("exited", code, outcome, started_at=started, ended_at=ended)
    if alive:
        stopped = procs.proc_state(_pgid(handle)) == "T"
        return RunStatus("suspended" if stopped else "running", started_at=started)
    return RunStatus("lost", None, "lost", "process gone without an exit file", started_at=started)


def _read_exit(job_dir: Path) -> tuple[int, float | None] | None:
    try:
        return parse_exit_file((job_dir / "exit").read_text())
    except OSError:
        return None


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
