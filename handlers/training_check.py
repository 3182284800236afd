"""ARIS training-check (ARIS_SPEC §5.3, F84/F85): is a running job still learning?

Input is a metric history, one dict per logged step: from W&B (`wandb.Api().run(path)
.history(pandas=False)`, an optional extra imported lazily) or, as the fallback, from the job's
log (`step=10 loss=0.5`, `loss: nan`). Signals on loss-like series (names containing loss, ppl or
perplexity; lower is better): NaN/Inf, divergence, spikes and plateaus, plus exploding gradient
norms. Decisions:
- STOP: clearly broken (the latest value is NaN/Inf, or the loss has risen far above its best
  for several steps in a row);
- WAIT: unsure (a plateau, an unrecovered spike, an exploding gradient norm, too little data, or
  no data source): the caller may send it to the training-check hook (`needs_review`);
- CONTINUE: the loss is going down, or nothing looks wrong.
One bad point is never a STOP on its own except NaN/Inf, which training does not recover from.
Process health is not judged here. Whether to check at all is the caller's decision.
"""
from __future__ import annotations

import io
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from handlers.metrics import parse_log_lines

Decision = Literal["CONTINUE", "WAIT", "STOP"]
Source = Literal["wandb_ok", "log_fallback", "unreachable"]
Severity = Literal["bad", "unsure", "info"]
INTERVALS_MIN = (10, 20, 30, 60)  # ARIS: lengthen while fine, back to 10 on an anomaly
LOG_TAIL_BYTES = 4 << 20
STEP_KEYS = ("_step", "step", "global_step", "iteration", "iter", "it", "epoch")
_META = re.compile(r"^_|(^|[./_])(step|epoch|iter|iteration|it|time|timestamp|runtime)$", re.I)
_LOSS_LIKE = re.compile(r"loss|ppl|perplexity", re.I)
_GRAD_NORM = re.compile(r"grad.*norm|gnorm", re.I)


@dataclass(frozen=True)
class Thresholds:
    window: int = 5              # the recent points a decision looks at
    min_points: int = 4          # fewer than this: too early to judge
    divergence_rise: float = 1.0  # recent values all above best × (1 + this) means divergence
    spike_factor: float = 10.0   # a jump over this × the usual step-to-step change (ARIS: 10×)
    plateau_window: int = 10     # points with no real improvement...
    plateau_rel: float = 0.01    # ...of more than this fraction of the loss level
    grad_explode: float = 100.0  # a grad norm over this × its early median


@dataclass(frozen=True)
class Anomaly:
    kind: str        # nan, divergence, spike, plateau, grad_explosion, no_data
    metric: str
    step: float | None
    severity: Severity
    detail: str


@dataclass(frozen=True)
class TrainingVerdict:
    decision: Decision
    reasons: list[str]
    source: Source
    anomalies: list[Anomaly] = field(default_factory=list)
    recent: dict[str, float] = field(default_factory=dict)  # last value of each metric
    steps: int = 0
    url: str | None = None

    @property
    def needs_review(self) -> bool:
        """An unclear case with data behind it: ask the training-check hook (ARIS: a reviewer)."""
        return self.decision == "WAIT" and any(a.severity == "unsure" for a in self.anomalies)


# ---- history rows -----------------------------------------------------------------------------

def _value(raw: Any) -> float | None:
    """A number from a history cell: W&B gives floats, None for a missing key, and sometimes the
    strings "NaN"/"Infinity"; media and tables (dicts) are not metrics."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, str) and re.fullmatch(r"\s*[-+]?(nan|inf(inity)?|\d+(\.\d*)?([eE][-+]?\d+)?)\s*",
                                             raw, re.I):
        return float(raw)
    return None


def series(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per metric, (step, value) in logged order; the step is the row's step key, else its index."""
    out: dict[str, list[tuple[float, float]]] = {}
    for index, row in enumerate(rows):
        step = next((s for k in STEP_KEYS if (s := _value(row.get(k))) is not None
                     and math.isfinite(s)), float(index))
        for key, raw in row.items():
            value = _value(raw)
            if value is not None and not _META.search(str(key)):
                out.setdefault(str(key), []).append((step, value))
    return out


def parse_log(text: str) -> list[dict[str, float]]:
    """One row per log line that carries `key=value` / `key: value` numbers."""
    return [found for line in text.splitlines() if (found := parse_log_lines(line))]


# ---- signals ----------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return format(x, ".4g")


def _nonfinite(name: str, points: Sequence[tuple[float, float]]) -> list[Anomaly]:
    bad = [(s, v) for s, v in points if not math.isfinite(v)]
    if not bad:
        return []
    step, value = bad[-1]
    if not math.isfinite(points[-1][1]):
        return [Anomaly("nan", name, step, "bad", f"{name} is {value} at step {_fmt(step)}")]
    return [Anomaly("nan", name, step, "unsure", f"{name} was {value} at step {_fmt(step)} "
                    f"({len(bad)}x) but is finite again ({_fmt(points[-1][1])})")]


def _divergence(name: str, values: Sequence[float], steps: Sequence[float],
                t: Thresholds) -> list[Anomaly]:
    if len(values) < t.window + 2:
        return []
    recent, earlier = values[-t.window:], values[:-t.window]
    best = min(earlier)
    limit = best + max(abs(best), 1e-12) * t.divergence_rise
    rises = sum(b > a for a, b in zip(recent, recent[1:]))
    if all(v > limit for v in recent) and recent[-1] > recent[0] and rises * 2 >= len(recent) - 1:
        return [Anomaly("divergence", name, steps[-1], "bad",
                        f"{name} rose from its best {_fmt(best)} to {_fmt(recent[-1])} and stayed above "
                        f"{_fmt(limit)} for the last {t.window} points")]
    return []


def _spike(name: str, values: Sequence[float], steps: Sequence[float], t: Thresholds) -> list[Anomaly]:
    if len(values) < t.min_points + 2:
        return []
    base = values[:-t.window] if len(values) > t.window + t.min_points else values[:-2]
    diffs = [abs(b - a) for a, b in zip(base, base[1:])]
    usual = statistics.median(diffs) if diffs else 0.0
    if usual <= 0:
        return []
    start = len(values) - min(t.window, len(values) - len(base))
    for i in range(start, len(values)):
        jump = values[i] - values[i - 1]
        if jump > t.spike_factor * usual:
            recovered = values[-1] <= values[i - 1] + t.spike_factor * usual / 2
            detail = (f"{name} jumped {_fmt(values[i - 1])} -> {_fmt(values[i])} at step {_fmt(steps[i])} "
                      f"({jump / usual:.0f}x the usual change)")
            return [Anomaly("spike", name, steps[i], "info" if recovered else "unsure",
                            detail + ("; recovered" if recovered else "; not recovered yet"))]
    return []


def _plateau(name: str, values: Sequence[float], steps: Sequence[float], t: Thresholds) -> list[Anomaly]:
    if len(values) < 2 * t.plateau_window:
        return []
    recent, earlier = values[-t.plateau_window:], values[:-t.plateau_window]
    level = max(abs(statistics.fmean(recent)), 1e-12)
    gain = min(earlier) - min(recent)
    if gain < t.plateau_rel * level:
        return [Anomaly("plateau", name, steps[-1], "unsure",
                        f"{name} has not improved over the last {t.plateau_window} points "
                        f"(best {_fmt(min(recent))}, earlier best {_fmt(min(earlier))})")]
    return []


def _grad_norm(name: str, values: Sequence[float], steps: Sequence[float], t: Thresholds) -> list[Anomaly]:
    if len(values) < t.min_points:
        return []
    early = statistics.median(values[:max(2, len(values) // 3)])
    if early > 0 and values[-1] > t.grad_explode * early:
        return [Anomaly("grad_explosion", name, steps[-1], "unsure",
                        f"{name} is {_fmt(values[-1])}, {values[-1] / early:.0f}x its early median")]
    return []


def _signals(name: str, points: Sequence[tuple[float, float]], t: Thresholds) -> list[Anomaly]:
    found = _nonfinite(name, points)
    if any(a.severity == "bad" for a in found):
        return found
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    steps, values = [s for s, _ in finite], [v for _, v in finite]
    if _GRAD_NORM.search(name):
        return found + _grad_norm(name, values, steps, t)
    diverging = _divergence(name, values, steps, t)
    if diverging:
        return found + diverging
    return found + _spike(name, values, steps, t) + _plateau(name, values, steps, t)


# ---- decisions --------------------------------------------------------------------------------

def _decide(anomalies: Sequence[Anomaly]) -> Decision:
    if any(a.severity == "bad" for a in anomalies):
        return "STOP"
    if any(a.severity == "unsure" for a in anomalies):
        return "WAIT"
    return "CONTINUE"


def check_history(rows: Iterable[Mapping[str, Any]], source: Source = "wandb_ok",
                  thresholds: Thresholds = Thresholds(), url: str | None = None) -> TrainingVerdict:
    """Judge a metric history (oldest row first)."""
    rows = list(rows)
    by_metric = series(rows)
    recent = {k: v[-1][1] for k, v in by_metric.items()}
    watched = {k: v for k, v in by_metric.items() if _LOSS_LIKE.search(k) or _GRAD_NORM.search(k)}
    losses = [v for k, v in watched.items() if _LOSS_LIKE.search(k)]
    anomalies = [a for k, v in by_metric.items() for a in _nonfinite(k, v) if k not in watched]
    for name, points in watched.items():
        anomalies += _signals(name, points, thresholds)
    if not losses or max(len(v) for v in losses) < thresholds.min_points:
        why = (f"only {max(len(v) for v in losses)} loss point(s) so far" if losses
               else "no loss-like metric (loss, ppl) in the history")
        if not any(a.severity == "bad" for a in anomalies):
            return TrainingVerdict("WAIT", [f"too early to judge: {why}"] + [a.detail for a in anomalies],
                                   source, anomalies, recent, len(rows), url)
    decision = _decide(anomalies)
    reasons = [a.detail for a in anomalies] or ["loss is going down; nothing abnormal"]
    return TrainingVerdict(decision, reasons, source, anomalies, recent, len(rows), url)


def unreachable(reason: str) -> TrainingVerdict:
    """Neither W&B nor the log could be read: WAIT, never assume the run is broken (ARIS)."""
    return TrainingVerdict("WAIT", [reason], "unreachable")


def read_log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    with Path(path).open("rb") as fh:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(max(0, size - limit))
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    return text if size <= limit else text.split("\n", 1)[-1]  # drop the cut first line


def check_log(path: Path, thresholds: Thresholds = Thresholds()) -> TrainingVerdict:
    """The log fallback: the job's log tail parsed line by line."""
    try:
        text = read_log_tail(Path(path))
    except OSError as exc:
        return unreachable(f"log {path} cannot be read ({exc.strerror or exc})")
    return check_history(parse_log(text), "log_fallback", thresholds)


def _history_rows(run: Any, samples: int) -> list[Mapping[str, Any]]:
    rows = run.history(samples=samples, pandas=False)
    if hasattr(rows, "to_dict"):  # a DataFrame after all
        rows = rows.to_dict("records")
    return [r for r in rows if isinstance(r, Mapping)]


def check_wandb(api: Any, run_path: str, log_path: Path | None = None, samples: int = 500,
                thresholds: Thresholds = Thresholds()) -> TrainingVerdict:
    """W&B first (`api` is a `wandb.Api()`-like object), the log when W&B fails (F84: a W&B
    failure is not a run failure). Never raises."""
    try:
        run = api.run(run_path)
        rows = _history_rows(run, samples)
        url = getattr(run, "url", None)
    except Exception as exc:  # noqa: BLE001 - any W&B or network error means "use the log"
        why = f"W&B history of {run_path} unavailable ({type(exc).__name__}: {exc})"
        if log_path is None:
            return unreachable(why)
        verdict = check_log(log_path, thresholds)
        return TrainingVerdict(verdict.decision, [why] + verdict.reasons, verdict.source,
                               verdict.anomalies, verdict.recent, verdict.steps)
    return check_history(rows, "wandb_ok", thresholds, url if isinstance(url, str) else None)


def wandb_api(timeout_s: float = 30.0) -> tuple[Any | None, str]:
    """A `wandb.Api()` when the optional extra is installed and logged in; else (None, why)."""
    try:
        import wandb  # noqa: PLC0415 - optional extra, imported only when W&B is configured
    except ImportError:
        return None, "wandb is not installed (pip install wandb)"
    try:
        return wandb.Api(timeout=int(timeout_s)), ""
    except Exception as exc:  # noqa: BLE001 - no API key, bad host: fall back to the log
        return None, f"W&B API unavailable ({type(exc).__name__})"


def next_interval(previous_min: int | None, verdict: TrainingVerdict) -> int:
    """Minutes to the next check: 10 -> 20 -> 30 -> 60 while fine; back to 10 on an anomaly or WAIT."""
    if verdict.anomalies or verdict.decision != "CONTINUE" or previous_min is None:
        return INTERVALS_MIN[0]
    longer = [m for m in INTERVALS_MIN if m > previous_min]
    return longer[0] if longer else INTERVALS_MIN[-1]


def report(verdict: TrainingVerdict, run: str, next_check_min: int | None = None) -> str:
    """The Codex-variant report block, also the evidence saved with a STOP."""
    recent = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(verdict.recent.items())[:12]) or "-"
    anomalies = "; ".join(f"{a.kind} ({a.metric})" for a in verdict.anomalies) or "none"
    lines = [f"Data source: {verdict.source}", f"Run: {run}" + (f" ({verdict.url})" if verdict.url else ""),
             f"Recent metrics: {recent}", f"Anomalies: {anomalies}",
             f"Evidence: {' | '.join(a.detail for a in verdict.anomalies) or '-'}",
             f"Decision: {verdict.decision}", f"Reason: {'; '.join(verdict.reasons)}"]
    if next_check_min is not None and verdict.decision != "STOP":
        lines.append(f"Next check: {next_check_min} min")
    return "\n".join(lines)
