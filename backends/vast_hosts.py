"""A rented instance as an SSH host: its SshBackend, the ARIS verification and the set-up.

Every instance gets its own known_hosts file (under refine-logs/.expbridge-vast/): Vast reuses
host:port pairs across instances, so one shared file would report a changed host key.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from backends.codesync import CodeSync, sync
from backends.ssh import SshBackend
from backends.sshconn import HostSpec, SshPool
from backends.sshscripts import home_path
from backends.vast_provision import classify_ssh_failure
from daemon.errors import HostUnreachable, LaunchFailed

log = structlog.get_logger("expbridge.vast")


@dataclass(frozen=True)
class SshSettings:
    project_dir: Path
    key_file: str | None = None
    user: str | None = None  # None: the user in the ssh-url (root on Vast images)
    code_dir: str = "/workspace/project"
    remote_base: str = ".expbridge"
    command_timeout_s: float = 30.0
    launch_timeout_s: float = 30.0


def alias(instance_id: int) -> str:
    return f"vast-{instance_id}"


def instance_ssh(s: SshSettings, instance_id: int, user: str, host: str, port: int) -> SshBackend:
    spec = HostSpec(alias(instance_id), hostname=host, user=s.user or user, port=port, key_file=s.key_file,
                    code_dir=s.code_dir)
    known = s.project_dir / "refine-logs" / ".expbridge-vast" / f"known_hosts-{instance_id}"
    known.parent.mkdir(parents=True, exist_ok=True)
    pool = SshPool([spec], connect_timeout_s=15.0, known_hosts=str(known))
    return SshBackend([spec], s.project_dir, remote_base=s.remote_base, cooldown_s=0.0,
                      command_timeout_s=s.command_timeout_s, launch_timeout_s=s.launch_timeout_s,
                      code_sync=CodeSync("rsync"), pool=pool)


def verify(ssh: SshBackend, instance_id: int, timeout: float) -> str:
    """`nvidia-smi && echo CONNECTION_OK` (ARIS F73): ok, publickey, refused, or what failed."""
    try:
        reply = ssh.pool.run(alias(instance_id), "nvidia-smi && echo CONNECTION_OK", timeout=timeout)
    except HostUnreachable as exc:
        return classify_ssh_failure(exc)
    if "CONNECTION_OK" in reply.stdout:
        return "ok"
    return f"nvidia-smi failed: {reply.stderr.strip()[-200:]}"


def setup(ssh: SshBackend, instance_id: int, project_dir: Path) -> None:
    """Code, requirements and a torch/CUDA check (ARIS F75); the torch check only informs."""
    name = alias(instance_id)
    code = ssh.code_dir(name)
    try:
        sync(ssh.pool, name, project_dir, code, ssh.code_sync or CodeSync("rsync"))
    except HostUnreachable as exc:
        raise LaunchFailed(f"vast instance {instance_id}: code sync failed: {exc}") from exc
    ssh.state[name].synced = True
    cd = f'cd "$HOME" && cd -- {home_path(code)}'
    if (project_dir / "requirements.txt").is_file():
        done = ssh.call(name, f"{cd} && pip install -q -r requirements.txt", 1800)
        if not done.ok:
            raise LaunchFailed(f"vast instance {instance_id}: pip install -r requirements.txt failed: "
                               f"{done.stderr.strip()[-300:]}", retryable=False)
    probe = ssh.call(name, "python -c 'import torch;print(torch.cuda.is_available(),"
                           "torch.cuda.device_count())' 2>&1 || true")
    log.info("vast instance ready", instance=instance_id, torch=probe.stdout.strip()[-120:])
