"""Success criteria: parse the forms a plan or manifest uses, evaluate them, judge a milestone.

A criterion that parses as `[metric] <op> <number>[%] [over <run>]` (ARIS_SPEC §5.4) is checked
here. Anything else is prose: it becomes `needs_review` and the judge hook decides it elsewhere.
Parsing never raises, so a bad criterion cannot stop collection; `criterion_problems()` gives the
manifest validator the messages it turns into diagnostics with a file and line.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

from handlers.metrics import lookup

OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
_OP_ALIASES = {"≥": ">=", "=>": ">=", "≤": "<=", "=<": "<=", "=": "==", "≠": "!="}
_RUN_ID = r"[A-Za-z][\w-]*\d[\w-]*"  # a run id carries a digit, so "over baseline" stays prose
_STRING_FORM = re.compile(
    rf"""^\s*(?P<metric>[A-Za-z_][\w./-]*)?\s*
    (?P<op>>=|<=|==|!=|=>|=<|≥|≤|≠|>|<|=)?\s*
    (?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<pct>%)?\s*
    (?:(?:over|vs\.?|than)\s+(?P<run>{_RUN_ID}))?\s*$""",
    re.VERBOSE | re.IGNORECASE,
)

Outcome = Literal["pass", "fail", "needs_review", "missing"]
MilestoneVerdict = Literal["positive", "negative", "inconclusive"]


@dataclass(frozen=True)
class Criterion:
    """`value` alone: absolute threshold; `value` + `baseline_run`: absolute gain over that run;
    `relative_pct` + `baseline_run`: gain in percent of the baseline (negative for "lower by")."""

    metric: str
    op: str
    value: float | None
    relative_pct: float | None
    baseline_run: str | None
    prose: str | None


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str


def prose(text: str) -> Criterion:
    return Criterion("", "", None, None, None, text)


def parse_criterion(spec: str | Mapping[str, Any], default_metric: str | None = None) -> Criterion:
    """The criterion a string or manifest mapping states; prose when it is not machine-readable.

    `default_metric` (the block's decisive metric) fills a form that names none, e.g. "> 0.9".
    """
    if isinstance(spec, Mapping):
        return _from_mapping(spec, default_metric)
    text = str(spec).strip()
    match = _STRING_FORM.match(text)
    metric = (match["metric"] if match else None) or default_metric
    if not match or not metric or (match["pct"] and not match["run"]):
        return prose(text)  # "acc > 90%" is ambiguous between 0.9 and 90: leave it to the judge
    op = _OP_ALIASES.get(match["op"] or "", match["op"] or "")
    number = float(match["num"])
    if not op and not match["run"]:
        return prose(text)
    if match["pct"]:
        return Criterion(metric, op or _default_op(number), None, number, match["run"], None)
    return Criterion(metric, op or _default_op(number), number, None, match["run"], None)


def _default_op(amount: float) -> str:
    """"+2% over R001" asks for at least that gain; "-5% over R001" for at least that drop."""
    return "<=" if amount < 0 else ">="


def _from_mapping(spec: Mapping[str, Any], default_metric: str | None) -> Criterion:
    if criterion_problems(spec, default_metric):
        return prose(_describe(spec, default_metric))
    metric = str(spec.get("metric") or default_metric)
    run = spec.get("over") or spec.get("baseline")
    if "by_pct" in spec:
        pct = float(spec["by_pct"])
        return Criterion(metric, _op(spec, pct), None, pct, str(run), None)
    value = float(spec["value"]) if "value" in spec else float(spec["by"])
    return Criterion(metric, _op(spec, value), value, None, str(run) if run else None, None)


def _op(spec: Mapping[str, Any], amount: float) -> str:
    raw = str(spec.get("op", "")).strip()
    return _OP_ALIASES.get(raw, raw) or _default_op(amount)


def criterion_problems(spec: str | Mapping[str, Any], default_metric: str | None = None) -> list[str]:
    """What is wrong with a manifest `success:` mapping (a string is never wrong: it may be prose)."""
    if not isinstance(spec, Mapping):
        return []
    problems: list[str] = []
    known = {"metric", "op", "value", "over", "baseline", "by_pct", "by"}
    if unknown := sorted(set(map(str, spec)) - known):
        problems.append(f"unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    if not (spec.get("metric") or default_metric):
        problems.append("no 'metric' (the result key to check)")
    op = str(spec.get("op", "")).strip()
    if op and _OP_ALIASES.get(op, op) not in OPS:
        problems.append(f"op {op!r} is not one of {', '.join(OPS)}")
    amounts = [k for k in ("value", "by_pct", "by") if k in spec]
    if len(amounts) != 1:
        problems.append("expected exactly one of 'value', 'by_pct' or 'by'")
    for key in amounts:
        if not _is_number(spec[key]):
            problems.append(f"{key} {spec[key]!r} is not a number")
    has_run = bool(spec.get("over") or spec.get("baseline"))
    if any(k in spec for k in ("by_pct", "by")) and not has_run:
        problems.append("'by_pct'/'by' need 'over: <run id>' (the baseline run)")
    if "value" in spec and not op and not has_run:
        problems.append("'value' needs an 'op' (>, >=, <, <=, ==, !=)")
    return problems


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _describe(spec: Mapping[str, Any], default_metric: str | None) -> str:
    problems = "; ".join(criterion_problems(spec, default_metric))
    return f"{dict(spec)} (not a valid success criterion: {problems})"


def evaluate(c: Criterion, metrics: Mapping[str, float],
             baselines: Mapping[str, Mapping[str, float]]) -> Verdict:
    """Pass or fail for a numeric criterion; prose is left to the judge hook (needs_review)."""
    if c.prose is not None:
        return Verdict("needs_review", f"prose criterion, needs a judge: {c.prose}")
    found = lookup(metrics, c.metric)
    if found is None:
        return Verdict("missing", f"{c.metric} not found in the results")
    value = float(found[1])
    if math.isnan(value):
        return Verdict("fail", f"{c.metric} is nan")
    if c.baseline_run is None:
        return _compare(value, c.op, float(c.value or 0.0), f"{c.metric} {_num(value)}")
    base_found = lookup(baselines.get(c.baseline_run) or {}, c.metric)
    if base_found is None:
        return Verdict("missing", f"no {c.metric} for baseline run {c.baseline_run}")
    base = float(base_found[1])
    if c.relative_pct is None:
        gain = value - base
        what = f"{c.metric} {_num(value)} vs {c.baseline_run} {_num(base)}: {gain:+.4g}"
        return _compare(gain, c.op, float(c.value or 0.0), what)
    if base == 0 or math.isnan(base):
        return Verdict("needs_review", f"baseline {c.baseline_run} {c.metric} is {_num(base)}: "
                                       "a relative change is undefined")
    pct = (value - base) / abs(base) * 100.0
    what = f"{c.metric} {_num(value)} vs {c.baseline_run} {_num(base)}: {pct:+.2f}%"
    return _compare(pct, c.op, c.relative_pct, what, unit="%")


def _compare(x: float, op: str, target: float, what: str, unit: str = "") -> Verdict:
    ok = OPS[op](x, target)
    return Verdict("pass" if ok else "fail", f"{what} (needs {op} {_num(target)}{unit})")


def _num(x: float) -> str:
    return format(x, ".4g")


def milestone_verdict(verdicts: Sequence[Verdict]) -> MilestoneVerdict:
    """Negative if any criterion failed, positive if all passed, inconclusive otherwise."""
    outcomes = [v.outcome for v in verdicts]
    if "fail" in outcomes:
        return "negative"
    if outcomes and all(o == "pass" for o in outcomes):
        return "positive"
    return "inconclusive"


def overtime(elapsed_h: float, est_h: float | None) -> bool:
    """The ARIS 2x rule (§5.5): past twice the estimate; no estimate, no flag."""
    return est_h is not None and est_h > 0 and elapsed_h > 2.0 * est_h


def estimate_hours(est_hours: float | None, milestone_cost_h: float | None,
                   runs_in_milestone: int) -> float | None:
    """A job's estimate: its own `est_hours`, else the milestone's cost shared over its runs."""
    if est_hours is not None and est_hours > 0:
        return float(est_hours)
    if milestone_cost_h and runs_in_milestone > 0:
        return float(milestone_cost_h) / runs_in_milestone
    return None
