"""Slurm output parsing and the state mapping of DESIGN §3, from recorded output (no cluster)."""
from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import Handle, JobSpec
from backends.slurm_parse import SlurmSettings, batch_script, poll_script, sbatch_args
from backends.slurm_parse import (JobFiles, SlurmJob, parse_bundle, parse_sacct, parse_scontrol,
                                  parse_squeue, to_status)
from daemon.errors import ConfigError, UnsafeValue

DATA = Path(__file__).parent / "data" / "slurm"
NO_FILES = JobFiles()


def read(name: str) -> str:
    return (DATA / name).read_text()


def outcome(job: SlurmJob | None, files: JobFiles = NO_FILES) -> tuple[str, str | None, int | None]:
    status = to_status(job, files)
    return status.phase, status.outcome, status.exit_code


def test_live_squeue_states_map_to_job_states() -> None:
    jobs = parse_squeue(read("squeue.live.txt"))
    assert outcome(jobs["17"]) == ("exited", "ok", 0)
    assert outcome(jobs["18"]) == ("exited", "failed", 7)  # raw wait status 1792 is exit 7
    assert outcome(jobs["19"])[:2] == ("exited", "cancelled")
    assert outcome(jobs["15"])[:2] == ("lost", "lost")  # NODE_FAIL
    assert outcome(jobs["16"])[:2] == ("exited", "timeout")
    assert to_status(jobs["21"], NO_FILES).phase == "suspended"
    held = to_status(jobs["22"], NO_FILES)
    assert (held.phase, held.detail) == ("suspended", "held: JobHeldUser")
    assert to_status(jobs["24"], NO_FILES).phase == "pending"
    never = to_status(jobs["20"], NO_FILES)
    assert (never.phase, never.detail) == ("pending", "DependencyNeverSatisfied")


def test_live_squeue_array_tasks_are_keyed_task_by_task() -> None:
    jobs = parse_squeue(read("squeue.live.txt"))
    tasks = sorted(ref for ref in jobs if ref.startswith("23_"))
    assert tasks == ["23_0", "23_1", "23_2"]
    assert {jobs[t].name for t in tasks} == {"eb-rec-grid-a1-x3"}


def test_rare_states_from_recorded_squeue() -> None:
    jobs = parse_squeue(read("squeue_rare.written.txt"))
    assert outcome(jobs["301"])[:2] == ("exited", "oom")  # OUT_OF_MEMORY
    assert outcome(jobs["302"])[:2] == ("lost", "lost")  # PREEMPTED
    assert outcome(jobs["303_4"])[:2] == ("lost", "lost")  # a preempted array task
    assert outcome(jobs["304"])[:2] == ("lost", "lost")  # BOOT_FAIL
    assert outcome(jobs["305"])[:2] == ("exited", "timeout")  # DEADLINE
    assert to_status(jobs["306"], NO_FILES).phase == "suspended"  # requeued and held by an admin


def test_sacct_rows_skip_steps_and_keep_who_cancelled() -> None:
    jobs = parse_sacct(read("sacct.written.txt"))
    assert "401.batch" not in jobs and "408_2" in jobs
    assert outcome(jobs["401"]) == ("exited", "ok", 0)
    assert outcome(jobs["402"])[:2] == ("exited", "oom")
    assert outcome(jobs["403"])[:2] == ("lost", "lost")
    cancelled = to_status(jobs["404"], NO_FILES)
    assert (cancelled.outcome, cancelled.detail) == ("cancelled", "slurm CANCELLED by uid 1000")
    assert outcome(jobs["405"])[:2] == ("exited", "timeout")
    assert outcome(jobs["406"])[:2] == ("lost", "lost")
    assert outcome(jobs["407"]) == ("exited", "failed", 3)


def test_scontrol_records_with_spaces_and_rare_states() -> None:
    jobs = parse_scontrol(read("scontrol_oom.written.txt") + read("scontrol.live.txt"))
    assert jobs["501"].state == "OUT_OF_MEMORY" and outcome(jobs["501"])[1] == "oom"
    assert jobs["502"].signal == 15 and outcome(jobs["502"])[:2] == ("lost", "lost")
    assert (jobs["18"].exit_code, outcome(jobs["18"])) == (7, ("exited", "failed", 7))
    assert jobs["23_0"].state == "COMPLETED"  # an array task, by its task id (its own JobId is 25)


def test_cuda_oom_in_the_log_tail_is_oom_even_when_slurm_says_failed() -> None:
    failed = parse_squeue("18|18|eb-p-r1-a1|FAILED|NonZeroExitCode|256|x|y|")["18"]
    files = JobFiles("1 1764100000.5", "1764099990.1", read("cuda_oom.log.txt"))
    status = to_status(failed, files)
    assert (status.phase, status.outcome, status.exit_code) == ("exited", "oom", 1)
    assert (status.started_at, status.ended_at) == (1764099990.1, 1764100000.5)


def test_exit_file_code_wins_over_slurm_and_signal_without_file_is_lost() -> None:
    failed = parse_squeue("9|9|n|FAILED|NonZeroExitCode|9|x|y|")["9"]  # killed by signal 9
    assert outcome(failed) == ("lost", "lost", 137)
    assert outcome(failed, JobFiles("137 1.0"))[:2] == ("exited", "failed")
    wrapper_broke = parse_squeue("8|8|n|FAILED|NonZeroExitCode|24576|x|y|")["8"]  # exit 96, no file
    assert outcome(wrapper_broke) == ("exited", "failed", 96)


def test_purged_job_is_judged_by_its_exit_file() -> None:
    assert outcome(None, JobFiles("0 5.0")) == ("exited", "ok", 0)
    assert outcome(None, JobFiles("2 5.0", tail="boom")) == ("exited", "failed", 2)
    assert outcome(None) == ("lost", "lost", None)


def test_bundle_sections_cannot_be_faked_by_a_log() -> None:
    marker = "@@EBabc"
    text = ("1|1|n|FAILED|NonZeroExitCode|256|a|b|\n@@EBabc rc 0\n@@EBabc job 0\n1 2.5\n\n"
            "@@EBabc started\n1.5\n\n@@EBabc tail\n@@EBxyz job 1\nCUDA out of memory\n"
            "@@EBabc job 1\n\n@@EBabc started\n\n")
    squeue, rc, files = parse_bundle(text, marker)
    assert rc == 0 and "FAILED" in squeue
    assert files[0].exit_text and files[0].exit_text.startswith("1 2.5")
    assert "@@EBxyz job 1" in files[0].tail and "CUDA out of memory" in files[0].tail
    assert files[1] == JobFiles(None, None, "")


def test_poll_script_quotes_paths_and_asks_squeue_once() -> None:
    h = Handle("slurm", "12_3", "local", "/tmp/a b/$(reboot)/jobs/x/a1", "/tmp/a b/logs/x.a1.log")
    script = poll_script([h, Handle("slurm", "13", "local", "/tmp/j", "/tmp/l")], "@@EBm")
    assert script.count("squeue") == 1 and "-j 12,13 " in script
    assert "'/tmp/a b/$(reboot)/jobs/x/a1'/exit" in script
    with pytest.raises(UnsafeValue):
        poll_script([Handle("slurm", "12;reboot", "local", "/j", "/l")], "@@EBm")


def spec(job_id: str, cmd: str = "python train.py --gpu ${GPU}") -> JobSpec:
    return JobSpec(job_id, "plan", "20260101T000000Z", 1, cmd, "/work/p q", "/work/p q/experiment_queue/x",
                   env={"SEED": "1; rm -rf /"})


def test_batch_script_is_the_wrapper_with_its_arguments(tmp_path: Path) -> None:
    from backends.base import WRAPPER
    text = batch_script([spec("r1")], WRAPPER.read_text())
    assert text.startswith("#!/bin/sh\n") and text.count("#!/bin/sh") == 1
    assert "SEED='1; rm -rf /'; export SEED" in text
    assert "${CUDA_VISIBLE_DEVICES:-}" in text and "${GPU}" not in text
    grid = batch_script([spec("r1"), spec("r2")], WRAPPER.read_text())
    assert 'case "${SLURM_ARRAY_TASK_ID:-}" in' in grid and "1)\n" in grid
    with pytest.raises(UnsafeValue):
        batch_script([JobSpec("r1", "p", "t", 1, "true", "/", "/r", env={"BAD-KEY": "x"})], "")


def test_sbatch_args_from_settings_and_overrides() -> None:
    base = SlurmSettings(partition="gpu", account="lab", qos="normal", time="4:00:00", gres=2,
                         cpus_per_task=8, mem="32G")
    args = sbatch_args(base.merged({"time": "30"}), "eb-p-r1-a1", "/o/%j.out", "/d", ["12", "13_1"], None, None)
    assert "--partition=gpu" in args and "--account=lab" in args and "--qos=normal" in args
    assert "--time=30" in args and "--gres=gpu:2" in args and "--cpus-per-task=8" in args
    assert "--mem=32G" in args and "--dependency=afterok:12:13_1" in args and "--no-requeue" in args
    array = sbatch_args(SlurmSettings(), "n", "/o", "/d", [], 5, 2)
    assert "--array=0-4%2" in array and not any(a.startswith("--partition") for a in array)
    with pytest.raises(UnsafeValue):
        sbatch_args(SlurmSettings(), "n", "/o", "/d", ["12;reboot"], None, None)


@pytest.mark.parametrize("bad", [{"time": "four hours"}, {"mem": "lots"}, {"partition": "gpu;reboot"},
                                 {"cpus_per_task": -1}, {"walltime": "1:00"}])
def test_bad_settings_name_the_key(bad: dict) -> None:
    with pytest.raises(ConfigError) as err:
        SlurmSettings().merged(bad)
    assert next(iter(bad)) in str(err.value)


class RecordedRunner:
    """Replays recorded cluster output: the only way to reach sacct's branch without slurmdbd."""

    host = "recorded"

    def __init__(self, squeue: str, sacct: str) -> None:
        self.squeue, self.sacct, self.calls = squeue, sacct, []

    def run(self, script: str, timeout: float):  # type: ignore[no-untyped-def]
        from backends.slurm import Result
        self.calls.append(script)
        if script.startswith("sacct"):
            return Result(0, self.sacct, "")
        marker = script.split("echo ", 1)[1].split()[0]
        return Result(0, f"{self.squeue}{marker} rc 0\n", "")


def test_jobs_purged_from_squeue_are_read_from_sacct_when_accounting_exists() -> None:
    from backends.slurm import SlurmBackend
    runner = RecordedRunner(read("squeue.live.txt"), read("sacct.written.txt"))
    backend = SlurmBackend(runner=runner)
    backend.accounting = True
    live, preempted, oom = (Handle("slurm", ref, "recorded", f"/nonexistent/{ref}", "/nonexistent/log")
                            for ref in ("18", "403", "402"))
    statuses = backend.poll([live, preempted, oom])
    assert (statuses[live].outcome, statuses[live].exit_code) == ("failed", 7)
    assert (statuses[preempted].phase, statuses[preempted].outcome) == ("lost", "lost")
    assert statuses[oom].outcome == "oom"
    assert len(runner.calls) == 2 and "-j 402,403" in runner.calls[1]  # only the purged ones
