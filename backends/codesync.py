"""Getting the project's code onto a remote host before its first launch: rsync or git pull.

ARIS synced with `--include='*.py' --exclude='*'`, whose trailing exclude also drops every
directory, so only top-level .py files arrived (ARIS_SPEC §4.3). Here directories are walked,
configs travel with the code, and data, checkpoints, W&B runs and outputs never do. Remote files
are never deleted (no --delete): the host may hold outputs of earlier runs.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backends.sshconn import SshPool
from backends.sshscripts import home_path, q
from daemon.errors import HostUnreachable, LaunchFailed

# excluded first: rsync uses the first matching rule
DEFAULT_EXCLUDES = (
    ".git/", "__pycache__/", ".venv/", "venv/", "node_modules/", ".ipynb_checkpoints/",
    "data/", "datasets/", "dataset/", "checkpoints/", "ckpt/", "wandb/", "outputs/", "output/",
    "runs/", "logs/", "results/", "experiment_queue/", "mlruns/", "lightning_logs/",
    "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.bin", "*.npy", "*.npz", "*.h5", "*.pkl",
    "*.tar", "*.zip", "*.gz", "*.log",
)
DEFAULT_INCLUDES = (
    "*.py", "*.yaml", "*.yml", "*.json", "*.toml", "*.cfg", "*.ini", "*.txt", "*.sh", "*.md",
    "*.jsonl", "*.csv", "Makefile", "*.ipynb",
)


@dataclass(frozen=True)
class CodeSync:
    mode: Literal["rsync", "git", "none"] = "rsync"
    include: tuple[str, ...] = ()  # added to the defaults
    exclude: tuple[str, ...] = ()  # added to the defaults, and checked before any include
    repo_url: str | None = None  # git mode: cloned when the code dir is not a repository yet
    branch: str | None = None
    timeout_s: float = 600.0


def rsync_filters(cfg: CodeSync) -> list[str]:
    """Excludes, then every directory, then the wanted file types, then nothing else."""
    args = [f"--exclude={p}" for p in (*cfg.exclude, *DEFAULT_EXCLUDES)]
    args.append("--include=*/")  # walk subfolders (the ARIS pattern bug)
    args += [f"--include={p}" for p in (*DEFAULT_INCLUDES, *cfg.include)]
    args.append("--exclude=*")
    return args


def rsync_path(remote_dir: str) -> str:
    """rsync resolves a relative remote path from the login directory, i.e. home."""
    return remote_dir[2:] if remote_dir.startswith("~/") else remote_dir


def sync(pool: SshPool, alias: str, local_dir: Path, remote_dir: str, cfg: CodeSync) -> None:
    """Bring the host's code dir up to date; LaunchFailed (or HostUnreachable) when it cannot."""
    if cfg.mode == "none":
        return
    if cfg.mode == "git":
        _git_pull(pool, alias, remote_dir, cfg)
        return
    # mkdir here rather than rsync --mkpath, which an older rsync on the host would refuse
    made = pool.run(alias, f'cd "$HOME" && mkdir -p -- {home_path(remote_dir)}', timeout=60)
    if not made.ok:
        raise LaunchFailed(f"{alias}: cannot create the code dir {remote_dir}: {made.stderr.strip()[-300:]}")
    argv = ["rsync", "-rlptz", "--prune-empty-dirs", "-e", pool.rsync_shell(alias),
            *rsync_filters(cfg), f"{local_dir}/", pool.rsync_target(alias, rsync_path(remote_dir) + "/")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=cfg.timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HostUnreachable(f"{alias}: code rsync timed out after {cfg.timeout_s}s") from exc
    if done.returncode == 255 or done.returncode in (10, 12, 30, 35):  # ssh or socket failures
        raise HostUnreachable(f"{alias}: code rsync could not reach the host: {done.stderr.strip()[-400:]}")
    if done.returncode != 0:
        raise LaunchFailed(f"{alias}: code rsync failed ({done.returncode}): {done.stderr.strip()[-400:]}")


def _git_pull(pool: SshPool, alias: str, remote_dir: str, cfg: CodeSync) -> None:
    """`git pull --ff-only` in the code dir; clone first when it is not a repository yet.

    Nothing is committed or pushed from the researcher's working tree: pushing is theirs to do.
    """
    d = home_path(remote_dir)
    branch = f"--branch {q(cfg.branch)} " if cfg.branch else ""
    clone = (f"git clone {branch}-- {q(cfg.repo_url)} {d}" if cfg.repo_url
             else "echo 'code dir is not a git repository and no repo_url is set' >&2; exit 2")
    script = (f'cd "$HOME" || exit 90\nif [ -d {d}/.git ]; then git -C {d} pull --ff-only; '
              f"else mkdir -p -- \"$(dirname -- {d})\" && {clone}; fi\n")
    result = pool.run(alias, script, timeout=cfg.timeout_s)
    if not result.ok:
        raise LaunchFailed(f"{alias}: git sync of {remote_dir} failed: {result.stderr.strip()[-400:]}")
