"""Collection: from finished jobs to per-run metrics, key metric and verdict (ARIS §5.2, §5.4).

Runs as each job ends (the tracker Notes are updated after every run, F90) and again when the
plan finishes. Results are cached by the jobs' end times, so a tracker write never re-reads
result files that have not changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from daemon.model import Job, JobState
from handlers.criteria import Criterion, Verdict, evaluate, parse_criterion
from handlers.metrics import Aggregate, aggregate, expand_outputs, format_metric, lookup, read_metrics

PREFERRED = ("acc", "accuracy", "f1", "auc", "bleu", "rouge", "map", "loss", "error")
_cache: dict[tuple[Any, ...], "RunMetrics"] = {}


@dataclass(frozen=True)
class RunMetrics:
    metrics: dict[str, Aggregate]
    key: str | None  # the stored key name (e.g. "metrics.acc")
    criterion: Criterion | None
    problems: tuple[str, ...]


def _job_metrics(job: Job) -> tuple[dict[str, float], list[str]]:
    paths, problems = expand_outputs(Path(job.cwd), job.spec.get("expected_output", []))
    log = None
    if job.handle:
        from backends.base import Handle
        log = Path(Handle.from_json(job.handle).log_path)
    values, more = read_metrics(paths, log if log and log.exists() else None, job.started_at)
    return values, problems + more


def run_metrics(jobs: Sequence[Job]) -> RunMetrics:
    done = [j for j in jobs if j.state is JobState.SUCCEEDED]
    key = tuple((j.job_id, j.attempt, j.ended_at) for j in done)
    if key in _cache:
        return _cache[key]
    per_job, problems = [], []
    for job in done:
        values, probs = _job_metrics(job)
        problems += probs
        if values:
            per_job.append(values)
    agg = aggregate(per_job) if per_job else {}
    criterion = _criterion(jobs)
    result = RunMetrics(agg, key_metric(agg, criterion), criterion, tuple(problems))
    _cache[key] = result
    return result


def _criterion(jobs: Sequence[Job]) -> Criterion | None:
    for job in jobs:
        spec = job.spec.get("success")
        if spec:
            return parse_criterion(spec)
    return None


def key_metric(agg: Mapping[str, Aggregate], criterion: Criterion | None) -> str | None:
    if criterion is not None and criterion.metric:
        found = lookup(agg, criterion.metric)
        if found:
            return found[0]
    for name in PREFERRED:
        found = lookup(agg, name)
        if found:
            return found[0]
    return next(iter(sorted(agg)), None)


def notes_text(rm: RunMetrics) -> str:
    if rm.key is None:  # a job with no result files and a quiet log simply has no metric to show
        real = [p for p in rm.problems if "no key=value metrics" not in p]
        return "; ".join(real[:1])
    return format_metric(rm.key.split(".")[-1], rm.metrics[rm.key])


def verdict(rm: RunMetrics, baselines: Mapping[str, RunMetrics]) -> Verdict | None:
    if rm.criterion is None:
        return None
    means = {k: a.mean for k, a in rm.metrics.items()}
    base = {run: {k: a.mean for k, a in other.metrics.items()} for run, other in baselines.items()}
    return evaluate(rm.criterion, means, base)
