"""`vast-instances.json` at the project root (ARIS_SPEC §2.11): the instances we rented.

The ARIS Vast skills read and write this file too, so it keeps their schema (a JSON array of the
13 ARIS fields); we add `label` (how we recognise our own instances), `destroyed_at` and `note`.
An entry is written the moment an instance id exists, before anything else can fail, so a crash
can never leave a billed instance that nobody knows about. Entries we did not create are kept
byte-for-byte in meaning (read, never rewritten). A file we cannot parse is never overwritten:
it may be somebody's hand edit, and losing it would lose track of billed instances.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from daemon.errors import BackendUnavailable

FILE = "vast-instances.json"
ARIS_FIELDS = ("instance_id", "offer_id", "gpu_name", "num_gpus", "dph", "ssh_url", "ssh_host",
               "ssh_port", "created_at", "status", "experiment", "estimated_hours", "estimated_cost")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def cost_usd(entry: dict[str, Any], now: float) -> float:
    """dph × wall hours from created_at to destroyed_at (or now): Vast bills per second."""
    start = parse_iso(entry.get("created_at"))
    if start is None:
        return 0.0
    end = parse_iso(entry.get("destroyed_at")) or now
    try:
        dph = float(entry.get("dph") or 0)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, end - start) / 3600.0 * dph


class InstanceFile:
    """Thread-safe read-modify-write of the project's vast-instances.json."""

    def __init__(self, project_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(project_dir) / FILE
        self.clock = clock
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._read()

    def ours(self, label_prefix: str) -> list[dict[str, Any]]:
        return [e for e in self.entries() if str(e.get("label", "")).startswith(label_prefix)]

    def get(self, instance_id: int) -> dict[str, Any] | None:
        return next((e for e in self.entries() if e.get("instance_id") == instance_id), None)

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            rows = [e for e in self._read() if e.get("instance_id") != entry["instance_id"]]
            self._write(rows + [entry])

    def update(self, instance_id: int, **fields: Any) -> dict[str, Any] | None:
        with self._lock:
            rows = self._read()
            hit = None
            for row in rows:
                if row.get("instance_id") == instance_id:
                    row.update(fields)
                    hit = row
            if hit is not None:
                self._write(rows)
            return hit

    def _read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        if not text.strip():
            return []
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BackendUnavailable(f"{self.path}:{exc.lineno}: not valid JSON ({exc.msg}); expected "
                                     "a JSON array of instances (ARIS vast-instances.json). Fix it by "
                                     "hand: it is not overwritten, it may track billed instances") from exc
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise BackendUnavailable(f"{self.path}:1: expected a JSON array of instance objects "
                                     "(ARIS vast-instances.json); it is not overwritten")
        return data

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".expbridge-tmp-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(rows, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
