"""Every real plan in ../shared/corpus parses, and what matters in a few of them is read right."""
from __future__ import annotations

from pathlib import Path

import pytest

from handlers import plan as plan_mod
from handlers.plan import read_plan, summary_line
from tests.plugins.common import CORPUS, corpus_dir

PLANS = sorted(CORPUS.glob("*/refine-logs/EXPERIMENT_PLAN*.md")) if CORPUS.is_dir() else []


def _plan(repo: str, name: str = "EXPERIMENT_PLAN.md"):
    return read_plan(corpus_dir() / repo / "refine-logs" / name)


@pytest.mark.parametrize("path", PLANS, ids=[p.parent.parent.name + "/" + p.name for p in PLANS])
def test_every_corpus_plan_parses(path: Path):
    text = path.read_bytes().decode("utf-8", errors="replace")
    # The inner parser, so the never-raise safety net in parse_plan cannot hide a crash.
    plan, diags = plan_mod._parse(text, str(path))
    assert all(d.file == str(path) and d.line >= 0 for d in diags)
    print(f"\n{path.parent.parent.name}: shape={plan.shape} lang={plan.language} claims={len(plan.claims)} "
          f"blocks={len(plan.blocks)} milestones={len(plan.milestones)} gpu_h={plan.budget.total_gpu_hours} "
          f"risks={len(plan.risks)} warnings={sum(d.severity == 'warning' for d in diags)} "
          f"errors={sum(d.severity == 'error' for d in diags)} | {summary_line(plan)}")


def test_corpus_is_present():
    assert len(list(corpus_dir().glob("*/refine-logs/EXPERIMENT_PLAN*.md"))) >= 20


def test_skill_plan_with_milestone_headings():
    plan, diags = _plan("1llusion-ai__ERE-DCQG")
    assert plan.shape == "skill" and plan.date == "2026-05-15"
    assert [c.id for c in plan.claims] == ["C1", "C2"] and plan.claims[1].blocks == ["B3", "B4"]
    assert [(b.number, b.priority) for b in plan.blocks] == [(1, "must"), (2, "must"), (3, "must"), (4, "must"), (5, "nice")]
    assert [m.id for m in plan.milestones] == ["M0", "M1", "M2", "M3", "M4"]
    assert plan.milestones[0].runs.startswith("R001, R002") and plan.milestones[1].cost_hours == 22.0
    assert plan.budget.total_gpu_hours == 22.0  # from the **Total** row of the budget table
    assert not [d for d in diags if d.severity == "error"]


def test_skill_plan_with_run_order_table():
    plan, _ = _plan("Lucas-Jin-Qh__JORA")
    assert [(m.id, m.name, m.cost_hours) for m in plan.milestones][:2] == [("M0", "Sanity", 2.0), ("M1", "LR Sweep", 6.0)]
    assert plan.milestones[0].stage == "sanity" and plan.budget.total_gpu_hours == 140.0
    assert len(plan.blocks) == 8 and plan.blocks[0].number == 0 and len(plan.risks) == 6


def test_chinese_plan():
    plan, _ = _plan("PengchengFang-cs__MoGeFlow")
    assert (plan.shape, plan.language) == ("zh", "zh")
    assert [c.id for c in plan.claims] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert plan.blocks[1].priority == "must" and len(plan.milestones) == 8


def test_chinese_milestone_headings_with_priorities():
    plan, _ = _plan("yangyangtiaoguo__grokking")
    assert [(m.id, m.priority, m.cost_hours) for m in plan.milestones][:2] == [("M0", "must", 0.0833), ("M1", "must", 5.6)]
    assert plan.milestones[-1].priority == "nice"


def test_pointer_to_a_missing_plan_is_an_error_naming_the_target():
    _, diags = _plan("Jatshi__robust-speaker-cloning")
    errors = [d for d in diags if d.severity == "error"]
    assert len(errors) == 1 and "points to ./EXPERIMENT_PLAN_20260903_PROMPT_FEATURE.md" in errors[0].message


def test_pointer_to_a_sibling_plan_is_followed_with_a_warning():
    plan, diags = _plan("0x-mpkane6__dns-poisoning-lab")
    assert plan.file.endswith("EXPERIMENT_PLAN_20260813_163156.md")
    assert diags[0].file.endswith("refine-logs/EXPERIMENT_PLAN.md") and diags[0].line == 1
    assert "points to EXPERIMENT_PLAN_20260813_163156.md" in diags[0].message
    assert not [d for d in diags if d.severity == "error"]


def test_vietnamese_timestamped_plan():
    plan, _ = _plan("0x-mpkane6__dns-poisoning-lab", "EXPERIMENT_PLAN_20260813_163156.md")
    assert [b.number for b in plan.blocks] == [1, 2, 3, 4] and len(plan.milestones) == 5
    assert {b.priority for b in plan.blocks} == {"must"}  # from the "## Must-run blocks" heading
