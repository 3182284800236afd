"""The Status normaliser: real-world spellings map onto our vocabulary, narrative maps to None."""
from __future__ import annotations

import pytest

from handlers.status_vocab import STATUSES, command_of, normalize_status

CASES = [
    ("DONE", "DONE"), ("done", "DONE"), ("**DONE**", "DONE"), ("complete", "DONE"),
    ("COMPLETE", "DONE"), ("✅", "DONE"), ("✅ done", "DONE"), ("✅️", "DONE"), ("[x]", "DONE"),
    ("完成", "DONE"), ("已完成", "DONE"), ("已完成；test mIoU 0.7677、裂缝 IoU 0.5673，淘汰", "DONE"),
    ("DONE ✗", "DONE"), ("DONE ✓✓ — beats C002", "DONE"), ("DONE/GATE-PASSED", "DONE"),
    ("DONE, -8.33 pp; final claim gate failed", "DONE"), ("COMPLETE_NEGATIVE", "DONE"),
    ("DONE (S1 COMPLETE) — see `R110_REPORT.md`", "DONE"), ("passed", "DONE"),
    ("TODO", "TODO"), ("todo", "TODO"), ("⬜ Pending", "TODO"), ("☐ not started", "TODO"),
    ("[ ]", "TODO"), ("NOT RUN", "TODO"), ("not_started", "TODO"), ("PENDING", "TODO"),
    ("待办", "TODO"), ("未完成，服务器环境待处理", "TODO"), ("TODO — depends R121", "TODO"),
    ("RESUME", "TODO"),
    ("QUEUED", "QUEUED"), ("⏳", "QUEUED"),
    ("RUNNING", "RUNNING"), ("IN_PROGRESS", "RUNNING"), ("in progress", "RUNNING"),
    ("🔄 Running", "RUNNING"), ("进行中", "RUNNING"),
    ("PAUSE", "PAUSED"), ("paused", "PAUSED"), ("⏸️", "PAUSED"), ("暂停", "PAUSED"),
    ("FAILED", "FAILED"), ("failed", "FAILED"), ("❌", "FAILED"), ("失败", "FAILED"),
    ("HUNG ✗", "STUCK"), ("STUCK", "STUCK"),
    ("BLOCKED", "BLOCKED"), ("BLOCKED_BY_M1.5", "BLOCKED"), ("blocked by R1–R6/G0", "BLOCKED"),
    ("⛔ blocked by E1", "BLOCKED"), ("blocked_on_G02", "BLOCKED"), ("BLOCKED (R120/R121)", "BLOCKED"),
    ("TODO/BLOCKED-UNTIL-R049", "BLOCKED"), ("⏸️ Blocked", "BLOCKED"),
    ("SKIP", "SKIPPED"), ("SKIPPED", "SKIPPED"), ("SKIP (no valid thresholds at eta=1.0)", "SKIPPED"),
    ("cancelled", "SKIPPED"), ("CUT", "SKIPPED"), ("跳过", "SKIPPED"), ("淘汰", "SKIPPED"),
    ("RETRY", "RETRY"), ("retry", "RETRY"), ("重试", "RETRY"),
    # narrative, project enums and misplaced values stay unrecognised
    ("MUST", None), ("—", None), ("", None), ("READY_CLOUD", None), ("PENDING_EV7-001", None),
    ("code-ready (waits on M1 ADS-B)", None), ("Complete3723 updates/29778fit;6887 bbs", None),
    ("Queue48128 exited0 at06:53;scanrefer_not_promoted", None), ("CPU complete;141 scenes", None),
    ("STOPPED", None), ("Baseline", None), ("keep/performance", None),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_status(raw: str, expected: str | None) -> None:
    assert normalize_status(raw) == expected


def test_every_status_maps_to_itself() -> None:
    for status in STATUSES + ("RETRY",):
        assert normalize_status(status) == status
        assert normalize_status(status.lower()) == status
        assert normalize_status(f"**{status}**") == status


@pytest.mark.parametrize(("raw", "command"), [
    ("PAUSE", "pause"), ("PAUSED", "pause"), ("TODO", "resume"), ("SKIP", "skip"),
    ("SKIPPED", "skip"), ("RETRY", "retry"), ("retry", "retry"), ("DONE", None), ("RUNNING", None),
    ("nonsense words", None),
])
def test_command_of(raw: str, command: str | None) -> None:
    assert command_of(normalize_status(raw)) == command


def test_command_of_none() -> None:
    assert command_of(None) is None
