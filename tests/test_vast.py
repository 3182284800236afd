"""The Vast backend on the real vastai SDK, against a local fake API whose instances are real
loopback sshd servers: rent → run → fetch → destroy, and every way renting can go wrong."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from backends.base import Handle, RunStatus, Slot
from backends.vast import RENT_HOST, VastBackend
from daemon.config import BudgetConfig
from daemon.errors import (ApprovalRequired, BackendError, BackendUnavailable, BudgetRefused,
                           CapacityUnavailable)
from tests.plugins.common import wait_for
from tests.plugins.sshd import SshdPair, job
from tests.plugins.vastfake import KEY, FakeVast, make_vast, offer

pytestmark = [pytest.mark.slow, pytest.mark.ssh]
RENT = Slot(RENT_HOST, 0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    (p / "train.py").write_text("print('training')\n")
    return p


@pytest.fixture
def made() -> Iterator[list[VastBackend]]:
    backends: list[VastBackend] = []
    yield backends
    for b in backends:
        b.close()


def build(fake: FakeVast, pair: SshdPair, project: Path, made: list, **kw) -> VastBackend:
    backend = make_vast(fake, pair, project, **kw)
    made.append(backend)
    return backend


def finish(backend: VastBackend, handle: Handle, timeout: float = 60) -> RunStatus:
    def done() -> RunStatus | None:
        s = backend.poll([handle])[handle]
        return s if s.phase in ("exited", "lost") else None
    return wait_for(done, timeout=timeout, interval=0.1, what=f"{handle.ref} to end")


def entries(project: Path) -> list[dict]:
    return json.loads((project / "vast-instances.json").read_text())


def test_rent_run_fetch_destroy(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path, made: list) -> None:
    vast_fake.offers = [offer(11, "RTX 3090", 0.30), offer(12, "RTX 4090", 0.40), offer(13, "H100 SXM", 9.0)]
    backend = build(vast_fake, ssh_hosts, project, made, budget=BudgetConfig())
    backend.preflight()
    assert backend.slots() == [RENT]
    spec = job(project, "R001", "python3 train.py > out.txt; echo ${GPU} >> out.txt",
               expected_output=("out.txt",), est_hours=2.0)
    handle = backend.submit(spec, RENT)

    search = vast_fake.bodies("POST", "/api/v0/bundles/")[0]
    assert search["gpu_ram"] == {"gte": 16000.0} and search["num_gpus"] == {"gte": "1"}
    assert search["reliability"] == {"gt": "0.95"} and search["cuda_max_good"] == {"gte": "12.1"}
    assert search["order"] == [["dph_total", "asc"]] and search["allocated_storage"] == 50
    assert search["rentable"] == {"eq": True} and search["type"] == "on-demand"
    (create,) = vast_fake.bodies("PUT", "/api/v0/asks/")
    assert create["label"] == "expbridge-proj-R001" and create["disk"] == 50
    assert create["image"].startswith("pytorch/pytorch") and "screen rsync" in create["onstart"]
    assert create["runtype"] == "ssh_direc ssh_proxy"
    (inst,) = vast_fake.instances.values()
    assert inst.offer["id"] == 12  # the 4090: cheapest estimated total, not cheapest per hour

    (entry,) = entries(project)
    assert set(entry) >= {"instance_id", "offer_id", "gpu_name", "num_gpus", "dph", "ssh_url", "ssh_host",
                          "ssh_port", "created_at", "status", "experiment", "estimated_hours",
                          "estimated_cost"}
    assert (entry["instance_id"], entry["status"], entry["experiment"]) == (inst.id, "running", "R001")
    assert entry["ssh_url"] == f"ssh://root@127.0.0.1:{ssh_hosts.a.port}"
    assert entry["estimated_cost"] == pytest.approx(0.40 * 2.0 * 1.3 / 1.6, abs=1e-3)

    status = finish(backend, handle)
    assert (status.phase, status.outcome) == ("exited", "ok")
    assert vast_fake.destroyed() == []  # nothing is destroyed before the fetch
    backend.fetch(handle, project / "experiment_queue" / "RUN")
    assert (project / "out.txt").read_text() == "training\n0\n"
    assert vast_fake.destroyed() == [inst.id]
    (entry,) = entries(project)
    assert entry["status"] == "destroyed" and entry["destroyed_at"]
    (record,) = backend.ledger_records()
    assert record["cost_usd"] > 0 and record["run_id"] == "R001"
    assert KEY not in (project / "vast-instances.json").read_text() and KEY not in handle.to_json()


def test_failed_fetch_blocks_destroy(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path, made: list) -> None:
    vast_fake.offers = [offer(21, "RTX 3090", 0.2)]
    backend = build(vast_fake, ssh_hosts, project, made)
    handle = backend.submit(job(project, "F1", "echo x > f.txt", expected_output=("f.txt",)), RENT)
    assert finish(backend, handle).outcome == "ok"
    ssh_hosts.a.stop()
    with pytest.raises(BackendError):
        backend.fetch(handle, project / "experiment_queue" / "RUN")
    assert vast_fake.destroyed() == []
    backend.slots()  # housekeeping must not destroy it either
    assert vast_fake.destroyed() == [] and "not destroyed" in entries(project)[0]["note"]
    ssh_hosts.a.start()
    backend.fetch(handle, project / "experiment_queue" / "RUN")
    assert (project / "f.txt").exists() and len(vast_fake.destroyed()) == 1


def test_auto_destroy_off_keeps_the_instance(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path,
                                             made: list) -> None:
    vast_fake.offers = [offer(22, "RTX 3090", 0.2)]
    backend = build(vast_fake, ssh_hosts, project, made, auto_destroy=False)
    handle = backend.submit(job(project, "K1", "true"), RENT)
    finish(backend, handle)
    backend.fetch(handle, project / "experiment_queue" / "RUN")
    assert vast_fake.destroyed() == [] and entries(project)[0]["status"] == "running"
    assert [s.host for s in backend.slots()] == [f"vast-{handle.host.split('-')[1]}"] * 2  # reused, not re-rented


def test_exited_instance_is_replaced_by_another_offer(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path,
                                                     made: list) -> None:
    vast_fake.offers = [offer(31, "RTX 3090", 0.10), offer(32, "RTX 3090", 0.20)]
    vast_fake.states[31] = ["loading", "exited"]
    backend = build(vast_fake, ssh_hosts, project, made)
    handle = backend.submit(job(project, "E1", "echo ok"), RENT)
    first, second = sorted(vast_fake.instances)
    assert vast_fake.instances[first].offer["id"] == 31 and vast_fake.destroyed() == [first]
    assert vast_fake.instances[second].offer["id"] == 32 and handle.host == f"vast-{second}"
    assert finish(backend, handle).outcome == "ok"
    statuses = {e["instance_id"]: e["status"] for e in entries(project)}
    assert statuses == {first: "destroyed", second: "running"}


def test_instance_lost_mid_run_makes_the_job_lost(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path,
                                                 made: list) -> None:
    vast_fake.offers = [offer(41, "RTX 3090", 0.1)]
    backend = build(vast_fake, ssh_hosts, project, made)
    handle = backend.submit(job(project, "L1", "sleep 60"), RENT)
    assert backend.poll([handle])[handle].phase == "running"
    iid = next(iter(vast_fake.instances))
    ssh_hosts.a.stop()
    vast_fake.set_state(iid, "offline")
    status = finish(backend, handle, timeout=30)
    assert (status.phase, status.outcome) == ("lost", "lost") and "offline" in status.detail
    assert vast_fake.destroyed() == [iid]
    ssh_hosts.a.start()


def test_transient_api_error_does_not_end_a_running_job(vast_fake: FakeVast, ssh_hosts: SshdPair,
                                                       project: Path, made: list) -> None:
    vast_fake.offers = [offer(42, "RTX 3090", 0.1)]
    backend = build(vast_fake, ssh_hosts, project, made)
    handle = backend.submit(job(project, "T1", "sleep 2"), RENT)
    ssh_hosts.a.stop()
    backend.api.client.server_url = "http://127.0.0.1:9"  # the API is down too
    assert backend.poll([handle])[handle].phase == "running"
    ssh_hosts.a.start()
    assert finish(backend, handle).outcome == "ok"


def test_no_capacity_retries_then_gives_up(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path, made: list) -> None:
    vast_fake.offers = [offer(51, "RTX 3090", 0.1)]
    vast_fake.empty_searches = 2  # no capacity twice, then an offer
    backend = build(vast_fake, ssh_hosts, project, made)
    handle = backend.submit(job(project, "C1", "true"), RENT)
    assert len(vast_fake.bodies("POST", "/api/v0/bundles/")) == 3
    finish(backend, handle)
    vast_fake.offers = []
    with pytest.raises(CapacityUnavailable, match="no Vast.ai offer"):
        backend.provision(job(project, "C2", "true"))


def test_publickey_refusal_destroys_and_explains(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path,
                                                 made: list) -> None:
    vast_fake.offers = [offer(61, "RTX 3090", 0.1)]
    keys = ssh_hosts.a.root / "authorized_keys"
    saved = keys.read_text()
    keys.write_text("")
    try:
        backend = build(vast_fake, ssh_hosts, project, made)
        with pytest.raises(BackendUnavailable, match="manage-keys"):
            backend.submit(job(project, "P1", "true"), RENT)
    finally:
        keys.write_text(saved)
    assert vast_fake.destroyed() == list(vast_fake.instances)


def test_connection_refused_is_tried_three_times(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path,
                                                 made: list) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    vast_fake.offers = [offer(71, "RTX 3090", 0.1), offer(72, "RTX 3090", 0.2)]
    vast_fake.ports[71] = closed
    backend = build(vast_fake, ssh_hosts, project, made)
    handle = backend.submit(job(project, "V1", "true"), RENT)
    first, second = sorted(vast_fake.instances)
    assert vast_fake.destroyed() == [first] and handle.host == f"vast-{second}"
    ssh_url_calls = [p for m, p, _ in vast_fake.requests if m == "GET" and p == f"/api/v0/instances/{first}/"]
    assert len(ssh_url_calls) >= 2  # running check, then ssh-url
    finish(backend, handle)


def test_budget_holds_for_approval_and_refuses_past_the_cap(vast_fake: FakeVast, ssh_hosts: SshdPair,
                                                            project: Path, made: list) -> None:
    vast_fake.offers = [offer(81, "RTX 3090", 1.0)]
    approved: list[float] = []
    backend = build(vast_fake, ssh_hosts, project, made, budget=BudgetConfig(usd_max=1.0),
                    approve=lambda usd: bool(approved))
    with pytest.raises(ApprovalRequired, match=r"\$1.30"):
        backend.submit(job(project, "B1", "true"), RENT)
    assert vast_fake.bodies("PUT", "/api/v0/asks/") == [] and backend.slots() == []
    assert "approval" in backend.gate.hold
    approved.append(1.3)
    assert backend.slots() == [RENT]
    handle = backend.submit(job(project, "B1", "true"), RENT)
    finish(backend, handle)
    backend.fetch(handle, project / "experiment_queue" / "RUN")
    capped = build(vast_fake, ssh_hosts, project, made, budget=BudgetConfig(usd_hard_cap=0.5),
                   approve=lambda usd: True)
    with pytest.raises(BudgetRefused, match="usd_hard_cap"):
        capped.submit(job(project, "B2", "true"), RENT)
    assert len(vast_fake.bodies("PUT", "/api/v0/asks/")) == 1 and capped.slots() == []


def test_restart_reports_and_destroys_orphans(vast_fake: FakeVast, ssh_hosts: SshdPair, project: Path,
                                              made: list) -> None:
    vast_fake.offers = [offer(91, "RTX 3090", 0.1)]
    first = build(vast_fake, ssh_hosts, project, made, auto_destroy=False)
    handle = first.submit(job(project, "O1", "sleep 1"), RENT)
    finish(first, handle)
    first.close()
    reborn = build(vast_fake, ssh_hosts, project, made)
    lines = reborn.reconcile([])
    assert len(lines) == 1 and "has no live job" in lines[0] and vast_fake.destroyed() == []
    cleaner = build(vast_fake, ssh_hosts, project, made, destroy_orphans=True)
    assert "destroyed" in cleaner.reconcile([])[0]
    assert vast_fake.destroyed() == list(vast_fake.instances)
    # a live job's instance is adopted, never an orphan
    assert build(vast_fake, ssh_hosts, project, made).reconcile([handle]) == []


def test_unreachable_api_is_unavailable_within_our_deadline(vast_fake: FakeVast, project: Path) -> None:
    from backends.vast_api import make_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = VastBackend(project, make_client(KEY, f"http://127.0.0.1:{port}", 2))
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend.preflight()
    assert time.monotonic() - t0 < 30


def test_rejected_key_is_a_configuration_error(vast_fake: FakeVast, project: Path) -> None:
    from backends.vast_api import make_client

    backend = VastBackend(project, make_client("wrong-key-123456", vast_fake.url, 5))
    with pytest.raises(BackendUnavailable, match="rejected the API key"):
        backend.preflight()
