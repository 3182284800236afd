"""Metrics from a finished job's outputs, and their aggregate over seeds.

Sources, in ARIS preference order (ARIS_SPEC §5.2): the result files a job declares (JSON, JSON
lines, CSV), then the job's log as a fallback (`key=value` / `key: value` lines). Collection never
raises on bad input: every file that cannot be used is named in the returned problems list, and
the caller decides what a missing metric means for the run.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TypeVar

# Result files from NFS or coarse-mtime filesystems carry whole-second mtimes, and a quick job can
# write its output within the second it started; only clearly older files are stale.
MTIME_SLACK_S = 2.0
# The final metrics are printed at the end of a training log; the tail is enough and bounds memory.
LOG_TAIL_BYTES = 1 << 20
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
_LOG_PAIR = re.compile(
    rf"(?<![\w./-])(?P<key>[A-Za-z_][\w./-]*)\s*(?:=|:)\s*(?P<value>{_NUMBER})(?![\w:]|\.\d)",
    re.IGNORECASE,
)
_ROW_NAME_COLUMNS = ("metric", "name", "key")
V = TypeVar("V")


def read_metrics(paths: Sequence[Path], log_path: Path | None, started_at: float | None,
                 *, csv_row: str | None = None) -> tuple[dict[str, float], list[str]]:
    """Metrics from the result files, else from the log; plus one problem line per unusable file.

    Later files win on a key clash. The log is read only when no result file yielded a metric.
    `csv_row` picks the CSV row whose first cell equals it instead of the last row.
    """
    metrics: dict[str, float] = {}
    problems: list[str] = []
    for path in paths:
        found, problem = _read_result_file(Path(path), started_at, csv_row)
        metrics.update(found)
        if problem:
            problems.append(problem)
    if not metrics and log_path is not None:
        found, problem = _read_log(Path(log_path), started_at)
        metrics.update(found)
        if problem:
            problems.append(problem)
    return metrics, problems


def expand_outputs(cwd: Path, patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files matching each `expected_output` glob (relative to the job's cwd), oldest first so
    that the newest file wins a key clash in read_metrics; a pattern matching nothing is a problem."""
    found: dict[Path, float] = {}
    problems: list[str] = []
    for pattern in patterns:
        base = Path(pattern) if Path(pattern).is_absolute() else cwd / pattern
        matches = [Path(p) for p in sorted(glob.glob(str(base), recursive=True)) if Path(p).is_file()]
        if not matches:
            problems.append(f"{base}: no file matches")
        for path in matches:
            found[path] = path.stat().st_mtime
    return sorted(found, key=lambda p: (found[p], str(p))), problems


def _fresh(path: Path, started_at: float | None) -> str | None:
    """None when the file can be used, else why not."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return f"{path}: not found"
    except OSError as exc:
        return f"{path}: cannot stat ({exc.strerror})"
    if started_at is not None and mtime < started_at - MTIME_SLACK_S:
        return f"{path}: ignored, written before the job started (stale output of an earlier run?)"
    return None


def _read_result_file(path: Path, started_at: float | None,
                      csv_row: str | None) -> tuple[dict[str, float], str | None]:
    problem = _fresh(path, started_at)
    if problem:
        return {}, problem
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return {}, f"{path}: cannot read ({exc.strerror})"
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            found = parse_json(text)
        elif suffix == ".jsonl":
            found = parse_jsonl(text)
        elif suffix in (".csv", ".tsv"):
            found = parse_csv(text, "\t" if suffix == ".tsv" else ",", csv_row)
        else:
            found = _parse_untyped(text)
    except ValueError as exc:
        return {}, f"{path}: unparsable ({exc})"
    if not found:
        return {}, f"{path}: no numeric metrics found"
    return found, None


def _read_log(path: Path, started_at: float | None) -> tuple[dict[str, float], str | None]:
    problem = _fresh(path, started_at)
    if problem:
        return {}, problem
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, io.SEEK_END)
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return {}, f"{path}: cannot read ({exc.strerror})"
    found = parse_log_lines(tail)
    return found, (None if found else f"{path}: no key=value metrics in the log")


def parse_json(text: str) -> dict[str, float]:
    """Numbers of a JSON object, nested keys joined with '.'; lists and strings are skipped."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object at the top level, found {type(data).__name__}")
    return dict(_flatten(data, ""))


def parse_jsonl(text: str) -> dict[str, float]:
    """The last JSON object line wins: training scripts append one record per eval."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return parse_json(line)
    raise ValueError("empty JSON lines file")


def _flatten(data: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, float(value)


def parse_csv(text: str, delimiter: str = ",", row_name: str | None = None) -> dict[str, float]:
    """Numeric cells of the last row (or the row whose first cell is `row_name`).

    A two-column `metric,value` table (long format) gives one metric per row instead.
    """
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ValueError("expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if len(header) == 2 and header[0].lower() in _ROW_NAME_COLUMNS:
        return {r[0].strip(): v for r in rows[1:] if len(r) >= 2 and (v := _to_float(r[1])) is not None}
    row = _pick_row(rows[1:], row_name)
    return {h: v for h, cell in zip(header, row) if h and (v := _to_float(cell)) is not None}


def _pick_row(rows: list[list[str]], row_name: str | None) -> list[str]:
    if row_name is None:
        return rows[-1]
    for row in reversed(rows):
        if row and row[0].strip() == row_name:
            return row
    raise ValueError(f"no row named {row_name!r} (first column)")


def _to_float(cell: str) -> float | None:
    cell = cell.strip()
    if not re.fullmatch(_NUMBER, cell, re.IGNORECASE):
        return None
    return float(cell)


def parse_log_lines(text: str) -> dict[str, float]:
    """`key=value` and `key: value` pairs with numeric values; the last occurrence wins."""
    found: dict[str, float] = {}
    for match in _LOG_PAIR.finditer(text):
        found[match["key"]] = float(match["value"])
    return found


def _parse_untyped(text: str) -> dict[str, float]:
    """A results file with an unknown suffix: JSON if it is JSON, else key=value lines."""
    if text.lstrip().startswith("{"):
        return parse_json(text)
    return parse_log_lines(text)


def lookup(metrics: Mapping[str, V], name: str) -> tuple[str, V] | None:
    """`name` itself, else the one key whose last segment is `name` (`acc` finds `eval.acc`).

    Plans name a metric as people say it; result files nest it. Two candidates is ambiguous: None.
    """
    if name in metrics:
        return name, metrics[name]
    wanted = name.lower()
    hits = [k for k in metrics if re.split(r"[./]", k)[-1].lower() == wanted]
    return (hits[0], metrics[hits[0]]) if len(hits) == 1 else None


@dataclass(frozen=True)
class Aggregate:
    mean: float
    std: float
    n: int


def aggregate(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Aggregate]:
    """Mean, sample std (n-1; 0 for one seed) and count per metric, over the seeds that have it."""
    names: dict[str, None] = {}
    for seed in per_seed:
        names.update(dict.fromkeys(seed))
    result: dict[str, Aggregate] = {}
    for name in names:
        values = [float(seed[name]) for seed in per_seed if name in seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        result[name] = Aggregate(statistics.fmean(values), std, len(values))
    return result


def format_number(x: float) -> str:
    """Four significant digits, fixed notation for everyday magnitudes."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if 1e-4 <= abs(x) < 1e4:
        return format(x, ".4g")
    if abs(x) >= 1e4:
        return f"{x:.1f}"
    return f"{x:.3e}"


def format_metric(name: str, agg: Aggregate) -> str:
    """`acc=0.912±0.004 (n=3)`; a single seed has no ± part."""
    if agg.n > 1:
        return f"{name}={format_number(agg.mean)}±{format_number(agg.std)} (n={agg.n})"
    return f"{name}={format_number(agg.mean)} (n={agg.n})"


def relative_delta(value: float, base: float) -> float | None:
    """Change over the baseline in percent of |baseline|; None when the baseline is 0."""
    if base == 0 or math.isnan(base) or math.isnan(value):
        return None
    return (value - base) / abs(base) * 100.0


def format_delta(value: float, base: float, baseline_run: str) -> str:
    """`+2.4% vs R001` (or the absolute difference when the baseline is 0)."""
    pct = relative_delta(value, base)
    if pct is None:
        return f"{value - base:+.4g} vs {baseline_run}"
    return f"{pct:+.1f}% vs {baseline_run}"
