"""The one suite every backend must pass. A backend joins by adding a `contract_<name>` fixture
(see tests/plugins/) and its name to BACKENDS."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from backends.base import Handle, RunStatus
from tests.plugins.backends import ContractEnv
from tests.plugins.common import wait_for

BACKENDS = ["fake", "local", "ssh", "slurm", "vast", "modal"]


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest) -> ContractEnv:
    return request.getfixturevalue(f"contract_{request.param}")


def finish(env: ContractEnv, handle: Handle, timeout: float = 60.0) -> RunStatus:
    def done() -> RunStatus | None:
        status = env.backend.poll([handle])[handle]
        return status if status.phase in ("exited", "lost") else None
    return wait_for(done, timeout=timeout, interval=0.05, what=f"{handle.ref} to end")


def pids_matching(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_success_exit_zero_and_log(env: ContractEnv) -> None:
    handle = env.backend.submit(env.spec("ok1", "echo hello-contract"), env.slot)
    status = finish(env, handle)
    assert (status.phase, status.exit_code, status.outcome) == ("exited", 0, "ok")
    if env.real_processes:
        assert "hello-contract" in env.to_local(handle.log_path).read_text()


def test_nonzero_exit_is_failed_with_its_code(env: ContractEnv) -> None:
    handle = env.backend.submit(env.spec("bad1", "echo boom >&2; exit 3"), env.slot)
    status = finish(env, handle)
    assert (status.exit_code, status.outcome) == (3, "failed")


def test_cuda_oom_message_is_oom(env: ContractEnv) -> None:
    cmd = "echo 'RuntimeError: CUDA out of memory. Tried to allocate 2 GiB'; exit 1"
    status = finish(env, env.backend.submit(env.spec("oom1", cmd), env.slot))
    assert (status.exit_code, status.outcome) == (1, "oom")


def test_launch_is_verified_by_started_file(env: ContractEnv) -> None:
    handle = env.backend.submit(env.spec("st1", "sleep 1"), env.slot)
    if env.real_processes:
        started = env.to_local(handle.job_dir) / "started"
        # the wrapper writes `started` in place: an empty file is one being written
        wait_for(lambda: started.exists() and started.read_text().strip(), timeout=60, what="started file")
        assert float(started.read_text().split()[0]) > 0
    assert finish(env, handle).outcome == "ok"


def test_cancel_kills_the_whole_group_and_is_idempotent(env: ContractEnv, tmp_path: Path) -> None:
    marker = f"ebcontract{time.monotonic_ns()}"
    cmd = f"sh -c 'sleep 300; : {marker}' & sh -c 'sleep 301; : {marker}'; wait"
    handle = env.backend.submit(env.spec("cx1", cmd), env.slot)
    if env.real_processes:
        wait_for(lambda: len(pids_matching(marker)) >= 2, timeout=60, what="job processes")
    env.backend.cancel(handle)
    env.backend.cancel(handle)
    if env.real_processes:
        wait_for(lambda: not pids_matching(marker), timeout=30, what="group to die")
    status = finish(env, handle)
    assert status.outcome in ("cancelled", "lost", "failed")
    assert status.outcome != "ok"


def test_suspend_and_resume(env: ContractEnv) -> None:
    handle = env.backend.submit(env.spec("sr1", "sleep 3"), env.slot)
    if env.real_processes:
        pid_path = env.to_local(handle.job_dir) / "pid"
        wait_for(lambda: pid_path.exists() and pid_path.read_text().strip(), timeout=60, what="pid file")
    if not env.backend.suspend(handle):
        env.backend.cancel(handle)
        pytest.skip(f"{env.backend.name} does not support suspend")  # allow-listed per backend
    if env.real_processes:
        pid = int((env.to_local(handle.job_dir) / "pid").read_text())
        wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
                 timeout=10, what="state T")
    assert env.backend.poll([handle])[handle].phase == "suspended"
    assert env.backend.resume(handle)
    assert finish(env, handle).outcome == "ok"


def test_fresh_instance_reconciles_by_handle(env: ContractEnv) -> None:
    handle = env.backend.submit(env.spec("rc1", "sleep 2; echo done"), env.slot)
    restarted = env.fresh()
    reborn = Handle.from_json(handle.to_json())
    assert restarted.poll([reborn])[reborn].phase in ("pending", "running")
    status = wait_for(lambda: (s := restarted.poll([reborn])[reborn]).phase == "exited" and s,
                      timeout=60, what="adopted job to end")
    assert status.outcome == "ok"


def test_vanished_job_without_exit_file_is_lost(env: ContractEnv) -> None:
    if not env.real_processes:
        pytest.skip("the in-memory fake has no processes to lose")  # allow-listed
    handle = env.backend.submit(env.spec("lost1", "sleep 300"), env.slot)
    pid_file = env.to_local(handle.job_dir) / "pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60, what="pid file")
    subprocess.run(["kill", "-9", "--", f"-{int(pid_file.read_text())}"], check=False)
    status = finish(env, handle)
    assert status.phase == "lost" or status.outcome in ("lost", "failed")
