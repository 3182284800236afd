"""Fixture plugin (vastfake): a local Vast.ai API that the real `vastai` SDK talks to.

It implements the routes the SDK calls (ECOSYSTEM.md §5) on a ThreadingHTTPServer at
127.0.0.1:0, pointed at by `server_url`, and records every request, so tests assert the bodies
(filters, order, label). Its instances are real loopback sshd servers from the sshd fixture:
creating an instance assigns it the next free host, and `ssh-url` points at that host's port.
Each instance walks a scripted list of states (`loading` ... `running`), and a test can send
it `exited` at any time. Destroyed instances answer `{"instances": null}`, as the real API does.
"""
from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.plugins.backends import ContractEnv
from tests.plugins.common import unavailable
from tests.plugins.sshd import SshdHost, SshdPair

KEY = "fake-vast-key-0123456789"


@dataclass
class FakeInstance:
    id: int
    offer: dict[str, Any]
    body: dict[str, Any]
    host: SshdHost | None
    states: list[str]
    port: int
    destroyed: bool = False
    polls: int = 0

    def view(self) -> dict[str, Any]:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return {"id": self.id, "actual_status": state, "cur_state": state, "intended_status": "running",
                "label": self.body.get("label"), "image_uuid": self.body.get("image"),
                "gpu_name": self.offer["gpu_name"], "num_gpus": self.offer["num_gpus"],
                "dph_total": self.offer["dph_total"], "ssh_host": "127.0.0.1", "ssh_port": self.port,
                "start_date": time.time() - 5, "extra_env": [], "status_msg": ""}


@dataclass
class FakeVast:
    hosts: list[SshdHost]  # handed to instances in order
    offers: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # method, path, body
    instances: dict[int, FakeInstance] = field(default_factory=dict)
    states: dict[int, list[str]] = field(default_factory=dict)  # offer id -> scripted states
    ports: dict[int, int] = field(default_factory=dict)  # offer id -> ssh port override
    empty_searches: int = 0  # the first N searches find nothing (no capacity)
    url: str = ""
    next_id: int = 7000
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, method: str, prefix: str) -> list[dict[str, Any]]:
        return [b for m, p, b in self.requests if m == method and p.startswith(prefix)]

    def destroyed(self) -> list[int]:
        return sorted(i.id for i in self.instances.values() if i.destroyed)

    def set_state(self, iid: int, state: str) -> None:
        inst = self.instances[iid]
        inst.states, inst.polls = [state], 0

    # -- routes -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
               ) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path, body))
            if method == "POST" and path == "/api/v0/bundles/":
                if self.empty_searches > 0:
                    self.empty_searches -= 1
                    return 200, {"offers": []}
                return 200, {"offers": [o for o in self.offers
                                        if o["dph_total"] <= float(body.get("dph_total", {}).get("lte", 1e9))]}
            if m := re.fullmatch(r"/api/v0/asks/(\d+)/", path):
                return self.create(int(m.group(1)), body)
            if m := re.fullmatch(r"/api/v0/instances/(\d+)/", path):
                inst = self.instances.get(int(m.group(1)))
                if method == "DELETE":
                    if inst is None or inst.destroyed:
                        return 404, {"error": "no_such_instance"}
                    inst.destroyed = True
                    return 200, {"success": True}
                return 200, {"instances": None if inst is None or inst.destroyed else inst.view()}
            if path == "/api/v1/instances/":
                live = [i.view() for i in self.instances.values() if not i.destroyed]
                return 200, {"instances": live, "next_token": None, "total_instances": len(live)}
        return 404, {"error": f"fake: no route {method} {path}"}

    def create(self, offer_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        offer = next((o for o in self.offers if o["id"] == offer_id), None)
        if offer is None:
            return 400, {"success": False, "error": "no_such_ask"}
        used = {i.host.alias for i in self.instances.values() if i.host and not i.destroyed}
        host = next((h for h in self.hosts if h.alias not in used), None)
        iid, self.next_id = self.next_id, self.next_id + 1
        port = self.ports.get(offer_id) or (host.port if host else 1)
        self.instances[iid] = FakeInstance(iid, offer, body, host, list(self.states.get(offer_id, ["loading", "running"])), port)
        return 200, {"success": True, "new_contract": iid}


def offer(offer_id: int, gpu: str, dph: float, *, ram_gb: float = 24, n: int = 1, rel: float = 0.99) -> dict[str, Any]:
    return {"id": offer_id, "gpu_name": gpu, "num_gpus": n, "gpu_ram": ram_gb * 1000, "dph_total": dph,
            "reliability2": rel, "cuda_max_good": 12.4, "dlperf_per_dphtotal": 10.0, "storage_cost": 0.1}


def _handler(fake: FakeVast) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                return self._reply(401, {"error": "invalid api key"})
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            parts = urlsplit(self.path)
            code, data = fake.handle(method, parts.path, parse_qs(parts.query), body)
            self._reply(code, data)

        def _reply(self, code: int, data: Any) -> None:
            payload = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._serve("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def vast_fake(ssh_hosts: SshdPair) -> Iterator[FakeVast]:
    if importlib.util.find_spec("vastai") is None:
        unavailable("the vast extra is not installed (pip install 'experiment-bridge[vast]')")
    fake = FakeVast(hosts=[ssh_hosts.a, ssh_hosts.b])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def make_vast(fake: FakeVast, pair: SshdPair, project: Path, **kwargs: Any):
    """A VastBackend on the real SDK pointed at the fake, logging in as the sshd test user."""
    from backends.vast import VastBackend
    from backends.vast_api import make_client
    from backends.vast_provision import Timing

    kwargs.setdefault("timing", Timing(provision_budget_s=5, backoff_s=0.05, status_interval_s=0.01,
                                       verify_interval_s=0.01))
    kwargs.setdefault("code_dir", f"code-{project.parent.name}")
    kwargs.setdefault("remote_base", f".expbridge-vast-{project.parent.name}")  # unique per test
    kwargs.setdefault("ssh_key_file", str(pair.client_key))
    kwargs.setdefault("ssh_user", pair.a.user)
    kwargs.setdefault("sleep", lambda s: time.sleep(min(s, 0.05)))
    return VastBackend(project, make_client(KEY, fake.url, 10), **kwargs)


@pytest.fixture
def contract_vast(vast_fake: FakeVast, ssh_hosts: SshdPair, tmp_path: Path) -> Iterator[ContractEnv]:
    """An instance rented through the fake before the suite runs; jobs go to its first GPU."""
    from backends.base import JobSpec, Slot

    project = tmp_path / "project"
    project.mkdir()
    vast_fake.offers = [offer(1, "RTX 4090", 0.35)]
    made: list = []

    def make():
        backend = make_vast(vast_fake, ssh_hosts, project)
        made.append(backend)
        return backend

    backend = make()
    run_dir = str(project / "experiment_queue" / "RUN")
    inst = backend.provision(JobSpec("setup", "contract", "20260101T000000Z", 1, "true", str(project), run_dir))

    def to_local(path: str) -> Path:
        return Path(path) if path.startswith("/") else ssh_hosts.a.home / path

    yield ContractEnv(backend, Slot(inst.alias, 0), run_dir, str(project), to_local, make)
    for b in made:
        b.close()
