"""Modal backend: each job attempt is a Modal Sandbox (or a call of a deployed Function).

(Named modal_backend, not modal: a module named `modal` would shadow the SDK.)

- Sandbox mode (default): `Sandbox.create(bash, RUNNER...)` on the app `modal.app`, with the
  configured GPU (the fallbacks are tried in order when Modal has none), an image from
  `modal.image` (a registry image) or debian_slim plus `modal.requirements`, the project's code
  added with `Image.add_local_dir` (Mount is gone in Modal 1.x), the secrets, the outputs
  Volume at /results, and `timeout` (default 6 h; Modal's own default is 5 minutes).
- Function mode: `Function.from_name(app, function).spawn(argv=[...], env={...})`. The deployed
  function (deployed out of band with `modal deploy`) must run `subprocess.run(argv, env=...)`
  with the same Volume mounted at /results and return the exit code.

The object id ("sb-…" / "fc-…") is the handle, persisted the moment it exists; after a restart
`Sandbox.from_id` / `FunctionCall.from_id` adopt it. Polling never blocks: `Sandbox.poll()`
returns None while running, and `FunctionCall.get(timeout=0)` raises Modal's TimeoutError while
running (OutputExpiredError once the result is gone: the exit file on the Volume then decides).
Every SDK call runs in a daemon thread with our own deadline, because an unreachable Modal
server blocks for about a minute before the SDK gives up.

Cost: the estimate (GPU list price × est_hours) is logged before every run and checked against
the budget (usd_max: hold for approval; usd_hard_cap: refuse). Actual cost = wall time × rate.
Payment details and spending limits live on modal.com/settings only; we never touch them (F80).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence, TypeVar

import structlog

from backends import modal_script as ms
from backends.base import Handle, JobSpec, RunStatus, Slot, classify_exit, substitute_gpu
from backends.spend import SpendGate
from daemon.config import BudgetConfig
from daemon.errors import BackendError, BackendUnavailable, LaunchFailed

log = structlog.get_logger("expbridge.modal")
T = TypeVar("T")
TOKEN_HELP = ("set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new` (writes "
              "~/.modal.toml); billing and spending limits are set only at modal.com/settings")
CODE_IGNORE = [".git", "__pycache__", ".venv", "venv", "data", "datasets", "checkpoints", "wandb",
               "outputs", "results", "experiment_queue", "*.pt", "*.pth", "*.ckpt", "*.safetensors"]


def token_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why no Modal token can be found, or None when one can."""
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return None
    path = Path(environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml").expanduser()
    try:
        if "token_id" in path.read_text(encoding="utf-8"):
            return None
    except OSError:
        pass
    return f"modal backend: no Modal token (MODAL_TOKEN_ID/MODAL_TOKEN_SECRET unset, no token in {path}); {TOKEN_HELP}"


class ModalBackend:
    name = "modal"

    def __init__(self, project_dir: Path, sdk: Any, *, app: str, volume: str, gpu: str | None = None,
                 gpu_fallbacks: Sequence[str] = (), timeout_s: float = 21600, secrets: Sequence[str] = (),
                 image: str | None = None, requirements: str | None = None, mode: str = "sandbox",
                 function: str | None = None, code_dir: str = "/workspace/project", max_parallel: int = 4,
                 usd_per_hour: float | None = None, budget: BudgetConfig | None = None,
                 approve: Callable[[float], bool] | None = None, api_timeout_s: float = 30.0,
                 default_hours: float = 1.0, check_token: bool = True,
                 wall: Callable[[], float] = time.time) -> None:
        if mode == "function" and not function:
            raise BackendUnavailable("modal.mode is function but modal.function (the deployed "
                                     "function's name) is not set")
        self.project_dir = Path(project_dir).resolve()
        self.sdk, self.app_name, self.volume_name = sdk, app, volume
        self.gpus = [g for g in (gpu, *gpu_fallbacks) if g] or [None]
        self.timeout_s, self.secrets, self.image_ref = timeout_s, list(secrets), image
        self.requirements, self.mode, self.function = requirements, mode, function
        self.code_dir, self.max_parallel, self.usd_per_hour = code_dir, max_parallel, usd_per_hour
        self.gate = SpendGate("modal", budget, approve)
        self.api_timeout_s, self.default_hours = api_timeout_s, default_hours
        self.check_token, self.wall = check_token, wall
        self.last_estimate = ""
        self._live: dict[str, int] = {}  # object id -> slot index
        self._cancelled: set[str] = set()
        self._runs: dict[str, dict[str, Any]] = {}  # object id -> cost record
        self._lock = threading.Lock()

    # -- capacity -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """A token exists, Modal answers within our deadline, the app resolves."""
        if self.check_token and (problem := token_problem()):
            raise BackendUnavailable(problem)
        try:
            self._call("App.lookup", lambda: self.sdk.App.lookup(self.app_name, create_if_missing=True))
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"modal backend: {exc}") from exc

    def slots(self) -> list[Slot]:
        if not self.gate.open():
            return []
        with self._lock:
            busy = set(self._live.values())
        return [Slot("modal", None, i) for i in range(self.max_parallel) if i not in busy]

    # -- lifecycle ------------------------------------------------------------------------------
    def submit(self, job: JobSpec, slot: Slot) -> Handle:
        job.validate()
        hours = job.est_hours if job.est_hours and job.est_hours > 0 else self.default_hours
        usd_h = ms.rate(self.gpus[0], self.usd_per_hour)
        self.last_estimate = ms.estimate_line(self.gpus[0], usd_h, hours)  # for status, F78
        log.info("modal cost estimate", job=job.job_id, estimate=self.last_estimate)
        self.gate.check(self.ledger_records(), usd_h * hours, self.wall())
        args = ms.argv(job, self.code_dir, str(self.project_dir), substitute_gpu(job.cmd, slot))
        environment = ms.env(job)
        ref, gpu = self._start(job, args, environment)
        usd_h = ms.rate(gpu, self.usd_per_hour)
        out = f"{ms.RESULTS}/{ms.volume_dir(job)}"
        extra = {"kind": self.mode, "gpu": gpu, "usd_per_hour": usd_h, "started": self.wall(),
                 "volume": self.volume_name, "vdir": ms.volume_dir(job), "session": job.session,
                 "local_cwd": str(Path(job.cwd).resolve()), "est_usd": round(usd_h * hours, 4)}
        handle = Handle("modal", ref, "modal", out, f"{out}/log", json.dumps(extra, sort_keys=True))
        with self._lock:
            self._live[ref] = slot.index
            self._runs[ref] = {"job_id": job.job_id, "run_id": job.job_id, "started_at": extra["started"],
                               "usd_per_hour": usd_h, "gpus": 1}
        log.info("launched", backend="modal", id=ref, gpu=gpu, session=job.session,
                 cmd=ms.describe(args, environment), est_hours=job.est_hours)
        return handle

    def _start(self, job: JobSpec, args: list[str], environment: dict[str, str]) -> tuple[str, str | None]:
        sdk = self.sdk
        if self.mode == "function":
            fn = sdk.Function.from_name(self.app_name, self.function)
            call = self._call("Function.spawn", lambda: fn.spawn(argv=args, env=environment))
            return call.object_id, self.gpus[0]
        app = self._call("App.lookup", lambda: sdk.App.lookup(self.app_name, create_if_missing=True))
        image = self._image()
        volumes = {ms.RESULTS: sdk.Volume.from_name(self.volume_name, create_if_missing=True)}
        secrets = [sdk.Secret.from_name(name) for name in self.secrets]
        last: Exception | None = None
        for gpu in self.gpus:
            try:
                sb = self._call("Sandbox.create", lambda g=gpu: sdk.Sandbox.create(
                    *args, app=app, image=image, gpu=g, timeout=int(self.timeout_s), volumes=volumes,
                    secrets=secrets, env=environment, tags={"expbridge_job": job.session}))
                return sb.object_id, gpu
            except BackendError as exc:
                if isinstance(exc, BackendUnavailable):
                    raise
                if not _no_capacity(exc):
                    raise LaunchFailed(f"modal: {job.session}: {exc}") from exc
                log.warning("modal GPU unavailable; trying the next", gpu=gpu, error=str(exc))
                last = exc
        raise LaunchFailed(f"modal: no GPU of {self.gpus} available: {last}")

    def _image(self) -> Any:
        image_cls = self.sdk.Image
        image = image_cls.from_registry(self.image_ref) if self.image_ref else \
            image_cls.debian_slim(python_version="3.11")
        if self.requirements:
            req = (self.project_dir / self.requirements).resolve()
            if not req.is_file():
                raise LaunchFailed(f"modal.requirements {req} does not exist", retryable=False)
            image = image.pip_install_from_requirements(str(req))
        return image.add_local_dir(str(self.project_dir), remote_path=self.code_dir, ignore=CODE_IGNORE)

    def poll(self, handles: Sequence[Handle]) -> Mapping[Handle, RunStatus]:
        return {h: self._status(h) for h in handles}

    def _status(self, handle: Handle) -> RunStatus:
        try:
            code = self._exit_code(handle)
        except _Gone as exc:
            return self._ended(handle, RunStatus("lost", outcome="lost", detail=str(exc)))
        except _Ended as exc:
            return self._ended(handle, exc.status)
        except BackendError as exc:  # transient: never ends a running job
            return RunStatus("running", detail=f"status unknown: {exc}")
        if code is None:
            with self._lock:
                if handle.ref not in self._live:  # adopted after a restart: it holds a slot
                    used = set(self._live.values())
                    self._live[handle.ref] = next((i for i in range(self.max_parallel) if i not in used), 0)
            return RunStatus("running")
        if handle.ref in self._cancelled:
            return self._ended(handle, RunStatus("exited", code, "cancelled", "cancelled"))
        started = _extra(handle).get("started")
        if code != 0 and started and self.wall() - float(started) >= self.timeout_s * 0.99:
            return self._ended(handle, RunStatus("exited", code, "timeout",
                                                 f"modal timeout ({self.timeout_s:g}s) reached"))
        tail = self._log_tail(handle) if code != 0 else ""
        return self._ended(handle, RunStatus("exited", code, classify_exit(code, tail)))

    def _exit_code(self, handle: Handle) -> int | None:
        exc_mod = self.sdk.exception
        if _extra(handle).get("kind") == "function":
            call = self.sdk.FunctionCall.from_id(handle.ref)
            try:
                result = self._call("FunctionCall.get", lambda: call.get(timeout=0), raw=True)
            except exc_mod.OutputExpiredError:
                return self._exit_file_code(handle)
            except exc_mod.FunctionTimeoutError as exc:
                raise _Ended(RunStatus("exited", None, "timeout", f"modal function timeout: {exc}")) from exc
            except exc_mod.TimeoutError:
                return None  # exactly "no output yet": still running
            except exc_mod.NotFoundError as exc:
                raise _Gone(f"modal call {handle.ref} not found") from exc
            except exc_mod.Error as exc:
                raise BackendError(str(exc), retryable=True) from exc
            except Exception as exc:  # noqa: BLE001 - the remote function raised: a job failure
                raise _Ended(RunStatus("exited", 1, "failed", f"remote error: {exc!r}"[:300])) from exc
            return int(result.get("exit_code", 1)) if isinstance(result, dict) else int(result or 0)
        try:
            code = self._call("Sandbox.poll", lambda: self.sdk.Sandbox.from_id(handle.ref).poll(), raw=True)
        except exc_mod.NotFoundError as exc:
            raise _Gone(f"modal sandbox {handle.ref} not found") from exc
        except exc_mod.Error as exc:
            raise BackendError(str(exc), retryable=True) from exc
        return code

    def _exit_file_code(self, handle: Handle) -> int:
        """The wrapper's exit file on the volume, for a call whose result has expired."""
        text = self._read(handle, "exit")
        if text is None:
            raise _Gone("modal result expired and no exit file on the volume")
        return int(text.split()[0])

    def _log_tail(self, handle: Handle) -> str:
        try:
            return (self._read(handle, "log") or "")[-8000:]
        except BackendError:
            return ""

    def _read(self, handle: Handle, name: str) -> str | None:
        vol = self.sdk.Volume.from_name(self.volume_name)
        path = f"{_extra(handle)['vdir']}/{name}"
        try:
            data = self._call("Volume.read_file", lambda: b"".join(vol.read_file(path)), raw=True)
        except (FileNotFoundError, self.sdk.exception.NotFoundError):
            return None
        return data.decode("utf-8", "replace")

    def _ended(self, handle: Handle, status: RunStatus) -> RunStatus:
        with self._lock:
            self._live.pop(handle.ref, None)
            run = self._runs.get(handle.ref)
            if run is None:
                extra = _extra(handle)
                run = self._runs[handle.ref] = {"job_id": extra.get("session", handle.ref),
                                                "started_at": extra.get("started"),
                                                "usd_per_hour": extra.get("usd_per_hour"), "gpus": 1}
            if run.get("ended_at") is None:
                run["ended_at"] = self.wall()
                hours = max(0.0, run["ended_at"] - (run.get("started_at") or run["ended_at"])) / 3600
                log.info("modal run cost", id=handle.ref, hours=round(hours, 4),
                         usd=round(hours * float(run.get("usd_per_hour") or 0), 4))
        return status

    def cancel(self, handle: Handle) -> None:
        self._cancelled.add(handle.ref)
        exc_mod = self.sdk.exception
        try:
            if _extra(handle).get("kind") == "function":
                call = self.sdk.FunctionCall.from_id(handle.ref)
                self._call("FunctionCall.cancel", lambda: call.cancel(terminate_containers=True), raw=True)
            else:
                self._call("Sandbox.terminate", lambda: self.sdk.Sandbox.from_id(handle.ref).terminate(),
                           raw=True)
        except exc_mod.NotFoundError:
            return  # already gone: cancel is idempotent
        except exc_mod.Error as exc:
            raise BackendError(f"modal: cancel {handle.ref} failed: {exc}", retryable=True) from exc

    def suspend(self, handle: Handle) -> bool:
        return False  # Modal cannot pause a container; PAUSED stops and requeues

    def resume(self, handle: Handle) -> bool:
        return False

    def fetch(self, handle: Handle, dest: Path) -> None:
        """Log and wrapper files into the run dir, outputs into the job's local cwd."""
        extra = _extra(handle)
        vdir = extra["vdir"]
        vol = self.sdk.Volume.from_name(self.volume_name)
        entries = self._call("Volume.listdir", lambda: vol.listdir(vdir, recursive=True))
        job_id, attempt = PurePosixPath(vdir).parts[-2:]
        for entry in entries:
            if getattr(entry.type, "name", str(entry.type)) != "FILE":
                continue
            rel = PurePosixPath(entry.path).relative_to(vdir)
            if ".." in rel.parts:
                continue
            if rel.parts[0] == "outputs" and len(rel.parts) > 1:
                target = Path(extra["local_cwd"]) / PurePosixPath(*rel.parts[1:])
            elif str(rel) == "log":
                target = Path(dest) / "logs" / f"{job_id}.{attempt}.log"
            else:
                target = Path(dest) / "jobs" / job_id / attempt / PurePosixPath(*rel.parts)
            data = self._call("Volume.read_file", lambda p=entry.path: b"".join(vol.read_file(p)))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    # -- cost and plumbing ----------------------------------------------------------------------
    def ledger_records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._runs.values()]

    def _call(self, what: str, fn: Callable[[], T], raw: bool = False) -> T:
        """fn() in a daemon thread with our own deadline; Modal errors mapped unless raw."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"modal-{what}", daemon=True)
        worker.start()
        worker.join(self.api_timeout_s)
        if worker.is_alive():
            raise BackendError(f"Modal API did not answer {what} within {self.api_timeout_s:g}s "
                               "(unreachable?)", retryable=True)
        if "error" in box:
            if raw:
                raise box["error"]
            raise self._mapped(what, box["error"]) from box["error"]
        return box["value"]

    def _mapped(self, what: str, exc: BaseException) -> BackendError:
        exc_mod = self.sdk.exception
        if isinstance(exc, exc_mod.AuthError):
            return BackendUnavailable(f"modal: {what}: token rejected or missing ({exc}); {TOKEN_HELP}")
        if isinstance(exc, exc_mod.ConnectionError):
            return BackendError(f"modal: {what}: cannot reach Modal: {exc}", retryable=True)
        if isinstance(exc, exc_mod.ResourceExhaustedError):
            return BackendError(f"modal: {what}: no capacity: {exc}", retryable=True)
        if isinstance(exc, BackendError):
            return exc
        return BackendError(f"modal: {what}: {type(exc).__name__}: {exc}", retryable=False)


class _Ended(Exception):
    def __init__(self, status: RunStatus) -> None:
        super().__init__(status.detail)
        self.status = status


class _Gone(Exception):
    pass


def _no_capacity(exc: BackendError) -> bool:
    return "no capacity" in str(exc) or "GPU" in str(exc) and "unavailable" in str(exc).lower()


def _extra(handle: Handle) -> dict[str, Any]:
    try:
        return json.loads(handle.extra) if handle.extra else {}
    except ValueError:
        return {}


def _sdk() -> Any:
    try:
        import modal
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'modal' needs an extra: install experiment-bridge[modal] ({exc})") from exc
    return modal


def from_settings(settings: Any, project: Path) -> ModalBackend:
    cfg = settings.modal
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(project).resolve().name)[:40]
    return ModalBackend(project, _sdk(), app=cfg.app or f"expbridge-{slug}",
                        volume=cfg.volume or f"expbridge-{slug}-outputs", gpu=cfg.gpu,
                        gpu_fallbacks=cfg.gpu_fallbacks, timeout_s=cfg.timeout_s, secrets=cfg.secrets,
                        image=cfg.image, requirements=cfg.requirements, mode=cfg.mode, function=cfg.function,
                        code_dir=cfg.code_dir, max_parallel=cfg.max_parallel, usd_per_hour=cfg.usd_per_hour,
                        budget=settings.budget, api_timeout_s=cfg.api_timeout_s)
