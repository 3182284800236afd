"""Fixture plugin (slurm): a real single-node Slurm (munged + slurmctld + slurmd) on localhost.

Recipe: reference/ECOSYSTEM.md §9. Everything is private to one temp directory: its own munge
key and socket, its own SLURM_CONF, free (non-default) ports, fake GPUs as char devices (so
`--gres=gpu:1` sets CUDA_VISIBLE_DEVICES). The machine's default config and munged are never
touched, because a second Slurm silently talks to whatever munged owns the default socket.
`KillWait=5` and `OverTimeLimit=0` make a `--time=1` job end as TIMEOUT about a minute in.

`SlurmCluster` is also used by bench/bench_slurm.py.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.plugins.backends import ContractEnv
from tests.plugins.common import unavailable

SBIN = Path("/usr/sbin")
NEEDED = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmCluster:
    """One private single-node cluster; start() raises RuntimeError with the reason it could not."""

    def __init__(self, root: Path, partition: str = "debug", gpus: int = 2, cpus: int = 2,
                 extra_conf: str = "") -> None:
        self.root, self.partition, self.gpus, self.cpus = root, partition, gpus, cpus
        self.extra_conf = extra_conf  # more slurm.conf lines (bench: scheduler parameters)
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.munge_pid: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """What every client command needs: only SLURM_CONF, never the machine default."""
        return {"SLURM_CONF": str(self.conf)}

    def client(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=check, env={**os.environ, **self.env})

    # -- start --------------------------------------------------------------------------------
    def start(self) -> None:
        missing = [n for n in NEEDED if not (SBIN / n).exists()] + [c for c in CLIENTS if not shutil.which(c)]
        if missing:
            raise RuntimeError(f"slurm/munge binaries missing: {', '.join(missing)}")
        if os.geteuid() != 0:
            raise RuntimeError("the single-node Slurm fixture needs root (munged as munge, mknod)")
        self.root.chmod(0o755)  # munged runs as munge and must reach its socket dir
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._write_conf()
        self._spawn("slurmctld", [str(SBIN / "slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.client("scontrol", "ping", check=False).stdout.count("UP") > 0,
                   20, "slurmctld to answer ping")
        self._spawn("slurmd", [str(SBIN / "slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(self._node_idle, 30, "node to become idle")

    def _start_munge(self) -> None:
        mdir = self.root / "munge"
        key = mdir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        shutil.chown(mdir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        mdir.chmod(0o755)  # munged refuses a socket dir without o+x
        key.chmod(0o400)
        # -F keeps munged our child (a forking daemon would leave a zombie under a container's init)
        self._spawn("munged", ["runuser", "-u", "munge", "--", str(SBIN / "munged"), "-F",
                               f"--socket={mdir}/munge.sock", f"--key-file={key}",
                               f"--pid-file={mdir}/munged.pid", f"--log-file={mdir}/munged.log",
                               f"--seed-file={mdir}/munged.seed"])
        pid_file = mdir / "munged.pid"
        self._wait(lambda: (mdir / "munge.sock").exists() and pid_file.exists() and pid_file.read_text().strip(),
                   10, "munged socket")
        self.munge_pid = int(pid_file.read_text().split()[0])

    def _write_conf(self) -> None:
        r, node = self.root, self.node
        self.conf.write_text(f"""ClusterName=ebci
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.sock
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=300
KillWait=5
OverTimeLimit=0
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName={node} CPUs={self.cpus} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
{self.extra_conf}""")
        for i in range(self.gpus):
            dev = r / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a char device, like /dev/null
        (r / "gres.conf").write_text(f"NodeName={node} Name=gpu File={r}/fakegpu[0-{self.gpus - 1}]\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = (self.root / "log" / f"{name}.out").open("wb")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**os.environ, **self.env})

    def _node_idle(self) -> bool:
        out = self.client("sinfo", "-h", "-N", "-o", "%T", check=False).stdout
        return out.strip().startswith("idle")

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def log_tail(self, name: str) -> str:
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
            if path.exists() and path.stat().st_size:
                return path.read_text(errors="replace")[-1500:]
        return ""

    # -- helpers for tests ---------------------------------------------------------------------
    def job_ids(self) -> list[str]:
        out = self.client("squeue", "-h", "-o", "%i", check=False).stdout
        return out.split()

    def drain_jobs(self, timeout: float = 30.0) -> None:
        """Cancel every job of this private cluster and wait until none is left running."""
        ids = self.job_ids()
        if ids:
            self.client("scancel", *ids, check=False)
        deadline = time.monotonic() + timeout
        while self.job_ids() and time.monotonic() < deadline:
            time.sleep(0.2)

    def node_state(self) -> str:
        return self.client("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()

    def resume_node(self) -> None:
        """Bring the node back after a test put it down (a no-op when it is already up)."""
        if not self.node_state().startswith(("idle", "mixed", "alloc")):
            self.client("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
        self._wait(self._node_idle, 30, "node to return to idle")

    # -- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        try:
            if "slurmd" in self.procs and self.procs["slurmd"].poll() is None:
                self.drain_jobs()
        finally:
            for name in ("slurmd", "slurmctld"):
                self._terminate(self.procs.get(name))
            if self.munge_pid is not None:
                _kill_pid(self.munge_pid)  # runuser may not forward a signal to it
            self._terminate(self.procs.get("munged"))

    @staticmethod
    def _terminate(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The shared contract suite's slurm cases get the `slurm` mark, so `-m "not slurm"` skips
    starting a cluster for them (the suite parametrizes its `env` fixture by backend name)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("env") == "slurm":
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    # a short path: the munge socket path must fit in sun_path
    root = Path(tempfile.mkdtemp(prefix="ebslurm-", dir="/tmp"))
    # batch_sched_delay=0: a job starts ~1 s after sbatch instead of ~3 s (Slurm's default), which
    # roughly halves this suite's wall time; nothing asserted depends on it
    cluster = SlurmCluster(root, extra_conf="SchedulerParameters=batch_sched_delay=0\n")
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"single-node Slurm could not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm_env(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster, with every job a test left behind cancelled and the node back up after it."""
    yield slurm_cluster
    slurm_cluster.drain_jobs()
    slurm_cluster.resume_node()


@pytest.fixture
def contract_slurm(slurm_env: SlurmCluster, tmp_path: Path) -> ContractEnv:
    from backends.base import Slot
    from backends.slurm import LocalRunner, SlurmBackend, SlurmSettings

    def make() -> SlurmBackend:
        return SlurmBackend(SlurmSettings(partition=slurm_env.partition),
                            runner=LocalRunner(env=slurm_env.env))

    return ContractEnv(make(), Slot("slurm", None), str(tmp_path / "run"), str(tmp_path), Path, make)
