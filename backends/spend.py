"""The budget gate in front of every rental (Vast) or paid run (Modal).

Before money is spent, the estimate is checked against the budget ledger (handlers.budget):
past `usd_max` the rental waits for approval (ARIS F77/F78: warn and confirm), past
`usd_hard_cap` it is refused. A held gate stays shut (the backend offers no slot) until the
`approve` callback says yes for the held amount; a refusal stays until the budget changes
(a new backend is built when the config is reloaded).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import structlog

from daemon.config import BudgetConfig
from daemon.errors import ApprovalRequired, BudgetRefused
from handlers.budget import build_ledger, check

log = structlog.get_logger("expbridge.budget")


class SpendGate:
    def __init__(self, what: str, budget: BudgetConfig | None,
                 approve: Callable[[float], bool] | None) -> None:
        self.what = what
        self.budget = budget or BudgetConfig()
        self.approve = approve or (lambda usd: False)  # the core wires this to `expbridge approve`
        self.hold = ""  # why spending waits; empty when it does not
        self._refused = False
        self._held_usd = 0.0

    def open(self) -> bool:
        """May we spend now? Re-asks for approval of a held amount."""
        if self.hold and not self._refused and self.approve(self._held_usd):
            log.info("spending approved", backend=self.what, usd=round(self._held_usd, 2))
            self.hold = ""
        return not self.hold

    def check(self, records: Iterable[Mapping[str, Any]], next_usd: float, now: float) -> None:
        """Raise BudgetRefused / ApprovalRequired (and hold) unless `next_usd` may be spent."""
        verdict = check(build_ledger(list(records), self.budget, None, now), self.budget, next_usd)
        reason = "; ".join(verdict.reasons)
        if verdict.rent == "refuse":
            self.hold, self._refused, self._held_usd = f"refused: {reason}", True, next_usd
            raise BudgetRefused(f"{self.what}: {reason}", retryable=False)
        if verdict.rent == "approval" and not self.approve(next_usd):
            self.hold, self._held_usd = f"waits for approval: {reason}", next_usd
            raise ApprovalRequired(f"{self.what}: estimated ${next_usd:.2f} for the next run; {reason}; "
                                   "approve to go on", retryable=False)
        for r in verdict.reasons:
            log.warning("budget", backend=self.what, reason=r)
