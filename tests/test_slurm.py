"""The Slurm backend against a real single-node Slurm (tests/plugins/slurm.py)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from backends.base import Handle, JobSpec, RunStatus, Slot
from backends.slurm import LocalRunner, SlurmBackend, SlurmSettings
from daemon.errors import LaunchFailed
from tests.plugins.common import wait_for
from tests.plugins.slurm import SlurmCluster

if TYPE_CHECKING:
    from daemon.model import Job

pytestmark = [pytest.mark.slurm]
SLOT = Slot("slurm", None)


def make(cluster: SlurmCluster, prefix: tuple[str, ...] = (), **settings: object) -> SlurmBackend:
    return SlurmBackend(SlurmSettings(partition=cluster.partition, **settings),  # type: ignore[arg-type]
                        runner=LocalRunner(env=cluster.env, prefix=prefix))


def spec(tmp: Path, job_id: str, cmd: str, attempt: int = 1) -> JobSpec:
    return JobSpec(job_id, "sl", "20260101T000000Z", attempt, cmd, str(tmp), str(tmp / "run"))


def finish(backend: SlurmBackend, handle: Handle, timeout: float = 60.0) -> RunStatus:
    def done() -> RunStatus | None:
        status = backend.poll([handle])[handle]
        return status if status.phase in ("exited", "lost") else None
    return wait_for(done, timeout=timeout, interval=0.2, what=f"slurm job {handle.ref} to end")


def phase_is(backend: SlurmBackend, handle: Handle, *phases: str, timeout: float = 60.0) -> RunStatus:
    return wait_for(lambda: (s := backend.poll([handle])[handle]).phase in phases and s,
                    timeout=timeout, interval=0.2, what=f"{handle.ref} to be {phases}")


def test_grid_runs_as_one_throttled_array_with_gpus(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env, gres=1)
    jobs = [spec(tmp_path, f"g{i}", f"echo task-{i} gpu=${{GPU}} cvd=$CUDA_VISIBLE_DEVICES") for i in range(3)]
    handles = backend.submit_array(jobs, SLOT, throttle=2)
    base = handles[0].ref.split("_")[0]
    assert [h.ref for h in handles] == [f"{base}_{i}" for i in range(3)]
    squeue = slurm_env.client("squeue", "-h", "-r", "-t", "all", "-j", base, "-o", "%j").stdout.split()
    assert set(squeue) == {"eb-sl-g0-a1-x3"}  # one array, not three jobs
    assert "ArrayTaskThrottle=2" in slurm_env.client("scontrol", "show", "job", "-o", base).stdout
    statuses = [finish(backend, h) for h in handles]
    assert [(s.phase, s.outcome, s.exit_code) for s in statuses] == [("exited", "ok", 0)] * 3
    for i, h in enumerate(handles):
        text = Path(h.log_path).read_text()
        assert f"task-{i} gpu=" in text
        gpu = text.split("gpu=")[1].split()[0]
        assert gpu in ("0", "1") and f"cvd={gpu}" in text  # ${GPU} follows Slurm's allocation


def test_one_array_task_can_be_cancelled_alone(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    first, second = backend.submit_array([spec(tmp_path, f"c{i}", "sleep 60") for i in range(2)], SLOT)
    phase_is(backend, second, "running")
    backend.cancel(second)
    assert finish(backend, second).outcome == "cancelled"
    assert backend.poll([first])[first].phase in ("pending", "running")
    backend.cancel(first)
    assert finish(backend, first).outcome == "cancelled"


def test_failing_job_reports_its_exit_code(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    handle = backend.submit(spec(tmp_path, "bad", "echo nope >&2; exit 7"), SLOT)
    status = finish(backend, handle)
    assert (status.phase, status.outcome, status.exit_code) == ("exited", "failed", 7)
    assert "nope" in Path(handle.log_path).read_text()


def test_afterok_gates_the_dependent_phase(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    first = backend.submit(spec(tmp_path, "p1", "sleep 2; date +%s.%N > p1.done"), SLOT)
    second = backend.submit(spec(tmp_path, "p2", "test -f p1.done && date +%s.%N > p2.done"), SLOT,
                            after_ok=[first])
    waiting = backend.poll([second])[second]
    assert (waiting.phase, waiting.detail) == ("pending", "Dependency")
    assert finish(backend, first).outcome == "ok"
    assert finish(backend, second).outcome == "ok"
    assert float((tmp_path / "p2.done").read_text()) >= float((tmp_path / "p1.done").read_text())
    # a failed prerequisite leaves the dependent pending with a reason the core can act on
    broken = backend.submit(spec(tmp_path, "p3", "exit 1"), SLOT)
    orphan = backend.submit(spec(tmp_path, "p4", "true"), SLOT, after_ok=[broken])
    assert finish(backend, broken).outcome == "failed"
    stuck = phase_is(backend, orphan, "pending")
    wait_for(lambda: backend.poll([orphan])[orphan].detail == "DependencyNeverSatisfied", timeout=30,
             interval=0.2, what="DependencyNeverSatisfied")
    assert stuck.phase == "pending"
    backend.cancel(orphan)


def test_job_cancelled_by_someone_else_is_reported_cancelled(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    handle = backend.submit(spec(tmp_path, "cx", "sleep 120"), SLOT)
    phase_is(backend, handle, "running")
    slurm_env.client("scancel", handle.ref)  # a person, not expbridge
    status = finish(backend, handle)
    assert (status.phase, status.outcome) == ("exited", "cancelled")
    assert "CANCELLED" in status.detail


def test_cancel_never_touches_a_job_with_another_name(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    handle = backend.submit(spec(tmp_path, "mine", "sleep 60"), SLOT)
    other = slurm_env.client("sbatch", "--parsable", "-J", "not-ours", "-o", "/dev/null",
                             "--wrap", "sleep 60").stdout.strip()
    reused = Handle("slurm", other, "local", handle.job_dir, handle.log_path, handle.extra)
    backend.cancel(reused)  # the recorded name does not match: a reused id is left alone
    assert phase_is(backend, reused, "pending", "running").phase in ("pending", "running")
    backend.cancel(handle)
    assert finish(backend, handle).outcome == "cancelled"


def test_hold_and_release_a_pending_job(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    blocker = backend.submit(spec(tmp_path, "big", "sleep 120"), SLOT, overrides={"gres": 2})
    waiting = backend.submit(spec(tmp_path, "small", "echo ran"), SLOT, overrides={"gres": 1})
    phase_is(backend, blocker, "running")
    assert backend.poll([waiting])[waiting].phase == "pending"
    assert backend.suspend(waiting)  # pending: a hold, not a suspend
    held = backend.poll([waiting])[waiting]
    assert (held.phase, held.detail) == ("suspended", "held: JobHeldUser")
    backend.cancel(blocker)
    finish(backend, blocker)
    time.sleep(2)  # the node is free: a released job would start within this
    assert backend.poll([waiting])[waiting].phase == "suspended"
    assert not (Path(waiting.job_dir) / "started").exists()
    assert backend.resume(waiting)
    assert finish(backend, waiting).outcome == "ok"
    assert "ran" in Path(waiting.log_path).read_text()


def test_denied_suspend_is_reported_and_the_job_keeps_running(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    handle = make(slurm_env).submit(spec(tmp_path, "den", "sleep 3; echo survived"), SLOT)
    as_user = make(slurm_env, prefix=("runuser", "-u", "nobody", "--"))
    phase_is(as_user, handle, "running")
    assert as_user.suspend(handle) is False
    assert "denied" in as_user.last_refusal and handle.ref in as_user.last_refusal
    assert "ermission" in as_user.last_refusal  # Slurm's own words: Access/permission denied
    assert as_user.poll([handle])[handle].phase == "running"
    assert finish(as_user, handle).outcome == "ok"


def test_node_failure_is_lost(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    handle = backend.submit(spec(tmp_path, "nf", "sleep 120"), SLOT)
    phase_is(backend, handle, "running")
    slurm_env.client("scontrol", "update", f"nodename={slurm_env.node}", "state=down", "reason=eb-test")
    status = finish(backend, handle)
    assert (status.phase, status.outcome) == ("lost", "lost")
    assert "NODE_FAIL" in status.detail


def test_fresh_instance_adopts_by_id_and_by_name(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    job = spec(tmp_path, "ad", "sleep 3; echo adopted")
    handle = make(slurm_env).submit(job, SLOT)
    restarted = make(slurm_env)  # what a restarted daemon builds: no memory of the submit
    found = restarted.adopt(job)
    assert found is not None and found.ref == handle.ref and found.job_dir == handle.job_dir
    reborn = Handle.from_json(handle.to_json())
    assert restarted.poll([reborn])[reborn].phase in ("pending", "running")
    assert finish(restarted, reborn).outcome == "ok"
    assert restarted.adopt(spec(tmp_path, "never-submitted", "true")) is None
    other_run = JobSpec("ad", "sl", "20260202T000000Z", 1, "true", str(tmp_path), str(tmp_path / "run2"))
    assert other_run.session == job.session and restarted.adopt(other_run) is None  # same name, other run


def test_job_slurm_forgot_is_judged_by_its_exit_file(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    done_dir, gone_dir = tmp_path / "done", tmp_path / "gone"
    done_dir.mkdir()
    (done_dir / "exit").write_text("0 1764100000.0\n")
    done = Handle("slurm", "999991", "local", str(done_dir), str(tmp_path / "x.log"))
    gone = Handle("slurm", "999992", "local", str(gone_dir), str(tmp_path / "y.log"))
    statuses = backend.poll([done, gone])
    assert (statuses[done].phase, statuses[done].outcome) == ("exited", "ok")
    assert (statuses[gone].phase, statuses[gone].outcome) == ("lost", "lost")


def test_unknown_partition_is_a_clear_non_retryable_launch_failure(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env)
    with pytest.raises(LaunchFailed) as err:
        backend.submit(spec(tmp_path, "np", "true"), SLOT, overrides={"partition": "nosuchpart"})
    assert "nosuchpart" in str(err.value) or "partition" in str(err.value).lower()
    assert err.value.retryable is False


def test_virtual_slots_shrink_with_submitted_jobs(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    backend = make(slurm_env, max_submitted=3)
    backend.preflight()
    assert backend.slots() == [SLOT] * 3
    handles = [backend.submit(spec(tmp_path, f"s{i}", "sleep 60"), SLOT) for i in range(2)]
    assert backend.slots() == [SLOT]
    for h in handles:
        backend.cancel(h)
    wait_for(lambda: len(backend.slots()) == 3, timeout=30, interval=0.2, what="slots to come back")


def test_preflight_names_a_missing_partition(slurm_env: SlurmCluster) -> None:
    from daemon.errors import BackendUnavailable
    make(slurm_env).preflight()
    with pytest.raises(BackendUnavailable, match="nosuchpart"):
        SlurmBackend(SlurmSettings(partition="nosuchpart"), runner=LocalRunner(env=slurm_env.env)).preflight()


@pytest.mark.slow
def test_timeout_is_classified_and_retried_by_policy(slurm_env: SlurmCluster, tmp_path: Path) -> None:
    from daemon.decide import Policy, after_attempt
    from daemon.model import JobState

    backend = make(slurm_env)
    first = backend.submit(spec(tmp_path, "to", "sleep 600"), SLOT, overrides={"time": "1"})
    status = finish(backend, first, timeout=180)
    assert (status.phase, status.outcome) == ("exited", "timeout")
    assert "TIMEOUT" in status.detail
    # the core's policy turns the class into a retry; the next attempt is a new Slurm job
    job = _job_record("to")
    nxt, _, why, _ = after_attempt(job, JobState.TIMEOUT, {"timeout": Policy(0, 2)}, time.time())
    assert nxt is JobState.RETRY_WAIT and "timeout" in why
    second = backend.submit(spec(tmp_path, "to", "echo second", attempt=2), SLOT)
    assert second.ref != first.ref and finish(backend, second).outcome == "ok"


def _job_record(job_id: str) -> "Job":
    from daemon.model import Job
    return Job(project="p", job_id=job_id, run_id="R001", milestone="M0", phase="main",
               cmd="sleep 600", cwd="/tmp")
