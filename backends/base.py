"""The one backend interface, and the value types every backend shares.

A backend turns a JobSpec into a running process somewhere and reports how it is doing. The job
wrapper (wrapper.sh) runs on every backend, so the files it writes (pid, started, exit, the log)
are the truth about a job wherever it ran.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Protocol, Sequence

from daemon.errors import UnsafeValue

WRAPPER = Path(__file__).with_name("wrapper.sh")

# Ids reach shells and file names; anything outside this set is refused before any I/O.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# The widened OOM list (ARIS F50): the two ARIS patterns miss several real CUDA OOM forms.
OOM_PATTERNS = re.compile(
    r"CUDA out of memory|torch\.OutOfMemoryError|torch\.cuda\.OutOfMemoryError"
    r"|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED"
    r"|RESOURCE_EXHAUSTED: Out of memory|out of memory trying to allocate"
    r"|HIP out of memory|MemoryError: CUDA"
)

Phase = Literal["pending", "running", "suspended", "exited", "lost"]
Outcome = Literal["ok", "failed", "oom", "timeout", "lost", "cancelled"]


def check_safe(value: str, what: str) -> str:
    if not SAFE_ID.match(value):
        raise UnsafeValue(f"{what} {value!r} must match {SAFE_ID.pattern}")
    return value


@dataclass(frozen=True)
class Slot:
    host: str  # "local" for the local backend; a host alias otherwise
    gpu: int | None  # None is a CPU slot
    index: int = 0  # tells CPU slots apart: keys must be unique, or two jobs share one slot

    @property
    def key(self) -> str:
        return f"{self.host}:{f'cpu{self.index}' if self.gpu is None else self.gpu}"

    @staticmethod
    def from_key(key: str) -> "Slot":
        host, _, tail = key.rpartition(":")
        if tail.startswith("cpu"):
            return Slot(host, None, int(tail[3:] or 0))
        return Slot(host, int(tail))


@dataclass(frozen=True)
class JobSpec:
    """Everything a backend needs to start one attempt of one job."""

    job_id: str  # safe charset
    plan: str  # safe charset; the plan slug
    run_ts: str  # safe charset; one value per run of a plan
    attempt: int  # 1-based launch number
    cmd: str  # the user's shell command; ${GPU} is substituted by the wrapper's caller
    cwd: str  # where the command runs (on the target host)
    run_dir: str  # the run tree: <run_dir>/jobs/<job>/a<N>/ and <run_dir>/logs/<job>.a<N>.log
    env: Mapping[str, str] = field(default_factory=dict)
    conda_env: str | None = None
    conda_hook: str | None = None
    est_hours: float | None = None
    expected_output: tuple[str, ...] = ()

    @property
    def session(self) -> str:
        return f"eb-{self.plan}-{self.job_id}-a{self.attempt}"

    @property
    def job_dir(self) -> str:
        return f"{self.run_dir}/jobs/{self.job_id}/a{self.attempt}"

    @property
    def log_path(self) -> str:
        return f"{self.run_dir}/logs/{self.job_id}.a{self.attempt}.log"

    def validate(self) -> None:
        for what, value in (("job id", self.job_id), ("plan", self.plan), ("run ts", self.run_ts)):
            check_safe(value, what)


@dataclass(frozen=True)
class Handle:
    """What identifies a started attempt; persisted the moment it exists."""

    backend: str
    ref: str  # backend-specific: "pid:starttime", a session name, a Slurm job id, an object id
    host: str = "local"
    job_dir: str = ""
    log_path: str = ""
    extra: str = ""  # backend-specific JSON, kept opaque

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Handle":
        return Handle(**json.loads(text))


@dataclass(frozen=True)
class RunStatus:
    phase: Phase
    exit_code: int | None = None
    outcome: Outcome | None = None  # set when phase is exited or lost
    detail: str = ""
    started_at: float | None = None
    ended_at: float | None = None


class Backend(Protocol):
    name: str

    def preflight(self) -> None: ...  # raise BackendUnavailable: never fall back silently

    def slots(self) -> list[Slot]: ...  # free slots right now

    def submit(self, job: JobSpec, slot: Slot) -> Handle: ...  # verified start, or LaunchFailed

    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]: ...  # batched

    def cancel(self, handle: Handle) -> None: ...  # idempotent; the whole process group

    def suspend(self, handle: Handle) -> bool: ...  # False when unsupported

    def resume(self, handle: Handle) -> bool: ...

    def fetch(self, handle: Handle, dest: Path) -> None: ...  # copy outputs back (remote only)


def classify_exit(code: int, log_tail: str) -> Outcome:
    """How an exited attempt ended: OOM is a non-zero exit plus an OOM pattern in the log tail."""
    if code == 0:
        return "ok"
    if OOM_PATTERNS.search(log_tail):
        return "oom"
    return "failed"


def parse_exit_file(text: str) -> tuple[int, float | None] | None:
    """The wrapper writes '<code> <epoch>'; anything else means the file is not complete."""
    parts = text.split()
    if not parts:
        return None
    try:
        code = int(parts[0])
    except ValueError:
        return None
    try:
        ended = float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        ended = None
    return code, ended


def substitute_gpu(cmd: str, slot: Slot) -> str:
    return cmd.replace("${GPU}", "" if slot.gpu is None else str(slot.gpu))
