"""The daemon as a real process for benches: start it, know when it is ready, read its CPU and
memory from /proc, stop it, and clean up the jobs it left running."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def daemon_env(state: Path, **settings: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EXPBRIDGE_STATE_DIR": str(state)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update({f"EXPBRIDGE_{k.upper()}": v for k, v in settings.items()})
    return env


class Daemon:
    """`expbridge daemon` with a private NOTIFY_SOCKET, so READY=1 (sent after recovery) is
    the moment the daemon's state is reconciled."""

    def __init__(self, state: Path, projects: list[Path], log: Path | None = None, **settings: str) -> None:
        self.sock_dir = tempfile.mkdtemp(prefix="eb-notify-")
        self.sock_path = os.path.join(self.sock_dir, "n.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        env = {**daemon_env(state, **settings), "NOTIFY_SOCKET": self.sock_path}
        args = [sys.executable, "-m", "daemon.cli", "daemon", "--state-dir", str(state), "--backend", "local"]
        for p in projects:
            args += ["--project", str(p)]
        self.t0 = time.perf_counter()
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if log is not None:
            out.close()
        self.ready_at: float | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        # Read every datagram: the daemon pings WATCHDOG=1 each loop, and a full socket queue
        # blocks its core loop (see bench/README.md, "findings").
        self.sock.settimeout(0.2)
        while self.proc.poll() is None or not self.ready.is_set():
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            if "READY=1" in msg.split("\n") and not self.ready.is_set():
                self.ready_at = time.perf_counter() - self.t0
                self.ready.set()

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from spawn to READY=1."""
        if not self.ready.wait(timeout) or self.ready_at is None:
            raise SystemExit(f"daemon not ready after {timeout}s (exit code {self.proc.poll()})")
        return self.ready_at

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.ready.set()
        time.sleep(0.25)  # the drain thread notices the exit
        self.sock.close()
        for name in (self.sock_path, self.sock_dir):
            try:
                os.rmdir(name) if name == self.sock_dir else os.unlink(name)
            except OSError:
                pass


def kill_jobs(project: Path) -> None:
    """Jobs run in their own sessions and outlive the daemon: end the ones a bench left."""
    for pid_file in project.glob("experiment_queue/*/jobs/*/a*/pid"):
        if (pid_file.parent / "exit").exists():
            continue
        try:
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass
