"""Fixture plugin (sshd): two real OpenSSH servers on 127.0.0.1, one per fake GPU host.

Each server logs in as its own non-root user (created here, home under the session's tmp dir),
has its own host key, its own remote base directory and its own fake `nvidia-smi` on the remote
PATH reading a per-host state file, so the two "hosts" never share exit files or GPU state.
The recipe is ECOSYSTEM.md §4. If sshd cannot start, the tests are `unavailable` (skip locally,
fail under CI).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.plugins.backends import ContractEnv
from tests.plugins.common import unavailable, wait_for

SSHD = "/usr/sbin/sshd"
# per test session: two sessions on one machine (two engineers, a bench) must not share users
USERS = (f"ebt{os.getpid()}a", f"ebt{os.getpid()}b")
ALIASES = ("eb-a", "eb-b")
FAKE_SMI = """#!/bin/sh
# fake nvidia-smi for one test host: prints the state file, or fails like a missing driver
state={state}
[ -f "$state" ] || {{ echo "NVIDIA-SMI has failed" >&2; exit 9; }}
cat "$state"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _ensure_user(name: str, home: Path) -> pwd.struct_passwd:
    try:
        pwd.getpwnam(name)
        subprocess.run(["usermod", "-d", str(home), name], check=True, capture_output=True)
    except KeyError:
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/bash", name],
                       check=True, capture_output=True)
    # useradd leaves the account locked ("!"), and sshd without PAM refuses locked accounts
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    home.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(name)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return entry


@dataclass
class SshdHost:
    """One loopback OpenSSH server logging in as one test user."""

    alias: str
    user: str
    root: Path  # server files: config, host key, authorized_keys, fake bin, GPU state
    home: Path  # the remote user's home: what `~` means on this "host"
    port: int
    client_key: Path
    proc: subprocess.Popen | None = None
    uid: int = 0
    gid: int = 0

    @property
    def gpu_state(self) -> Path:
        return self.root / "gpu_state.csv"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def set_gpus(self, used_mib: list[int | str] | None, total: int = 16000) -> None:
        """Write the fake nvidia-smi reading; None removes it (nvidia-smi then fails)."""
        if used_mib is None:
            self.gpu_state.unlink(missing_ok=True)
            return
        lines = [f"{i}, GPU-{self.alias}-{i}, {u}, {total}" for i, u in enumerate(used_mib)]
        tmp = self.gpu_state.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.gpu_state)

    def write_config(self) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        smi = self.bin_dir / "nvidia-smi"
        smi.write_text(FAKE_SMI.format(state=self.gpu_state))
        smi.chmod(0o755)
        shutil.copy(self.client_key.with_suffix(".pub"), self.root / "authorized_keys")
        key = self.root / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.root / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {key}
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
AllowUsers {self.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
SetEnv PATH={self.bin_dir}:/usr/local/bin:/usr/bin:/bin
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
""")

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        screen_dir = Path("/run/screen")  # non-root screen needs it; a fresh container may lack it
        if not screen_dir.exists():
            screen_dir.mkdir()
            screen_dir.chmod(0o1777)
        cfg = str(self.root / "sshd_config")
        check = subprocess.run([SSHD, "-t", "-f", cfg], capture_output=True, text=True)
        if check.returncode != 0:
            unavailable(f"sshd config check failed: {check.stderr.strip()}")
        self.proc = subprocess.Popen([SSHD, "-D", "-f", cfg, "-E", str(self.root / "sshd.log")])
        try:
            wait_for(self._accepts, timeout=10, what=f"sshd on port {self.port}")
        except AssertionError:
            self.stop()
            unavailable(f"sshd did not accept on port {self.port}: {self.log_tail()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4).startswith(b"SSH")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the listener and every per-connection sshd it forked: a real drop for clients.

        Jobs started in screen/tmux are not children of sshd (they daemonise), so they live on.
        """
        if self.proc is None:
            return
        kids = _children(self.proc.pid)
        self.proc.kill()
        self.proc.wait(timeout=10)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            return (self.root / "sshd.log").read_text()[-2000:]
        except OSError:
            return ""

    def as_user(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command on this host as its user, directly (runuser), bypassing sshd."""
        env = ["env", f"HOME={self.home}", f"PATH={self.bin_dir}:/usr/bin:/bin"]
        return subprocess.run(["runuser", "-u", self.user, "--", *env, *argv],
                              capture_output=True, text=True, check=check, cwd=self.home, timeout=30)

    def kill_user_processes(self) -> None:
        """End what the tests left as this (test-only) user, and the sockets SIGKILL leaves."""
        for pid in _pids_of_uid(self.uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(f"/run/screen/S-{self.user}", ignore_errors=True)
        shutil.rmtree(f"/tmp/tmux-{self.uid}", ignore_errors=True)


@dataclass
class SshdPair:
    hosts: dict[str, SshdHost]
    ssh_config: Path
    client_key: Path
    known_hosts: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def a(self) -> SshdHost:
        return self.hosts[ALIASES[0]]

    @property
    def b(self) -> SshdHost:
        return self.hosts[ALIASES[1]]


def _write_ssh_config(pair_root: Path, hosts: list[SshdHost], key: Path, known: Path) -> Path:
    blocks = []
    for h in hosts:
        blocks.append(f"""Host {h.alias}
    HostName 127.0.0.1
    Port {h.port}
    User {h.user}
""")
    # the second host reached only through the first: a ProxyJump through an alias
    blocks.append(f"""Host {hosts[1].alias}-via-jump
    HostName 127.0.0.1
    Port {hosts[1].port}
    User {hosts[1].user}
    ProxyJump {hosts[0].alias}
""")
    blocks.append(f"""Host *
    IdentityFile {key}
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking accept-new
    UserKnownHostsFile {known}
    ConnectTimeout 10
""")
    path = pair_root / "ssh_config"
    path.write_text("\n".join(blocks))
    return path


@contextmanager
def start_pair() -> Iterator[SshdPair]:
    """Two loopback sshd hosts (also used by bench/bench_ssh.py); everything ended on exit."""
    if not (Path(SSHD).exists() and shutil.which("screen") and shutil.which("ssh")):
        unavailable("openssh-server, openssh-client and screen are required for the ssh tests")
    if os.geteuid() != 0:
        unavailable("the sshd fixture creates test users and needs root")
    # not under pytest's tmp (mode 0700 for root): the test users must reach their homes
    root = Path(tempfile.mkdtemp(prefix="eb-sshd-"))
    root.chmod(0o755)
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key), "-C", "eb-test"],
                   check=True)
    hosts: list[SshdHost] = []
    try:
        for alias, user in zip(ALIASES, USERS):
            home = root / f"home-{alias}"
            entry = _ensure_user(user, home)
            host = SshdHost(alias, user, root / f"srv-{alias}", home, _free_port(), key,
                            uid=entry.pw_uid, gid=entry.pw_gid)
            host.kill_user_processes()  # a uid reused from an earlier session may have leftovers
            host.write_config()
            host.set_gpus([0, 0])
            host.start()
            hosts.append(host)
        known = root / "known_hosts"
        yield SshdPair({h.alias: h for h in hosts}, _write_ssh_config(root, hosts, key, known), key, known)
    finally:
        for host in hosts:
            host.stop()
            host.kill_user_processes()
        for user in USERS:
            subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_pair() -> Iterator[SshdPair]:
    with start_pair() as pair:
        yield pair


@pytest.fixture
def ssh_hosts(sshd_pair: SshdPair) -> Iterator[SshdPair]:
    """Both servers up with two idle fake GPUs each; processes a test left behind are ended."""
    for host in sshd_pair.hosts.values():
        if not host.running():
            host.start()
        host.set_gpus([0, 0])
    yield sshd_pair
    for host in sshd_pair.hosts.values():
        host.kill_user_processes()
        if not host.running():
            host.start()


def make_backend(pair: SshdPair, project: Path, aliases: tuple[str, ...] = ALIASES,
                 code_dirs: dict[str, str] | None = None, **kwargs: object):
    from backends.ssh import HostSpec, SshBackend

    specs = [HostSpec(alias=a, code_dir=(code_dirs or {}).get(a, "code")) for a in aliases]
    kwargs.setdefault("cooldown_s", 0.0)
    kwargs.setdefault("command_timeout_s", 15.0)
    return SshBackend(specs, project, ssh_config=str(pair.ssh_config), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def contract_ssh(ssh_hosts: SshdPair, tmp_path: Path) -> Iterator[ContractEnv]:
    from backends.base import Slot

    project = tmp_path / "project"
    project.mkdir()
    host = ssh_hosts.a
    host.as_user("mkdir", "-p", str(host.home / "code"))
    made: list = []

    def make():
        backend = make_backend(ssh_hosts, project, aliases=(host.alias,))
        made.append(backend)
        return backend

    def to_local(path: str) -> Path:
        return Path(path) if path.startswith("/") else host.home / path

    yield ContractEnv(make(), Slot(host.alias, 0), str(project / "experiment_queue" / "RUN"),
                      str(project), to_local, make)
    for backend in made:
        backend.close()


# -- helpers for the ssh tests and bench/bench_ssh.py --------------------------------------------
def job(project: Path, job_id: str, cmd: str, *, plan: str = "t", run_ts: str = "20260101T000000Z",
        attempt: int = 1, **kw: object):
    from backends.base import JobSpec

    return JobSpec(job_id=job_id, plan=plan, run_ts=run_ts, attempt=attempt, cmd=cmd, cwd=str(project),
                   run_dir=str(project / "experiment_queue" / run_ts), **kw)  # type: ignore[arg-type]


@dataclass
class Drive:
    """What a tiny scheduling loop saw: every attempt's handle, slot and final status."""

    attempts: list[tuple[object, object, object]] = field(default_factory=list)  # (spec, slot, status)
    handles: dict[str, object] = field(default_factory=dict)  # session -> handle


def drive(backend, specs: list, *, tick: float = 0.1, timeout: float = 120.0,
          oom_retries: int = 1, on_tick=None) -> Drive:
    """Poll, retry OOM on another GPU, fill free slots: the core loop's job, kept tiny and bounded."""
    from dataclasses import replace

    from backends.ssh import prefer_other_gpu

    pending, running, seen = list(specs), {}, Drive()
    avoid: dict[str, object] = {}
    deadline = time.monotonic() + timeout
    while pending or running:
        assert time.monotonic() < deadline, f"drive timed out; running={[h.ref for h in running]}"
        for handle, status in backend.poll(list(running)).items():
            if status.phase not in ("exited", "lost"):
                continue
            spec, slot = running.pop(handle)
            seen.attempts.append((spec, slot, status))
            if status.outcome == "oom" and spec.attempt <= oom_retries:
                pending.insert(0, replace(spec, attempt=spec.attempt + 1))
                avoid[spec.job_id] = slot
        free = backend.slots()
        while pending and free:
            spec = pending.pop(0)
            slot = prefer_other_gpu(free, avoid.get(spec.job_id))[0]
            free.remove(slot)
            handle = backend.submit(spec, slot)
            running[handle] = (spec, slot)
            seen.handles[handle.ref] = handle
        if on_tick is not None:
            on_tick(running)
        time.sleep(tick)
    return seen


def remote(host: SshdHost, rel: str) -> Path:
    return Path(rel) if rel.startswith("/") else host.home / rel
