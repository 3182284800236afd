"""Logging: structlog for our code and the libraries' stdlib loggers alike, JSON lines when the
stream is not a TTY (journald, files), console text on a TTY, and one processor, run last before
rendering, that keeps secrets out of every line (DESIGN §7).

Secrets are recognised two ways: by key name (`*token*`, `*api_key*`, `*password*`, `*secret*`,
...) and by value, for the keys we read at runtime and register with `add_secret` (the Vast API
key), wherever they appear: in messages, in nested values, in tracebacks.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any, Iterable, Mapping, MutableMapping, TextIO

import structlog

from daemon.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"token|api_?key|apikey|passw(?:or)?d|secret|credential|authorization"
                         r"|webhook|private_key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]+):[^/\s@]+@")  # https://user:pass@host
_NOISY = ("paramiko", "apscheduler", "watchdog", "fabric", "invoke", "urllib3", "asyncio")
_secret_values: set[str] = set()


def add_secret(value: str | None) -> None:
    """Redact this exact value wherever it appears from now on (too short a value is ignored:
    redacting every `1` would make logs unreadable and protect nothing)."""
    if value and len(value.strip()) >= 6:
        _secret_values.add(value.strip())


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """structlog processor: secret-named keys lose their value, secret values are masked."""
    return {key: _redact_item(key, value) for key, value in event_dict.items()}


def _redact_item(key: object, value: Any) -> Any:
    if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    return _scrub(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secret_values:
            value = value.replace(secret, REDACTED)
        return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _scrub(str(value))  # an object's text could carry a secret; log what it would print


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _formatter(json: bool, colors: bool) -> structlog.stdlib.ProcessorFormatter:
    shared: list[Any] = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                         structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(),
                         structlog.processors.TimeStamper(fmt="iso", utc=True)]
    # Tracebacks are turned into data before redaction, so a secret in an exception is masked too.
    # No frame locals: a truncated repr of a local holding a key would slip past redaction.
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)) if json \
        else structlog.processors.format_exc_info
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(
        colors=colors, exception_formatter=structlog.dev.plain_traceback)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, tracebacks,
                    redact_secrets, renderer])


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
                  secrets: Iterable[str | None] = ()) -> None:
    """Send every log record (ours and the libraries') to `stream` (stderr by default).

    Safe to call again (SIGHUP reload): it replaces only the handler it installed before, so
    other handlers (pytest's, say) stay."""
    stream = sys.stderr if stream is None else stream
    if level.lower() not in LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LEVELS)} (got {level!r})")
    if fmt not in FORMATS:
        raise ConfigError(f"log_format: expected one of {', '.join(FORMATS)} (got {fmt!r})")
    for secret in secrets:
        add_secret(secret)
    tty = _isatty(stream)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, structlog.contextvars.merge_contextvars,
                    structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # False so a reconfigure (SIGHUP) reaches module-level loggers made before it.
        cache_logger_on_first_use=False)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(json=fmt == "json" or (fmt == "auto" and not tty),
                                    colors=tty and fmt != "json"))
    handler._expbridge = True  # type: ignore[attr-defined]  # marks the handler we own
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_expbridge", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.NOTSET if level.lower() == "debug" else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(quiet)


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A logger named like the module (`get_logger(__name__)`), with optional bound values."""
    return structlog.stdlib.get_logger(name, **initial)
