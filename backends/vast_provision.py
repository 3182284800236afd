"""Renting one Vast.ai instance for a job: search, create, wait for running, connect, verify.

The order matters for money: the instance id is written to vast-instances.json the moment the
create call returns it, before any wait that could fail, and every failure after that destroys
the instance we just made (it holds nothing yet). Failure classes (DESIGN §3):
- no offer meets the requirement: retried with backoff until the provisioning time budget is
  spent, then CapacityUnavailable (a provisioning retry, never a job attempt);
- the instance goes `exited`/`offline`/`unknown` or never reaches `running`: destroyed, and the
  next offer is tried;
- ssh refuses the key (publickey): destroyed, and BackendUnavailable explains the key upload,
  because no other offer would accept the key either;
- connection refused: tried `verify_tries` times, `verify_interval_s` apart (ARIS F73).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog

from backends import vast_api
from backends.vast_offers import Option, Requirement, describe, no_offer_reason, rank
from backends.vast_state import InstanceFile, iso
from daemon.errors import BackendError, BackendUnavailable, CapacityUnavailable, HostUnreachable

log = structlog.get_logger("expbridge.vast")
DEAD_STATES = ("exited", "offline", "unknown")  # the SDK's SKILL.md: these never reach running
KEY_UPLOAD = ("upload your ssh public key at https://cloud.vast.ai/manage-keys (or set vast.ssh_key_file "
              "to the key whose public half is there); keys are copied into an instance when it is "
              "created, so the instance was destroyed and will be recreated after the upload")


@dataclass
class Timing:
    provision_budget_s: float = 1800.0  # give up renting after this (CapacityUnavailable)
    backoff_s: float = 20.0  # first wait after "no offer"; doubles up to backoff_max_s
    backoff_max_s: float = 300.0
    status_interval_s: float = 20.0  # ARIS polls show instances every 20 s
    loading_warn_s: float = 300.0  # warn when still loading after 5 min
    ready_timeout_s: float = 1200.0  # never running by then: destroy, next offer
    verify_tries: int = 3
    verify_interval_s: float = 15.0


@dataclass
class Rented:
    instance_id: int
    option: Option
    user: str
    host: str
    port: int
    ssh_url: str


@dataclass
class Provisioner:
    api: Any  # vastai.VastAI
    file: InstanceFile
    image: str
    onstart: str
    label: str
    timing: Timing = field(default_factory=Timing)
    verify: Callable[[Rented], str] = lambda r: "ok"  # "ok", "publickey", "refused", or a reason
    destroy: Callable[[int, str], None] = lambda iid, why: None
    gate: Callable[[Option], None] = lambda option: None  # the budget check; raises to stop renting
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time

    def rent(self, req: Requirement, experiment: str) -> Rented:
        deadline = self.clock() + self.timing.provision_budget_s
        tried: set[int] = set()
        backoff = self.timing.backoff_s
        while True:
            options = [o for o in self.search(req) if o.offer.offer_id not in tried]
            if options:
                log.info("vast offers", requirement=req.query(), options="\n" + describe(options))
                option = options[0]
                tried.add(option.offer.offer_id)
                rented = self.try_offer(option, req, experiment)
                if rented is not None:
                    return rented
                continue  # that offer failed: the next one, without waiting
            if self.clock() + backoff > deadline:
                raise CapacityUnavailable(f"{no_offer_reason(req)} (searched for "
                                          f"{self.timing.provision_budget_s:g}s)")
            log.warning("no vast capacity; retrying", wait_s=backoff, requirement=req.query())
            self.sleep(backoff)
            backoff = min(backoff * 2, self.timing.backoff_max_s)

    def search(self, req: Requirement) -> list[Option]:
        offers = vast_api.call("search offers", self.api.search_offers, query=req.query(),
                               order="dph_total", limit=10, storage=req.disk_gb, type="on-demand")
        if req.min_vram_gb > 24:  # ARIS: big models also look at the 48 GB class
            big = Requirement(48, req.num_gpus, req.disk_gb, req.min_cuda, req.min_reliability,
                              req.max_dph, req.est_hours, req.min_inet_down)
            offers = list(offers) + list(vast_api.call(
                "search offers", self.api.search_offers, query=big.query(), order="dph_total",
                limit=5, storage=req.disk_gb, type="on-demand"))
        unique = {o.get("id"): o for o in offers if isinstance(o, dict)}
        return rank(unique.values(), req)

    def try_offer(self, option: Option, req: Requirement, experiment: str) -> Rented | None:
        """One offer end to end; None when it failed in a way another offer may not."""
        self.gate(option)
        try:
            reply = vast_api.call("create instance", self.api.create_instance, option.offer.offer_id,
                                  image=self.image, disk=req.disk_gb, label=self.label,
                                  onstart_cmd=self.onstart, ssh=True, direct=True)
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            log.warning("vast create failed; trying the next offer", offer=option.offer.offer_id,
                        error=str(exc))
            return None
        if not isinstance(reply, dict) or not reply.get("success") or not reply.get("new_contract"):
            log.warning("vast create refused", offer=option.offer.offer_id, reply=str(reply)[:200])
            return None
        iid = int(reply["new_contract"])
        self.record(iid, option, experiment)  # before anything else can fail
        try:
            return self.bring_up(iid, option)
        except BackendUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the instance must not outlive a failed set-up
            self.destroy(iid, f"set-up failed: {exc}")
            if isinstance(exc, _NextOffer):
                log.warning("vast instance unusable; trying the next offer", instance=iid, why=str(exc))
                return None
            raise

    def record(self, iid: int, option: Option, experiment: str) -> None:
        self.file.add({"instance_id": iid, "offer_id": option.offer.offer_id,
                       "gpu_name": option.offer.gpu_name, "num_gpus": option.offer.num_gpus,
                       "dph": option.offer.dph, "ssh_url": "", "ssh_host": "", "ssh_port": 0,
                       "created_at": iso(self.wall()), "status": "loading", "experiment": experiment,
                       "estimated_hours": round(option.hours, 3),
                       "estimated_cost": round(option.total_usd, 4), "label": self.label})
        log.info("vast instance created", instance=iid, offer=option.offer.offer_id,
                 gpu=option.offer.gpu_name, dph=option.offer.dph, est_usd=round(option.total_usd, 2))

    def bring_up(self, iid: int, option: Option) -> Rented:
        self.wait_running(iid)
        url = vast_api.call("ssh-url", self.api.ssh_url, iid)
        user, host, port = vast_api.parse_ssh_url(url)
        rented = Rented(iid, option, user, host, port, url)
        self.verify_ssh(rented)
        self.file.update(iid, status="running", ssh_url=url, ssh_host=host, ssh_port=port)
        return rented

    def wait_running(self, iid: int) -> None:
        start = self.clock()
        warned = False
        while True:
            try:
                info = vast_api.call("show instance", self.api.show_instance, iid)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                info = {"actual_status": "?"}  # a transient API error is not an instance failure
            state = (info or {}).get("actual_status") if info is not None else "gone"
            if state == "running":
                return
            if state in DEAD_STATES or state == "gone":
                raise _NextOffer(f"instance {iid} went {state} before running")
            waited = self.clock() - start
            if waited > self.timing.ready_timeout_s:
                raise _NextOffer(f"instance {iid} not running after {waited:.0f}s (state {state})")
            if state == "loading" and waited > self.timing.loading_warn_s and not warned:
                log.warning("vast instance still loading", instance=iid, waited_s=round(waited))
                warned = True
            self.sleep(self.timing.status_interval_s)

    def verify_ssh(self, rented: Rented) -> None:
        for attempt in range(1, self.timing.verify_tries + 1):
            verdict = self.verify(rented)
            if verdict == "ok":
                return
            if verdict == "publickey":
                self.destroy(rented.instance_id, "ssh key refused")
                raise BackendUnavailable(f"vast instance {rented.instance_id}: ssh refused our key "
                                         f"(Permission denied (publickey)); {KEY_UPLOAD}")
            if verdict != "refused" or attempt == self.timing.verify_tries:
                raise _NextOffer(f"instance {rented.instance_id} failed verification: {verdict}")
            self.sleep(self.timing.verify_interval_s)


class _NextOffer(Exception):
    """This instance is unusable; another offer may work."""


def classify_ssh_failure(exc: Exception) -> str:
    """What a failed connection means for renting: publickey, refused, or the message."""
    text = str(exc)
    if "Authentication" in text or "publickey" in text or "No authentication methods" in text:
        return "publickey"
    if isinstance(exc, HostUnreachable) and ("refused" in text.lower() or "Errno 111" in text
                                             or "Unable to connect" in text):
        return "refused"
    return text[:300] or type(exc).__name__
