"""Resource faults (DESIGN §9): a missing or lying nvidia-smi, a full disk under the state
directory, an unreachable backend at start. Each must give a clear state and message, lose
nothing, and never fall back silently to another place to run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.plugins.common import REPO, wait_for
from tests.plugins.projects import Proj, cli_env

pytestmark = pytest.mark.slow
ONE_JOB = "cwd: .\njobs:\n  - {id: a, run: R001, cmd: 'echo \"$CUDA_VISIBLE_DEVICES\" > ran'}\n"


def run_for(p: Proj, seconds: float, *extra: str, env: dict[str, str] | None = None) -> str:
    """`expbridge run` for a while, then SIGTERM; returns everything it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", str(p.path), "--state-dir", str(p.state),
                             *extra], cwd=REPO, env=env or cli_env(p.state), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    return out


def fake_smi(tmp: Path, script: str) -> dict[str, str]:
    """An environment whose PATH starts with a fake nvidia-smi running `script` (sh)."""
    bin_dir = tmp / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + script)
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def no_smi_path() -> str:
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    assert shutil.which("nvidia-smi", path=path) is None, "a real nvidia-smi is on the system PATH"
    return path


def status_text(p: Proj) -> str:
    out = p.cli("status", "--state-dir", str(p.state), "--json")
    return out.stdout + out.stderr + p.tracker.read_text()


# -- nvidia-smi ---------------------------------------------------------------------------------

GARBAGE = "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\"; exit 9\n"


@pytest.mark.parametrize("case", ["missing", "garbage"])
def test_gpu_jobs_wait_and_never_fall_back_to_cpu(project_factory, tmp_path: Path, case: str) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    env = cli_env(p.state)
    if case == "missing":
        env["PATH"] = no_smi_path()
        extra = ("gpus: [0]",)  # GPUs asked for, no nvidia-smi to find them
    else:
        env["PATH"] = fake_smi(tmp_path, GARBAGE)["PATH"] + ":" + env["PATH"]
        extra = ()
    out = run_for(p, 4, *extra, env=env)
    print(f"\nnvidia-smi {case}: job states {p.job_states()}, tracker {p.status_cell('R001')}")
    assert not (p.path / "ran").exists(), f"ran without a GPU (silent fallback to CPU):\n{out}"
    assert p.job_states() == {"a": "pending"}, "nothing lost: the job still waits for a GPU"
    assert p.status_cell("R001") == "QUEUED"


@pytest.mark.parametrize("case", ["missing", "garbage"])
def test_why_a_gpu_job_waits_is_said(project_factory, tmp_path: Path, case: str) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    env = cli_env(p.state)
    if case == "missing":
        env["PATH"] = no_smi_path()
        out = run_for(p, 4, "gpus: [0]", env=env)
    else:
        env["PATH"] = fake_smi(tmp_path, GARBAGE)["PATH"] + ":" + env["PATH"]
        out = run_for(p, 4, env=env)
    assert "nvidia-smi" in out + status_text(p)


def test_na_reading_makes_that_gpu_busy_and_the_other_is_used(project_factory, tmp_path: Path) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    env = cli_env(p.state)
    env["PATH"] = fake_smi(tmp_path, "printf '0, GPU-a, [N/A], [N/A]\\n1, GPU-b, 3, 16000\\n'\n")["PATH"] + ":" + env["PATH"]
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "run", str(p.path), "--state-dir", str(p.state)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    print(f"\n[N/A] on GPU 0: ran on CUDA_VISIBLE_DEVICES={(p.path / 'ran').read_text().strip()!r}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (p.path / "ran").read_text().strip() == "1"


# -- an unreachable backend -------------------------------------------------------------------

def test_unreachable_backend_is_a_configuration_error_without_fallback(project_factory) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    result = p.run("--backend", "ssh", "--hosts", "no-such-host.invalid", timeout=90)
    print(f"\nssh to an unresolvable alias: exit {result.returncode}: {result.stderr.strip()[-200:]}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no-such-host.invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (p.path / "ran").exists(), "ran locally instead (a silent fallback)"
    assert not list(p.path.glob("experiment_queue/*/jobs/*")), "an attempt was started somewhere"


def test_no_backend_blocks_the_plan_and_says_so(project_factory, tmp_path: Path) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    config = tmp_path / "config.yaml"
    config.write_text(f"projects:\n  - path: {p.path}\n")  # no backend anywhere
    result = p.run("--config", str(config), timeout=60)
    print(f"\nno backend: exit {result.returncode}: {result.stderr.strip()[-200:]}")
    assert result.returncode == 1
    assert "no backend" in result.stderr
    assert not (p.path / "ran").exists()


# -- a full disk under the state directory -----------------------------------------------------

MARK_JOBS = 16


def marks_project(project_factory) -> Proj:
    jobs = "\n".join(f"  - {{id: j{i:02d}, run: R{i:02d}, cmd: 'echo $EB_JOB >> marks; sleep 0.4'}}"
                     for i in range(MARK_JOBS))
    return project_factory(f"cwd: .\nmax_parallel: 2\njobs:\n{jobs}\n", [(f"R{i:02d}", "M1", "MUST") for i in range(MARK_JOBS)])


# Where a tmpfs cannot be mounted (not root, or no mount permission), the same scenario runs with
# a fault injector around the real code: SQLite's max_page_count pinned to the current size (a
# real SQLITE_FULL) and ENOSPC from the atomic file writer, switched by a flag file.
INJECTOR = r"""
import errno, os, sys
from contextlib import contextmanager
from pathlib import Path
flag = Path(os.environ["EB_FULL_FLAG"])
import daemon.store as store
import handlers.tracker_file as tracker_file
import handlers.tracker_write as tracker_write
_tx = store.Store.transaction

@contextmanager
def transaction(self):
    if flag.exists():
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages}")
    else:
        self.db.execute("PRAGMA max_page_count = 1073741823")
    with _tx(self):
        yield

store.Store.transaction = transaction
_write = tracker_file.write_atomic

def write_atomic(path, text):
    if flag.exists():
        raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
    return _write(path, text)

tracker_file.write_atomic = tracker_write.write_atomic = write_atomic
from daemon.cli import main
sys.exit(main())
"""


class FullDisk:
    """A full state directory: a small tmpfs mounted on it and filled when we may mount, else
    the injector above. Says which path ran."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.flag = state.parent / "disk-full.flag"
        state.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        why = "EB_TEST_NO_MOUNT is set" if os.environ.get("EB_TEST_NO_MOUNT") else \
            "not root" if os.geteuid() != 0 else ""
        if not why:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)],
                                  capture_output=True, text=True)
            self.mounted = done.returncode == 0
            why = done.stderr.strip()
        self.path = "tmpfs" if self.mounted else "injected (SQLite max_page_count + ENOSPC in write_atomic)"
        print(f"\ndisk full: path taken: {self.path}" + ("" if self.mounted else f"; tmpfs not possible: {why}"))

    def start(self, p: Proj) -> subprocess.Popen[str]:
        args = ["run", str(p.path), "--state-dir", str(p.state), "cpu_slots: 2"]
        if self.mounted:
            return p.popen(*args)
        launcher = self.state.parent / "inject_full.py"
        launcher.write_text(INJECTOR)
        return subprocess.Popen([sys.executable, str(launcher), *args], cwd=REPO, text=True,
                                env={**cli_env(p.state), "EB_FULL_FLAG": str(self.flag)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def fill(self) -> None:
        if self.mounted:
            subprocess.run(["dd", "if=/dev/zero", f"of={self.state}/filler", "bs=4k"], capture_output=True)
        else:
            self.flag.touch()

    def free(self) -> None:
        (self.state / "filler").unlink(missing_ok=True)
        self.flag.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True)


def _marks(p: Proj) -> list[str]:
    f = p.path / "marks"
    return f.read_text().split() if f.exists() else []


@pytest.mark.xfail(strict=False, reason=(
    "known defect, open: with the state database full, the controller now survives, says why and "
    "keeps jobs' results in memory, but does not reliably finish once space returns (a jobs' "
    "in-memory and committed states diverge after a failed commit). Remove when fixed."))
def test_disk_full_loses_nothing_and_runs_nothing_twice(project_factory) -> None:
    p = marks_project(project_factory)
    disk = FullDisk(p.state)
    restarts = 0
    try:
        proc = disk.start(p)
        wait_for(lambda: len(_marks(p)) >= 3, timeout=30, what="first jobs ran")
        disk.fill()
        time.sleep(3)
        during = len(_marks(p))
        disk.free()
        if proc.poll() is not None:  # the controller gave up on the full disk: restart it
            restarts += 1
            proc.communicate(timeout=10)
            proc = disk.start(p)
        out, _ = proc.communicate(timeout=90)
        states = p.job_states()  # the store lives on the tmpfs: read it before unmounting
    finally:
        if proc.poll() is None:
            proc.kill()
        disk.unmount()
    marks = _marks(p)
    print(f"disk full: {during} jobs had started when space returned; {restarts} restart(s); "
          f"{len(marks)} command starts for {MARK_JOBS} jobs")
    assert proc.returncode == 0, out[-3000:]
    assert sorted(marks) == [f"j{i:02d}" for i in range(MARK_JOBS)], "each job exactly once"
    assert states == {f"j{i:02d}": "succeeded" for i in range(MARK_JOBS)}


@pytest.mark.xfail(strict=False, reason=(
    "known defect, open: with the state database full, the controller now survives, says why and "
    "keeps jobs' results in memory, but does not reliably finish once space returns (a jobs' "
    "in-memory and committed states diverge after a failed commit). Remove when fixed."))
def test_disk_full_pauses_launches_says_why_and_resumes(project_factory) -> None:
    p = marks_project(project_factory)
    disk = FullDisk(p.state)
    try:
        proc = disk.start(p)
        wait_for(lambda: len(_marks(p)) >= 3, timeout=30, what="first jobs ran")
        disk.fill()
        time.sleep(3)
        alive_while_full = proc.poll() is None
        disk.free()
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
        disk.unmount()
    assert alive_while_full, f"the controller died on a full disk:\n{out[-3000:]}"
    assert "Traceback" not in out
    assert "full" in out.lower() or "no space" in out.lower()
    assert proc.returncode == 0
    assert sorted(_marks(p)) == [f"j{i:02d}" for i in range(MARK_JOBS)]

