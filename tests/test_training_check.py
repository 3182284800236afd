"""ARIS training-check: NaN/Inf, divergence, spikes, plateaus -> CONTINUE / WAIT / STOP (F85)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from handlers.training_check import (check_history, check_log, check_wandb, next_interval, parse_log,
                                     report, series)

FALLING = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.52, 0.5]


def rows(values: list[float], key: str = "train/loss") -> list[dict[str, Any]]:
    return [{"_step": 10 * i, key: v, "train/lr": 1e-3} for i, v in enumerate(values)]


class FakeRun:
    """The slice of wandb.apis.public.Run the check uses: history(samples, pandas) and url."""

    def __init__(self, history: list[dict[str, Any]]) -> None:
        self._history = history
        self.url = "https://wandb.ai/team/proj/runs/abc123"
        self.calls: list[dict[str, Any]] = []

    def history(self, samples: int = 500, pandas: bool = True, **_: Any) -> list[dict[str, Any]]:
        self.calls.append({"samples": samples, "pandas": pandas})
        assert not pandas, "the check must not need pandas"
        return self._history


class FakeApi:
    def __init__(self, runs: dict[str, FakeRun] | None = None, error: Exception | None = None) -> None:
        self.runs, self.error = runs or {}, error

    def run(self, path: str) -> FakeRun:
        if self.error is not None:
            raise self.error
        if path not in self.runs:
            raise ValueError(f"Could not find run {path}")
        return self.runs[path]


def test_log_with_loss_nan_is_stopped(tmp_path: Path) -> None:
    log = tmp_path / "R001.a1.log"
    log.write_text("".join(f"step={10 * i} loss={v}\n" for i, v in enumerate(FALLING[:6]))
                   + "warning: overflow\nstep=60 loss=nan\n")
    verdict = check_log(log)
    assert verdict.decision == "STOP"
    assert verdict.source == "log_fallback"
    assert [(a.kind, a.metric, a.step) for a in verdict.anomalies] == [("nan", "loss", 60.0)]
    assert "loss is nan at step 60" in verdict.reasons[0]
    assert not verdict.needs_review


def test_colon_form_and_inf() -> None:
    verdict = check_history(parse_log("loss: 0.9\nloss: 0.8\nloss: inf\n"), "log_fallback")
    assert verdict.decision == "STOP" and "inf" in verdict.reasons[0]


def test_nan_that_recovered_is_not_a_stop() -> None:
    verdict = check_history(rows(FALLING[:5] + [math.nan] + FALLING[5:]))
    assert verdict.decision == "WAIT" and verdict.needs_review
    assert "finite again" in verdict.reasons[0]


def test_falling_loss_continues() -> None:
    verdict = check_history(rows(FALLING))
    assert verdict.decision == "CONTINUE" and verdict.anomalies == []
    assert verdict.recent == {"train/loss": 0.5, "train/lr": 1e-3}
    assert verdict.steps == len(FALLING)


def test_divergence_stops() -> None:
    verdict = check_history(rows(FALLING[:8] + [1.5, 2.2, 3.0, 4.5, 7.0]))
    assert verdict.decision == "STOP"
    assert [a.kind for a in verdict.anomalies] == ["divergence"]
    assert "rose from its best 0.65" in verdict.reasons[0]


def test_one_bad_point_is_not_divergence() -> None:
    verdict = check_history(rows(FALLING + [3.0, 0.48, 0.47]))
    assert verdict.decision == "CONTINUE"  # a recovered spike is noted, not acted on
    assert [(a.kind, a.severity) for a in verdict.anomalies] == [("spike", "info")]


def test_unrecovered_spike_waits() -> None:
    verdict = check_history(rows(FALLING + [9.0]))
    assert verdict.decision == "WAIT" and verdict.needs_review
    assert verdict.anomalies[0].kind == "spike"


def test_plateau_waits_for_review() -> None:
    verdict = check_history(rows([2.0, 1.5, 1.2, 1.0] + [0.9, 0.901, 0.899, 0.9] * 5))
    assert verdict.decision == "WAIT"
    assert [a.kind for a in verdict.anomalies] == ["plateau"]
    assert verdict.needs_review


def test_exploding_grad_norm_waits() -> None:
    history = [{"step": i, "loss": v, "grad_norm": 1.0 if i < 10 else 500.0} for i, v in enumerate(FALLING)]
    verdict = check_history(history)
    assert verdict.decision == "WAIT" and verdict.anomalies[0].kind == "grad_explosion"


def test_too_early_or_nothing_to_judge_waits_without_review() -> None:
    early = check_history(rows([2.0, 1.5]))
    assert early.decision == "WAIT" and not early.needs_review and "too early" in early.reasons[0]
    no_loss = check_history([{"step": 1, "acc": 0.5}, {"step": 2, "acc": 0.6}])
    assert no_loss.decision == "WAIT" and "no loss-like metric" in no_loss.reasons[0]


def test_series_uses_step_keys_and_skips_non_numbers() -> None:
    got = series([{"_step": 5, "loss": 1.0, "img": {"_type": "image"}, "note": "warmup"},
                  {"_step": 6, "loss": "NaN", "_runtime": 3.2}, {"loss": None}])
    assert list(got) == ["loss"]
    assert got["loss"][0] == (5.0, 1.0) and got["loss"][1][0] == 6.0 and math.isnan(got["loss"][1][1])


def test_fake_wandb_api_ok() -> None:
    run = FakeRun(rows(FALLING))
    verdict = check_wandb(FakeApi({"team/proj/abc123": run}), "team/proj/abc123")
    assert verdict.source == "wandb_ok" and verdict.decision == "CONTINUE"
    assert verdict.url == "https://wandb.ai/team/proj/runs/abc123"
    assert run.calls == [{"samples": 500, "pandas": False}]


def test_fake_wandb_nan_stops() -> None:
    run = FakeRun(rows(FALLING[:4]) + [{"_step": 40, "train/loss": "NaN"}])
    verdict = check_wandb(FakeApi({"t/p/r": run}), "t/p/r")
    assert verdict.decision == "STOP" and verdict.source == "wandb_ok"


def test_wandb_failure_falls_back_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("".join(f"step={i} loss={v}\n" for i, v in enumerate(FALLING)))
    verdict = check_wandb(FakeApi(error=ConnectionError("api.wandb.ai unreachable")), "t/p/r", log)
    assert verdict.source == "log_fallback" and verdict.decision == "CONTINUE"
    assert "W&B history of t/p/r unavailable (ConnectionError" in verdict.reasons[0]


def test_both_unreachable_waits_and_never_stops(tmp_path: Path) -> None:
    verdict = check_wandb(FakeApi(error=TimeoutError("slow")), "t/p/r", tmp_path / "missing.log")
    assert (verdict.decision, verdict.source) == ("WAIT", "unreachable")
    assert not verdict.needs_review
    assert check_wandb(FakeApi(), "t/p/none").source == "unreachable"


def test_log_tail_is_bounded(tmp_path: Path) -> None:
    from handlers import training_check
    log = tmp_path / "big.log"
    log.write_text("step=0 loss=nan\n" + "".join(f"step={i} loss={v}\n" for i, v in enumerate(FALLING, 1)))
    text = training_check.read_log_tail(log, limit=len(log.read_bytes()) - 5)
    assert "nan" not in text and text.startswith("step=1 ")  # the cut first line is dropped


@pytest.mark.parametrize(("previous", "values", "expected"), [
    (None, FALLING, 10), (10, FALLING, 20), (20, FALLING, 30), (30, FALLING, 60), (60, FALLING, 60),
    (60, FALLING + [9.0], 10),
])
def test_adaptive_interval(previous: int | None, values: list[float], expected: int) -> None:
    assert next_interval(previous, check_history(rows(values))) == expected


def test_report_has_the_aris_fields() -> None:
    verdict = check_history(rows(FALLING[:5] + [math.inf]), url="https://wandb.ai/x")
    text = report(verdict, "R003", next_check_min=10)
    fields = [line.split(":")[0] for line in text.splitlines()]
    assert fields == ["Data source", "Run", "Recent metrics", "Anomalies", "Evidence", "Decision", "Reason"]
    assert "Decision: STOP" in text and "R003 (https://wandb.ai/x)" in text
