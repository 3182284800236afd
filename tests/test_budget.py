"""The budget ledger: GPU-hours per job/run/milestone/plan, dollars, warn and stop (ARIS §5.6)."""
from __future__ import annotations

import pytest

from daemon.config import BudgetConfig
from handlers.budget import build_ledger, check, job_cost, new_marks, render

H = 3600.0


def rec(job: str, run: str, ms: str, start_h: float, end_h: float | None, **extra: object) -> dict:
    return {"job_id": job, "run_id": run, "milestone": ms, "started_at": start_h * H,
            "ended_at": None if end_h is None else end_h * H, **extra}


RECORDS = [
    rec("j1", "R001", "M0", 0, 0.5),
    rec("j2", "R002", "M1", 0, 2, gpus=2),
    rec("j3", "R002", "M1", 1, 2),
    rec("j4", "R003", "M2", 3, None),  # still running at now = 4 h
    {"job_id": "j5", "run_id": "R004", "milestone": "M2"},  # never started
]


def test_gpu_hours_per_job_run_milestone_and_plan() -> None:
    ledger = build_ledger(RECORDS, BudgetConfig(), plan_gpu_hours=10, now=4 * H)
    assert [round(j.gpu_hours, 6) for j in ledger.jobs] == [0.5, 4.0, 1.0, 1.0, 0.0]
    assert ledger.gpu_hours_by_run() == pytest.approx({"R001": 0.5, "R002": 5.0, "R003": 1.0, "R004": 0.0})
    assert ledger.gpu_hours_by_milestone() == pytest.approx({"M0": 0.5, "M1": 5.0, "M2": 1.0})
    assert ledger.gpu_hours == pytest.approx(6.5)
    assert ledger.budget_gpu_hours == 10  # the plan's total when the config sets none
    assert ledger.jobs[3].running and not ledger.jobs[4].running
    assert not ledger.has_usd


def test_config_budget_beats_the_plan_total() -> None:
    ledger = build_ledger(RECORDS, BudgetConfig(gpu_hours=50), plan_gpu_hours=10, now=4 * H)
    assert ledger.budget_gpu_hours == 50 and ledger.plan_gpu_hours == 10


def test_bad_fields_cost_nothing_rather_than_crash() -> None:
    cost = job_cost({"job_id": "x", "started_at": "soon", "ended_at": 5, "gpus": "two"}, now=10)
    assert cost.wall_hours == 0 and cost.gpus == 1
    backwards = job_cost({"job_id": "y", "started_at": 100, "ended_at": 50}, now=200)
    assert backwards.gpu_hours == 0


def test_dollars_from_cost_or_hourly_rate() -> None:
    records = [rec("v1", "R001", "M1", 0, 2, usd_per_hour=0.5), rec("m1", "R002", "M1", 0, 1, cost_usd=3.25),
               rec("l1", "R003", "M2", 0, 1)]
    ledger = build_ledger(records, BudgetConfig(), None, now=5 * H)
    assert ledger.usd == pytest.approx(4.25)
    assert ledger.usd_by_run() == pytest.approx({"R001": 1.0, "R002": 3.25})  # local R003 has no $
    assert ledger.usd_by_milestone() == pytest.approx({"M1": 4.25})


@pytest.mark.parametrize(("used_h", "hard_stop", "level", "marks"), [
    (7.9, False, "ok", set()),
    (8.0, False, "warn", {"gpu_hours:warn"}),
    (8.0, True, "warn", {"gpu_hours:warn"}),
    (10.0, False, "warn", {"gpu_hours:warn", "gpu_hours:spent"}),
    (10.0, True, "stop", {"gpu_hours:warn", "gpu_hours:stop"}),
])
def test_gpu_hour_warning_and_stop(used_h: float, hard_stop: bool, level: str, marks: set) -> None:
    budget = BudgetConfig(warn_at=0.8, hard_stop=hard_stop)
    ledger = build_ledger([rec("j", "R001", "M1", 0, used_h)], budget, plan_gpu_hours=10, now=20 * H)
    verdict = check(ledger, budget)
    assert verdict.level == level
    assert verdict.marks == marks
    assert verdict.may_launch == (level != "stop")
    if level != "ok":
        assert "GPU-hours" in verdict.reasons[0] and "10" in verdict.reasons[0]


def test_no_budget_at_all_is_ok() -> None:
    ledger = build_ledger(RECORDS, BudgetConfig(), plan_gpu_hours=None, now=4 * H)
    verdict = check(ledger, BudgetConfig())
    assert (verdict.level, verdict.rent, verdict.reasons) == ("ok", "ok", [])


def test_dollars_warn_then_approval_then_refuse() -> None:
    budget = BudgetConfig(usd_max=10, usd_hard_cap=15, warn_at=0.8)
    def verdict(spent: float, next_rent: float = 0.0):  # noqa: ANN202
        ledger = build_ledger([rec("v", "R1", "M1", 0, 1, cost_usd=spent)], budget, None, now=H)
        return check(ledger, budget, next_rent_usd=next_rent)
    assert verdict(5).rent == "ok" and verdict(5).level == "ok"
    assert verdict(8.5).rent == "ok" and verdict(8.5).level == "warn" and "usd:warn" in verdict(8.5).marks
    assert verdict(10).rent == "approval" and "usd:max" in verdict(10).marks
    assert verdict(9, next_rent=2).rent == "approval"  # the next rental would pass usd_max
    assert verdict(15).rent == "refuse" and "usd_hard_cap" in verdict(15).reasons[0]
    assert verdict(14, next_rent=1.5).rent == "refuse"
    assert verdict(15).may_launch  # local launches are not stopped by the dollar cap


def test_new_marks_notifies_each_crossing_once() -> None:
    budget = BudgetConfig(hard_stop=True)
    early = check(build_ledger([rec("j", "R1", "M1", 0, 8.5)], budget, 10, now=0), budget)
    later = check(build_ledger([rec("j", "R1", "M1", 0, 10)], budget, 10, now=0), budget)
    assert new_marks(set(), early) == ["gpu_hours:warn"]
    assert new_marks(early.marks, later) == ["gpu_hours:stop"]
    assert new_marks(later.marks, later) == []


def test_render_shows_used_budget_milestones_and_reasons() -> None:
    budget = BudgetConfig(hard_stop=True)
    records = RECORDS + [rec("v", "R005", "M1", 0, 1, cost_usd=2.5)]
    ledger = build_ledger(records, budget, plan_gpu_hours=7, now=4 * H, milestone_estimates={"M1": 4, "M3": 2})
    text = render(ledger, check(ledger, budget))
    lines = text.splitlines()
    assert lines[0] == "budget: 7.50 / 7.00 GPU-h (107%), 1 job(s) still running"
    assert "  rented: $2.50" in lines
    assert "  M1: 6.00 GPU-h (est 4.00), $2.50" in lines
    assert [ln.split(":")[0].strip() for ln in lines if ln.startswith("  M")] == ["M0", "M1", "M2", "M3"]
    assert lines[-1].startswith("  STOP: ") and "hard_stop" in lines[-1]
    no_budget = render(build_ledger([], BudgetConfig(), None, now=0))
    assert no_budget == "budget: 0.00 GPU-h (no budget set)"
