"""Vast.ai backend: rent an instance for the work, run jobs on it over SSH, fetch, then destroy.

Slots are the free GPUs of the instances we hold, plus one "rent" slot per instance we may
still rent (`max_instances`). Submitting to a rent slot provisions an instance (vast_provision:
search by requirement, create, wait, verify) inside the submit worker thread, then launches the
job through an SshBackend for that one instance, so screen sessions, the wrapper's exit file,
batched polls and fetch are exactly the SSH backend's.

Teardown is conservative because destroying is irreversible: an instance is destroyed only
when it is ours (recorded id AND our label), every job on it has ended, and every fetch from it
succeeded; a failed fetch keeps it (and says so) until someone fetches by hand. With
`auto_destroy: false` nothing is destroyed; idle instances are reported instead.
A lost instance (`exited`/`offline`, or gone) makes its jobs `lost`, so the retry policy
reruns them on a new rental. Transient API errors only delay; they never end a running job.
After a restart, instances in vast-instances.json are adopted through their handles; ours with
no live job are orphans: reported, and destroyed when `destroy_orphans` is set (they cost money).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import structlog

from backends import vast_api, vast_hosts
from backends.base import Handle, JobSpec, RunStatus, Slot
from backends.spend import SpendGate
from backends.ssh import SshBackend
from backends.vast_offers import Requirement
from backends.vast_provision import Provisioner, Rented, Timing
from backends.vast_state import InstanceFile, cost_usd, iso, parse_iso
from daemon.config import BudgetConfig
from daemon.errors import BackendError, BackendUnavailable, HostUnreachable, LaunchFailed

log = structlog.get_logger("expbridge.vast")
RENT_HOST = "vast-new"
DEFAULT_IMAGE = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel"
DEFAULT_ONSTART = "apt-get update && apt-get install -y git screen rsync"


@dataclass
class Instance:
    instance_id: int
    ssh: SshBackend
    live: set[str] = field(default_factory=set)  # sessions not yet seen ended
    unfetched: set[str] = field(default_factory=set)  # ended, outputs not yet fetched
    fetch_failed: set[str] = field(default_factory=set)
    fetched: set[str] = field(default_factory=set)
    idle_since: float | None = None
    api_checked: float = 0.0

    @property
    def alias(self) -> str:
        return vast_hosts.alias(self.instance_id)


class VastBackend:
    name = "vast"

    def __init__(self, project_dir: Path, api: Any, *, requirement: Requirement | None = None,
                 image: str = DEFAULT_IMAGE, onstart: str = DEFAULT_ONSTART, auto_destroy: bool = True,
                 destroy_orphans: bool = False, max_instances: int = 1, code_dir: str = "/workspace/project",
                 ssh_key_file: str | None = None, ssh_user: str | None = None,
                 remote_base: str = ".expbridge",
                 budget: BudgetConfig | None = None, approve: Callable[[float], bool] | None = None,
                 timing: Timing | None = None, keep_warm_s: float = 0.0, ssh_timeout_s: float = 30.0,
                 launch_timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.api = api
        self.requirement = requirement or Requirement()
        self.image, self.onstart = image, onstart
        self.auto_destroy, self.destroy_orphans = auto_destroy, destroy_orphans
        self.max_instances = max_instances
        self.ssh_settings = vast_hosts.SshSettings(self.project_dir, ssh_key_file, ssh_user, code_dir,
                                                   remote_base, ssh_timeout_s, launch_timeout_s)
        self.gate = SpendGate("vast", budget, approve)
        self.timing = timing or Timing()
        self.keep_warm_s = keep_warm_s
        self.sleep, self.clock, self.wall = sleep, clock, wall
        self.file = InstanceFile(self.project_dir, wall)
        self.label = f"expbridge-{_slug(self.project_dir.name)}"
        self._instances: dict[int, Instance] = {}
        self._renting = 0
        self._reconciled = False
        self._lock = threading.Lock()

    # -- capacity -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """The key is accepted, the API answers and vast-instances.json is readable (else BackendUnavailable).

        Orphans are found by reconcile(), run on the first poll (which carries every live handle).
        """
        try:
            vast_api.call("show instances", self.api.show_instances)
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"vast backend: {exc}; check vast.server_url and the network") from exc
        key = self.ssh_settings.key_file
        if key and not Path(key).expanduser().is_file():
            raise BackendUnavailable(f"vast.ssh_key_file {key} does not exist; "
                                     f"{vast_api.KEY_HELP}")
        self.file.entries()  # a damaged vast-instances.json stops us here, with its line

    def slots(self) -> list[Slot]:
        self._reap()
        out: list[Slot] = []
        with self._lock:
            instances = list(self._instances.values())
        for inst in instances:
            out += inst.ssh.slots()
        free = self.max_instances - len(instances) - self._renting
        if free > 0 and self.gate.open():
            out += [Slot(RENT_HOST, i) for i in range(free)]
        return out

    # -- lifecycle ------------------------------------------------------------------------------
    def submit(self, job: JobSpec, slot: Slot) -> Handle:
        job.validate()
        marker = f"launching:{job.session}"  # keeps _reap off an instance while a job starts on it
        if slot.host == RENT_HOST:
            inst = self.provision(job, marker)
            free = inst.ssh.slots()
            if not free:
                inst.live.discard(marker)
                raise LaunchFailed(f"vast instance {inst.instance_id}: no free GPU after set-up "
                                   "(nvidia-smi shows none)")
            slot = free[0]
        inst = self._by_alias(slot.host)
        if inst is None:
            raise LaunchFailed(f"{slot.host} is not a vast instance we hold")
        with self._lock:
            inst.live.add(marker)
        try:
            inner = inst.ssh.submit(job, slot)
        finally:
            with self._lock:
                inst.live.discard(marker)
        extra = {**json.loads(inner.extra or "{}"), "instance_id": inst.instance_id}
        handle = Handle("vast", inner.ref, inst.alias, inner.job_dir, inner.log_path,
                        json.dumps(extra, sort_keys=True))
        with self._lock:
            inst.live.add(handle.ref)
            inst.idle_since = None
        self.file.update(inst.instance_id, experiment=job.job_id)
        return handle

    def provision(self, job: JobSpec, marker: str = "") -> Instance:
        """Rent, verify and set up one instance for `job` (blocking; run it in a worker thread).

        `marker` is held in the instance's live set, so it is not reaped before the job starts.
        """
        req = self.requirement.with_hours(job.est_hours)
        with self._lock:
            self._renting += 1
        try:
            rented = self._provisioner(job).rent(req, job.job_id)
        finally:
            with self._lock:
                self._renting -= 1
        inst = Instance(rented.instance_id, self._ssh_for(rented), live={marker} if marker else set())
        with self._lock:
            self._instances[inst.instance_id] = inst
        self._setup(inst)
        return inst

    def _provisioner(self, job: JobSpec) -> Provisioner:
        return Provisioner(self.api, self.file, self.image, self.onstart, f"{self.label}-{job.job_id}",
                           self.timing, verify=self._verify, destroy=self._destroy_id,
                           gate=lambda option: self.gate.check(self.ledger_records(), option.total_usd,
                                                               self.wall()),
                           sleep=self.sleep, clock=self.clock, wall=self.wall)

    def _ssh_for(self, rented: Rented | dict) -> SshBackend:
        if isinstance(rented, Rented):
            iid, user, host, port = rented.instance_id, rented.user, rented.host, rented.port
        else:
            iid, (user, host, port) = int(rented["instance_id"]), vast_api.parse_ssh_url(str(rented["ssh_url"]))
        return vast_hosts.instance_ssh(self.ssh_settings, iid, user, host, port)

    def _verify(self, rented: Rented) -> str:
        ssh = self._ssh_for(rented)
        try:
            return vast_hosts.verify(ssh, rented.instance_id, self.ssh_settings.command_timeout_s)
        finally:
            ssh.close()

    def _setup(self, inst: Instance) -> None:
        try:
            vast_hosts.setup(inst.ssh, inst.instance_id, self.project_dir)
        except Exception:
            self._destroy(inst, "set-up on the instance failed")
            raise

    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]:
        if not self._reconciled:
            self.reconcile(handles)
        by_inst: dict[int, list[Handle]] = {}
        out: dict[Handle, RunStatus] = {}
        for h in handles:
            inst = self._adopt(h)
            if inst is None:
                out[h] = RunStatus("lost", outcome="lost", detail="vast instance no longer exists")
                continue
            by_inst.setdefault(inst.instance_id, []).append(h)
        for iid, group in by_inst.items():
            out.update(self._poll_instance(self._instances[iid], group))
        self._reap()
        return out

    def _poll_instance(self, inst: Instance, handles: list[Handle]) -> dict[Handle, RunStatus]:
        statuses = dict(inst.ssh.poll(handles))
        if any(s.detail.startswith("status unknown") for s in statuses.values()):
            why = self._instance_dead(inst)
            if why:
                self._destroy(inst, why)
                statuses = {h: RunStatus("lost", outcome="lost", detail=f"vast instance {why}")
                            for h in handles}
        with self._lock:
            for h, s in statuses.items():
                if s.phase in ("exited", "lost"):
                    if h.ref not in inst.fetched:
                        inst.unfetched.add(h.ref)
                    inst.live.discard(h.ref)
        return statuses

    def _instance_dead(self, inst: Instance) -> str:
        """Why an unreachable instance is gone for good ('' while it may come back)."""
        if self.clock() - inst.api_checked < self.timing.status_interval_s:
            return ""
        inst.api_checked = self.clock()
        try:
            info = vast_api.call("show instance", self.api.show_instance, inst.instance_id)
        except BackendError as exc:
            log.warning("vast status unavailable", instance=inst.instance_id, error=str(exc))
            return ""
        if info is None:
            return "is gone"
        state = info.get("actual_status")
        return f"went {state}" if state in ("exited", "offline") else ""

    def cancel(self, handle: Handle) -> None:
        inst = self._adopt(handle)
        if inst is not None:
            inst.ssh.cancel(handle)

    def suspend(self, handle: Handle) -> bool:
        inst = self._adopt(handle)
        return inst is not None and inst.ssh.suspend(handle)

    def resume(self, handle: Handle) -> bool:
        inst = self._adopt(handle)
        return inst is not None and inst.ssh.resume(handle)

    def fetch(self, handle: Handle, dest: Path) -> None:
        """Outputs first; an instance whose fetch failed is never destroyed."""
        inst = self._adopt(handle)
        if inst is None:
            raise BackendError(f"{handle.host}: instance gone; nothing can be fetched")
        try:
            self._fetch_twice(inst, handle, dest)
        except Exception as exc:
            with self._lock:
                inst.fetch_failed.add(handle.ref)
            self.file.update(inst.instance_id, note=f"fetch of {handle.ref} failed: kept, not destroyed")
            log.error("vast fetch failed; the instance is kept", instance=inst.instance_id,
                      session=handle.ref, error=str(exc))
            raise
        with self._lock:
            inst.unfetched.discard(handle.ref)
            inst.fetch_failed.discard(handle.ref)
            inst.fetched.add(handle.ref)
        self._reap()

    @staticmethod
    def _fetch_twice(inst: Instance, handle: Handle, dest: Path) -> None:
        """A connection that died since the last call fails once, then reopens: try again."""
        try:
            inst.ssh.fetch(handle, dest)
        except HostUnreachable:
            inst.ssh.fetch(handle, dest)

    # -- teardown and restart -------------------------------------------------------------------
    def _reap(self) -> None:
        """Destroy instances that are idle, fully fetched and past keep_warm_s (auto_destroy)."""
        now = self.clock()
        for inst in list(self._instances.values()):
            with self._lock:
                idle = not inst.live and not inst.unfetched and not inst.fetch_failed
                if not idle:
                    inst.idle_since = None
                    continue
                inst.idle_since = inst.idle_since if inst.idle_since is not None else now
            if self.auto_destroy and now - inst.idle_since >= self.keep_warm_s:
                self._destroy(inst, "work done and fetched")

    def _destroy(self, inst: Instance, why: str) -> None:
        with self._lock:
            self._instances.pop(inst.instance_id, None)
        inst.ssh.close()
        self._destroy_id(inst.instance_id, why)

    def _destroy_id(self, iid: int, why: str) -> None:
        """Only an instance recorded with our label is destroyed (F104)."""
        entry = self.file.get(iid)
        if entry is None or not str(entry.get("label", "")).startswith(self.label):
            log.error("refusing to destroy an instance we did not create", instance=iid)
            return
        try:
            vast_api.call("destroy instance", self.api.destroy_instance, iid)
        except BackendError as exc:
            self.file.update(iid, note=f"destroy failed ({exc}); destroy it on the Vast.ai console")
            log.error("vast destroy failed", instance=iid, error=str(exc))
            return
        entry = self.file.update(iid, status="destroyed", destroyed_at=iso(self.wall()), note=why) or entry
        log.info("vast instance destroyed", instance=iid, why=why,
                 usd=round(cost_usd(entry, self.wall()), 4), estimated_usd=entry.get("estimated_cost"))

    def reconcile(self, live: Sequence[Handle]) -> list[str]:
        """After a restart: our recorded instances with no live job are orphans (they cost money).

        Returns one line per orphan; destroys them when `destroy_orphans` is set.
        """
        self._reconciled = True
        wanted = {_instance_id(h) for h in live}
        lines = []
        for entry in self.file.ours(self.label):
            iid = entry.get("instance_id")
            if entry.get("status") == "destroyed" or iid in wanted or iid in self._instances:
                continue
            line = (f"vast instance {iid} ({entry.get('gpu_name')}, ${entry.get('dph')}/h, "
                    f"${cost_usd(entry, self.wall()):.2f} so far) has no live job")
            if self.destroy_orphans and isinstance(iid, int):
                self._destroy_id(iid, "orphan after restart")
                line += ": destroyed"
            else:
                line += ": destroy it (`vastai destroy instance`) or set vast.destroy_orphans"
            log.warning("vast orphan", detail=line)
            lines.append(line)
        return lines

    def _adopt(self, handle: Handle) -> Instance | None:
        """The instance behind a handle, rebuilt from vast-instances.json after a restart."""
        iid = _instance_id(handle)
        with self._lock:
            if iid in self._instances:
                return self._instances[iid]
        entry = self.file.get(iid) if iid is not None else None
        if entry is None or entry.get("status") != "running" or not entry.get("ssh_url"):
            return None
        inst = Instance(int(iid), self._ssh_for(entry), live={handle.ref})
        inst.ssh.state[inst.alias].synced = True  # the code is there since the first launch
        with self._lock:
            return self._instances.setdefault(inst.instance_id, inst)

    def _by_alias(self, alias: str) -> Instance | None:
        with self._lock:
            return next((i for i in self._instances.values() if i.alias == alias), None)

    # -- cost -----------------------------------------------------------------------------------
    def ledger_records(self) -> list[dict[str, Any]]:
        """Each instance we rented as a handlers.budget record (dph × wall hours)."""
        out = []
        for e in self.file.ours(self.label):
            out.append({"job_id": f"vast-{e.get('instance_id')}", "run_id": e.get("experiment"),
                        "started_at": parse_iso(e.get("created_at")), "ended_at": parse_iso(e.get("destroyed_at")),
                        "gpus": int(e.get("num_gpus") or 1), "cost_usd": cost_usd(e, self.wall())})
        return out

    def close(self) -> None:
        for inst in list(self._instances.values()):
            inst.ssh.close()


def from_settings(settings: Any, project: Path) -> VastBackend:
    cfg = settings.vast
    key = vast_api.resolve_key(cfg.api_key_env, cfg.api_key_file)
    api = vast_api.make_client(key, cfg.server_url, cfg.api_timeout_s)
    req = Requirement(min_vram_gb=cfg.min_vram_gb or 16.0, num_gpus=cfg.num_gpus, disk_gb=cfg.disk_gb,
                      min_cuda=cfg.min_cuda, min_reliability=cfg.min_reliability, max_dph=cfg.max_dph,
                      est_hours=cfg.est_hours)
    return VastBackend(project, api, requirement=req, image=cfg.image or DEFAULT_IMAGE,
                       onstart=cfg.onstart or DEFAULT_ONSTART, auto_destroy=cfg.auto_destroy,
                       destroy_orphans=cfg.destroy_orphans, max_instances=cfg.max_instances,
                       code_dir=cfg.code_dir, ssh_key_file=cfg.ssh_key_file, budget=settings.budget,
                       timing=Timing(provision_budget_s=cfg.provision_timeout_s),
                       keep_warm_s=cfg.keep_warm_s,
                       launch_timeout_s=getattr(settings, "launch_timeout_s", 30.0))


def _instance_id(handle: Handle) -> int | None:
    try:
        return int(json.loads(handle.extra or "{}").get("instance_id"))
    except (TypeError, ValueError):
        return None


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "project"
