"""The budget ledger: GPU-hours and dollars per job, run, milestone and plan (ARIS_SPEC §4.6, §5.6).

GPU-hours are wall time × GPUs, from the launch and completion times the wrapper recorded; a job
still running counts up to `now`. Dollars come only from the rented backends (Vast `dph` × hours,
Modal per second × tier): a record carries `cost_usd`, or `usd_per_hour` to multiply by its wall
time. Local and SSH GPUs are sunk cost and add GPU-hours only.

`check()` turns a ledger into a verdict the core acts on:
- GPU-hours: warn at `warn_at` of the budget; at 100 % warn again, and stop new launches when
  `hard_stop` is set;
- dollars: warn at `warn_at` of `usd_max`; at `usd_max` renting needs approval; at
  `usd_hard_cap` renting is refused.
The verdict's `marks` name each threshold crossed, so the core notifies once per crossing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

from daemon.config import BudgetConfig

Level = Literal["ok", "warn", "stop"]
Rent = Literal["ok", "approval", "refuse"]
_LEVELS: tuple[Level, ...] = ("ok", "warn", "stop")


@dataclass(frozen=True)
class JobCost:
    job_id: str
    run_id: str | None
    milestone: str | None
    gpus: int
    wall_hours: float
    usd: float | None  # None: not a rented backend
    running: bool

    @property
    def gpu_hours(self) -> float:
        return self.wall_hours * self.gpus


@dataclass(frozen=True)
class Ledger:
    jobs: tuple[JobCost, ...]
    budget_gpu_hours: float | None     # budget.gpu_hours, else the plan's total estimate
    plan_gpu_hours: float | None       # the plan's "Total estimated GPU-hours"
    milestone_estimates: Mapping[str, float]  # the plan's per-milestone Cost, in GPU-hours

    @property
    def gpu_hours(self) -> float:
        return sum(j.gpu_hours for j in self.jobs)

    @property
    def usd(self) -> float:
        return sum(j.usd for j in self.jobs if j.usd is not None)

    @property
    def has_usd(self) -> bool:
        return any(j.usd is not None for j in self.jobs)

    def gpu_hours_by_run(self) -> dict[str, float]:
        return _sum_by(self.jobs, lambda j: j.run_id or j.job_id, lambda j: j.gpu_hours)

    def gpu_hours_by_milestone(self) -> dict[str, float]:
        return _sum_by(self.jobs, lambda j: j.milestone or "-", lambda j: j.gpu_hours)

    def usd_by_run(self) -> dict[str, float]:
        rented = tuple(j for j in self.jobs if j.usd is not None)
        return _sum_by(rented, lambda j: j.run_id or j.job_id, lambda j: j.usd or 0.0)

    def usd_by_milestone(self) -> dict[str, float]:
        rented = tuple(j for j in self.jobs if j.usd is not None)
        return _sum_by(rented, lambda j: j.milestone or "-", lambda j: j.usd or 0.0)


def _sum_by(jobs: Iterable[JobCost], key: Any, value: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for job in jobs:
        out[key(job)] = out.get(key(job), 0.0) + value(job)
    return out


@dataclass(frozen=True)
class BudgetVerdict:
    level: Level
    reasons: list[str]
    rent: Rent = "ok"
    marks: frozenset[str] = frozenset()  # thresholds crossed: "gpu_hours:warn", "usd:cap", ...

    @property
    def may_launch(self) -> bool:
        return self.level != "stop"


# ---- building the ledger ----------------------------------------------------------------------

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def job_cost(record: Mapping[str, Any], now: float) -> JobCost:
    """One job record (job_id, run_id, milestone, started_at, ended_at, gpus, cost_usd or
    usd_per_hour) as a ledger line. A job that never started costs nothing; a clock that went
    backwards costs nothing rather than a negative amount."""
    started, ended = _number(record.get("started_at")), _number(record.get("ended_at"))
    running = started is not None and ended is None
    wall_s = 0.0 if started is None else max(0.0, (ended if ended is not None else now) - started)
    gpus = record.get("gpus")
    gpus = gpus if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 0 else 1
    usd = _number(record.get("cost_usd"))
    rate = _number(record.get("usd_per_hour"))
    if usd is None and rate is not None:
        usd = rate * wall_s / 3600.0
    return JobCost(str(record.get("job_id", "")), record.get("run_id") or None,
                   record.get("milestone") or None, gpus, wall_s / 3600.0,
                   None if usd is None else max(0.0, usd), running)


def build_ledger(records: Iterable[Mapping[str, Any]], budget: BudgetConfig,
                 plan_gpu_hours: float | None, now: float,
                 milestone_estimates: Mapping[str, float] | None = None) -> Ledger:
    """The ledger of a plan's jobs; the GPU-hour budget is the config's, else the plan's total."""
    jobs = tuple(job_cost(r, now) for r in records)
    plan_total = plan_gpu_hours if plan_gpu_hours and plan_gpu_hours > 0 else None
    return Ledger(jobs, budget.gpu_hours or plan_total, plan_total, dict(milestone_estimates or {}))


# ---- the verdict ------------------------------------------------------------------------------

def _worse(a: Level, b: Level) -> Level:
    return a if _LEVELS.index(a) >= _LEVELS.index(b) else b


def _pct(used: float, limit: float) -> str:
    return f"{used / limit * 100:.0f}%"


def _gpu_part(ledger: Ledger, budget: BudgetConfig) -> tuple[Level, list[str], set[str]]:
    limit, used = ledger.budget_gpu_hours, ledger.gpu_hours
    if not limit:
        return "ok", [], set()
    spent = f"{_hours(used)} of {_hours(limit)} GPU-hours used ({_pct(used, limit)})"
    if used >= limit:
        if budget.hard_stop:
            return "stop", [f"{spent}: budget spent, no new launches (hard_stop)"], \
                {"gpu_hours:warn", "gpu_hours:stop"}
        return "warn", [f"{spent}: budget spent (hard_stop is off, launches continue)"], \
            {"gpu_hours:warn", "gpu_hours:spent"}
    if used >= budget.warn_at * limit:
        return "warn", [f"{spent}: past the {budget.warn_at:.0%} warning mark"], {"gpu_hours:warn"}
    return "ok", [], set()


def _usd_part(ledger: Ledger, budget: BudgetConfig,
              next_rent_usd: float) -> tuple[Level, Rent, list[str], set[str]]:
    used = ledger.usd
    after = used + max(0.0, next_rent_usd)
    cap, soft = budget.usd_hard_cap, budget.usd_max
    if cap and after >= cap:
        what = "spent" if used >= cap else f"would reach ${after:.2f} with the next rental"
        return "warn", "refuse", [f"${used:.2f} rented so far, {what}: usd_hard_cap ${cap:.2f}; "
                                  "nothing more is rented"], {"usd:warn", "usd:cap"}
    if soft and after >= soft:
        what = "reached" if used >= soft else f"would be passed by the next rental (${after:.2f})"
        return "warn", "approval", [f"${used:.2f} rented so far, usd_max ${soft:.2f} {what}: "
                                    "renting waits for approval"], {"usd:warn", "usd:max"}
    if soft and used >= budget.warn_at * soft:
        return "warn", "ok", [f"${used:.2f} of usd_max ${soft:.2f} rented ({_pct(used, soft)})"], \
            {"usd:warn"}
    return "ok", "ok", [], set()


def check(ledger: Ledger, budget: BudgetConfig, next_rent_usd: float = 0.0) -> BudgetVerdict:
    """Where the plan stands against its budgets. `next_rent_usd` is the estimated cost of a
    rental about to be made (dph × estimated hours), checked before renting."""
    gpu_level, gpu_reasons, gpu_marks = _gpu_part(ledger, budget)
    usd_level, rent, usd_reasons, usd_marks = _usd_part(ledger, budget, next_rent_usd)
    return BudgetVerdict(_worse(gpu_level, usd_level), gpu_reasons + usd_reasons, rent,
                         frozenset(gpu_marks | usd_marks))


def new_marks(before: Iterable[str], verdict: BudgetVerdict) -> list[str]:
    """Thresholds crossed since `before` (the marks already notified), in a stable order."""
    return sorted(verdict.marks - set(before))


# ---- rendering --------------------------------------------------------------------------------

def _hours(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _milestone_key(name: str) -> tuple[int, str]:
    m = re.match(r"[A-Za-z]*(\d+)", name)
    return (int(m.group(1)) if m else 10**6, name)


def render(ledger: Ledger, verdict: BudgetVerdict | None = None) -> str:
    """The budget lines of `expbridge status`."""
    used = ledger.gpu_hours
    limit = ledger.budget_gpu_hours
    head = f"budget: {_hours(used)}"
    head += f" / {_hours(limit)} GPU-h ({_pct(used, limit)})" if limit else " GPU-h (no budget set)"
    running = sum(1 for j in ledger.jobs if j.running)
    head += f", {running} job(s) still running" if running else ""
    lines = [head]
    if ledger.has_usd:
        lines.append(f"  rented: ${ledger.usd:.2f}")
    by_ms, usd_ms = ledger.gpu_hours_by_milestone(), ledger.usd_by_milestone()
    for name in sorted(set(by_ms) | set(ledger.milestone_estimates), key=_milestone_key):
        est = ledger.milestone_estimates.get(name)
        line = f"  {name}: {_hours(by_ms.get(name, 0.0))} GPU-h"
        line += f" (est {_hours(est)})" if est else ""
        line += f", ${usd_ms[name]:.2f}" if name in usd_ms else ""
        lines.append(line)
    if verdict is not None:
        lines += [f"  {verdict.level.upper()}: {r}" for r in verdict.reasons]
    return "\n".join(lines)
