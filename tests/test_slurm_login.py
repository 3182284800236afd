"""sbatch on a login node: the Slurm backend over the shared SSH helper, against a loopback sshd
(tests/plugins/sshd.py) in front of the single-node Slurm (tests/plugins/slurm.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import JobSpec, Slot
from backends.slurm import LoginLayout, SlurmBackend, SshRunner
from backends.slurm_parse import SlurmSettings
from tests.plugins.common import wait_for
from tests.plugins.slurm import SlurmCluster
from tests.plugins.sshd import SshdPair

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]
RUN_TS = "20260102T000000Z"


def test_submit_poll_and_fetch_through_a_login_node(slurm_env: SlurmCluster, ssh_hosts: SshdPair,
                                                    tmp_path: Path) -> None:
    from backends.codesync import CodeSync
    from backends.sshconn import HostSpec, SshPool

    host = ssh_hosts.a
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "train.py").write_text("print('hello from the cluster')\n")
    pool = SshPool([HostSpec(host.alias)], ssh_config=str(ssh_hosts.ssh_config))
    backend = SlurmBackend(SlurmSettings(partition=slurm_env.partition),
                           runner=SshRunner(pool, host.alias, env=slurm_env.env),
                           login=LoginLayout(project, code_sync=CodeSync()))
    try:
        backend.preflight()
        job = JobSpec("lg", "sl", RUN_TS, 1, "python3 train.py > out.txt; echo user=$(id -un)",
                      str(project / "src"), str(project / "experiment_queue" / RUN_TS),
                      expected_output=("out.txt",))
        handle = backend.submit(job, Slot("slurm", None))
        assert handle.host == host.alias
        assert handle.job_dir == f"{host.home}/.expbridge/runs/sl-{RUN_TS}/jobs/lg/a1"
        status = wait_for(lambda: (s := backend.poll([handle])[handle]).phase in ("exited", "lost") and s,
                          timeout=60, interval=0.3, what="login-node job to end")
        assert (status.phase, status.outcome, status.exit_code) == ("exited", "ok", 0)
        # it ran as the login node's user, in the synced code dir, not in the local project
        assert "user=" + host.user in Path(handle.log_path).read_text()
        assert (host.home / ".expbridge/code/proj/src/out.txt").exists()
        assert not (project / "src" / "out.txt").exists()
        backend.fetch(handle, tmp_path / "back")
        assert (tmp_path / "back" / "jobs" / "lg" / "a1" / "exit").read_text().startswith("0 ")
        assert (project / "src" / "out.txt").read_text() == "hello from the cluster\n"
        adopted = SlurmBackend(SlurmSettings(), runner=SshRunner(pool, host.alias, env=slurm_env.env),
                               login=LoginLayout(project))
        assert adopted.adopt(job) is not None and adopted.adopt(job).ref == handle.ref  # type: ignore[union-attr]
    finally:
        pool.close()
