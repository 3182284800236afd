"""One SSH connection per host, shared by the SSH and Slurm backends.

fabric's Connection is not thread-safe (fabric#1992, #2239) and a silently dead link looks alive
until a read fails, so every host gets one lock, a transport keepalive and a timeout on every
call. A failed call closes that host's connection; the next call opens a fresh one, which is how
the pool reconnects after an sshd restart or a network drop. Failures to reach a host raise
HostUnreachable (retryable); a command that ran and exited non-zero is an ordinary Result.

    pool = SshPool([HostSpec("gpu1")], ssh_config="~/.ssh/config")
    pool.run("gpu1", "nvidia-smi -L", timeout=30).stdout
"""
from __future__ import annotations

import io
import re
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import paramiko
from invoke.exceptions import CommandTimedOut

from daemon.errors import HostUnreachable, UnsafeValue

HOST_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}$")
USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,63}$")
JUMP = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9._-]*(?::\d{1,5})?$")
# what counts as "the host or the link failed", as opposed to "the command failed"
INFRA_ERRORS = (OSError, EOFError, paramiko.SSHException, CommandTimedOut, socket.timeout)


@dataclass(frozen=True)
class HostSpec:
    """A host as the config names it; unset fields come from ssh_config for the alias."""

    alias: str
    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    proxy_jump: str | None = None  # an alias or [user@]host[:port], comma-separated hops
    gpus: tuple[int, ...] | None = None  # allowed GPU indices; None = all nvidia-smi shows
    code_dir: str | None = None  # where the project lives on the host (relative = under ~)

    def __post_init__(self) -> None:
        if self.gpus is not None and not isinstance(self.gpus, tuple):
            object.__setattr__(self, "gpus", tuple(self.gpus))  # a config gives a list

    def validate(self) -> "HostSpec":
        _check(HOST_ALIAS, self.alias, "host alias")
        if self.hostname is not None:
            _check(HOSTNAME, self.hostname, f"{self.alias}: hostname")
        if self.user is not None:
            _check(USER, self.user, f"{self.alias}: user")
        if self.port is not None and not 0 < self.port < 65536:
            raise UnsafeValue(f"{self.alias}: port {self.port} is not in 1..65535")
        for hop in (self.proxy_jump or "").split(",") if self.proxy_jump else ():
            _check(JUMP, hop, f"{self.alias}: proxy_jump hop")
        if self.code_dir is not None and ("\n" in self.code_dir or "\0" in self.code_dir):
            raise UnsafeValue(f"{self.alias}: code_dir must be one line")
        return self


def hosts_from_flag(value: str) -> list[HostSpec]:
    """`--hosts gpu1,gpu2`: aliases resolved later through the ssh_config (or the user's)."""
    aliases = [a.strip() for a in value.split(",") if a.strip()]
    if not aliases:
        raise UnsafeValue("--hosts needs at least one ssh alias, e.g. --hosts gpu1,gpu2")
    return [HostSpec(a).validate() for a in aliases]


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not pattern.match(value):
        raise UnsafeValue(f"{what} {value!r} must match {pattern.pattern}")


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class SshPool:
    """Connections keyed by host alias; every method is safe to call from any worker thread."""

    def __init__(self, hosts: Sequence[HostSpec], *, ssh_config: str | None = None,
                 connect_timeout_s: float = 10.0, keepalive_s: int = 15,
                 known_hosts: str | None = None, accept_new_host_keys: bool = True) -> None:
        self.hosts = {h.alias: h.validate() for h in hosts}
        self.ssh_config = str(Path(ssh_config).expanduser()) if ssh_config else None
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.known_hosts = known_hosts
        self.accept_new_host_keys = accept_new_host_keys
        # a "lane" is a second connection to the same host, so a long wait on one (wait_exit)
        # never holds up the short commands on the other
        self._conns: dict[tuple[str, str], object] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- public API ---------------------------------------------------------------------------
    def run(self, alias: str, command: str, timeout: float, lane: str = "main") -> Result:
        """Run a shell command on the host; HostUnreachable when the host or link fails."""
        key = (alias, lane)
        with self._lock(key):
            conn = self._open(key)
            try:
                r = conn.run(command, timeout=timeout, hide=True, warn=True, in_stream=False, pty=False)
            except INFRA_ERRORS as exc:
                self._drop(key)
                raise HostUnreachable(f"{alias}: {type(exc).__name__}: {exc}") from exc
            return Result(r.exited if r.exited is not None else -1, r.stdout, r.stderr)

    def put(self, alias: str, data: bytes | Path, remote: str, timeout: float) -> None:
        """Copy bytes or a local file to `remote` (relative paths are under the remote home)."""
        key = (alias, "main")
        with self._lock(key):
            conn = self._open(key)
            try:
                conn.sftp().get_channel().settimeout(timeout)  # not the transport's socket
                src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
                conn.put(src, remote=remote)
            except INFRA_ERRORS as exc:
                self._drop(key)
                raise HostUnreachable(f"{alias}: put {remote}: {exc}") from exc

    def get(self, alias: str, remote: str, local: Path, timeout: float) -> None:
        key = (alias, "main")
        with self._lock(key):
            conn = self._open(key)
            try:
                conn.sftp().get_channel().settimeout(timeout)  # not the transport's socket
                conn.get(remote, local=str(local))
            except INFRA_ERRORS as exc:
                self._drop(key)
                raise HostUnreachable(f"{alias}: get {remote}: {exc}") from exc

    def ssh_argv(self, alias: str) -> list[str]:
        """An OpenSSH client command reaching the host, for rsync -e (ends before the target)."""
        spec = self.hosts[alias]
        argv = ["ssh"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.connect_timeout_s)}",
                 "-o", f"ServerAliveInterval={self.keepalive_s}", "-o", "ServerAliveCountMax=3"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.accept_new_host_keys:
            argv += ["-o", "StrictHostKeyChecking=accept-new"]
        if spec.port:
            argv += ["-p", str(spec.port)]
        if spec.user:
            argv += ["-l", spec.user]
        if spec.key_file:
            argv += ["-i", str(Path(spec.key_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        if spec.proxy_jump:
            argv += ["-J", spec.proxy_jump]
        return argv

    def rsync_shell(self, alias: str) -> str:
        """The -e value for rsync (rsync splits it honouring quotes)."""
        return shlex.join(self.ssh_argv(alias))

    def rsync_target(self, alias: str, remote_path: str) -> str:
        spec = self.hosts[alias]
        return f"{spec.hostname or spec.alias}:{remote_path}"

    def drop(self, alias: str) -> None:
        for key in [k for k in self._conns if k[0] == alias]:
            with self._lock(key):
                self._drop(key)

    def close(self) -> None:
        for alias in {k[0] for k in self._conns}:
            self.drop(alias)

    # -- connections --------------------------------------------------------------------------
    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        if key[0] not in self.hosts:
            raise HostUnreachable(f"{key[0]!r} is not a configured host")
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _open(self, key: tuple[str, str]):
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = self._connection(self.hosts[key[0]])
        if not conn.is_connected:
            try:
                conn.open()
                conn.transport.set_keepalive(self.keepalive_s)  # fabric ignores ServerAliveInterval
            except INFRA_ERRORS as exc:
                self._drop(key)
                raise HostUnreachable(f"{key[0]}: cannot connect: {type(exc).__name__}: {exc}") from exc
        return conn

    def connection(self, alias: str, lane: str = "main"):
        """The fabric Connection for a host (opened), for callers that need more than run()."""
        key = (alias, lane)
        with self._lock(key):
            return self._open(key)

    def _drop(self, key: tuple[str, str]) -> None:
        conn = self._conns.pop(key, None)
        if conn is None:
            return
        try:
            conn.close()
        finally:
            conn.client.close()  # close() short-circuits after a failed auth (fabric#2259)

    def _config(self):
        from fabric import Config

        return Config(runtime_ssh_path=self.ssh_config, overrides={
            "run": {"in_stream": False, "hide": True, "warn": True},
            "timeouts": {"connect": self.connect_timeout_s},
        })

    def _connection(self, spec: HostSpec, hops: Sequence[str] | None = None):
        from fabric import Connection

        kwargs: dict = {"banner_timeout": self.connect_timeout_s, "auth_timeout": self.connect_timeout_s}
        if spec.key_file:
            kwargs.update(key_filename=[str(Path(spec.key_file).expanduser())], look_for_keys=False)
        jumps = list(hops) if hops is not None else (spec.proxy_jump.split(",") if spec.proxy_jump else [])
        gateway = self._gateway(jumps) if jumps else None
        conn = Connection(spec.alias, user=spec.user, port=spec.port, config=self._config(),
                          gateway=gateway, connect_timeout=int(self.connect_timeout_s),
                          connect_kwargs=kwargs)
        if spec.hostname:
            conn.host = spec.hostname
        self._host_key_policy(conn.client)
        return conn

    def _gateway(self, hops: list[str]):
        """ProxyJump hops, outermost first; a hop naming one of our hosts uses its settings."""
        *outer, last = hops
        if last in self.hosts:
            spec = self.hosts[last]
        else:
            user, _, rest = last.rpartition("@")
            host, _, port = rest.partition(":")
            spec = HostSpec(host, user=user or None, port=int(port) if port else None)
        return self._connection(spec, hops=outer)

    def _host_key_policy(self, client: paramiko.SSHClient) -> None:
        if self.known_hosts:
            path = Path(self.known_hosts).expanduser()
            path.touch(exist_ok=True)
            client.load_host_keys(str(path))  # new keys are saved here (accept-new)
        client.set_missing_host_key_policy(
            paramiko.AutoAddPolicy() if self.accept_new_host_keys else paramiko.RejectPolicy())
