"""Random, truncated and mangled plans never make the reader raise."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import plan as plan_mod
from handlers.plan import parse_plan
from tests.plugins.common import CORPUS

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "plans").glob("*.md"))
CORPUS_PLANS = sorted(CORPUS.glob("*/refine-logs/EXPERIMENT_PLAN*.md")) if CORPUS.is_dir() else []
SOURCES = [p.read_text(encoding="utf-8", errors="replace") for p in FIXTURES + CORPUS_PLANS]

FRAGMENTS = st.sampled_from([
    "# Experiment Plan\n", "## Claim Map\n", "## Experiment Blocks\n", "### Block 1: x\n", "### 实验块 2：y\n",
    "## Run Order and Milestones\n", "## 运行顺序\n", "## Compute Budget\n", "## Risks\n",
    "| Milestone | Goal | Runs | Decision Gate | Cost |\n", "|---|---|---|---|---|\n", "| M0: Sanity | a | b |\n",
    "| C1: x | y | z | B1 |\n", "- **Priority**: MUST-RUN\n", "- **优先级**：可选\n", "- **Total estimated GPU-hours**: ~18h\n",
    "```yaml\ncmd: [\n", "```\n", "~~~\n", "---\n", "date: x\n", "\\|", "|", "**", "：", "\n", "  - sub\n", "1. step\n",
    "### M0: Sanity (~5 min)\n", "**Goal:** g\n", "| **Total** | **~2,750** |\n", "\ufeff", "\r\n",
])


def _check(text: str) -> None:
    plan, diags = plan_mod._parse(text, "fuzz.md")  # the inner parser: no safety net
    assert plan.file == "fuzz.md"
    assert all(d.severity in ("error", "warning") for d in diags)
    assert [m.stage for m in plan.milestones] is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_random_text(text):
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=40).map("".join))
def test_plan_shaped_fragments(text):
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SOURCES), st.integers(min_value=0, max_value=50_000), st.integers(min_value=0, max_value=2_000))
def test_truncated_and_cut_real_plans(source, cut, hole):
    _check(source[:cut])
    _check(source[:cut] + source[cut + hole:])


def test_public_entry_never_raises_even_on_odd_types_of_text():
    for text in ("\x00\x01", "|" * 5000, "#" * 10 + " x", "\n" * 10000, "- " * 3000, "```" * 100):
        plan, diags = parse_plan(text, "odd.md")
        assert not any("internal parser error" in d.message for d in diags)
