"""The SSH backend's pure parts: remote paths, script output parsing, job status, breaker."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from backends.base import Slot
from backends.codesync import CodeSync, rsync_filters
from backends.ssh import Breaker, prefer_other_gpu, job_status
from backends.sshconn import HostSpec
from backends.sshscripts import (JobReading, conda_resolve, home_path, parse_launch, parse_poll,
                                 remote_cwd)
from daemon.errors import UnsafeValue


def test_home_paths_expand_home_only_inside_the_shell() -> None:
    assert home_path(".expbridge/runs/p-1") == '"$HOME"/.expbridge/runs/p-1'
    assert home_path("~/code dir") == "\"$HOME\"/'code dir'"
    assert home_path("/srv/x;y") == "'/srv/x;y'"
    out = subprocess.run(["sh", "-c", f"HOME=/h; printf %s {home_path('a $(b)')}"],
                         capture_output=True, text=True).stdout
    assert out == "/h/a $(b)"


def test_remote_cwd_maps_the_project_onto_the_code_dir() -> None:
    assert remote_cwd("code/proj", "/home/me/proj", "/home/me/proj") == "code/proj"
    assert remote_cwd("/srv/p/", "/home/me/proj", "/home/me/proj/exp/a") == "/srv/p/exp/a"
    with pytest.raises(UnsafeValue):
        remote_cwd("code", "/home/me/proj", "/etc")


def test_host_spec_refuses_shell_metacharacters() -> None:
    HostSpec("gpu-1.lab", hostname="10.0.0.2", user="me", port=22, proxy_jump="me@bastion:2222").validate()
    for bad in (HostSpec("a;touch x"), HostSpec("ok", hostname="$(id)"), HostSpec("ok", user="a b"),
                HostSpec("ok", proxy_jump="x;y"), HostSpec("ok", port=70000)):
        with pytest.raises(UnsafeValue):
            bad.validate()


def test_poll_output_parsing_tolerates_garbage_and_na() -> None:
    tail = base64.b64encode(b"RuntimeError: CUDA out of memory\n").decode()
    text = ("@@NOW 100\n@@J 0 1 S 0\n@@S 0 99.5\n@@E 0 \n@@J 1 0 - 0\n@@S 1 98\n@@E 1 1 101.5\n"
            f"@@T 1 {tail}\n@@J x junk\nnoise\n@@G\n0, GPU-a, 12, 16000\n1, GPU-b, [N/A], 16000\n"
            "garbage line\n")
    r = parse_poll(text)
    assert r.now == 100 and r.jobs[0].alive and not r.jobs[1].alive
    assert job_status(r.jobs[0]).phase == "running"
    st = job_status(r.jobs[1])
    assert (st.phase, st.exit_code, st.outcome, st.started_at) == ("exited", 1, "oom", 98.0)
    assert r.gpu_csv is not None and "[N/A]" in r.gpu_csv
    assert parse_poll("@@NOSMI\n").gpu_csv is None
    assert parse_poll("@@G\n@@SMIFAIL 9\n").gpu_note == "nvidia-smi failed (exit 9)"


def test_job_status_classes() -> None:
    assert job_status(JobReading(alive=True, state="T")).phase == "suspended"
    assert job_status(JobReading(alive=False)).outcome == "lost"
    assert job_status(JobReading(alive=False, cancelled=True)).outcome == "cancelled"
    stale = job_status(JobReading(alive=True, exit="0 5", killed=True))
    assert (stale.phase, stale.outcome, stale.detail) == ("exited", "ok", "stale session killed")


def test_launch_reply_parsing() -> None:
    assert parse_launch("noise\nEBOK 10 11 12\n") == (10, 11, 12)
    assert parse_launch("EBOK 10  \n") == (10, 0, 0)  # the job already ended
    assert parse_launch("EBERR no started file within 1s\n") == "no started file within 1s"
    assert parse_launch("") is None  # no answer: the launch may or may not have happened


def test_breaker_opens_after_k_failures_and_closes_only_after_reset() -> None:
    b = Breaker(limit=3, reset_s=10)
    for t in (0, 1):
        b.failure(t)
    b.success(2)
    b.failure(3), b.failure(4)
    assert b.allows_launch()
    b.failure(5)
    assert not b.allows_launch() and not b.may_probe(6)
    b.success(7)  # a success before the reset time keeps it open
    assert not b.allows_launch() and b.may_probe(15)
    b.success(15)
    assert b.allows_launch() and b.state == "closed"


def test_prefer_other_gpu_puts_the_failed_slot_last() -> None:
    slots = [Slot("a", 0), Slot("a", 1), Slot("b", 0)]
    assert prefer_other_gpu(slots, Slot("a", 0))[-1] == Slot("a", 0)
    assert prefer_other_gpu(slots, Slot("a", 0))[0] == Slot("b", 0)
    assert prefer_other_gpu(slots, None) == slots


def test_rsync_filters_walk_directories_and_exclude_data_first() -> None:
    args = rsync_filters(CodeSync(exclude=("secret/",), include=("*.jinja",)))
    assert args.index("--exclude=secret/") < args.index("--exclude=data/") < args.index("--include=*/")
    assert args.index("--include=*/") < args.index("--include=*.py") < args.index("--include=*.jinja")
    assert args[-1] == "--exclude=*"


def test_conda_resolution_order_on_this_machine(tmp_path: Path) -> None:
    """The snippet alone, against a fake home: home paths in order, then $PATH, then bare."""
    home = tmp_path / "home"
    bindir = tmp_path / "bin"
    bindir.mkdir()

    def resolve(env_hook: str = "") -> str:
        script = conda_resolve() + 'printf "%s|%s" "$eb_hook" "$eb_conda"'
        env = {"HOME": str(home), "PATH": f"{bindir}:/usr/bin:/bin", "ARIS_CONDA_HOOK": env_hook}
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env).stdout

    assert resolve() == 'eval "$("$EB_CONDA" shell.bash hook)"|conda'
    (bindir / "conda").write_text("#!/bin/sh\n")
    (bindir / "conda").chmod(0o755)
    assert resolve().endswith(f"|{bindir}/conda")
    for name in ("miniforge3", "miniconda3", "anaconda3"):  # reverse: each new one wins
        fake = home / name / "bin" / "conda"
        fake.parent.mkdir(parents=True)
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
        assert resolve().endswith(f"|{fake}")
    assert resolve("eval \"$(/x/conda shell.bash hook)\"") == 'eval "$(/x/conda shell.bash hook)"|'
    assert resolve("/y/conda").endswith("|/y/conda")


def test_from_settings_maps_the_config_sections(tmp_path: Path) -> None:
    from types import SimpleNamespace as NS

    from backends.ssh import from_settings
    from daemon.errors import BackendUnavailable

    host = NS(alias="gpu1", hostname="10.0.0.5", user="me", port=2222, key_file=None, proxy_jump=None,
              gpus=[0, 2], code_dir=None)
    ssh = NS(hosts=[host], ssh_config=None, session="tmux", remote_base=".eb", connect_timeout_s=5,
             command_timeout_s=9, breaker_failures=4, code_sync="git", launch_cooldown_s=7)
    settings = NS(ssh=ssh, gpus=None, gpu_free_threshold_mib=800, launch_timeout_s=12, code_dir="work/p")
    backend = from_settings(settings, tmp_path)
    try:
        spec = backend.hosts["gpu1"]
        assert (spec.hostname, spec.port, spec.gpus, spec.code_dir) == ("10.0.0.5", 2222, (0, 2), "work/p")
        assert (backend.session_kind, backend.remote_base, backend.threshold_mib) == ("tmux", ".eb", 800)
        assert (backend.cooldown_s, backend.command_timeout_s, backend.launch_timeout_s) == (7, 9, 12)
        assert backend.state["gpu1"].breaker.limit == 4 and backend.code_sync.mode == "git"
    finally:
        backend.close()
    ssh.hosts = []
    with pytest.raises(BackendUnavailable, match="no hosts configured"):
        from_settings(settings, tmp_path)
