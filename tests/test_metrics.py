"""Metric collection from result files and logs, and aggregation over seeds."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from handlers.metrics import (
    LOG_TAIL_BYTES, Aggregate, aggregate, expand_outputs, format_delta, format_metric, lookup, parse_log_lines,
    read_metrics,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_nested_json_keys_are_flattened_and_only_numbers_kept(tmp_path: Path) -> None:
    doc = {"eval": {"acc": 0.91, "top": {"k5": 0.99}}, "epoch": 10, "name": "run-a",
           "converged": True, "history": [0.1, 0.2], "loss": float("nan")}
    path = write(tmp_path / "results.json", json.dumps(doc))
    metrics, problems = read_metrics([path], None, None)
    assert problems == []
    assert set(metrics) == {"eval.acc", "eval.top.k5", "epoch", "loss"}
    assert metrics["eval.acc"] == 0.91 and metrics["eval.top.k5"] == 0.99 and metrics["epoch"] == 10.0
    assert math.isnan(metrics["loss"])  # kept: the training check must see a NaN, not lose it


def test_csv_last_row_named_row_and_long_format(tmp_path: Path) -> None:
    wide = write(tmp_path / "log.csv", "split,acc,loss\ntrain,0.95,0.1\nval,0.90,0.2\ntest,0.88,0.25\n")
    metrics, problems = read_metrics([wide], None, None)
    assert problems == [] and metrics == {"acc": 0.88, "loss": 0.25}
    metrics, _ = read_metrics([wide], None, None, csv_row="val")
    assert metrics == {"acc": 0.90, "loss": 0.2}
    long = write(tmp_path / "summary.csv", "metric,value\nacc,0.7\nf1,0.65\nnote,n/a\n")
    assert read_metrics([long], None, None)[0] == {"acc": 0.7, "f1": 0.65}
    tsv = write(tmp_path / "r.tsv", "acc\tloss\n0.5\t1e-3\n")
    assert read_metrics([tsv], None, None)[0] == {"acc": 0.5, "loss": 0.001}


def test_named_csv_row_that_does_not_exist_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "split,acc\ntrain,0.9\n")
    metrics, problems = read_metrics([path], None, None, csv_row="test")
    assert metrics == {}
    assert len(problems) == 1 and str(path) in problems[0] and "'test'" in problems[0]


def test_jsonl_last_record_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "evals.jsonl", '{"step": 1, "acc": 0.5}\n{"step": 2, "acc": 0.6}\n\n')
    assert read_metrics([path], None, None)[0] == {"step": 2.0, "acc": 0.6}


def test_log_fallback_only_when_files_give_nothing(tmp_path: Path) -> None:
    log = write(tmp_path / "job.log", "epoch 1 | loss=0.9 acc: 0.40\n"
                                      "[12:30:01] epoch 2 | loss=0.5 acc: 0.81.\n"
                                      "version: 1.2.3 lr=1e-3\n")
    metrics, problems = read_metrics([], log, None)
    assert problems == []
    assert metrics == {"loss": 0.5, "acc": 0.81, "lr": 0.001}
    result = write(tmp_path / "r.json", '{"acc": 0.8}')
    assert read_metrics([result], log, None)[0] == {"acc": 0.8}


def test_log_fallback_after_unparsable_file_keeps_the_problem(tmp_path: Path) -> None:
    bad = write(tmp_path / "r.json", '{"acc": 0.8')
    log = write(tmp_path / "job.log", "final acc=0.77\n")
    metrics, problems = read_metrics([bad], log, None)
    assert metrics == {"acc": 0.77}
    assert len(problems) == 1 and str(bad) in problems[0] and "line 1" in problems[0]


def test_log_tail_is_bounded_but_sees_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("w") as fh:
        fh.write("early_only=1\n")
        fh.write(("step noise " * 10 + "\n") * (LOG_TAIL_BYTES // 100 + 10))
        fh.write("test_acc=0.66\n")
    metrics, _ = read_metrics([], log, None)
    assert metrics == {"test_acc": 0.66}


def test_stale_file_is_ignored_and_named(tmp_path: Path) -> None:
    started = time.time()
    stale = write(tmp_path / "old.json", '{"acc": 0.99}')
    os.utime(stale, (started - 3600, started - 3600))
    fresh = write(tmp_path / "new.json", '{"loss": 0.3}')
    metrics, problems = read_metrics([stale, fresh], None, started)
    assert metrics == {"loss": 0.3}
    assert len(problems) == 1 and str(stale) in problems[0] and "before the job started" in problems[0]


def test_a_file_written_in_the_start_second_is_not_stale(tmp_path: Path) -> None:
    # whole-second mtimes (NFS) on a job that finished within the second it started
    path = write(tmp_path / "r.json", '{"acc": 0.5}')
    started = path.stat().st_mtime + 0.9
    assert read_metrics([path], None, started) == ({"acc": 0.5}, [])


@pytest.mark.parametrize("name,text,expect", [
    ("broken.json", '{"acc": ', "line 1"),
    ("list.json", "[1, 2]", "JSON object"),
    ("empty.csv", "", "header row"),
    ("words.json", '{"acc": "high"}', "no numeric metrics"),
])
def test_unparsable_file_is_named_never_raised(tmp_path: Path, name: str, text: str, expect: str) -> None:
    path = write(tmp_path / name, text)
    good = write(tmp_path / "good.json", '{"f1": 0.5}')
    metrics, problems = read_metrics([path, good], None, None)
    assert metrics == {"f1": 0.5}
    assert len(problems) == 1 and problems[0].startswith(str(path)) and expect in problems[0]


def test_missing_file_and_binary_garbage_are_problems(tmp_path: Path) -> None:
    garbage = tmp_path / "r.json"
    garbage.write_bytes(b"\x00\xff\xfe\x80" * 100)
    metrics, problems = read_metrics([tmp_path / "absent.json", garbage], None, None)
    assert metrics == {}
    assert [p.split(":")[0] for p in problems] == [str(tmp_path / "absent.json"), str(garbage)]
    assert "not found" in problems[0]


def test_later_file_wins_on_key_clash(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", '{"acc": 0.1, "x": 1}')
    b = write(tmp_path / "b.json", '{"acc": 0.2}')
    assert read_metrics([a, b], None, None)[0] == {"acc": 0.2, "x": 1.0}


def test_aggregate_matches_numpy_sample_std() -> None:
    seeds = [{"acc": 0.91, "loss": 0.30}, {"acc": 0.93, "loss": 0.28}, {"acc": 0.90}]
    agg = aggregate(seeds)
    assert agg["acc"].n == 3 and agg["loss"].n == 2
    assert agg["acc"].mean == pytest.approx(np.mean([0.91, 0.93, 0.90]))
    assert agg["acc"].std == pytest.approx(np.std([0.91, 0.93, 0.90], ddof=1))
    assert agg["loss"].std == pytest.approx(np.std([0.30, 0.28], ddof=1))
    assert aggregate([{"acc": 0.5}]) == {"acc": Aggregate(0.5, 0.0, 1)}
    assert aggregate([]) == {}


def test_format_metric() -> None:
    assert format_metric("acc", Aggregate(0.912, 0.004, 3)) == "acc=0.912±0.004 (n=3)"
    assert format_metric("acc", Aggregate(0.912, 0.0, 1)) == "acc=0.912 (n=1)"
    assert format_metric("ppl", Aggregate(12345.678, 12.5, 2)) == "ppl=12345.7±12.5 (n=2)"
    assert format_metric("lr", Aggregate(3e-5, 0.0, 1)) == "lr=3.000e-05 (n=1)"
    assert format_metric("loss", Aggregate(float("nan"), float("nan"), 2)) == "loss=nan±nan (n=2)"


def test_format_delta() -> None:
    assert format_delta(0.918, 0.9, "R001") == "+2.0% vs R001"
    assert format_delta(0.5, 0.0, "R001") == "+0.5 vs R001"
    assert format_delta(-1.1, -1.0, "R002") == "-10.0% vs R002"


def test_log_pairs_reject_times_and_versions() -> None:
    assert parse_log_lines("at 12:30:01 v: 1.2.3 speed=3.5it/s") == {}
    assert parse_log_lines("Epoch: 3, val/acc=0.5, train-loss: 2e-1") == {
        "Epoch": 3.0, "val/acc": 0.5, "train-loss": 0.2}


def test_lookup_by_plain_name() -> None:
    metrics = {"eval.acc": 0.9, "train/loss": 0.3, "val.f1": 0.5, "test.f1": 0.4}
    assert lookup(metrics, "acc") == ("eval.acc", 0.9)
    assert lookup(metrics, "LOSS") == ("train/loss", 0.3)
    assert lookup(metrics, "eval.acc") == ("eval.acc", 0.9)
    assert lookup(metrics, "f1") is None  # two candidates: ambiguous, never a guess
    assert lookup(metrics, "bleu") is None


def test_expand_outputs_newest_last_and_unmatched_named(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    old = write(tmp_path / "out" / "b.json", '{"acc": 0.1}')
    new = write(tmp_path / "out" / "a.json", '{"acc": 0.2}')
    os.utime(old, (1000, 1000))
    paths, problems = expand_outputs(tmp_path, ["out/*.json", "missing/*.csv", str(new)])
    assert paths == [old, new]
    assert problems == [f"{tmp_path / 'missing/*.csv'}: no file matches"]
    assert read_metrics(paths, None, None)[0] == {"acc": 0.2}
