"""The shipped unit files: silent `systemd-analyze verify`, and the system unit's hardening score.

verify needs the ExecStart binary to exist and exits 0 even on unknown keys (ECOSYSTEM.md §8), so
the test points ExecStart at a stub in a temp copy and requires empty output, not just rc 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


from tests.plugins.common import unavailable

UNITS = Path(__file__).resolve().parents[1] / "systemd"
SYSTEM, USER = UNITS / "expbridge.service", UNITS / "expbridge-user.service"


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        unavailable("systemd-analyze not installed (apt-get install systemd)")
    return exe


def _directives(unit: Path) -> dict[str, list[str]]:
    """'Section.Key' -> every value it is given (systemd allows repeats)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def _stub(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _stubbed_copy(unit: Path, dest_dir: Path) -> Path:
    """A copy whose ExecStart binary is an executable stub, arguments unchanged."""
    text = unit.read_text()
    match = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert match, f"{unit.name} has no ExecStart"
    stub = _stub(dest_dir / "bin" / "expbridge")
    copy = dest_dir / unit.name
    copy.write_text(text.replace(match.group(0), f"ExecStart={stub}", 1))
    return copy


def _verify(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


def test_system_unit_verifies_silently(tmp_path: Path) -> None:
    exe = _analyze()
    copy = _stubbed_copy(SYSTEM, tmp_path)
    out = _verify([exe, "verify", str(copy)])
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_user_unit_verifies_silently(tmp_path: Path) -> None:
    exe = _analyze()
    home, runtime = tmp_path / "home", tmp_path / "run"
    runtime.mkdir(mode=0o700)
    _stub(home / ".local" / "bin" / "expbridge")  # where %h/.local/bin/expbridge points
    copy = tmp_path / USER.name
    shutil.copy(USER, copy)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    out = _verify([exe, "--user", "verify", str(copy)], env)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_verify_output_is_a_real_signal(tmp_path: Path) -> None:
    """A misspelt key must produce output, or the silent-verify tests above prove nothing."""
    exe = _analyze()
    copy = _stubbed_copy(SYSTEM, tmp_path)
    copy.write_text(copy.read_text().replace("WatchdogSec=", "WatchDogSec="))
    out = _verify([exe, "verify", str(copy)])
    assert "WatchDogSec" in out.stdout + out.stderr


def test_system_unit_security_score(tmp_path: Path) -> None:
    exe = _analyze()
    copy = _stubbed_copy(SYSTEM, tmp_path)
    out = _verify([exe, "security", "--offline=yes", "--threshold=20", str(copy)])
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert score, out.stdout + out.stderr
    assert float(score.group(1)) <= 2.0, out.stdout
    assert out.returncode == 0, out.stdout + out.stderr  # --threshold=20 means 2.0


def test_system_unit_contract() -> None:
    d = _directives(SYSTEM)
    assert d["Service.Type"] == ["notify"]
    assert d["Service.KillMode"] == ["process"]  # restarting the daemon must not kill jobs
    assert d["Service.Restart"] == ["on-failure"]
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.User"] == ["expbridge"] and d["Service.StateDirectory"] == ["expbridge"]
    assert "Service.WatchdogSec" in d
    exec_start = d["Service.ExecStart"][0]
    assert exec_start.startswith("/") and " daemon --config /etc/expbridge/" in exec_start
    # GPUs and people's project folders must stay visible to jobs the daemon starts
    assert d.get("Service.PrivateDevices", ["no"]) == ["no"]
    assert d.get("Service.ProtectHome", ["no"]) == ["no"]
    assert "Service.DevicePolicy" not in d and "Service.MemoryDenyWriteExecute" not in d
    # torn down when the unit stops: would pull /tmp and shared memory from jobs that live on
    assert d.get("Service.PrivateTmp", ["no"]) == ["no"] and d.get("Service.RemoveIPC", ["no"]) == ["no"]


def test_user_unit_contract() -> None:
    d = _directives(USER)
    assert d["Service.Type"] == ["notify"]
    assert d["Service.KillMode"] == ["process"]
    assert d["Service.Restart"] == ["on-failure"]
    assert "Service.WatchdogSec" in d and "Service.User" not in d
    assert d["Service.ExecStart"][0].startswith("%h/") and " daemon --config " in d["Service.ExecStart"][0]
    assert d["Install.WantedBy"] == ["default.target"]
