"""Success criteria: the string and mapping forms, evaluation, milestone verdicts, the 2x rule."""
from __future__ import annotations

import re

import pytest

from handlers.criteria import (
    Criterion, Verdict, criterion_problems, estimate_hours, evaluate, milestone_verdict, overtime,
    parse_criterion,
)
from tests.plugins.common import corpus_dir

BASE = {"R001": {"acc": 0.90, "loss": 1.0, "zero": 0.0}}


@pytest.mark.parametrize("spec,expected", [
    ("acc > 0.9", Criterion("acc", ">", 0.9, None, None, None)),
    ("acc>=0.9", Criterion("acc", ">=", 0.9, None, None, None)),
    ("val/loss <= 1e-3", Criterion("val/loss", "<=", 0.001, None, None, None)),
    ("acc ≥ 0.9", Criterion("acc", ">=", 0.9, None, None, None)),
    ("+2% over R001", Criterion("key", ">=", None, 2.0, "R001", None)),
    ("acc +2% over R001", Criterion("acc", ">=", None, 2.0, "R001", None)),
    ("loss -5% over R001", Criterion("loss", "<=", None, -5.0, "R001", None)),
    ("acc > 2% vs R001", Criterion("acc", ">", None, 2.0, "R001", None)),
    ("acc >= 0.02 over R001", Criterion("acc", ">=", 0.02, None, "R001", None)),
    ("> 0.9", Criterion("key", ">", 0.9, None, None, None)),
])
def test_string_forms(spec: str, expected: Criterion) -> None:
    assert parse_criterion(spec, default_metric="key") == expected


@pytest.mark.parametrize("spec", [
    "Loss decreases steadily",
    "> 2% accuracy over baseline",       # the ARIS example: "baseline" is not a run id
    "acc > 90%",                         # 0.9 or 90? a judge decides
    "each component contributes > 0.5%",
    "acc 0.9",
    "",
])
def test_prose_forms_need_review(spec: str) -> None:
    c = parse_criterion(spec, default_metric="acc")
    assert c.prose == spec.strip() and c.value is None and c.relative_pct is None
    verdict = evaluate(c, {"acc": 0.95}, BASE)
    assert verdict.outcome == "needs_review" and spec.strip() in verdict.reason


def test_a_form_without_metric_or_default_is_prose() -> None:
    assert parse_criterion("> 0.9").prose == "> 0.9"


def test_mapping_forms() -> None:
    assert parse_criterion({"metric": "acc", "op": ">=", "value": 0.9}) == \
        Criterion("acc", ">=", 0.9, None, None, None)
    assert parse_criterion({"metric": "acc", "over": "R001", "by_pct": 2}) == \
        Criterion("acc", ">=", None, 2.0, "R001", None)
    assert parse_criterion({"metric": "loss", "over": "R001", "by_pct": -5}) == \
        Criterion("loss", "<=", None, -5.0, "R001", None)
    assert parse_criterion({"over": "R001", "by": 0.01}, default_metric="acc") == \
        Criterion("acc", ">=", 0.01, None, "R001", None)


@pytest.mark.parametrize("spec,message", [
    ({"metric": "acc", "op": "~", "value": 0.9}, "op '~' is not one of"),
    ({"metric": "acc", "op": ">", "value": "high"}, "value 'high' is not a number"),
    ({"metric": "acc", "op": ">"}, "exactly one of"),
    ({"metric": "acc", "by_pct": 2}, "need 'over"),
    ({"metric": "acc", "value": 0.9}, "needs an 'op'"),
    ({"op": ">", "value": 0.9}, "no 'metric'"),
    ({"metric": "acc", "op": ">", "value": 0.9, "treshold": 1}, "unknown key(s) treshold"),
])
def test_bad_mapping_is_explained_and_becomes_prose(spec: dict, message: str) -> None:
    problems = criterion_problems(spec)
    assert any(message in p for p in problems), problems
    c = parse_criterion(spec)
    assert c.prose is not None and message in c.prose
    assert evaluate(c, {"acc": 1.0}, BASE).outcome == "needs_review"


def test_valid_forms_have_no_problems() -> None:
    assert criterion_problems({"metric": "acc", "op": ">=", "value": 0.9}) == []
    assert criterion_problems({"metric": "acc", "over": "R001", "by_pct": 2}) == []
    assert criterion_problems("anything at all") == []


@pytest.mark.parametrize("spec,value,outcome", [
    ("acc > 0.9", 0.91, "pass"),
    ("acc > 0.9", 0.9, "fail"),
    ("acc >= 0.9", 0.9, "pass"),
    ("acc < 0.5", 0.7, "fail"),
    ("acc +2% over R001", 0.918, "pass"),   # exactly +2.0%
    ("acc +2% over R001", 0.917, "fail"),
    ("acc > 2% over R001", 0.95, "pass"),
    ("acc >= 0.02 over R001", 0.93, "pass"),
    ("acc >= 0.02 over R001", 0.91, "fail"),
    ("acc == 0.5", float("nan"), "fail"),
])
def test_evaluate_numbers(spec: str, value: float, outcome: str) -> None:
    verdict = evaluate(parse_criterion(spec), {"acc": value}, BASE)
    assert verdict.outcome == outcome, verdict.reason
    assert "acc" in verdict.reason


def test_lower_is_better_relative() -> None:
    c = parse_criterion("loss -5% over R001")
    assert evaluate(c, {"loss": 0.94}, BASE).outcome == "pass"
    assert evaluate(c, {"loss": 0.96}, BASE).outcome == "fail"


def test_evaluate_reports_what_is_missing() -> None:
    c = parse_criterion("acc +2% over R001")
    assert evaluate(c, {"loss": 1.0}, BASE) == Verdict("missing", "acc not found in the results")
    other = parse_criterion("acc +2% over R009")
    verdict = evaluate(other, {"acc": 1.0}, BASE)
    assert verdict.outcome == "missing" and "R009" in verdict.reason
    zero = evaluate(parse_criterion("zero +2% over R001"), {"zero": 1.0}, BASE)
    assert zero.outcome == "needs_review" and "undefined" in zero.reason


def test_reason_names_the_numbers() -> None:
    verdict = evaluate(parse_criterion("acc +2% over R001"), {"acc": 0.918}, BASE)
    assert verdict.reason == "acc 0.918 vs R001 0.9: +2.00% (needs >= 2%)"


@pytest.mark.parametrize("outcomes,expected", [
    (["pass", "pass"], "positive"),
    (["pass", "fail"], "negative"),
    (["needs_review", "fail"], "negative"),
    (["pass", "needs_review"], "inconclusive"),
    (["pass", "missing"], "inconclusive"),
    ([], "inconclusive"),
])
def test_milestone_verdict(outcomes: list[str], expected: str) -> None:
    assert milestone_verdict([Verdict(o, "") for o in outcomes]) == expected  # type: ignore[arg-type]


def test_overtime_is_strictly_past_twice_the_estimate() -> None:
    assert not overtime(4.0, 2.0)
    assert overtime(4.01, 2.0)
    assert not overtime(100.0, None)
    assert not overtime(100.0, 0.0)


def test_estimate_hours_prefers_the_job_estimate() -> None:
    assert estimate_hours(1.5, 12.0, 4) == 1.5
    assert estimate_hours(None, 12.0, 4) == 3.0
    assert estimate_hours(None, None, 4) is None
    assert estimate_hours(None, 12.0, 0) is None


def test_nested_result_keys_are_found_by_plain_name() -> None:
    c = parse_criterion("acc +2% over R001")
    assert evaluate(c, {"eval.acc": 0.95}, {"R001": {"eval.acc": 0.9}}).outcome == "pass"


def test_corpus_criteria_never_crash_or_misparse() -> None:
    """Real plans state criteria in prose (English and Chinese); none may turn into a wrong number."""
    seen = 0
    for path in sorted(corpus_dir().rglob("*.md")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = re.search(r"success criteri(?:on|a)\**\s*[:：]\**\s*(.*)", line, re.IGNORECASE)
            if not match:
                continue
            seen += 1
            text = match[1].strip(" *")
            c = parse_criterion(text, default_metric="acc")
            assert c.prose == text or (c.metric in text and c.op), (path, text, c)
            assert evaluate(c, {"acc": 0.5}, {}).outcome in ("pass", "fail", "needs_review", "missing")
    assert seen >= 20
