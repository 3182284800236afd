"""SSH backend against two real loopback OpenSSH servers with fake GPUs (see tests/plugins/sshd.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from backends.base import Handle, Slot, parse_exit_file
from backends.hosts import format_hosts, hosts_report
from backends.sshconn import HostSpec, Result, hosts_from_flag
from daemon.errors import BackendUnavailable, HostUnreachable, LaunchFailed, UnsafeValue
from tests.plugins.common import wait_for
from tests.plugins.sshd import SshdPair, drive, job, make_backend, remote

pytestmark = pytest.mark.ssh  # needs the real loopback OpenSSH servers



def _finish(backend, handle: Handle, timeout: float = 30.0):
    def done():
        st = backend.poll([handle])[handle]
        return st if st.phase in ("exited", "lost") else None
    return wait_for(done, timeout=timeout, interval=0.05, what=f"{handle.ref} to end")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    return p


@pytest.fixture
def backend(ssh_hosts: SshdPair, project: Path):
    for host in ssh_hosts.hosts.values():
        host.as_user("mkdir", "-p", str(host.home / "code"))
    b = make_backend(ssh_hosts, project)
    yield b
    b.close()


@pytest.mark.slow
def test_grid_over_two_hosts_keeps_one_job_per_gpu(ssh_hosts: SshdPair, backend, project: Path) -> None:
    specs = [job(project, f"g{i}", "echo gpu=$CUDA_VISIBLE_DEVICES order=$CUDA_DEVICE_ORDER; sleep 0.6",
                 plan="grid") for i in range(10)]
    seen = drive(backend, specs, timeout=90)
    assert len(seen.attempts) == 10 and all(st.outcome == "ok" for _, _, st in seen.attempts)
    by_gpu: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for spec, slot, _ in seen.attempts:
        host = ssh_hosts.hosts[slot.host]
        handle = seen.handles[spec.session]
        jd = remote(host, handle.job_dir)
        started = float((jd / "started").read_text().split()[0])
        code, ended = parse_exit_file((jd / "exit").read_text())
        assert code == 0 and ended is not None
        assert f"gpu={slot.gpu} order=PCI_BUS_ID" in remote(host, handle.log_path).read_text()
        by_gpu.setdefault((slot.host, slot.gpu), []).append((started, ended))
    assert set(by_gpu) == {(h, g) for h in ("eb-a", "eb-b") for g in (0, 1)}
    for gpu, spans in by_gpu.items():  # the wrappers' own clocks: no two spans overlap on a GPU
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"two jobs overlapped on {gpu}: {spans}"


def test_oom_is_retried_on_another_gpu(ssh_hosts: SshdPair, project: Path) -> None:
    ssh_hosts.a.as_user("mkdir", "-p", str(ssh_hosts.a.home / "code"))
    backend = make_backend(ssh_hosts, project, aliases=("eb-a",))
    cmd = ('if [ "$EB_ATTEMPT" = 1 ]; then echo "torch.OutOfMemoryError: CUDA out of memory"; exit 1; fi;'
           ' echo fine on $CUDA_VISIBLE_DEVICES')
    try:
        seen = drive(backend, [job(project, "oom1", cmd, plan="oom")], timeout=60)
    finally:
        backend.close()
    (s1, slot1, st1), (s2, slot2, st2) = seen.attempts
    assert (s1.attempt, st1.outcome, st1.exit_code) == (1, "oom", 1)
    assert (s2.attempt, st2.outcome) == (2, "ok")
    assert slot1.host == slot2.host == "eb-a" and slot1.gpu != slot2.gpu
    log2 = remote(ssh_hosts.a, seen.handles[s2.session].log_path).read_text()
    assert f"fine on {slot2.gpu}" in log2
    assert "out of memory" in remote(ssh_hosts.a, seen.handles[s1.session].log_path).read_text()


def test_gpu_readings_busy_na_garbage_and_missing(ssh_hosts: SshdPair, backend) -> None:
    a, b = ssh_hosts.a, ssh_hosts.b
    a.set_gpus([9000, 120])  # another user's process holds GPU 0: respected, never pre-empted
    b.set_gpus(["[N/A]", 10])
    assert set(backend.slots()) == {Slot("eb-a", 1), Slot("eb-b", 1)}
    a.gpu_state.write_text("this is not csv\n")
    b.set_gpus(None)  # nvidia-smi fails
    backend.gpu_cache_s = 0.0  # read again now instead of reusing the last reading
    assert backend.slots() == []
    report = hosts_report(backend)
    assert json.loads(json.dumps(report)) == report  # what `expbridge hosts --json` prints
    rows = {r["alias"]: r for r in report}
    assert rows["eb-a"]["reachable"] and rows["eb-a"]["gpus"] == []
    assert "failed" in rows["eb-b"]["gpu_note"]


def test_held_gpu_and_cooldown_keep_a_second_job_off(ssh_hosts: SshdPair, project: Path) -> None:
    ssh_hosts.a.as_user("mkdir", "-p", str(ssh_hosts.a.home / "code"))
    backend = make_backend(ssh_hosts, project, aliases=("eb-a",), cooldown_s=30)
    try:
        h = backend.submit(job(project, "hold1", "sleep 0.3", plan="hold"), Slot("eb-a", 0))
        assert Slot("eb-a", 0) not in backend.slots()
        assert _finish(backend, h).outcome == "ok"
        # the job's exit was seen: its GPU is free again although the cool-down has not run out
        assert Slot("eb-a", 0) in backend.slots()
        report = format_hosts(hosts_report(backend))
        assert "eb-a: up; breaker closed" in report and "gpu 0: 0/16000 MiB free" in report
    finally:
        backend.close()


def test_stale_session_is_killed_and_a_lookalike_is_never_touched(ssh_hosts: SshdPair, backend,
                                                                  project: Path) -> None:
    a = ssh_hosts.a
    spec = job(project, "stale1", "sleep 300", plan="st")
    handle = backend.submit(spec, Slot("eb-a", 0))
    # somebody else's sessions with our naming, one with the very same name
    a.as_user("screen", "-dmS", spec.session, "sleep", "300")
    a.as_user("screen", "-dmS", "eb-st-other-a1", "sleep", "300")
    jd = remote(a, handle.job_dir)
    pid = int((jd / "pid").read_text())
    # the wrapper wrote its exit file but its session lingers: stale
    (jd / "exit").write_text(f"0 {time.time()}\n")
    status = backend.poll([handle])[handle]
    assert (status.phase, status.outcome, status.detail) == ("exited", "ok", "stale session killed")
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=10, what="stale job gone")
    listing = a.as_user("screen", "-ls", check=False).stdout
    assert listing.count(f".{spec.session}\t") == 1, listing  # the look-alike with our name lives
    assert ".eb-st-other-a1\t" in listing
    backend.cancel(handle)  # cancelling our (finished) handle does not reach the look-alike either
    assert a.as_user("screen", "-ls", check=False).stdout.count(f".{spec.session}\t") == 1


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_shell_metacharacters_never_execute(ssh_hosts: SshdPair, project: Path) -> None:
    a = ssh_hosts.a
    canary = a.root / "canary"
    evil = f"$(touch {canary})"
    weird_dir = f"code/we'ird; {evil} `touch {canary}`"
    a.as_user("mkdir", "-p", str(a.home / weird_dir))
    backend = make_backend(ssh_hosts, project, aliases=("eb-a",), code_dirs={"eb-a": weird_dir})
    try:
        for bad in (dict(job_id=f"x{evil}"), dict(plan="p;id"), dict(run_ts="1'2")):
            args = {"job_id": "ok", "plan": "p", "run_ts": "20260101T000000Z", **bad}
            with pytest.raises(UnsafeValue):
                backend.submit(job(project, args["job_id"], "true", plan=args["plan"],
                                   run_ts=args["run_ts"]), Slot("eb-a", 0))
        with pytest.raises(UnsafeValue):
            make_backend(ssh_hosts, project, aliases=(f"eb-a;touch {canary}",))
        cmd = f"printf '%s|' '{evil}' \"a;b\" \"$EVIL\"; pwd"
        spec = job(project, "meta1", cmd, plan="meta", env={"EVIL": f"{evil};`touch {canary}`"},
                   expected_output=(evil, "*;touch x"))
        handle = backend.submit(spec, Slot("eb-a", 0))
        assert _finish(backend, handle).outcome == "ok"
        log = remote(a, handle.log_path).read_text()
        assert f"{evil}|a;b|{evil};`touch {canary}`|" in log and log.strip().endswith(weird_dir)
        backend.fetch(handle, project / "experiment_queue" / "R")
        conda = job(project, "meta2", "true", plan="meta", conda_env=evil, conda_hook="eval true")
        status = _finish(backend, backend.submit(conda, Slot("eb-a", 1)))
        assert status.exit_code == 98  # conda activate failed on the literal name
        with pytest.raises(UnsafeValue):
            backend.submit(job(project, "meta3", "true", plan="meta", env={"A;B": "1"}), Slot("eb-a", 0))
    finally:
        backend.close()
    assert not canary.exists()


def test_tmux_sessions(ssh_hosts: SshdPair, project: Path) -> None:
    ssh_hosts.a.as_user("mkdir", "-p", str(ssh_hosts.a.home / "code"))
    backend = make_backend(ssh_hosts, project, aliases=("eb-a",), session="tmux")
    try:
        ok = backend.submit(job(project, "tm1", "echo via-tmux", plan="tm"), Slot("eb-a", 0))
        long = backend.submit(job(project, "tm2", "sleep 300", plan="tm"), Slot("eb-a", 1))
        assert _finish(backend, ok).outcome == "ok"
        assert "via-tmux" in remote(ssh_hosts.a, ok.log_path).read_text()
        assert backend.poll([long])[long].phase == "running"
        assert backend.suspend(long) and backend.poll([long])[long].phase == "suspended"
        assert backend.resume(long)
        backend.cancel(long)
        assert _finish(backend, long).outcome == "cancelled"
        sessions = ssh_hosts.a.as_user("tmux", "list-sessions", check=False).stdout
        assert "eb-tm-tm2-a1" not in sessions
    finally:
        backend.close()


def test_unknown_host_and_bad_host_specs_are_refused(ssh_hosts: SshdPair, backend, project: Path) -> None:
    with pytest.raises(LaunchFailed):
        backend.submit(job(project, "u1", "true"), Slot("nowhere", 0))
    again = job(project, "u2", "true", plan="u")
    _finish(backend, backend.submit(again, Slot("eb-a", 0)))
    with pytest.raises(LaunchFailed, match="attempt directory already used") as err:
        backend.submit(again, Slot("eb-a", 0))  # the same attempt twice: refused, nothing overwritten
    assert not err.value.retryable and backend.state["eb-a"].breaker.failures == 0
    with pytest.raises(UnsafeValue):
        HostSpec("ok", code_dir="a\nb").validate()
    assert [h.alias for h in hosts_from_flag("gpu1, gpu2")] == ["gpu1", "gpu2"]
    for bad in ("", "a,$(id)"):
        with pytest.raises(UnsafeValue):
            hosts_from_flag(bad)


def test_pool_run_put_get_and_timeout(ssh_hosts: SshdPair, backend, tmp_path: Path) -> None:
    pool = backend.pool
    assert pool.run("eb-b", "id -un; exit 3", timeout=10) == Result(3, f"{ssh_hosts.b.user}\n", "")
    pool.put("eb-a", b"payload\n", "put-test.txt", timeout=10)
    assert (ssh_hosts.a.home / "put-test.txt").read_text() == "payload\n"
    pool.get("eb-a", "put-test.txt", tmp_path / "back.txt", timeout=10)
    assert (tmp_path / "back.txt").read_text() == "payload\n"
    with pytest.raises(HostUnreachable):
        pool.run("eb-a", "sleep 5", timeout=0.5)
    assert pool.run("eb-a", "echo again", timeout=10).stdout == "again\n"  # a fresh connection


def test_preflight_names_unusable_hosts(ssh_hosts: SshdPair, backend) -> None:
    backend.preflight()
    ssh_hosts.b.stop()
    backend.preflight()  # one usable host is enough; the other's error is kept for `hosts`
    assert "eb-b" in backend.state and backend.state["eb-b"].error
    ssh_hosts.a.stop()
    with pytest.raises(BackendUnavailable, match="eb-a.*eb-b"):
        backend.preflight()
    ssh_hosts.a.start()
    nowhere = make_backend(ssh_hosts, backend.project_dir, aliases=("eb-a",), code_dirs={"eb-a": "gone"})
    try:
        with pytest.raises(BackendUnavailable, match="code dir .*/gone does not exist"):
            nowhere.preflight()
    finally:
        nowhere.close()


def test_wait_exit_returns_as_soon_as_a_job_ends(ssh_hosts: SshdPair, backend, project: Path) -> None:
    short = backend.submit(job(project, "w1", "sleep 0.3", plan="w"), Slot("eb-a", 0))
    long = backend.submit(job(project, "w2", "sleep 300", plan="w"), Slot("eb-a", 1))
    assert backend.wait_exit("eb-a", [short, long], timeout_s=20) == [short]
    assert backend.wait_exit("eb-a", [long], timeout_s=0.3) == []
    backend.cancel(long)
    assert backend.poll([long])[long].outcome == "cancelled"


def test_a_launch_whose_reply_is_lost_holds_its_gpu_and_is_ended(ssh_hosts: SshdPair, backend,
                                                                 project: Path) -> None:
    spec = job(project, "lr1", "sleep 300", plan="lr")
    backend.command_timeout_s, backend.launch_timeout_s = 0.01, 0.01  # the reply cannot arrive in time
    with pytest.raises(LaunchFailed, match="not confirmed"):
        backend.submit(spec, Slot("eb-a", 0))
    assert backend.held_gpus("eb-a") == {0: spec.session}  # held: it may be running
    backend.command_timeout_s = 15.0
    jd = remote(ssh_hosts.a, f".expbridge/runs/lr-{spec.run_ts}/jobs/lr1/a1")
    wait_for((jd / "pid").exists, timeout=10, what="the orphan to start")
    pid = int((jd / "pid").read_text())
    wait_for(lambda: Slot("eb-a", 0) in backend.slots(), timeout=20, interval=0.2, what="resolution")
    assert (jd / "cancelled").exists()
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=10, what="orphan gone")
    assert f".{spec.session}\t" not in ssh_hosts.a.as_user("screen", "-ls", check=False).stdout
