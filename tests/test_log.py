"""Logging: JSON lines off a TTY, console text on one, and no secret in any line."""
from __future__ import annotations

import io
import json
import logging
from typing import Iterator

import pytest
import structlog

from daemon import log
from daemon.errors import ConfigError

SECRET = "vast-key-0123456789abcdef"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    secrets = set(log._secret_values)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    log._secret_values.clear()
    log._secret_values.update(secrets)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    log.setup_logging("info", "auto", stream=out)
    log.get_logger("daemon.core").info("job launched", job="R001", gpu=0)
    logging.getLogger("apscheduler.scheduler").warning("foreign %s", "message")
    log.get_logger("daemon.core").debug("too detailed")
    first, second = lines(out)
    assert (first["event"], first["job"], first["gpu"]) == ("job launched", "R001", 0)
    assert first["level"] == "info"
    assert first["logger"] == "daemon.core" and first["timestamp"].endswith("Z")
    assert (second["event"], second["logger"]) == ("foreign message", "apscheduler.scheduler")


def test_console_on_a_tty_and_forced_json() -> None:
    tty = Tty()
    log.setup_logging("info", stream=tty)
    log.get_logger("x").info("hello", run="R002")
    assert "hello" in tty.getvalue() and "R002" in tty.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(tty.getvalue().splitlines()[0])
    forced = Tty()
    log.setup_logging("info", "json", stream=forced)
    log.get_logger("x").info("hello")
    assert lines(forced)[0]["event"] == "hello"


def test_secrets_are_redacted_by_name_and_by_value() -> None:
    out = io.StringIO()
    log.setup_logging("debug", "json", stream=out, secrets=[SECRET])
    logger = log.get_logger("backends.vast")
    logger.info(f"calling api with {SECRET}", api_key=SECRET, auth_token="t0k3n", password="pw",
                client_secret="s", request={"headers": {"Authorization": "Bearer abc"},
                                            "url": f"https://x/?key={SECRET}"},
                argv=["vastai", "--api-key", SECRET], dsn="https://bob:hunter2@db/x", n=1)
    logging.getLogger("urllib3").warning("GET /instances?api_key=%s", SECRET)
    try:
        raise RuntimeError(f"HTTP 401 for key {SECRET}")
    except RuntimeError:
        logger.exception("request failed")
    text = out.getvalue()
    assert SECRET not in text and "t0k3n" not in text and "hunter2" not in text
    assert '"pw"' not in text and "Bearer abc" not in text
    event, foreign, failure = lines(out)
    assert event["event"] == "calling api with [redacted]" and event["api_key"] == "[redacted]"
    assert event["argv"] == ["vastai", "--api-key", "[redacted]"] and event["n"] == 1
    assert event["dsn"] == "https://bob:[redacted]@db/x"
    assert foreign["event"] == "GET /instances?api_key=[redacted]"
    assert failure["exception"][0]["exc_value"] == "HTTP 401 for key [redacted]"
    assert "locals" not in failure["exception"][0]["frames"][0]


def test_secret_in_a_console_traceback_is_redacted() -> None:
    tty = Tty()
    log.setup_logging("info", "console", stream=tty)
    log.add_secret(SECRET)
    try:
        raise ValueError(SECRET)
    except ValueError:
        log.get_logger("x").exception("boom")
    assert "ValueError" in tty.getvalue() and SECRET not in tty.getvalue()


def test_reconfigure_replaces_only_our_handler_and_changes_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    logger = log.get_logger("early")  # made before the second setup, as module loggers are
    log.setup_logging("warning", "json", stream=first)
    log.setup_logging("debug", "json", stream=second)
    logger.debug("after reload")
    assert first.getvalue() == "" and lines(second)[0]["event"] == "after reload"
    assert other in logging.getLogger().handlers
    assert sum(getattr(h, "_expbridge", False) for h in logging.getLogger().handlers) == 1


def test_bad_level_or_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        log.setup_logging("loud")
    with pytest.raises(ConfigError, match="log_format"):
        log.setup_logging("info", "xml")
