"""Notifications (ARIS_SPEC §5.8, F106): a generic JSON webhook and a shell command, off by default.

`Notifier.send()` only queues: one background thread delivers, so a slow or dead endpoint never
holds up the core loop. A failed delivery is retried with exponential backoff up to
`max_attempts`, then logged and dropped. `close()` gives the queue a bounded time to drain.

Webhook body (one JSON object):
    {"event": "run_done", "time": "2026-01-01T12:00:00Z", "text": "expbridge run_done: ...",
     "data": {...the payload...}}
`text` makes Slack-style incoming webhooks show something useful as they are. The command gets
the same JSON on stdin and EB_EVENT in its environment. Webhook URLs carry tokens, and commands
may carry credentials, so neither is ever logged; only the URL's host is.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import structlog

from backends.procs import signal_group
from daemon.config import NOTIFY_EVENTS, NotifyConfig

log = structlog.get_logger(__name__)
QUEUE_MAX = 1000
BACKOFF_S = 2.0
BACKOFF_MAX_S = 60.0
_RETRY_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_SUMMARY_KEYS = ("project", "milestone", "run", "run_id", "job", "status", "metric", "reason", "summary")


class DeliveryError(Exception):
    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class _Item:
    event: str
    body: bytes


def message_text(event: str, payload: Mapping[str, Any]) -> str:
    """One human line: the payload's `text` if it has one, else the key facts."""
    if isinstance(payload.get("text"), str) and payload["text"].strip():
        return str(payload["text"])
    facts = [f"{k}={payload[k]}" for k in _SUMMARY_KEYS if payload.get(k) not in (None, "")]
    return f"expbridge {event}" + (": " + ", ".join(facts) if facts else "")


def event_body(event: str, payload: Mapping[str, Any], now: float) -> bytes:
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"event": event, "time": stamp, "text": message_text(event, payload), "data": dict(payload)}
    return json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")


def url_host(url: str) -> str:
    """What a log line may show of a webhook URL: its scheme and host, never path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


# ---- sinks ------------------------------------------------------------------------------------

def post_webhook(url: str, body: bytes, timeout_s: float) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "expbridge-notify"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - user's URL
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code}", retry=exc.code in _RETRY_HTTP) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(exc).__name__}: {reason}") from None


def run_command(command: str | Sequence[str], event: str, body: bytes, timeout_s: float) -> None:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                env={**os.environ, "EB_EVENT": event})
    except OSError as exc:
        raise DeliveryError(f"command could not start: {exc.strerror or exc}", retry=False) from None
    try:
        _, err = proc.communicate(body, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)  # the command's whole session, nothing else
        proc.communicate()
        raise DeliveryError(f"command timed out after {timeout_s:g}s") from None
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise DeliveryError(f"command exited with code {proc.returncode}: {tail[0][:200]}")


# ---- the notifier -----------------------------------------------------------------------------

Sink = tuple[str, Callable[[_Item], None]]


class Notifier:
    """Fire-and-forget delivery of events to the configured webhook and/or command."""

    def __init__(self, config: NotifyConfig, *, backoff_s: float = BACKOFF_S,
                 queue_max: int = QUEUE_MAX, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.backoff_s = backoff_s
        self.delivered = 0
        self.failed = 0
        self._clock = clock
        self._queue_max = queue_max
        self._queue: queue.Queue[_Item | None] = queue.Queue()  # bounded in send(); close() never blocks
        self._abort = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sinks = self._make_sinks(config)

    def _make_sinks(self, config: NotifyConfig) -> list[Sink]:
        sinks: list[Sink] = []
        if config.webhook:
            url = config.webhook
            sinks.append((f"webhook {url_host(url)}",
                          lambda item: post_webhook(url, item.body, config.timeout_s)))
        if config.command:
            command = config.command
            sinks.append(("command", lambda item: run_command(command, item.event, item.body,
                                                              config.timeout_s)))
        return sinks

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def send(self, event: str, payload: Mapping[str, Any]) -> bool:
        """Queue an event; False when it is not sent (off, not subscribed, unknown, full, closed).
        Never blocks and never raises."""
        if not self._sinks or event not in self.config.events or self._closed:
            if event not in NOTIFY_EVENTS:
                log.warning("notify: unknown event dropped", notify_event=event)
            return False
        if self._queue.qsize() >= self._queue_max:
            log.warning("notify: queue full, event dropped", notify_event=event)
            return False
        try:
            self._queue.put_nowait(_Item(event, event_body(event, payload, self._clock())))
        except (TypeError, ValueError) as exc:  # a payload json cannot hold
            log.warning("notify: event not serialisable, dropped", notify_event=event, error=str(exc))
            return False
        self._start()
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="expbridge-notify", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._abort.is_set():
                self.failed += len(self._sinks)
                continue  # closing ran out of time: drain without delivering
            for name, deliver in self._sinks:
                self._deliver(name, deliver, item)

    def _deliver(self, name: str, deliver: Callable[[_Item], None], item: _Item) -> None:
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                deliver(item)
            except DeliveryError as exc:
                last = attempt == attempts or not exc.retry or self._abort.is_set()
                log.warning("notify: delivery failed", sink=name, notify_event=item.event,
                            attempt=attempt, of=attempts, error=str(exc), giving_up=last)
                if last:
                    break
                if self._abort.wait(min(self.backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S)):
                    break
            except Exception as exc:  # noqa: BLE001 - a notifier bug must not kill the thread
                log.error("notify: unexpected error", sink=name, notify_event=item.event, error=repr(exc))
                break
            else:
                self.delivered += 1
                return
        self.failed += 1

    def close(self, timeout_s: float = 5.0) -> bool:
        """Stop accepting events and let the queue drain for at most `timeout_s`; then abandon
        what is left (logged). True when everything queued was handled in time."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return True
        self._queue.put(None)
        thread.join(timeout_s)
        if not thread.is_alive():
            return True
        log.warning("notify: undelivered events abandoned at shutdown", pending=self._queue.qsize())
        self._abort.set()
        thread.join(max(self.config.timeout_s, 1.0) + 1.0)  # one in-flight attempt may finish
        return False
