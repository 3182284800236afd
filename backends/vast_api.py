"""The Vast.ai API as the backend uses it: the key, the client, and errors sorted by meaning.

The `vastai` SDK is an optional extra, imported here only. Every call has our own timeout (the
SDK's default is 120 s per request, 3 tries) and its failures become our error classes:
- a rejected key (401/403) or a missing key: BackendUnavailable naming what to fix;
- the server unreachable or failing (connection, timeout, 5xx, 429): BackendError, retryable,
  which never ends a running job;
- anything else the server refused (4xx): BackendError, not retryable.
The key never reaches a log, a handle or a state file (it is registered with the log redactor).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from daemon.errors import BackendError, BackendUnavailable
from daemon.log import add_secret

T = TypeVar("T")
KEY_HELP = ("create one at https://cloud.vast.ai/manage-keys and put it in $VAST_API_KEY or a "
            "file named by vast.api_key_file; payment and spending limits are set only on the "
            "Vast.ai web console (expbridge never handles them)")


def resolve_key(env_name: str = "VAST_API_KEY", key_file: str | None = None) -> str:
    """The API key from the environment, the configured file, or the vastai CLI's own files."""
    value = os.environ.get(env_name, "").strip()
    candidates = [Path(key_file).expanduser()] if key_file else []
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    candidates += [xdg / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"]
    if not value:
        for path in candidates:
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if value:
                break
    if not value:
        where = f"${env_name}" + (f" or {key_file}" if key_file else "")
        raise BackendUnavailable(f"vast backend: no Vast.ai API key found in {where} "
                                 f"(nor ~/.config/vastai/vast_api_key); {KEY_HELP}")
    add_secret(value)
    return value


def make_client(api_key: str, server_url: str | None, timeout_s: float) -> Any:
    try:
        from vastai import VastAI
    except ImportError as exc:
        raise BackendUnavailable("backend 'vast' needs an extra: install experiment-bridge[vast] "
                                 f"({exc})") from exc
    _quiet_sdk_logger()
    client = VastAI(api_key=api_key, server_url=server_url, retry=2, raw=True, quiet=True)
    client.client.timeout = timeout_s  # per request; the SDK default is 120 s
    client.client.curl = False  # curl mode calls sys.exit(0)
    return client


def _quiet_sdk_logger() -> None:
    """vastai installs its own handler with propagate=False; route it through ours instead."""
    import logging

    sdk = logging.getLogger("vastai")
    sdk.handlers.clear()
    sdk.propagate = True


def call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One API call; failures become BackendUnavailable / BackendError by what they mean."""
    import requests

    try:
        return fn(*args, **kwargs)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        body = _body(exc.response)
        if code in (401, 403):
            raise BackendUnavailable(f"Vast.ai rejected the API key ({code}) on {what}; {KEY_HELP}") from exc
        retry = code == 429 or code >= 500
        raise BackendError(f"Vast.ai {what} failed: HTTP {code} {body}", retryable=retry) from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise BackendError(f"Vast.ai API unreachable on {what}: {type(exc).__name__}",
                           retryable=True) from exc
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"Vast.ai {what}: unexpected reply: {type(exc).__name__}: {exc}",
                           retryable=True) from exc


def _body(response: Any) -> str:
    try:
        return str(response.text)[:200]
    except Exception:  # noqa: BLE001 - only for the message
        return ""


def parse_ssh_url(url: str) -> tuple[str, str, int]:
    """`ssh://root@HOST:PORT` (what `vastai ssh-url` prints) as (user, host, port)."""
    if not url.startswith("ssh://") or "@" not in url:
        raise BackendError(f"Vast.ai returned no usable ssh url ({url!r}); the instance has no ssh "
                           "endpoint yet", retryable=True)
    user, _, rest = url[len("ssh://"):].partition("@")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise BackendError(f"Vast.ai ssh url {url!r} lacks a host:port", retryable=True)
    return user or "root", host.strip("[]"), int(port)
