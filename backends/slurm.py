"""Slurm backend: sbatch for each job (or one job array per grid), squeue once per tick.

Every Slurm command is a shell snippet run by a Runner: locally (`sh -c`) or on a login node
through the SSH connection helper. The batch script fed to `sbatch --parsable` on stdin IS the job
wrapper (wrapper.sh) with its arguments set in front, so nothing is copied to the cluster and the
wrapper's pid/started/exit files exist on Slurm exactly as on every other backend.

Public API beyond the Backend protocol:
- `submit(job, slot, *, after_ok=(), overrides=None)`: `after_ok` is a list of Handles (or Slurm
  ids) the job waits for with `--dependency=afterok:...`; use it where both phases run on Slurm.
  A dependent whose prerequisite failed stays pending with detail `DependencyNeverSatisfied`
  (the core then cancels it and gates the retry itself).
- `submit_array(jobs, slot, *, throttle=None, after_ok=(), overrides=None) -> list[Handle]`.
- `hold(handle)` / `release(handle)` for pending jobs; `suspend`/`resume` pick suspend or hold.
- `adopt(job) -> Handle | None`: reconcile by job name when a handle was never persisted (the
  core calls it for a job left `launching` with no handle).
- `last_refusal`: why the cluster denied the last suspend/resume/hold, for the tracker's Notes.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import structlog

from backends.base import WRAPPER, Handle, JobSpec, RunStatus, Slot
from backends.slurm_parse import (NAMED_FORMAT, SACCT_FIELDS, SQUEUE_FORMAT, JobFiles, SlurmJob, SlurmSettings,
                                  batch_script, handle_extra, parse_bundle, parse_sacct,
                                  parse_named, parse_squeue, poll_script, sbatch_args, to_status)
from daemon.errors import BackendError, BackendUnavailable, LaunchFailed

log = structlog.get_logger("expbridge.slurm")
# sbatch refusals that no retry can fix: the config names something the cluster does not have
CONFIG_REFUSALS = ("Invalid partition", "Invalid account", "Invalid qos", "Invalid generic resource",
                   "Requested node configuration is not available", "Invalid time limit")


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


class Runner(Protocol):
    host: str  # "local", or the login node's alias

    def run(self, script: str, timeout: float) -> Result: ...


class LocalRunner:
    """Slurm commands on this machine; `env` adds variables such as SLURM_CONF, `prefix` runs
    them as another user (e.g. `("runuser", "-u", "alice", "--")`)."""

    host = "local"

    def __init__(self, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        self.env, self.prefix = dict(env or {}), tuple(prefix)

    def run(self, script: str, timeout: float) -> Result:
        try:
            done = subprocess.run([*self.prefix, "sh", "-c", script], capture_output=True, text=True,
                                  timeout=timeout, env={**os.environ, **self.env}, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"slurm command timed out after {timeout}s", retryable=True) from exc
        except OSError as exc:
            raise BackendUnavailable(f"cannot run slurm commands: {exc}") from exc
        return Result(done.returncode, done.stdout, done.stderr)


class SshRunner:
    """Slurm commands on a login node through the shared SSH pool (backends/sshconn.py).

    The snippet is wrapped in `sh -c` so a login shell that is not POSIX (csh, fish) cannot
    misread it; `env` is exported first (e.g. a site's SLURM_CONF). HostUnreachable from the
    pool is a retryable BackendError, so a dropped link never reads as a lost job.
    """

    def __init__(self, pool: Any, alias: str, env: Mapping[str, str] | None = None) -> None:
        self.pool, self.host = pool, alias
        self.prelude = "".join(f"{k}={shlex.quote(v)}; export {k}\n" for k, v in (env or {}).items())

    def run(self, script: str, timeout: float) -> Result:
        res = self.pool.run(self.host, "sh -c " + shlex.quote(self.prelude + script), timeout)
        return Result(int(res.rc), str(res.stdout), str(res.stderr))


@dataclass(frozen=True)
class LoginLayout:
    """Where a job lives when sbatch runs on a login node: the cluster's shared filesystem.

    The run tree goes to `~/<remote_base>/runs/<plan>-<RUN_TS>/` (DESIGN §3) and the job's cwd
    is mapped from the local project onto `code_dir` (default `~/<remote_base>/code/<project>`),
    which `code_sync` fills before the first submit. Paths are made absolute with the remote
    home, because sbatch's --output and --chdir do not expand `~`.
    """

    project_dir: Path
    code_dir: str | None = None  # relative to the remote home, or absolute
    remote_base: str = ".expbridge"
    code_sync: Any = None  # a backends.codesync.CodeSync; None: the code is already there

    def code_abs(self, home: str) -> str:
        code = self.code_dir or f"{self.remote_base}/code/{self.project_dir.name}"
        code = code[2:] if code.startswith("~/") else code
        return code if code.startswith("/") else f"{home}/{code}"

    def translate(self, job: JobSpec, home: str) -> JobSpec:
        from backends.sshscripts import remote_cwd

        run_dir = f"{home}/{self.remote_base.strip('/')}/runs/{job.plan}-{job.run_ts}"
        cwd = remote_cwd(self.code_abs(home), str(self.project_dir.resolve()), str(Path(job.cwd).resolve()))
        return replace(job, run_dir=run_dir, cwd=cwd)


class SlurmBackend:
    name = "slurm"

    def __init__(self, settings: SlurmSettings | None = None, *, runner: Runner | None = None,
                 login: LoginLayout | None = None, command_timeout_s: float = 30.0) -> None:
        self.settings = settings or SlurmSettings()
        self.runner: Runner = runner or LocalRunner()
        self.login = login
        self.timeout = command_timeout_s
        self.accounting: bool | None = None  # sacct usable; found by preflight() or the first poll
        self.last_refusal = ""
        self._home: str | None = None
        self._synced = False

    # -- capacity -----------------------------------------------------------------------------
    def preflight(self) -> None:
        if not WRAPPER.is_file():
            raise BackendUnavailable(f"job wrapper missing at {WRAPPER}")
        res = self.runner.run("scontrol show config", self.timeout)
        if res.rc != 0:
            where = "" if self.runner.host == "local" else f" on {self.runner.host}"
            raise BackendUnavailable(f"Slurm is not reachable{where}: {_first_line(res)}")
        self.accounting = _accounting_in(res.stdout)
        if self.settings.partition:
            part = self.runner.run(f"scontrol show partition {shlex.quote(self.settings.partition)}", self.timeout)
            if part.rc != 0:
                raise BackendUnavailable(f"Slurm partition {self.settings.partition!r}: {_first_line(part)}")

    def slots(self) -> list[Slot]:
        """Virtual slots: Slurm places jobs itself, so a slot here is only a permit to submit.

        There are `max_submitted` of them, minus this user's expbridge jobs (names `eb-...`) that
        Slurm still holds as pending, running or suspended. Counting from squeue rather than from
        memory keeps the cap right across a daemon restart. If squeue fails there is no slot.
        """
        try:
            res = self.runner.run("squeue -h -r --me -t PD,R,S,CG -o %j", self.timeout)
        except BackendError:
            return []
        if res.rc != 0:
            return []
        active = sum(1 for name in res.stdout.split() if name.startswith("eb-"))
        return [Slot("slurm", None) for _ in range(max(0, self.settings.max_submitted - active))]

    # -- submission ---------------------------------------------------------------------------
    def submit(self, job: JobSpec, slot: Slot, *, after_ok: Sequence[Handle | str] = (),
               overrides: Mapping[str, object] | None = None) -> Handle:
        """Submit one attempt; the launch is verified by Slurm accepting it and returning an id.

        A Slurm job may pend for hours, so the started file cannot bound the launch here; the
        core sees `pending` until the wrapper has written it.
        """
        return self._submit([job], slot, None, after_ok, overrides)[0]

    def submit_array(self, jobs: Sequence[JobSpec], slot: Slot, *, throttle: int | None = None,
                     after_ok: Sequence[Handle | str] = (),
                     overrides: Mapping[str, object] | None = None) -> list[Handle]:
        """A grid as ONE job array (`--array=0-N%throttle`); handle i is task i (`<id>_<i>`)."""
        if not jobs:
            return []
        return self._submit(list(jobs), slot, throttle or self.settings.array_throttle or 0, after_ok,
                            overrides)

    def _submit(self, jobs: list[JobSpec], slot: Slot, throttle: int | None,
                after_ok: Sequence[Handle | str], overrides: Mapping[str, object] | None) -> list[Handle]:
        for job in jobs:
            job.validate()
        local_cwds = [str(Path(j.cwd).resolve()) for j in jobs]
        jobs = self._on_cluster(jobs)
        settings = self.settings.merged(overrides or {})
        name = jobs[0].session if throttle is None else f"{jobs[0].session}-x{len(jobs)}"
        out = f"{jobs[0].run_dir}/slurm/" + ("%j.out" if throttle is None else "%A_%a.out")
        deps = [h.ref if isinstance(h, Handle) else str(h) for h in after_ok]
        args = sbatch_args(settings, name, out, jobs[0].job_dir, deps,
                           len(jobs) if throttle is not None else None, throttle)
        dirs = {f"{jobs[0].run_dir}/slurm"} | {j.job_dir for j in jobs} | {str(Path(j.log_path).parent) for j in jobs}
        eof = f"EB_SCRIPT_{secrets.token_hex(8)}"
        script = (f"mkdir -p -- {' '.join(map(shlex.quote, sorted(dirs)))} || exit 90\n"
                  f"sbatch --parsable {' '.join(map(shlex.quote, args))} <<'{eof}'\n"
                  f"{batch_script(jobs, WRAPPER.read_text())}\n{eof}\n")
        res = self.runner.run(script, self.timeout)
        job_id = res.stdout.strip().split(";")[0].splitlines()[-1:] if res.rc == 0 else []
        if not job_id or not job_id[0].isdigit():
            retry = not any(marker in res.stderr for marker in CONFIG_REFUSALS)
            raise LaunchFailed(f"sbatch refused {name}: {_first_line(res)}", retryable=retry)
        refs = [job_id[0]] if throttle is None else [f"{job_id[0]}_{i}" for i in range(len(jobs))]
        handles = [self._handle(j, ref, name, out, lc) for j, ref, lc in zip(jobs, refs, local_cwds)]
        log.info("slurm submit", job=name, slurm_id=job_id[0], tasks=len(jobs), host=self.runner.host,
                 partition=settings.partition, gres=settings.gres_value(), time=settings.time,
                 command=jobs[0].cmd, est_hours=jobs[0].est_hours, after_ok=deps)
        return handles

    def _on_cluster(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """Jobs in cluster paths: as they are for a local sbatch, mapped for a login node."""
        if self.login is None:
            return jobs
        home = self.remote_home()
        if self.login.code_sync is not None and not self._synced:
            from backends.codesync import sync
            sync(self.runner.pool, self.runner.host, self.login.project_dir,  # type: ignore[attr-defined]
                 self.login.code_abs(home), self.login.code_sync)
            self._synced = True
        return [self.login.translate(j, home) for j in jobs]

    def remote_home(self) -> str:
        if self._home is None:
            res = self.runner.run('printf "%s\\n" "$HOME"', self.timeout)
            home = res.stdout.strip()
            if res.rc != 0 or not home.startswith("/"):
                raise LaunchFailed(f"cannot read $HOME on {self.runner.host}: {_first_line(res)}")
            self._home = home
        return self._home

    def _handle(self, job: JobSpec, ref: str, name: str, out: str, local_cwd: str) -> Handle:
        out_path = out.replace("%j", ref).replace("%A_%a", ref)
        extra = json.dumps({"name": name, "out": out_path, "cwd": job.cwd, "local_cwd": local_cwd,
                            "outputs": list(job.expected_output)}, sort_keys=True)
        return Handle("slurm", ref, self.runner.host, job.job_dir, job.log_path, extra)

    # -- status -------------------------------------------------------------------------------
    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]:
        """One batched call: squeue for every job plus the wrapper files, in one shell snippet.

        Raises BackendError when Slurm cannot be asked (controller down, login node gone): a
        job must not be reported lost because its cluster did not answer.
        """
        if not handles:
            return {}
        marker = f"@@EB{secrets.token_hex(6)}"
        res = self.runner.run(poll_script(handles, marker), self.timeout)
        squeue_text, rc, files = parse_bundle(res.stdout, marker)
        if rc is None or (rc != 0 and "Invalid job id" not in squeue_text):
            raise BackendError(f"squeue failed on {self.runner.host}: {squeue_text.strip()[:300] or res.stderr[:300]}",
                               retryable=True)
        known = parse_squeue(squeue_text) if rc == 0 else {}
        missing = [h for h in handles if h.ref not in known]
        if missing and self.accounting is None:
            self.accounting = self._accounting()
        if missing and self.accounting:
            known.update(self._sacct(missing))
        return {h: to_status(known.get(h.ref), files.get(i, JobFiles())) for i, h in enumerate(handles)}

    def _sacct(self, handles: Sequence[Handle]) -> dict[str, SlurmJob]:
        ids = ",".join(sorted({h.ref for h in handles}))
        res = self.runner.run(f"sacct -X -n -P -j {ids} --format={','.join(SACCT_FIELDS)}", self.timeout)
        return parse_sacct(res.stdout) if res.rc == 0 else {}

    def state(self, handle: Handle) -> SlurmJob | None:
        res = self.runner.run(f"squeue -h -t all -r -j {shlex.quote(handle.ref)} -O {shlex.quote(SQUEUE_FORMAT)}",
                              self.timeout)
        return parse_squeue(res.stdout).get(handle.ref) if res.rc == 0 else None

    def adopt(self, job: JobSpec, slot: Slot | None = None) -> Handle | None:
        """Reconcile by name: the newest Slurm job named like this attempt AND running in this
        attempt's job dir (names repeat across runs of a plan; the job dir has the RUN_TS)."""
        job.validate()
        local_cwd = str(Path(job.cwd).resolve())
        job = self._on_cluster([job])[0]
        res = self.runner.run(f"squeue -h -t all -n {job.session} -O {shlex.quote(NAMED_FORMAT)}", self.timeout)
        ids = [i for i, name, workdir in parse_named(res.stdout) if name == job.session and workdir == job.job_dir]
        if res.rc != 0 or not ids:
            return None
        newest = max(ids, key=int)
        return self._handle(job, newest, job.session, f"{job.run_dir}/slurm/%j.out", local_cwd)

    # -- control ------------------------------------------------------------------------------
    def cancel(self, handle: Handle) -> None:
        """scancel, restricted to the recorded job name so a reused id is never hit (F104)."""
        name = handle_extra(handle).get("name", "")
        flag = f"--name={shlex.quote(name)} " if name else ""
        res = self.runner.run(f"scancel {flag}{shlex.quote(handle.ref)}", self.timeout)
        if res.rc != 0 and not any(s in res.stderr for s in ("Invalid job id", "already completed")):
            raise BackendError(f"scancel {handle.ref} failed: {_first_line(res)}", retryable=True)

    def suspend(self, handle: Handle) -> bool:
        """`scontrol suspend` a running job, `uhold` a pending one; False (with last_refusal)
        when the cluster denies it: suspend usually needs operator rights."""
        job = self.state(handle)
        if job is None or job.state not in ("PENDING", "RUNNING", "SUSPENDED"):
            return self._refuse(handle, "suspend", f"job is {job.state if job else 'unknown to Slurm'}")
        if job.state == "SUSPENDED" or job.reason in ("JobHeldUser", "JobHeldAdmin"):
            return True
        return self._scontrol(handle, "uhold" if job.state == "PENDING" else "suspend")

    def resume(self, handle: Handle) -> bool:
        job = self.state(handle)
        if job is None:
            return self._refuse(handle, "resume", "job is unknown to Slurm")
        if job.state == "SUSPENDED":
            return self._scontrol(handle, "resume")
        if job.state == "PENDING" and job.reason in ("JobHeldUser", "JobHeldAdmin"):
            return self._scontrol(handle, "release")
        return job.state in ("RUNNING", "PENDING")

    def hold(self, handle: Handle) -> bool:
        return self._scontrol(handle, "uhold")

    def release(self, handle: Handle) -> bool:
        return self._scontrol(handle, "release")

    def _scontrol(self, handle: Handle, verb: str) -> bool:
        res = self.runner.run(f"scontrol {verb} {shlex.quote(handle.ref)}", self.timeout)
        if res.rc == 0:
            return True
        return self._refuse(handle, verb, _first_line(res))

    def _refuse(self, handle: Handle, verb: str, why: str) -> bool:
        self.last_refusal = f"scontrol {verb} {handle.ref} denied by Slurm on {self.runner.host}: {why}"
        log.warning("slurm refused", action=verb, slurm_id=handle.ref, reason=why)
        return False

    def _accounting(self) -> bool:
        res = self.runner.run("scontrol show config", self.timeout)
        return res.rc == 0 and _accounting_in(res.stdout)

    def fetch(self, handle: Handle, dest: Path) -> None:
        """Local sbatch: nothing to do (the job wrote where the daemon reads). Login node: rsync
        the attempt's files, its log and its expected outputs back, like the ssh backend."""
        if self.login is None:
            return None
        from backends.sshfetch import fetch
        extra = handle_extra(handle)
        outputs = extra.get("outputs") or []
        fetch(self.runner.pool, self.runner.host, handle.job_dir, handle.log_path, dest,  # type: ignore[attr-defined]
              str(extra.get("cwd", "")), str(extra.get("local_cwd", "")), list(outputs), self.timeout * 10)

    def close(self) -> None:
        pool = getattr(self.runner, "pool", None)
        if pool is not None:
            pool.close()


def from_settings(settings: Any, project: Path) -> SlurmBackend:
    """The backend for a project's effective settings (daemon.config.ProjectSettings).

    With `slurm.login_host` the Slurm commands run there over SSH; the host may be one of the
    `ssh.hosts` (its user, port, key and code_dir are used) or any alias of the ssh_config.
    """
    s = settings.slurm
    cfg = SlurmSettings(login_host=s.login_host, partition=s.partition, account=s.account, qos=s.qos,
                        time=s.time, gres=s.gres, cpus_per_task=s.cpus_per_task, mem=s.mem,
                        array_throttle=s.array_throttle,
                        max_submitted=getattr(s, "max_submitted", None) or SlurmSettings.max_submitted)
    if not s.login_host:
        return SlurmBackend(cfg)
    from backends.codesync import CodeSync
    from backends.sshconn import HostSpec, SshPool

    known = {h.alias: h for h in settings.ssh.hosts}
    h = known.get(s.login_host)
    spec = HostSpec(s.login_host, hostname=h.hostname, user=h.user, port=h.port, key_file=h.key_file,
                    proxy_jump=h.proxy_jump, code_dir=h.code_dir) if h else HostSpec(s.login_host)
    pool = SshPool([spec], ssh_config=settings.ssh.ssh_config, connect_timeout_s=settings.ssh.connect_timeout_s)
    layout = LoginLayout(project, code_dir=spec.code_dir or settings.code_dir,
                         remote_base=settings.ssh.remote_base, code_sync=CodeSync(mode=settings.ssh.code_sync))
    return SlurmBackend(cfg, runner=SshRunner(pool, s.login_host), login=layout,
                        command_timeout_s=settings.ssh.command_timeout_s)


def _accounting_in(show_config: str) -> bool:
    """sacct works only with a storage plugin other than accounting_storage/none."""
    storage = next((ln.split("=", 1)[1].strip() for ln in show_config.splitlines()
                    if ln.startswith("AccountingStorageType")), "")
    return bool(storage) and not storage.endswith("/none")


def _first_line(res: Result) -> str:
    text = (res.stderr.strip() or res.stdout.strip() or f"exit status {res.rc}")
    return text.splitlines()[0][:300]
