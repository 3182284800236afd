"""`expbridge run --backend slurm` as a real process on the single-node Slurm: the pipeline drives
the Slurm backend end to end, and a controller killed with -9 mid-run adopts its Slurm jobs on
restart instead of submitting them again."""
from __future__ import annotations

import os
import signal

import pytest

from tests.plugins.common import wait_for
from tests.plugins.slurm import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MANIFEST = """
    max_parallel: 2
    jobs:
      - {id: a, run: R001, cmd: "echo run >> a.count; sleep 4; echo done > a.out", expected_output: a.out}
      - {id: b, run: R001, cmd: "echo run >> b.count; sleep 4; echo done > b.out", expected_output: b.out}
"""


def slurm_ids(cluster: SlurmCluster) -> list[str]:
    return cluster.client("squeue", "-h", "-t", "all", "-o", "%i %j", check=False).stdout.splitlines()


def test_restart_adopts_running_slurm_jobs_and_never_resubmits(slurm_env: SlurmCluster, project_factory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_env.conf))
    p = project_factory(MANIFEST, [("R001", "M1", "MUST")])
    args = ("--backend", "slurm", "--partition", slurm_env.partition)
    before = {line.split()[0] for line in slurm_ids(slurm_env)}
    first = p.popen("run", str(p.path), "--state-dir", str(p.state), *args)
    try:
        wait_for(lambda: (p.path / "a.count").exists() and (p.path / "b.count").exists(), timeout=60,
                 interval=0.2, what="both Slurm jobs started")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    result = p.run(*args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert p.job_states() == {"a": "succeeded", "b": "succeeded"}
    for name in ("a", "b"):
        assert (p.path / f"{name}.count").read_text() == "run\n"
        assert p.launches(name) == 1
    ours = [line for line in slurm_ids(slurm_env) if line.split()[0] not in before]
    assert sorted(line.split()[1] for line in ours) == ["eb-proj-a-a1", "eb-proj-b-a1"]  # two sbatch calls only
    assert p.status_cell("R001") == "DONE"
