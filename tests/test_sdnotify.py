"""sd_notify datagrams arrive on a unix socket the test owns, as systemd would receive them."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import notify, watchdog_interval_s

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_states_arrive_on_a_path_socket(notify_socket: tuple[socket.socket, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    for state in ("READY=1", "WATCHDOG=1", "STOPPING=1"):
        assert notify(state) is True
        assert sock.recv(4096).decode() == state


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"expbridge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1\nSTATUS=watching 2 projects")
        assert sock.recv(4096) == b"READY=1\nSTATUS=watching 2 projects"


def test_another_process_reaches_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    code = "from daemon.sdnotify import notify; import sys; sys.exit(0 if notify('READY=1') else 3)"
    env = {**os.environ, "NOTIFY_SOCKET": path, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert sock.recv(4096) == b"READY=1"


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_an_unreachable_socket_is_reported_not_raised(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("WATCHDOG=1") is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("120000000", None, 60.0),
    ("120000000", "self", 60.0),
    ("120000000", "other", None),
    (None, None, None),
    ("0", None, None),
    ("garbage", None, None),
])
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (("WATCHDOG_USEC", usec),
                       ("WATCHDOG_PID", {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid or ""))):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert watchdog_interval_s() == expected
