"""The Modal backend against fakes that behave like the SDK's objects (tests/plugins/modalfake.py),
plus the real SDK offline (missing token, unreachable server) and an opt-in live smoke test."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from backends.base import Handle, RunStatus, Slot
from backends.modal_backend import ModalBackend
from daemon.config import BudgetConfig
from daemon.errors import ApprovalRequired, BudgetRefused, LaunchFailed
from tests.plugins.common import unavailable, wait_for
from tests.plugins.modalfake import FakeModal, make_modal
from tests.plugins.sshd import job

SLOT = Slot("modal", None, 0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    (p / "train.py").write_text("import sys\nopen('metrics.json', 'w').write('{\"acc\": 0.9}')\nprint('trained')\n")
    (p / "requirements.txt").write_text("numpy\n")
    return p


def finish(backend: ModalBackend, handle: Handle, timeout: float = 30) -> RunStatus:
    def done() -> RunStatus | None:
        s = backend.poll([handle])[handle]
        return s if s.phase in ("exited", "lost") else None
    return wait_for(done, timeout=timeout, interval=0.05, what=f"{handle.ref} to end")


def test_sandbox_arguments_run_and_fetch(modal_fake: FakeModal, project: Path) -> None:
    backend = make_modal(modal_fake, project, gpu="A100-80GB", secrets=["wandb-secret"],
                         requirements="requirements.txt")
    spec = job(project, "R001", "python3 train.py", expected_output=("metrics.json",), est_hours=0.5)
    with capture_logs() as logs:
        handle = backend.submit(spec, SLOT)
    estimate = next(e for e in logs if e["event"] == "modal cost estimate")["estimate"]
    assert "A100-80GB at $2.50/h" in estimate and "$1.25" in estimate
    (kw,) = modal_fake.created()
    assert kw["timeout"] == 21600 and kw["gpu"] == "A100-80GB"  # 6 h, never Modal's 5-minute default
    assert kw["image"].base == "debian_slim:3.11"
    assert kw["image"].steps == [("requirements", str(project / "requirements.txt")),
                                 ("local_dir", (str(project), "/workspace/project", kw["image"].steps[1][1][2]))]
    assert list(kw["volumes"]) == ["/results"] and kw["volumes"]["/results"].name == "eb-out"
    assert [s.name for s in kw["secrets"]] == ["wandb-secret"]
    assert kw["tags"] == {"expbridge_job": spec.session} and kw["app"].name == "eb-test"
    assert handle.ref.startswith("sb-") and json.loads(handle.extra)["gpu"] == "A100-80GB"

    status = finish(backend, handle)
    assert (status.phase, status.exit_code, status.outcome) == ("exited", 0, "ok")
    dest = project / "experiment_queue" / "RUN"
    backend.fetch(handle, dest)
    assert json.loads((project / "metrics.json").read_text()) == {"acc": 0.9}
    assert "trained" in (dest / "logs" / "R001.a1.log").read_text()
    assert (dest / "jobs" / "R001" / "a1" / "exit").read_text().startswith("0 ")
    (record,) = backend.ledger_records()
    assert record["usd_per_hour"] == 2.50 and record["ended_at"] >= record["started_at"]


def test_poll_is_none_then_exit_code_and_oom_is_classified(modal_fake: FakeModal, project: Path) -> None:
    backend = make_modal(modal_fake, project, gpu="T4")
    handle = backend.submit(job(project, "O1", "sleep 0.5; echo 'CUDA out of memory'; exit 1"), SLOT)
    assert backend.poll([handle])[handle].phase == "running"
    assert backend.slots() == [Slot("modal", None, i) for i in (1, 2, 3)]  # the job holds slot 0
    status = finish(backend, handle)
    assert (status.exit_code, status.outcome) == (1, "oom")
    assert len(backend.slots()) == 4


def test_gpu_fallback_list(modal_fake: FakeModal, project: Path) -> None:
    modal_fake.no_gpu = {"H100", "A100-80GB"}
    backend = make_modal(modal_fake, project, gpu="H100", gpu_fallbacks=["A100-80GB", "L40S"])
    handle = backend.submit(job(project, "G1", "true"), SLOT)
    assert [kw["gpu"] for kw in modal_fake.created()] == ["H100", "A100-80GB", "L40S"]
    assert json.loads(handle.extra)["gpu"] == "L40S"
    modal_fake.no_gpu = {"H100"}
    with pytest.raises(LaunchFailed, match="no GPU"):
        make_modal(modal_fake, project, gpu="H100").submit(job(project, "G2", "true"), SLOT)


def test_registry_image_and_restart_reconciliation(modal_fake: FakeModal, project: Path) -> None:
    backend = make_modal(modal_fake, project, image="pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime")
    handle = backend.submit(job(project, "P1", "sleep 1; echo done"), SLOT)
    assert modal_fake.created()[0]["image"].base == "registry:pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"
    reborn = make_modal(modal_fake, project)
    persisted = Handle.from_json(handle.to_json())
    assert reborn.poll([persisted])[persisted].phase == "running"
    assert len(reborn.slots()) == 3  # the adopted job holds a slot
    assert finish(reborn, persisted).outcome == "ok"
    ghost = Handle("modal", "sb-999", "modal", "/results/x", "/results/x/log", handle.extra)
    assert reborn.poll([ghost])[ghost].phase == "lost"


def test_cancel_terminates_the_sandbox(modal_fake: FakeModal, project: Path) -> None:
    backend = make_modal(modal_fake, project)
    handle = backend.submit(job(project, "C1", "sleep 300"), SLOT)
    proc = modal_fake.objects[handle.ref].proc
    backend.cancel(handle)
    backend.cancel(handle)  # idempotent
    proc.wait(timeout=10)
    status = finish(backend, handle)
    assert status.outcome == "cancelled" and not backend.suspend(handle)


def test_function_call_polling_and_expired_output(modal_fake: FakeModal, project: Path) -> None:
    from tests.plugins.modalfake import FakeImage
    modal_fake.function_image = FakeImage("deployed").add_local_dir(str(project), "/workspace/project")
    backend = make_modal(modal_fake, project, mode="function", function="train", volume="fn-volume")
    handle = backend.submit(job(project, "F1", "sleep 0.5; exit 3"), SLOT)
    assert handle.ref.startswith("fc-") and modal_fake.calls[-1][0] == "Function.spawn"
    assert backend.poll([handle])[handle].phase == "running"  # get(timeout=0) raised TimeoutError
    status = finish(backend, handle)
    assert (status.exit_code, status.outcome) == (3, "failed")
    modal_fake.objects[handle.ref].expired = True  # the result is gone: the volume's exit file decides
    again = make_modal(modal_fake, project, mode="function", function="train", volume="fn-volume")
    assert again.poll([handle])[handle].exit_code == 3
    lost = backend.submit(job(project, "F2", "true"), SLOT)
    finish(backend, lost)
    (modal_fake.root / "volumes" / "fn-volume" / json.loads(lost.extra)["vdir"] / "exit").unlink()
    modal_fake.objects[lost.ref].expired = True
    assert again.poll([lost])[lost].phase == "lost"
    backend.cancel(lost)
    assert ("FunctionCall.cancel", {"terminate_containers": True}) in modal_fake.calls


def test_budget_hold_and_cap(modal_fake: FakeModal, project: Path) -> None:
    ok: list[bool] = []
    backend = make_modal(modal_fake, project, gpu="H100", budget=BudgetConfig(usd_max=2.0),
                         approve=lambda usd: bool(ok))
    with pytest.raises(ApprovalRequired, match=r"\$3.95"):
        backend.submit(job(project, "B1", "true"), SLOT)
    assert modal_fake.created() == [] and backend.slots() == []
    ok.append(True)
    assert backend.slots() and backend.submit(job(project, "B1", "true"), SLOT)
    capped = make_modal(modal_fake, project, gpu="H100", budget=BudgetConfig(usd_hard_cap=1.0),
                        approve=lambda usd: True)
    with pytest.raises(BudgetRefused):
        capped.submit(job(project, "B2", "true"), SLOT)
    assert capped.slots() == [] and len(modal_fake.created()) == 1


def _real_sdk(env: dict[str, str], check_token: bool) -> str:
    if importlib.util.find_spec("modal") is None:
        unavailable("the modal extra is not installed (pip install 'experiment-bridge[modal]')")
    code = ("import sys, time; from pathlib import Path; import modal\n"
            "from backends.modal_backend import ModalBackend\n"
            f"b = ModalBackend(Path('.'), modal, app='eb-x', volume='eb-v', check_token={check_token}, api_timeout_s=3)\n"
            "t = time.monotonic()\n"
            "try:\n    b.preflight()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "print('elapsed', round(time.monotonic() - t, 1))\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, **env}, capture_output=True,
                          text=True, timeout=60)
    return done.stdout


def test_real_sdk_missing_token_is_a_configuration_error(tmp_path: Path) -> None:
    env = {"MODAL_CONFIG_PATH": str(tmp_path / "none.toml")}
    ours = _real_sdk(env, check_token=True)
    assert ours.startswith("BackendUnavailable") and "MODAL_TOKEN_ID" in ours
    sdks = _real_sdk(env, check_token=False)  # the SDK's own AuthError, mapped
    assert sdks.startswith("BackendUnavailable") and "token rejected or missing" in sdks


def test_real_sdk_unreachable_server_is_unavailable_within_our_deadline(tmp_path: Path) -> None:
    env = {"MODAL_CONFIG_PATH": str(tmp_path / "none.toml"), "MODAL_TOKEN_ID": "ak-eb-test-0000",
           "MODAL_TOKEN_SECRET": "as-eb-test-0000", "MODAL_SERVER_URL": "http://127.0.0.1:9"}
    out = _real_sdk(env, check_token=True)
    assert out.startswith("BackendUnavailable") and "within 3s" in out
    assert float(out.split("elapsed")[1]) < 15


def test_live_modal_smoke(tmp_path: Path) -> None:
    """Opt-in: runs only with a real token (costs a few cents of CPU time)."""
    if not (os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")):
        pytest.skip("no Modal token: the live Modal test is opt-in (set MODAL_TOKEN_ID/SECRET)")
    import modal

    project = tmp_path / "live"
    project.mkdir()
    backend = ModalBackend(project, modal, app="expbridge-live-test", volume="expbridge-live-test",
                           timeout_s=300, api_timeout_s=120)
    backend.preflight()
    handle = backend.submit(job(project, "L1", "echo live-ok > out.txt", expected_output=("out.txt",)), SLOT)
    try:
        assert finish(backend, handle, timeout=600).outcome == "ok"
        backend.fetch(handle, project / "run")
        assert (project / "out.txt").read_text().strip() == "live-ok"
    finally:
        backend.cancel(handle)


def test_a_sandbox_killed_at_its_timeout_is_timeout(modal_fake: FakeModal, project: Path) -> None:
    backend = make_modal(modal_fake, project, timeout_s=1)
    handle = backend.submit(job(project, "TO1", "sleep 300"), SLOT)
    assert modal_fake.created()[0]["timeout"] == 1
    wait_for(lambda: backend.wall() - json.loads(handle.extra)["started"] >= 1, timeout=5)
    modal_fake.objects[handle.ref].terminate(wait=True)  # what Modal does at the timeout
    status = finish(backend, handle)
    assert status.outcome == "timeout" and "timeout" in status.detail
