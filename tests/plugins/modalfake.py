"""Fixture plugin (modalfake): a stand-in for the `modal` SDK that behaves like its objects.

Modal has no local emulator (ECOSYSTEM.md §6), so this fake keeps the SDK's surface and
semantics and runs the work for real on this machine:
- `Sandbox.create(*argv, ...)` starts argv as a real process in a fresh "container" folder: the
  image's `add_local_dir` copies are made there, each Volume mount path is rewritten to that
  volume's folder, and the process gets its own session. `poll()` returns None, then the exit
  code; `terminate()` ends every process of the container; `from_id` finds it after a
  "restart" (a new backend sharing the same fake service).
- `Function.from_name(...).spawn(argv=, env=)` runs the same way; `FunctionCall.get(timeout=0)`
  raises the SDK's TimeoutError while running, returns {"exit_code": n} after, and
  OutputExpiredError once `expire()` was called for it.
- `Volume.from_name(...).listdir/read_file` read the volume folder.
Exceptions are the real `modal.exception` classes when the SDK is installed, so `except`
clauses are tested against the real hierarchy. Every call is recorded for assertions.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.plugins.backends import ContractEnv


def _exceptions() -> Any:
    try:
        import modal.exception as real
        return real
    except ImportError:
        mod = types.SimpleNamespace()
        mod.Error = type("Error", (Exception,), {})
        for name in ("AuthError", "ConnectionError", "NotFoundError", "ResourceExhaustedError", "InvalidError"):
            setattr(mod, name, type(name, (mod.Error,), {}))
        mod.TimeoutError = type("TimeoutError", (mod.Error,), {})
        mod.OutputExpiredError = type("OutputExpiredError", (mod.TimeoutError,), {})
        mod.FunctionTimeoutError = type("FunctionTimeoutError", (mod.TimeoutError,), {})
        return mod


@dataclass
class FakeImage:
    base: str
    steps: list[tuple[str, Any]] = field(default_factory=list)

    def pip_install_from_requirements(self, path: str) -> "FakeImage":
        return FakeImage(self.base, [*self.steps, ("requirements", path)])

    def add_local_dir(self, local_path: str, remote_path: str, *, copy: bool = False,
                      ignore: Any = ()) -> "FakeImage":
        return FakeImage(self.base, [*self.steps, ("local_dir", (local_path, remote_path, list(ignore)))])


@dataclass(frozen=True)
class Entry:
    path: str
    type: Any
    mtime: int = 0
    size: int = 0


class FakeVolume:
    def __init__(self, root: Path, name: str) -> None:
        self.name, self.dir = name, root / "volumes" / name

    def listdir(self, path: str, *, recursive: bool = False) -> list[Entry]:
        from enum import Enum
        kind = Enum("FileEntryType", "FILE DIRECTORY")
        base = self.dir / path
        if not base.exists():
            raise FAKE_EXC.NotFoundError(f"no such path {path}")
        items = base.rglob("*") if recursive else base.iterdir()
        return [Entry(str(p.relative_to(self.dir)), kind.FILE if p.is_file() else kind.DIRECTORY)
                for p in sorted(items)]

    def read_file(self, path: str) -> Iterator[bytes]:
        target = self.dir / path
        if not target.is_file():
            raise FileNotFoundError(path)
        data = target.read_bytes()
        for i in range(0, max(len(data), 1), 4096):
            yield data[i:i + 4096]


class FakeProcessObject:
    """What a Sandbox and a FunctionCall share: a real process tree in a container folder."""

    def __init__(self, service: "FakeModal", object_id: str, argv: list[str], env: dict[str, str],
                 image: FakeImage | None, volumes: dict[str, Any]) -> None:
        self.service, self.object_id = service, object_id
        root = service.root / "containers" / object_id
        root.mkdir(parents=True)
        mapping: dict[str, str] = {}
        for kind, arg in (image.steps if image else []):
            if kind == "local_dir":
                local, remote, _ignore = arg
                shutil.copytree(local, root / remote.lstrip("/"), dirs_exist_ok=True)
                mapping[remote] = str(root / remote.lstrip("/"))
        for mount, vol in volumes.items():
            vol.dir.mkdir(parents=True, exist_ok=True)
            mapping[mount] = str(vol.dir)
        argv = [_rewrite(a, mapping) for a in argv]
        full_env = {**os.environ, **{k: _rewrite(v, mapping) for k, v in env.items()}}
        self.proc = subprocess.Popen(argv, env=full_env, cwd=root, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        service.processes.append(self.proc)

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self, *, wait: bool = False) -> int | None:
        _kill_tree(self.proc.pid)
        return self.proc.wait(timeout=10) if wait else None


class FakeSandbox(FakeProcessObject):
    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


class FakeFunctionCall(FakeProcessObject):
    expired = False

    def get(self, timeout: float | None = None) -> Any:
        if self.expired:
            raise FAKE_EXC.OutputExpiredError("result expired")
        if self.proc.poll() is None:
            raise FAKE_EXC.TimeoutError("no output yet")
        return {"exit_code": self.proc.returncode}

    def cancel(self, terminate_containers: bool = False) -> None:
        self.service.calls.append(("FunctionCall.cancel", {"terminate_containers": terminate_containers}))
        _kill_tree(self.proc.pid)


FAKE_EXC = _exceptions()


class FakeModal:
    """The service plus the SDK module surface the backend uses (pass it as `sdk=`)."""

    exception = FAKE_EXC

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.objects: dict[str, FakeProcessObject] = {}
        self.processes: list[subprocess.Popen] = []
        self.no_gpu: set[str] = set()  # GPU types with no capacity
        self.auth_error = False
        self.function_image: FakeImage | None = None  # what `modal deploy` built, for Function mode
        self._ids = itertools.count(1)
        svc = self

        class App:
            @staticmethod
            def lookup(name: str, *, create_if_missing: bool = False, **_: Any) -> Any:
                svc._check()
                svc.calls.append(("App.lookup", {"name": name, "create_if_missing": create_if_missing}))
                return types.SimpleNamespace(name=name, app_id=f"ap-{name}")

        class Image:
            @staticmethod
            def from_registry(tag: str, **_: Any) -> FakeImage:
                return FakeImage(f"registry:{tag}")

            @staticmethod
            def debian_slim(python_version: str | None = None, **_: Any) -> FakeImage:
                return FakeImage(f"debian_slim:{python_version}")

        class Volume:
            @staticmethod
            def from_name(name: str, *, create_if_missing: bool = False, **_: Any) -> FakeVolume:
                return FakeVolume(svc.root, name)

        class Secret:
            @staticmethod
            def from_name(name: str, **_: Any) -> Any:
                return types.SimpleNamespace(name=name)

        class Sandbox:
            @staticmethod
            def create(*argv: str, app: Any = None, image: FakeImage | None = None, gpu: str | None = None,
                       timeout: int | None = 300, volumes: dict | None = None, secrets: Any = (),
                       env: dict | None = None, tags: dict | None = None, **kw: Any) -> FakeSandbox:
                svc._check()
                svc.calls.append(("Sandbox.create", {"argv": list(argv), "app": app, "image": image, "gpu": gpu,
                                                     "timeout": timeout, "volumes": volumes, "secrets": secrets,
                                                     "env": env, "tags": tags, **kw}))
                if gpu in svc.no_gpu:
                    raise FAKE_EXC.ResourceExhaustedError(f"no {gpu} capacity")
                obj = FakeSandbox(svc, f"sb-{next(svc._ids)}", list(argv), env or {}, image, volumes or {})
                svc.objects[obj.object_id] = obj
                return obj

            @staticmethod
            def from_id(sandbox_id: str, **_: Any) -> FakeSandbox:
                return svc._find(sandbox_id)

        class Function:
            @staticmethod
            def from_name(app_name: str, name: str, **_: Any) -> Any:
                def spawn(*, argv: list[str], env: dict[str, str]) -> FakeFunctionCall:
                    svc._check()
                    svc.calls.append(("Function.spawn", {"app": app_name, "name": name, "argv": argv}))
                    vol = FakeVolume(svc.root, "fn-volume")
                    obj = FakeFunctionCall(svc, f"fc-{next(svc._ids)}", argv, env, svc.function_image,
                                           {"/results": vol})
                    svc.objects[obj.object_id] = obj
                    return obj
                return types.SimpleNamespace(spawn=spawn)

        class FunctionCall:
            @staticmethod
            def from_id(call_id: str, **_: Any) -> FakeFunctionCall:
                return svc._find(call_id)

        self.App, self.Image, self.Volume, self.Secret = App, Image, Volume, Secret
        self.Sandbox, self.Function, self.FunctionCall = Sandbox, Function, FunctionCall

    def _check(self) -> None:
        if self.auth_error:
            raise FAKE_EXC.AuthError("Token missing. Could not authenticate client.")

    def _find(self, object_id: str) -> Any:
        if object_id not in self.objects:
            raise FAKE_EXC.NotFoundError(f"{object_id} not found")
        return self.objects[object_id]

    def created(self) -> list[dict[str, Any]]:
        return [kw for name, kw in self.calls if name == "Sandbox.create"]

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                _kill_tree(proc.pid)
                proc.wait(timeout=10)


def _rewrite(text: str, mapping: dict[str, str]) -> str:
    for src in sorted(mapping, key=len, reverse=True):  # the longest mount path first
        text = text.replace(src, mapping[src])
    return text


def _kill_tree(pid: int) -> None:
    """A container ends with everything in it: the process, its groups, its sessions."""
    pids = [pid]
    for parent in pids:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rfind(")") + 2:].split()[1]) == parent:
                    pids.append(int(entry.name))
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def modal_fake(tmp_path: Path) -> Iterator[FakeModal]:
    fake = FakeModal(tmp_path / "modal-service")
    yield fake
    fake.close()


def make_modal(fake: FakeModal, project: Path, **kwargs: Any):
    from backends.modal_backend import ModalBackend

    kwargs.setdefault("app", "eb-test")
    kwargs.setdefault("volume", "eb-out")
    kwargs.setdefault("check_token", False)
    kwargs.setdefault("api_timeout_s", 10.0)
    return ModalBackend(project, fake, **kwargs)


@pytest.fixture
def contract_modal(modal_fake: FakeModal, tmp_path: Path) -> ContractEnv:
    from backends.base import Slot

    project = tmp_path / "project"
    project.mkdir()
    vol_dir = modal_fake.root / "volumes" / "eb-out"

    def to_local(path: str) -> Path:
        return Path(path.replace("/results", str(vol_dir), 1))

    def make():
        return make_modal(modal_fake, project, gpu="A10G")

    return ContractEnv(make(), Slot("modal", None, 0), str(project / "experiment_queue" / "RUN"),
                       str(project), to_local, make)
