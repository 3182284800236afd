"""Network trouble: an sshd killed mid-run, a daemon restart, and the per-host circuit breaker."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from backends.base import Handle, Slot, parse_exit_file
from backends.hosts import hosts_report
from daemon.errors import LaunchFailed
from tests.plugins.common import wait_for
from tests.plugins.sshd import SshdPair, job, make_backend, remote

pytestmark = pytest.mark.ssh  # needs the real loopback OpenSSH servers



def _all_done(backend, handles: list[Handle], timeout: float = 40.0) -> dict:
    def done():
        got = backend.poll(handles)
        return got if all(s.phase in ("exited", "lost") for s in got.values()) else None
    return wait_for(done, timeout=timeout, interval=0.1, what="jobs to end")


@pytest.fixture
def project(tmp_path: Path, ssh_hosts: SshdPair) -> Path:
    for host in ssh_hosts.hosts.values():
        host.as_user("mkdir", "-p", str(host.home / "code"))
    p = tmp_path / "proj"
    p.mkdir()
    return p


@pytest.mark.slow
def test_sshd_killed_mid_run_jobs_survive_and_a_fresh_backend_adopts_them(
        ssh_hosts: SshdPair, project: Path) -> None:
    a = ssh_hosts.a
    backend = make_backend(ssh_hosts, project, aliases=("eb-a",), breaker_failures=100)
    fresh = make_backend(ssh_hosts, project, aliases=("eb-a",))
    try:
        handles = [backend.submit(job(project, f"sv{g}", "sleep 3; echo survived", plan="sv"),
                                  Slot("eb-a", g)) for g in (0, 1)]
        assert all(s.phase == "running" for s in backend.poll(handles).values())
        a.stop()  # every connection to the host drops; the jobs live in their screen sessions
        during = backend.poll(handles)
        assert all(s.phase == "running" and "unknown" in s.detail for s in during.values())
        assert backend.slots() == []
        a.start()
        # what a restarted daemon does: rebuild handles from their JSON and poll them
        reborn = [Handle.from_json(h.to_json()) for h in handles]
        assert all(s.phase == "running" for s in fresh.poll(reborn).values())
        assert Slot("eb-a", 0) not in fresh.slots()  # adopted jobs hold their GPUs
        final = _all_done(backend, handles)  # the first backend reconnected by itself
        assert all(s.outcome == "ok" for s in final.values())
        assert all(s.outcome == "ok" for s in fresh.poll(reborn).values())
        for h in handles:
            started = float((remote(a, h.job_dir) / "started").read_text())
            code, ended = parse_exit_file((remote(a, h.job_dir) / "exit").read_text())
            assert code == 0 and ended - started >= 3.0  # ran to the end, never restarted
            assert "survived" in remote(a, h.log_path).read_text()
    finally:
        backend.close()
        fresh.close()


@pytest.mark.slow
def test_breaker_stops_new_launches_and_leaves_running_jobs_alone(ssh_hosts: SshdPair, project: Path) -> None:
    b = ssh_hosts.b
    backend = make_backend(ssh_hosts, project, breaker_failures=2, breaker_reset_s=2.0, gpu_cache_s=0.0)
    try:
        running = backend.submit(job(project, "br1", "sleep 2; echo untouched", plan="br"), Slot("eb-b", 0))
        b.stop()
        backend.slots()
        assert Slot("eb-a", 0) in backend.slots()  # the healthy host is unaffected
        assert backend.state["eb-b"].breaker.state == "open"
        assert all(s.host == "eb-a" for s in backend.slots())
        with pytest.raises(LaunchFailed, match="circuit breaker"):
            backend.submit(job(project, "br2", "true", plan="br"), Slot("eb-b", 1))
        rows = {r["alias"]: r for r in hosts_report(backend)}
        assert not rows["eb-b"]["reachable"] and rows["eb-b"]["breaker"] == "open"
        b.start()
        status = _all_done(backend, [running])[running]
        assert (status.outcome, status.exit_code) == ("ok", 0)
        assert "untouched" in remote(b, running.log_path).read_text()
        # reachable again, but launches wait for the reset period, then a probe closes it
        opened = backend.state["eb-b"].breaker.opened_at
        if time.monotonic() - opened < 2.0:
            assert all(s.host == "eb-a" for s in backend.slots())
        wait_for(lambda: any(s.host == "eb-b" for s in backend.slots()), timeout=10, interval=0.2,
                 what="breaker to close")
        assert backend.state["eb-b"].breaker.state == "closed"
    finally:
        backend.close()
