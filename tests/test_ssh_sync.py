"""Code sync (rsync, git), outputs fetched back, conda hook resolution, ProxyJump."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from backends.base import Handle, Slot
from backends.codesync import CodeSync
from backends.ssh import SshBackend
from backends.sshconn import HostSpec
from backends.sshscripts import CONDA_PATHS
from tests.plugins.common import wait_for
from tests.plugins.sshd import SshdPair, job, make_backend, remote

pytestmark = pytest.mark.ssh  # needs the real loopback OpenSSH servers



def _finish(backend, handle: Handle, timeout: float = 30.0):
    def done():
        st = backend.poll([handle])[handle]
        return st if st.phase in ("exited", "lost") else None
    return wait_for(done, timeout=timeout, interval=0.05, what=f"{handle.ref} to end")


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_rsync_tree_holds_code_and_configs_only_and_outputs_come_back(ssh_hosts: SshdPair,
                                                                      tmp_path: Path) -> None:
    project = tmp_path / "proj"
    _write(project, {
        "train.py": "print('x')\n", "configs/exp/a.yaml": "lr: 1\n", "src/models/net.py": "N=1\n",
        "src/run.sh": "echo\n", "requirements.txt": "numpy\n", "data/train.csv": "1,2\n",
        "src/data/cache.py": "big\n", "model.pt": "weights", "ckpt.safetensors": "w",
        "wandb/run-1/files/config.yaml": "x: 1\n", "outputs/old.json": "{}", "checkpoints/c.pt": "w",
    })
    a = ssh_hosts.a
    backend = make_backend(ssh_hosts, project, aliases=("eb-a",), code_dirs={"eb-a": "work/proj"},
                           code_sync=CodeSync())
    try:
        spec = job(project / "src", "fx1", "mkdir -p out && echo '{\"acc\": 0.9}' > out/metrics.json"
                   " && echo skip > out/notes.txt && ls models", plan="fx",
                   expected_output=("out/*.json",))
        spec = spec.__class__(**{**spec.__dict__, "run_dir": str(project / "experiment_queue" / "R1")})
        handle = backend.submit(spec, Slot("eb-a", 0))
        assert _finish(backend, handle).outcome == "ok"
        code = a.home / "work" / "proj"
        for present in ("train.py", "configs/exp/a.yaml", "src/models/net.py", "src/run.sh",
                        "requirements.txt"):
            assert (code / present).is_file(), present
        for absent in ("data", "src/data", "model.pt", "ckpt.safetensors", "wandb", "outputs",
                       "checkpoints"):
            assert not (code / absent).exists(), absent
        assert "net.py" in remote(a, handle.log_path).read_text()
        local_run = project / "experiment_queue" / "R1"
        backend.fetch(handle, local_run)
        assert (project / "src" / "out" / "metrics.json").read_text().strip() == '{"acc": 0.9}'
        assert not (project / "src" / "out" / "notes.txt").exists()  # not declared as an output
        assert (local_run / "logs" / "fx1.a1.log").read_text().strip().endswith("net.py")
        assert (local_run / "jobs" / "fx1" / "a1" / "exit").read_text().startswith("0 ")
    finally:
        backend.close()


def test_git_pull_mode_clones_then_pulls(ssh_hosts: SshdPair, tmp_path: Path) -> None:
    a = ssh_hosts.a
    bare = a.root / "repo.git"
    work = tmp_path / "proj"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", "--bare", str(bare)], check=True)
    # the repository belongs to another account (root), as a shared lab remote would
    a.as_user("git", "config", "--global", "--add", "safe.directory", str(bare))
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    _write(work, {"train.py": "print('v1')\n"})
    for args in (["add", "-A"], ["commit", "-qm", "v1"], ["push", "-q", str(bare), "HEAD:main"]):
        subprocess.run([*git, "-C", str(work), *args], check=True)

    def run_once(jid: str) -> str:
        backend = make_backend(ssh_hosts, work, aliases=("eb-a",), code_dirs={"eb-a": "src/proj"},
                               code_sync=CodeSync(mode="git", repo_url=str(bare), branch="main"))
        try:
            h = backend.submit(job(work, jid, "cat train.py", plan="git"), Slot("eb-a", 0))
            assert _finish(backend, h).outcome == "ok"
            return remote(a, h.log_path).read_text()
        finally:
            backend.close()

    assert "v1" in run_once("g1")
    _write(work, {"train.py": "print('v2')\n"})
    for args in (["commit", "-qam", "v2"], ["push", "-q", str(bare), "HEAD:main"]):
        subprocess.run([*git, "-C", str(work), *args], check=True)
    assert "v2" in run_once("g2")


FAKE_CONDA = """#!/bin/sh
# fake conda: its shell hook defines a conda function that says which binary it came from
[ "$1" = shell.bash ] && [ "$2" = hook ] || exit 3
echo 'conda() { echo "conda-from=%s $*"; }'
"""


@pytest.mark.slow
def test_fake_conda_at_each_known_path_is_picked_in_documented_order(ssh_hosts: SshdPair,
                                                                     tmp_path: Path) -> None:
    a = ssh_hosts.a
    a.as_user("mkdir", "-p", str(a.home / "code"))
    placed: list[Path] = []
    created_roots: list[Path] = []
    try:
        for pattern in CONDA_PATHS:
            path = a.home / pattern[2:] if pattern.startswith("~/") else Path(pattern)
            if not pattern.startswith("~/") and path.exists():
                pytest.skip(f"a real conda exists at {path}; not touching it")
            top = path.parents[1]  # e.g. /opt/anaconda3, created by us and removed after
            if not top.exists():
                created_roots.append(top if top.parent.exists() else top.parent)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(FAKE_CONDA.replace("%s", str(path)))
            path.chmod(0o755)
            placed.append(path)
        on_path = a.bin_dir / "conda"
        on_path.write_text(FAKE_CONDA.replace("%s", str(on_path)))
        on_path.chmod(0o755)
        backend = make_backend(ssh_hosts, tmp_path, aliases=("eb-a",))
        try:
            for i, expected in enumerate([*placed, on_path]):
                spec = job(tmp_path, f"cd{i}", "echo after-activate", plan="conda", conda_env="myenv")
                h = backend.submit(spec, Slot("eb-a", 0))
                assert _finish(backend, h).outcome == "ok"
                log = remote(a, h.log_path).read_text()
                assert f"conda-from={expected} activate myenv" in log, log
                expected.unlink()  # the next candidate in order must be picked now
            h = backend.submit(job(tmp_path, "cdx", "true", plan="conda", conda_env="myenv"), Slot("eb-a", 0))
            assert _finish(backend, h).exit_code == 98  # bare `conda`: nothing left to activate
            h = backend.submit(job(tmp_path, "cdn", "echo no-conda", plan="conda"), Slot("eb-a", 0))
            assert _finish(backend, h).outcome == "ok"  # no conda_env: conda is never touched
        finally:
            backend.close()
    finally:
        for path in placed:
            path.unlink(missing_ok=True)
        for root in created_roots:
            shutil.rmtree(root, ignore_errors=True)
        for pattern in CONDA_PATHS[:3]:
            shutil.rmtree(a.home / pattern[2:].split("/")[0], ignore_errors=True)


def test_proxyjump_through_an_alias(ssh_hosts: SshdPair, tmp_path: Path) -> None:
    b = ssh_hosts.b
    b.as_user("mkdir", "-p", str(b.home / "code"))
    for spec in (HostSpec("eb-b-via-jump", code_dir="code"),  # ProxyJump from ssh_config
                 HostSpec("eb-b", proxy_jump="eb-a", code_dir="code")):  # ProxyJump from our config
        backend = SshBackend([spec], tmp_path, ssh_config=str(ssh_hosts.ssh_config), cooldown_s=0)
        try:
            h = backend.submit(job(tmp_path, f"pj{len(spec.alias)}", "id -un", plan="pj"),
                               Slot(spec.alias, 0))
            assert _finish(backend, h).outcome == "ok"
            assert remote(b, h.log_path).read_text().strip() == b.user
            conn = backend.pool.connection(spec.alias)
            assert conn.gateway is not None and conn.gateway.port == ssh_hosts.a.port
        finally:
            backend.close()
