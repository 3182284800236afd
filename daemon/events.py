"""What reaches the core loop's inbox. Producers (watcher, waiters, timers, the CLI socket) only
post these; the core thread alone acts on them."""
from __future__ import annotations

import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from backends.base import Handle, RunStatus


@dataclass(frozen=True)
class FileChanged:
    project: Path
    path: Path
    sha: str | None


@dataclass(frozen=True)
class JobExited:
    project: str
    job_id: str
    attempt: int


@dataclass(frozen=True)
class Launched:
    project: str
    job_id: str
    attempt: int
    handle: Handle


@dataclass(frozen=True)
class LaunchError:
    project: str
    job_id: str
    attempt: int
    error: str
    retryable: bool


@dataclass(frozen=True)
class Polled:
    project: str
    statuses: Mapping[str, tuple[int, RunStatus]]  # job_id -> (attempt, status)


@dataclass(frozen=True)
class PollNow:
    """A remote waiter saw a job end: poll that project now rather than at the next tick."""
    project: str


@dataclass(frozen=True)
class Fetched:
    """Outputs of ended remote jobs were copied back; their statuses can now be applied."""
    project: str
    statuses: Mapping[str, tuple[int, RunStatus]]
    errors: Mapping[str, str]


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Stop:
    reason: str = ""


@dataclass(frozen=True)
class Control:
    project: str
    verb: str  # pause | resume | skip | retry | approve | report
    args: Mapping[str, Any] = field(default_factory=dict)
    reply: "queue.Queue[Any] | None" = None


Event = FileChanged | JobExited | Launched | LaunchError | Polled | PollNow | Fetched | Tick | Stop | Control
