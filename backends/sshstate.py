"""The SSH backend's per-host bookkeeping and the meaning of a job reading (pure: no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field

from backends.base import RunStatus, classify_exit, parse_exit_file
from backends.gpus import Gpu
from backends.sshscripts import JobReading


@dataclass
class Breaker:
    """Per-host circuit breaker: K infrastructure failures in a row stop new launches there.

    Running jobs are not touched; polls keep trying. The first success at least `reset_s`
    after opening closes it again.
    """

    limit: int
    reset_s: float
    failures: int = 0
    opened_at: float | None = None

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.limit and self.opened_at is None:
            self.opened_at = now

    def success(self, now: float) -> None:
        self.failures = 0
        if self.opened_at is not None and now - self.opened_at >= self.reset_s:
            self.opened_at = None

    def allows_launch(self) -> bool:
        return self.opened_at is None

    def may_probe(self, now: float) -> bool:
        return self.opened_at is None or now - self.opened_at >= self.reset_s

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else "open"


@dataclass
class HostState:
    breaker: Breaker
    gpus: list[Gpu] | None = None  # the last nvidia-smi reading; None when there is none
    gpu_note: str = ""
    gpu_at: float = float("-inf")
    cooling: dict[int | None, float] = field(default_factory=dict)  # gpu -> launch cool-down end
    synced: bool = False
    error: str = ""
    # launches whose reply was lost (session -> (job dir, gpu, resolve-after time)); their GPU
    # stays held until a later contact finds out whether they started, and ends them if so
    uncertain: dict[str, tuple[str, int | None, float]] = field(default_factory=dict)


def job_status(r: JobReading) -> RunStatus:
    """What one job's reading means. The exit file wins: it is the truth about how a job ended."""
    started = _num(r.started)
    parsed = parse_exit_file(r.exit) if r.exit else None
    if parsed is not None:
        code, ended = parsed
        outcome = "cancelled" if r.cancelled and code != 0 else classify_exit(code, r.tail)
        detail = "stale session killed" if r.killed else ""
        return RunStatus("exited", code, outcome, detail, started_at=started, ended_at=ended)
    if r.alive:
        return RunStatus("suspended" if r.state == "T" else "running", started_at=started)
    if r.cancelled:
        return RunStatus("exited", -15, "cancelled", "cancelled by expbridge", started_at=started)
    return RunStatus("lost", None, "lost", "session gone without an exit file", started_at=started)


def _num(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None
