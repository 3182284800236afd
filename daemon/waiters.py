"""Exit waiters for remote backends: one thread per host blocks on the backend's `wait_exit`,
so a remote job's end is noticed within a round trip instead of at the next poll tick.

The core thread publishes each host's live handles after every step (a tuple assignment, which
is atomic); a waiter only reads that snapshot and posts an event. It never changes state.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from backends.base import Handle

WAIT_S = 20.0
RETRY_S = 2.0


class Waiters:
    def __init__(self, project_key: str, backend: Any, post: Callable[[str], None]) -> None:
        self.key, self.backend, self.post = project_key, backend, post
        self.handles: dict[str, tuple[Handle, ...]] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.stop = threading.Event()

    @staticmethod
    def supported(backend: Any) -> bool:
        return callable(getattr(backend, "wait_exit", None))

    def publish(self, handles: Sequence[Handle]) -> None:
        by_host: dict[str, list[Handle]] = {}
        for h in handles:
            by_host.setdefault(h.host, []).append(h)
        self.handles = {host: tuple(hs) for host, hs in by_host.items()}
        for host in by_host:
            if host not in self.threads or not self.threads[host].is_alive():
                t = threading.Thread(target=self._run, args=(host,), daemon=True, name=f"wait-{host}")
                self.threads[host] = t
                t.start()

    def _run(self, host: str) -> None:
        while not self.stop.is_set():
            handles = self.handles.get(host, ())
            if not handles:
                self.stop.wait(1.0)
                continue
            try:
                ended = self.backend.wait_exit(host, list(handles), WAIT_S)
            except Exception:  # an unreachable host: the regular poll reports it; try again later
                self.stop.wait(RETRY_S)
                continue
            if ended:
                self.post(self.key)

    def close(self) -> None:
        self.stop.set()
