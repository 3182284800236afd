"""Contract environments: one per backend, each giving the shared suite what it needs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from backends.base import Backend, JobSpec, Slot


@dataclass
class ContractEnv:
    backend: Backend
    slot: Slot
    run_dir: str  # the run tree as the backend sees it
    cwd: str
    to_local: Callable[[str], Path]  # a backend path as a path on this machine (loopback)
    fresh: Callable[[], Backend]  # a new instance: what a restarted daemon would build
    real_processes: bool = True  # False for the in-memory fake
    plan: str = "contract"
    extra_env: dict[str, str] = field(default_factory=dict)

    def spec(self, job_id: str, cmd: str, attempt: int = 1) -> JobSpec:
        return JobSpec(job_id=job_id, plan=self.plan, run_ts="20260101T000000Z", attempt=attempt,
                       cmd=cmd, cwd=self.cwd, run_dir=self.run_dir, env=dict(self.extra_env))


@pytest.fixture
def contract_fake(tmp_path: Path) -> ContractEnv:
    from backends.fake import FakeBackend

    backend = FakeBackend(n_slots=2)
    return ContractEnv(backend, Slot("fake", None), str(tmp_path / "run"), str(tmp_path), Path,
                       lambda: backend, real_processes=False)


@pytest.fixture
def contract_local(tmp_path: Path) -> ContractEnv:
    from backends.local import LocalBackend

    def make() -> LocalBackend:
        return LocalBackend(nvidia_smi="nvidia-smi-absent", cpu_slots=2, cancel_grace_s=2.0)

    return ContractEnv(make(), Slot("local", None), str(tmp_path / "run"), str(tmp_path), Path, make)
