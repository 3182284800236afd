"""SSH backend: jobs on GPU servers in detached screen (or tmux) sessions, over fabric.

One batched command per host and tick reads every job on that host (session alive?, exit file,
log tail) together with nvidia-smi; the GPU reading is cached so slots() right after poll() costs
no second round trip. A GPU is free when nvidia-smi says it is below the threshold, none of our
jobs holds it, and it is not in its post-launch cool-down (a new job has not allocated memory yet).
Sessions are named `eb-<plan>-<job>-a<N>` and recognised by that name AND the recorded session
and wrapper pids, so a look-alike session somebody else started is never touched (F104).

Remote layout (DESIGN §3): `~/<remote_base>/runs/<plan>-<RUN_TS>/{wrapper.sh,logs/,jobs/}`.
Paths are kept relative to the remote home (what sftp/rsync expect); `$HOME` appears only inside
shell strings.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar

import structlog

from backends import sshfetch
from backends.base import WRAPPER, Handle, JobSpec, RunStatus, Slot, substitute_gpu
from backends.codesync import CodeSync, sync
from backends.gpus import free_gpus, parse_gpu_csv
from backends.sshconn import HostSpec, SshPool
from backends.sshstate import Breaker, HostState, job_status
from backends.sshscripts import (HostReading, JobReading, Launch, Probe, adopt_script, cancel_script, gpu_script,
                                 home_path, launch_script, orphan_script, parse_launch, parse_poll,
                                 poll_script, remote_cwd, signal_script, watch_script)
from daemon.errors import BackendError, BackendUnavailable, HostUnreachable, LaunchFailed, UnsafeValue

__all__ = ["Breaker", "HostSpec", "SshBackend", "from_settings", "job_status", "prefer_other_gpu"]
T = TypeVar("T")
log = structlog.get_logger("expbridge.ssh")


def prefer_other_gpu(slots: Sequence[Slot], avoid: Slot | None) -> list[Slot]:
    """Order free slots so a retried job (after OOM) lands on another GPU when there is one."""
    if avoid is None:
        return list(slots)
    return sorted(slots, key=lambda s: (s == avoid, s.host == avoid.host))


class SshBackend:
    name = "ssh"

    def __init__(self, hosts: Sequence[HostSpec], project_dir: Path, *, remote_base: str = ".expbridge",
                 session: Literal["screen", "tmux"] = "screen", threshold_mib: int = 500,
                 cooldown_s: float = 20.0, breaker_failures: int = 3, breaker_reset_s: float = 60.0,
                 command_timeout_s: float = 30.0, launch_timeout_s: float = 15.0,
                 cancel_grace_s: float = 5.0, gpu_cache_s: float = 4.0, ssh_config: str | None = None,
                 known_hosts: str | None = None, code_sync: CodeSync | None = None,
                 pool: SshPool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if session not in ("screen", "tmux"):
            raise UnsafeValue(f"session must be screen or tmux, not {session!r}")
        if not hosts:
            raise BackendUnavailable("the ssh backend needs at least one host")
        self.hosts = {h.alias: h.validate() for h in hosts}
        self.project_dir = Path(project_dir).resolve()
        self.remote_base = remote_base.rstrip("/")
        self.session_kind = session
        self.threshold_mib, self.cooldown_s = threshold_mib, cooldown_s
        self.command_timeout_s, self.launch_timeout_s = command_timeout_s, launch_timeout_s
        self.cancel_grace_s, self.gpu_cache_s = cancel_grace_s, gpu_cache_s
        self.code_sync = code_sync
        self.pool = pool or SshPool(list(self.hosts.values()), ssh_config=ssh_config, known_hosts=known_hosts)
        self.clock = clock
        self.state = {a: HostState(Breaker(breaker_failures, breaker_reset_s)) for a in self.hosts}
        self._held: dict[tuple[str, str], Slot] = {}  # (host, session) -> slot, our live jobs
        self._last: dict[tuple[str, str], RunStatus] = {}
        self._lock = threading.Lock()
        self._sync_locks = {a: threading.Lock() for a in self.hosts}
        self._workers = ThreadPoolExecutor(max_workers=max(2, len(self.hosts)), thread_name_prefix="ssh")
        self._wrapper = WRAPPER.read_text()

    # -- capacity ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """Every host reachable, with the session tool and (without code sync) the code dir.

        Raises BackendUnavailable when no host is usable; a partly usable pool keeps each bad
        host's reason in `state[alias].error` for `expbridge hosts`.
        """
        results = self.each_host(list(self.hosts), lambda a: self.call(a, self._preflight_script(a)))
        problems = {a: (r if isinstance(r, Exception) else r.stdout.strip()) for a, r in results.items()}
        problems = {a: str(p) for a, p in problems.items() if p}
        for alias, problem in problems.items():
            self.state[alias].error = problem
        if len(problems) == len(self.hosts):
            detail = "; ".join(f"{a}: {p}" for a, p in problems.items())
            raise BackendUnavailable(f"no usable ssh host ({detail})")

    def _preflight_script(self, alias: str) -> str:
        tool = self.session_kind
        script = (f'cd "$HOME" || echo "no home directory"; '
                  f'command -v {tool} >/dev/null || echo "{tool} is not installed"')
        if self.code_sync is None or self.code_sync.mode == "none":
            code = home_path(self.code_dir(alias))
            script += f"; [ -d {code} ] || echo 'code dir '{code}' does not exist'"
        return script

    def slots(self) -> list[Slot]:
        now = self.clock()
        aliases = [a for a in self.hosts if self.state[a].breaker.may_probe(now)]
        stale = [a for a in aliases if now - self.state[a].gpu_at > self.gpu_cache_s
                 or not self.state[a].breaker.allows_launch()]
        self.each_host(stale, self.refresh_gpus)
        self.each_host([a for a in aliases if self.state[a].uncertain], self._resolve_uncertain)
        with self._lock:
            return [s for a in aliases if self.state[a].breaker.allows_launch() for s in self._free_on(a)]

    def refresh_gpus(self, alias: str) -> None:
        try:
            reading = parse_poll(self.call(alias, gpu_script()).stdout)
        except HostUnreachable:
            return
        self._store_gpus(alias, reading)

    def _resolve_uncertain(self, alias: str) -> None:
        """Launches whose reply was lost: end the ones that did start, then free their GPUs."""
        st = self.state[alias]
        for session, (job_dir, gpu, after) in list(st.uncertain.items()):
            if self.clock() < after:
                continue  # the launch script may still be waiting for its started file
            try:
                reply = self.call(alias, orphan_script(self.session_kind, session, job_dir)).stdout
            except HostUnreachable:
                return
            log.warning("unconfirmed launch resolved", host=alias, session=session, result=reply.strip())
            with self._lock:
                st.uncertain.pop(session, None)
                self._held.pop((alias, session), None)

    def _free_on(self, alias: str) -> list[Slot]:
        st, now = self.state[alias], self.clock()
        busy = {s.gpu for (h, _), s in self._held.items() if h == alias}
        busy |= {g for g, until in st.cooling.items() if until > now}
        allowed = self.hosts[alias].gpus
        if allowed == ():  # a CPU host: one job at a time
            return [] if None in busy else [Slot(alias, None)]
        if st.gpus is None:
            return []
        free = free_gpus(st.gpus, self.threshold_mib, list(allowed) if allowed is not None else None)
        return [Slot(alias, g) for g in free if g not in busy]

    def _store_gpus(self, alias: str, reading: HostReading) -> None:
        st = self.state[alias]
        with self._lock:
            st.gpus = parse_gpu_csv(reading.gpu_csv) if reading.gpu_csv is not None else None
            st.gpu_note, st.gpu_at = reading.gpu_note, self.clock()

    # -- lifecycle --------------------------------------------------------------------------
    def run_rel(self, job: JobSpec) -> str:
        return f"{self.remote_base}/runs/{job.plan}-{job.run_ts}"

    def code_dir(self, alias: str) -> str:
        return self.hosts[alias].code_dir or f"{self.remote_base}/code/{self.project_dir.name}"

    def submit(self, job: JobSpec, slot: Slot) -> Handle:
        job.validate()
        alias = slot.host
        if alias not in self.hosts:
            raise LaunchFailed(f"{alias!r} is not a configured ssh host", retryable=False)
        if not self.state[alias].breaker.allows_launch():
            raise LaunchFailed(f"{alias}: circuit breaker open after repeated failures; no new launches")
        self._ensure_code(alias)
        launch = self._launch(job, slot)
        script = launch_script(launch)
        with self._lock:  # hold the GPU from now: a failed or uncertain launch must not double-book
            self.state[alias].cooling[slot.gpu] = self.clock() + self.cooldown_s
        budget = self.command_timeout_s + self.launch_timeout_s
        try:
            reply = parse_launch(self.call(alias, script, budget).stdout)
        except HostUnreachable as exc:
            reply = f"launch not confirmed: {exc}"
            self._unconfirmed(alias, job.session, launch.job_dir, slot, budget)
        if reply is None or (isinstance(reply, str) and reply.startswith("no started file")):
            # the session may yet start: hold its GPU and end it later if it does
            reply = f"launch not confirmed: {reply or 'no reply from the host'}"
            self._unconfirmed(alias, job.session, launch.job_dir, slot, budget)
            self._note_failure(alias)
        if isinstance(reply, str):
            log.warning("launch failed", host=alias, session=job.session, reason=reply)
            reused = reply.startswith("attempt directory already used")  # the caller's mistake
            if not reused and not reply.startswith("launch not confirmed"):
                self._note_failure(alias)
            raise LaunchFailed(f"{alias}: {job.session}: {reply}", retryable=not reused)
        pid, wpid, spid = reply
        extra = {"kind": self.session_kind, "pid": pid, "wpid": wpid, "spid": spid, "gpu": slot.gpu,
                 "cwd": launch.cwd, "local_cwd": str(Path(job.cwd).resolve()),
                 "outputs": list(job.expected_output)}
        handle = Handle("ssh", job.session, alias, launch.job_dir, launch.log,
                        json.dumps(extra, sort_keys=True))
        with self._lock:
            self._held[(alias, job.session)] = slot
        log.info("launched", host=alias, gpu=slot.gpu, session=job.session, cmd=launch.cmd,
                 est_hours=job.est_hours, pid=pid)  # F32: what ran where, and for how long
        return handle

    def adopt(self, job: JobSpec, slot: Slot | None = None) -> Handle | None:
        """The handle of an attempt that started but whose launch was never recorded."""
        if slot is None or slot.host not in self.hosts:
            return None
        launch = self._launch(job, slot)
        reply = parse_launch(self.call(slot.host, adopt_script(launch.job_dir, self.launch_timeout_s),
                                       self.command_timeout_s + self.launch_timeout_s).stdout)
        if not isinstance(reply, tuple):
            return None
        pid, wpid, spid = reply
        extra = {"kind": self.session_kind, "pid": pid, "wpid": wpid, "spid": spid, "gpu": slot.gpu,
                 "cwd": launch.cwd, "local_cwd": str(Path(job.cwd).resolve()),
                 "outputs": list(job.expected_output)}
        with self._lock:
            self._held[(slot.host, job.session)] = slot
        return Handle("ssh", job.session, slot.host, launch.job_dir, launch.log, json.dumps(extra, sort_keys=True))

    def _launch(self, job: JobSpec, slot: Slot) -> Launch:
        """The job in the host's terms: remote run tree, remote cwd, GPU substituted."""
        run_rel = self.run_rel(job)
        local_cwd = str(Path(job.cwd).resolve())
        return Launch(
            session=job.session, kind=self.session_kind, run_rel=run_rel,
            job_dir=f"{run_rel}/jobs/{job.job_id}/a{job.attempt}",
            log=f"{run_rel}/logs/{job.job_id}.a{job.attempt}.log",
            cwd=remote_cwd(self.code_dir(slot.host), str(self.project_dir), local_cwd),
            gpu=slot.gpu, cmd=substitute_gpu(job.cmd, slot), wrapper=self._wrapper,
            env={**job.env, "EB_JOB": job.job_id, "EB_ATTEMPT": str(job.attempt)},
            conda_env=job.conda_env, conda_hook=job.conda_hook, start_timeout_s=self.launch_timeout_s)

    def _unconfirmed(self, alias: str, session: str, job_dir: str, slot: Slot, budget: float) -> None:
        """The launch may have started: keep its GPU until a later contact finds out.

        Look only once the remote script must be over (its own start-up wait is bounded).
        """
        with self._lock:
            self._held[(alias, session)] = slot
            self.state[alias].uncertain[session] = (job_dir, slot.gpu, self.clock() + 2 * budget + 2.0)

    def _ensure_code(self, alias: str) -> None:
        if self.code_sync is None or self.state[alias].synced:
            return
        with self._sync_locks[alias]:
            if self.state[alias].synced:
                return
            try:
                sync(self.pool, alias, self.project_dir, self.code_dir(alias), self.code_sync)
            except HostUnreachable as exc:
                self._note_failure(alias)
                raise LaunchFailed(str(exc)) from exc
            self.state[alias].synced = True

    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]:
        by_host: dict[str, list[Handle]] = {}
        for h in handles:
            by_host.setdefault(h.host, []).append(h)
        out: dict[Handle, RunStatus] = {}
        for alias, got in self.each_host(list(by_host), lambda a: self._poll_host(a, by_host[a])).items():
            out.update(got if isinstance(got, dict) else self._unknown(alias, by_host[alias], str(got)))
        return out

    def _poll_host(self, alias: str, handles: list[Handle]) -> dict[Handle, RunStatus]:
        if alias not in self.hosts:
            return self._unknown(alias, handles, f"host {alias!r} is not in the config")
        probes = [_probe(i, h) for i, h in enumerate(handles)]
        try:
            reading = parse_poll(self.call(alias, poll_script(probes)).stdout)
        except HostUnreachable as exc:
            return self._unknown(alias, handles, str(exc))
        self._store_gpus(alias, reading)
        result = {h: job_status(reading.jobs.get(i, JobReading())) for i, h in enumerate(handles)}
        self._account(alias, result)
        return result

    def _account(self, alias: str, statuses: Mapping[Handle, RunStatus]) -> None:
        with self._lock:
            for h, status in statuses.items():
                key = (alias, h.ref)
                self._last[key] = status
                if status.phase in ("running", "suspended", "pending"):
                    self._held[key] = Slot(alias, _extra(h).get("gpu"))
                elif self._held.pop(key, None) is not None:
                    self.state[alias].cooling.pop(_extra(h).get("gpu"), None)

    def _unknown(self, alias: str, handles: list[Handle], why: str) -> dict[Handle, RunStatus]:
        """An unreachable host says nothing about its jobs: report the last known state, never lost."""
        out = {}
        for h in handles:
            last = self._last.get((alias, h.ref))
            final = last is not None and last.phase in ("exited", "lost")
            out[h] = last if final else RunStatus("running", detail=f"status unknown: {why}")
        return out

    def wait_exit(self, alias: str, handles: Sequence[Handle], timeout_s: float) -> list[Handle]:
        """Block up to timeout_s until one of these jobs on `alias` ends; return those that did.

        For a waiter thread per host: it runs on its own connection lane, so polls and launches
        are not held up, and lets the next job start within ~0.1 s of an exit instead of up to
        a whole tick later. Follow it with poll() for the statuses.
        """
        if not handles:
            return []
        probes = [_probe(i, h) for i, h in enumerate(handles)]
        result = self.pool.run(alias, watch_script(probes, timeout_s), timeout_s + self.command_timeout_s,
                               lane="watch")
        ended = {int(line.split()[1]) for line in result.stdout.splitlines()
                 if line.startswith("@@X ") and line.split()[1].isdigit()}
        return [h for i, h in enumerate(handles) if i in ended]

    def cancel(self, handle: Handle) -> None:
        reply = self.call(handle.host, cancel_script(_probe(0, handle), self.cancel_grace_s),
                           self.command_timeout_s + self.cancel_grace_s)
        if not reply.ok:
            raise BackendError(f"{handle.host}: cancel {handle.ref} failed: {reply.stderr.strip()[-300:]}",
                               retryable=True)

    def suspend(self, handle: Handle) -> bool:
        return self._signal(handle, "STOP")

    def resume(self, handle: Handle) -> bool:
        return self._signal(handle, "CONT")

    def _signal(self, handle: Handle, sig: str) -> bool:
        return "EBOK" in self.call(handle.host, signal_script(_probe(0, handle), sig)).stdout

    def fetch(self, handle: Handle, dest: Path) -> None:
        """Copy the attempt's log, wrapper files and declared outputs into the local project.

        dest is the local run dir: the log goes to dest/logs/, the wrapper files to
        dest/jobs/<job>/a<N>/, outputs (expected_output globs) to the job's local cwd.
        """
        extra = _extra(handle)
        sshfetch.fetch(self.pool, handle.host, handle.job_dir, handle.log_path, Path(dest),
                       extra.get("cwd", ""), extra.get("local_cwd", ""), extra.get("outputs", []),
                       self.command_timeout_s)

    def close(self) -> None:
        self._workers.shutdown(wait=True)
        self.pool.close()

    # -- plumbing ---------------------------------------------------------------------------
    def call(self, alias: str, script: str, timeout: float | None = None):
        """One round trip; infrastructure failures feed the host's circuit breaker."""
        try:
            result = self.pool.run(alias, script, timeout or self.command_timeout_s)
        except HostUnreachable as exc:
            self._note_failure(alias, str(exc))
            raise
        with self._lock:
            self.state[alias].breaker.success(self.clock())
            self.state[alias].error = ""
        return result

    def held_gpus(self, alias: str) -> dict[int | None, str]:
        """GPU -> session of our live jobs on a host, as last seen."""
        with self._lock:
            return {s.gpu: ref for (h, ref), s in self._held.items() if h == alias}

    def _note_failure(self, alias: str, why: str = "") -> None:
        with self._lock:
            self.state[alias].breaker.failure(self.clock())
            self.state[alias].error = why or self.state[alias].error

    def each_host(self, aliases: list[str], fn: Callable[[str], T]) -> dict[str, T | Exception]:
        """fn on every host at once (one worker each); an exception is returned, not raised."""
        futures = {a: self._workers.submit(fn, a) for a in aliases}
        out: dict[str, T | Exception] = {}
        for alias, fut in futures.items():
            try:
                out[alias] = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported per host to the caller
                out[alias] = exc
        return out


def from_settings(settings: Any, project: Path) -> SshBackend:
    """The backend from the layered project settings (daemon.config.ProjectSettings)."""
    ssh = settings.ssh
    if not ssh.hosts:
        raise BackendUnavailable("ssh backend: no hosts configured (set ssh.hosts in the config, "
                                 "or pass --hosts ALIAS[,ALIAS...])")
    default_gpus = getattr(settings, "gpus", None)
    hosts = [HostSpec(h.alias, hostname=h.hostname, user=h.user, port=h.port, key_file=h.key_file,
                      proxy_jump=h.proxy_jump,
                      gpus=tuple(h.gpus) if h.gpus is not None else
                      (tuple(default_gpus) if default_gpus is not None else None),
                      code_dir=h.code_dir or getattr(settings, "code_dir", None)) for h in ssh.hosts]
    pool = SshPool(hosts, ssh_config=ssh.ssh_config, connect_timeout_s=ssh.connect_timeout_s)
    return SshBackend(hosts, project, remote_base=ssh.remote_base, session=ssh.session,
                      threshold_mib=settings.gpu_free_threshold_mib, cooldown_s=ssh.launch_cooldown_s,
                      breaker_failures=ssh.breaker_failures, command_timeout_s=ssh.command_timeout_s,
                      launch_timeout_s=getattr(settings, "launch_timeout_s", 15.0),
                      code_sync=CodeSync(mode=ssh.code_sync), pool=pool)


def _extra(handle: Handle) -> dict:
    try:
        return json.loads(handle.extra) if handle.extra else {}
    except ValueError:
        return {}


def _probe(idx: int, handle: Handle) -> Probe:
    extra = _extra(handle)
    return Probe(idx, extra.get("kind", "screen"), handle.ref, int(extra.get("spid", 0)),
                 int(extra.get("wpid", 0)), int(extra.get("pid", 0)), handle.job_dir, handle.log_path)
