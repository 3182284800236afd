"""Backend construction by name. Optional backends import lazily, so a missing extra fails with
the install hint instead of breaking every other backend."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from backends.base import Handle
from daemon.errors import BackendUnavailable

EXTRAS = {"ssh": "ssh", "slurm": "slurm", "vast": "vast", "modal": "modal"}


def make_backend(name: str, settings: Any, project: Path, on_exit: Callable[[Handle], None]) -> Any:
    try:
        if name == "local":
            from backends.local import LocalBackend
            return LocalBackend(gpus=getattr(settings, "gpus", None),
                                threshold_mib=getattr(settings, "gpu_free_threshold_mib", 500),
                                cpu_slots=getattr(settings, "cpu_slots", None),
                                launch_timeout_s=getattr(settings, "launch_timeout_s", 30.0),
                                on_exit=on_exit)
        if name == "fake":
            from backends.fake import FakeBackend
            return FakeBackend()
        if name == "ssh":
            from backends.ssh import from_settings as ssh_from_settings
            return ssh_from_settings(settings, project)
        if name == "slurm":
            from backends.slurm import from_settings as slurm_from_settings
            return slurm_from_settings(settings, project)
        if name == "vast":
            from backends.vast import from_settings as vast_from_settings
            return vast_from_settings(settings, project)
        if name == "modal":
            from backends.modal_backend import from_settings as modal_from_settings
            return modal_from_settings(settings, project)
    except ImportError as exc:
        extra = EXTRAS.get(name, name)
        raise BackendUnavailable(f"backend {name!r} needs an extra: install experiment-bridge[{extra}] ({exc})") from exc
    raise BackendUnavailable(f"unknown backend {name!r} (expected local, ssh, slurm, vast or modal)")
