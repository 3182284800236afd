"""One thread that reaps every local job and reports each exit the moment it happens.

Each job gets a pidfd (Linux 5.3+), so one selector waits on all of them: no thread per job and
no polling while jobs run. The same thread verifies launches: a wrapper whose `started` file
has not appeared by its deadline is killed, and then reads as lost (no exit file).
"""
from __future__ import annotations

import os
import selectors
import threading
import time
from pathlib import Path
from typing import Callable

from backends import procs
from backends.base import Handle

VERIFY_EVERY_S = 0.05


class Reaper:
    def __init__(self, on_exit: Callable[[Handle], None]) -> None:
        self.on_exit = on_exit
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.lock = threading.Lock()
        self.pending: list[tuple[int, int, Handle]] = []  # (pidfd or -1, pid, handle) to register
        self.unverified: dict[int, tuple[float, Path]] = {}  # pid -> (deadline, started file)
        self.thread: threading.Thread | None = None

    def track(self, pid: int, handle: Handle, verify_by: float) -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # an old kernel: a plain waiter thread instead
            threading.Thread(target=self._wait_one, args=(pid, handle), daemon=True).start()
            return
        with self.lock:
            self.pending.append((fd, pid, handle))
            self.unverified[pid] = (verify_by, Path(handle.job_dir) / "started")
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, daemon=True, name="eb-reaper")
                self.thread.start()
        os.write(self.wake_w, b"x")

    def _wait_one(self, pid: int, handle: Handle) -> None:
        os.waitpid(pid, 0)
        self.on_exit(handle)

    def _loop(self) -> None:
        while True:
            with self.lock:
                for fd, pid, handle in self.pending:
                    self.sel.register(fd, selectors.EVENT_READ, (pid, handle))
                self.pending.clear()
                timeout = VERIFY_EVERY_S if self.unverified else None
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    os.read(self.wake_r, 4096)
                    continue
                self._reap(key.fd, *key.data)
            self._verify()

    def _reap(self, fd: int, pid: int, handle: Handle) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        with self.lock:
            self.unverified.pop(pid, None)
        self.on_exit(handle)

    def _verify(self) -> None:
        now = time.monotonic()
        with self.lock:
            items = list(self.unverified.items())
        for pid, (deadline, started) in items:
            if started.exists():
                with self.lock:
                    self.unverified.pop(pid, None)
            elif now > deadline:
                with self.lock:
                    self.unverified.pop(pid, None)
                procs.terminate_group(pid, 1.0)  # its exit then arrives through the pidfd
