"""Shared test helpers: the CI rule for real parts, the corpus location, bounded waits."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    """A real part that cannot start: an error under CI, a skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(f"required test dependency unavailable under CI: {message}", pytrace=False)
    pytest.skip(message)


def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        unavailable(f"corpus not found at {CORPUS} (tests read it from ../shared/corpus)")
    return CORPUS


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll until predicate() is truthy; bounded in time, so a broken system fails, not hangs."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
