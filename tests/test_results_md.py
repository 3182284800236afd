"""EXPERIMENT_RESULTS.md rendered from raw result files, parsed back and recomputed; log entries."""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from handlers.criteria import Verdict, evaluate, milestone_verdict, parse_criterion
from handlers.metrics import Aggregate, aggregate, format_metric, read_metrics
from handlers.results_md import (
    TABLE_HEADER, RunResult, compact_log_entry, full_log_entry, parse_metric_cell, parse_results,
    render_results, tracker_note,
)
from handlers.versioning import write_output

CJK = re.compile(r"[\u4e00-\u9fff]")
# run id -> (milestone, name, system, per-seed accuracies, must)
PLAN = {
    "R001": ("M0", "Sanity", "tiny_mlp", [0.61], True),
    "R002": ("M1", "Baselines", "logreg", [0.8123, 0.8071, 0.8150], True),
    "R003": ("M2", "Main Method", "ours", [0.8512, 0.8467, 0.8539], True),
    "R004": ("M2", "Main Method", "ours|wide", [0.8301, 0.8388], False),
}
CRITERIA = {"R001": "acc > 0.5", "R002": "acc > 0.7", "R003": "acc +2% over R002",
            "R004": "acc +2% over R002"}


def write_seed_outputs(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for run, (_, _, _, accs, _) in PLAN.items():
        for seed, acc in enumerate(accs):
            path = root / run / f"seed{seed}" / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"eval": {"acc": acc, "loss": 1 - acc}, "seed": seed}))
            files.setdefault(run, []).append(path)
    return files


def collect(root: Path) -> list[RunResult]:
    """What collection does per run: read each seed, aggregate, check the criterion."""
    runs: list[RunResult] = []
    aggregates: dict[str, dict[str, Aggregate]] = {}
    for run, paths in write_seed_outputs(root).items():
        per_seed = []
        for path in paths:
            metrics, problems = read_metrics([path], None, None)
            assert problems == []
            per_seed.append({k.removeprefix("eval."): v for k, v in metrics.items() if k != "seed"})
        aggregates[run] = aggregate(per_seed)
    means = {run: {k: a.mean for k, a in aggs.items()} for run, aggs in aggregates.items()}
    for run, (mid, name, system, accs, must) in PLAN.items():
        verdict = evaluate(parse_criterion(CRITERIA[run], default_metric="acc"), means[run], means)
        runs.append(RunResult(run, mid, name, system, "DONE", aggregates[run], "acc", verdict,
                              f"python train.py --run {run} --seed 0", "lr=0.1", None, must, len(accs),
                              baseline_run="R002" if mid == "M2" else None))
    return runs


def verdicts_of(runs: list[RunResult]) -> dict[str, str]:
    by_milestone: dict[str, list[Verdict]] = {}
    for r in runs:
        by_milestone.setdefault(r.milestone, []).append(r.verdict)  # type: ignore[arg-type]
    return {m: milestone_verdict(v) for m, v in by_milestone.items()}


@pytest.fixture
def runs(tmp_path: Path) -> list[RunResult]:
    return collect(tmp_path / "outputs")


def test_round_trip_and_numbers_recomputed_from_raw_json(tmp_path: Path, runs: list[RunResult]) -> None:
    out = tmp_path / "refine-logs" / "EXPERIMENT_RESULTS.md"
    text = render_results("Tiny plan", "2026-11-26", runs, verdicts_of(runs), "en", "tiny topic")
    write_output(out, text, datetime(2026, 11, 26, 5, 0), tmp_path / "MANIFEST.md")
    doc = parse_results(out.read_text(encoding="utf-8"))
    assert doc["title"] == "Initial Experiment Results"
    assert doc["keys"]["Date"] == "2026-11-26" and doc["keys"]["Plan"] == "refine-logs/EXPERIMENT_PLAN.md"
    assert [(m["id"], m["name"]) for m in doc["milestones"]] == [
        ("M0", "Sanity"), ("M1", "Baselines"), ("M2", "Main Method")]
    assert all(m["header"] == TABLE_HEADER for m in doc["milestones"])
    rows = {r["run"]: (m["id"], r) for m in doc["milestones"] for r in m["runs"]}
    assert set(rows) == set(PLAN)
    for run_id, (mid, row) in rows.items():
        milestone, _, system, accs, _ = PLAN[run_id]
        raw = [json.loads(p.read_text())["eval"]["acc"]
               for p in sorted((tmp_path / "outputs" / run_id).glob("seed*/results.json"))]
        assert raw == accs
        assert mid == milestone and row["system"] == system and row["status"] == "DONE"
        metric = row["metric"]
        assert metric["name"] == "acc" and metric["n"] == len(raw)
        assert metric["mean"] == pytest.approx(np.mean(raw), rel=1e-3)
        assert metric["std"] == pytest.approx(np.std(raw, ddof=1) if len(raw) > 1 else 0.0, rel=1e-2, abs=1e-12)
    gain = (np.mean(PLAN["R003"][3]) / np.mean(PLAN["R002"][3]) - 1) * 100
    assert f"{gain:+.1f}% vs R002" in rows["R003"][1]["key_metric"]


def test_markers_and_summary_follow_the_verdicts(runs: list[RunResult]) -> None:
    verdicts = verdicts_of(runs)
    # R003: +4.8% over R002 (pass); R004 the nice-to-have: +2.4% (pass)
    assert verdicts == {"M0": "positive", "M1": "positive", "M2": "positive"}
    doc = parse_results(render_results("", "2026-11-26", runs, verdicts, "en", "tiny topic"))
    assert [m["marker"] for m in doc["milestones"]] == ["PASSED", "PASSED", "PASSED"]
    assert doc["summary"] == {"must_done": 3, "must_total": 3, "main_result": "positive", "ready": "YES"}
    assert doc["next_step"] == '→ /auto-review-loop "tiny topic"'


def test_failed_must_run_means_not_ready(runs: list[RunResult]) -> None:
    runs[2].status, runs[2].error, runs[2].metrics, runs[2].verdict = "FAILED", "exit 1: ValueError", {}, None
    text = render_results("", "d", runs, {"M2": "inconclusive"}, "en", "t")
    doc = parse_results(text)
    assert doc["summary"] == {"must_done": 2, "must_total": 3, "main_result": "inconclusive", "ready": "NO"}
    m2 = doc["milestones"][2]
    assert m2["marker"] == "INCONCLUSIVE"
    assert m2["runs"][0] == {"run": "R003", "system": "ours", "key_metric": "—", "status": "FAILED",
                             "metric": None}
    assert "- R003: FAILED — exit 1: ValueError" in text.splitlines()
    assert "Not ready yet" in text


def test_open_runs_hold_a_milestone_unless_overtime(runs: list[RunResult]) -> None:
    runs[3].status = "RUNNING"
    doc = parse_results(render_results("", "d", runs, {"M2": "positive"}, "en", "t"))
    assert doc["milestones"][2]["marker"] == "IN PROGRESS"
    runs[3].overtime = True
    text = render_results("", "d", runs, {"M2": "positive"}, "en", "t")
    assert parse_results(text)["milestones"][2]["marker"] == "PASSED"
    assert "- OVERTIME: R004 (flagged, not waited for)" in text.splitlines()


def test_tables_are_real_four_column_tables(runs: list[RunResult]) -> None:
    text = render_results("", "d", runs, verdicts_of(runs), "en", "t")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables = [i for i, t in enumerate(tokens) if t.type == "table_open"]
    assert len(tables) == 3
    header_cells = [tokens[i + 1].content for i, t in enumerate(tokens[:-1])
                    if t.type == "th_open"]
    assert header_cells == list(TABLE_HEADER) * 3
    body_cells = [tokens[i + 1].content for i, t in enumerate(tokens[:-1]) if t.type == "td_open"]
    assert len(body_cells) == 4 * len(PLAN)
    assert "ours|wide" in body_cells  # the escaped bar stays inside its cell


def test_chinese_prose_with_english_keys(runs: list[RunResult]) -> None:
    verdicts = verdicts_of(runs)
    zh = render_results("小实验", "2026-11-26", runs, verdicts, "zh", "tiny topic")
    en = render_results("小实验", "2026-11-26", runs, verdicts, "en", "tiny topic")
    assert CJK.search(zh)
    parsed_zh, parsed_en = parse_results(zh), parse_results(en)
    assert parsed_zh == parsed_en
    machine = [line for line in zh.splitlines()
               if line.startswith(("#", "**Date", "**Plan", "|", "- Main result", "- Ready", "→"))]
    assert machine and not any(CJK.search(line) for line in machine)
    assert "- Main result: positive" in zh and "- Ready for /auto-review-loop: YES" in zh
    prose = [line for line in zh.splitlines() if line not in en.splitlines()]
    assert prose and all(CJK.search(line) for line in prose)
    assert "- [3/3] 项必做实验已完成" in zh


def test_compact_entry_has_the_exact_command(runs: list[RunResult]) -> None:
    run = runs[2]
    run.reproduce = "python train.py --name 'a`b' --seed 42"
    entry = compact_log_entry(run, "2026-11-26 05:00", "positive")
    lines = entry.splitlines()
    assert lines[0] == "## R003 — 2026-11-26 05:00"
    assert lines[1:5] == ["- **System**: ours", "- **Config**: lr=0.1",
                          f"- **Result**: {format_metric('acc', run.metrics['acc'])}", "- **Verdict**: positive"]
    code = MarkdownIt("commonmark").parseInline(lines[5])[0].children
    assert [c.content for c in code if c.type == "code_inline"] == [run.reproduce]


def test_full_entry_for_a_failure(runs: list[RunResult]) -> None:
    run = runs[3]
    run.status, run.error, run.metrics, run.verdict = "FAILED", "CUDA OOM detected", {}, None
    entry = full_log_entry(run, "2026-11-26 05:00", dataset="toy", hardware="1x CPU",
                           wandb_url="https://wandb.ai/e/p/runs/abc")
    lines = entry.splitlines()
    assert lines[0] == "## Experiment: R004 — ours|wide"
    for heading in ("### Setup", "### Results", "### Verdict", "### Reproduction", "### WandB"):
        assert heading in lines
    assert "| ours\\|wide | toy | — | FAILED: CUDA OOM detected |" in lines
    assert "- **Supports claim?**: No" in lines
    assert lines[lines.index("```bash") + 1] == run.reproduce
    assert "- **Run URL**: https://wandb.ai/e/p/runs/abc" in lines
    assert entry.endswith("\n---\n\n")  # a blank line keeps the next appended entry apart


def test_full_entry_results_table_lists_metrics(runs: list[RunResult]) -> None:
    entry = full_log_entry(runs[1], "t")
    assert "| Method | Dataset | acc | loss | Notes |" in entry
    assert entry.count("### Reproduction") == 1


@given(mean=st.floats(-1e6, 1e6, allow_nan=False), std=st.floats(0, 1e3, allow_nan=False),
       n=st.integers(1, 20))
def test_metric_cell_round_trip(mean: float, std: float, n: int) -> None:
    parsed = parse_metric_cell(format_metric("val/acc", Aggregate(mean, std if n > 1 else 0.0, n)))
    assert parsed is not None and parsed["name"] == "val/acc" and parsed["n"] == n
    assert parsed["mean"] == pytest.approx(mean, rel=1e-3, abs=1e-3)
    assert parsed["std"] == pytest.approx(std if n > 1 else 0.0, rel=1e-3, abs=1e-3)


def test_multiline_command_is_kept_exactly(runs: list[RunResult]) -> None:
    run = runs[1]
    run.reproduce = "python train.py \\\n  --lr 0.1 \\\n  --seed 42"
    entry = compact_log_entry(run, "t", "positive")
    blocks = [t for t in MarkdownIt("commonmark").parse(entry) if t.type == "fence"]
    assert len(blocks) == 1 and blocks[0].content == run.reproduce + "\n"
    full = [t for t in MarkdownIt("commonmark").parse(full_log_entry(run, "t")) if t.type == "fence"]
    assert full[0].content == run.reproduce + "\n"


def test_multiline_error_stays_on_one_bullet(runs: list[RunResult]) -> None:
    runs[0].status, runs[0].error = "FAILED", "Traceback:\n  File x\nValueError | bad"
    text = render_results("", "d", runs, {}, "en", "t")
    assert "- R001: FAILED — Traceback: File x ValueError | bad" in text.splitlines()
    assert parse_results(text)["milestones"][0]["runs"][0]["status"] == "FAILED"


def test_main_milestone_is_found_by_word() -> None:
    def run(mid: str, name: str) -> RunResult:
        return RunResult("R" + mid, mid, name, "s", "DONE", {}, None, None, "", "", None, True, 1)
    runs = [run("M1", "Domain shift"), run("M3", "Main experiments"), run("M4", "Ablations")]
    text = render_results("", "d", runs, {"M1": "negative", "M3": "positive", "M4": "negative"}, "en", "t")
    assert parse_results(text)["summary"]["main_result"] == "positive"
    text = render_results("", "d", runs, {"M1": "negative", "M3": "positive", "M4": "negative"}, "en", "t",
                          main_milestone="M4")
    assert parse_results(text)["summary"]["main_result"] == "negative"


def test_tracker_note(runs: list[RunResult]) -> None:
    done = runs[2]
    assert tracker_note(done) == f"{format_metric('acc', done.metrics['acc'])}; criterion pass"
    failed = runs[3]
    failed.status, failed.error, failed.overtime = "STUCK", "oom 3/3\nCUDA OOM", True
    assert tracker_note(failed) == "oom 3/3 CUDA OOM; OVERTIME (past 2x estimate)"
