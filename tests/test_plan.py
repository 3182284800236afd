"""EXPERIMENT_PLAN.md reader: the three shapes, drift from them, and the value normalisers."""
from __future__ import annotations

from pathlib import Path

import pytest

from handlers.plan import parse_plan, read_plan, summary_line
from handlers.plan_model import (Milestone, block_refs, classify_stage, order_milestones,
                                 parse_hours, parse_priority, split_claim_label,
                                 split_milestone_label)

PLANS = Path(__file__).parent / "fixtures" / "plans"


def messages(diags, severity=None):
    return [(d.line, d.message) for d in diags if severity in (None, d.severity)]


# ---------------------------------------------------------------- the three shapes

def test_skill_shape_reads_every_section():
    plan, diags = read_plan(PLANS / "skill.md")
    assert (plan.shape, plan.language, plan.date) == ("skill", "en", "2026-05-15")
    assert plan.problem.startswith("Small models forget")
    assert plan.method_thesis.startswith("Replaying rare-token")
    assert [(c.id, c.blocks, c.line) for c in plan.claims] == [("C1", ["B1", "B2"], 13), ("C2", ["B3"], 14)]
    assert plan.claims[0].evidence == "+3pp rare-token accuracy over 3 seeds"
    b1, b2, b3 = plan.blocks
    assert (b1.number, b1.name, b1.priority, b1.line) == (1, "Main anchor — replay vs plain", "must", 24)
    assert b1.dataset.startswith("WikiText-103") and b1.table_target == "Table 1"
    assert "batch 32" in b1.setup and "10k steps" in b1.setup  # sub-bullets continue the field
    assert len(b1.fields) == 10
    assert b1.extension == {"cmd": "python train.py --method replay --seed ${seed}", "seeds": [1, 2, 3], "est_hours": 2}
    assert b2.success == "rare replay > random replay"  # "**Label:** value" form
    assert (b3.priority, b3.name) == ("nice", "Matched compute")  # priority from the heading
    # M2 (ablation) is written first; the order is sanity -> main -> ablation -> polish.
    assert [(m.id, m.stage) for m in plan.milestones] == [
        ("M0", "sanity"), ("M1", "main"), ("M2", "ablation"), ("M3", "polish")]
    assert [m.cost_hours for m in plan.milestones] == [0.5, 12.0, 6.0, 1.0]
    assert plan.milestones[0].risk == "low" and plan.milestones[1].decision_gate == "+3pp"
    assert plan.budget.total_gpu_hours == 19.5 and plan.budget.line == 74
    assert plan.budget.data_needs == "tokenise WikiText-103 once"
    assert plan.risks == ["Replay overfits the buffer: cap the buffer at 5 %", "Seeds disagree: add two seeds"]
    assert messages(diags) == [(58, "Block 3: no why, dataset, systems, setup, success, failure, table_target bullet")]
    assert summary_line(plan) == ("Plan loaded: 4 milestones (sanity → main → ablation → polish), "
                                  "2 must-run, 1 nice-to-have, ~19.5 GPU-hours")


def test_template_shape_plain_labels_and_no_risk_column():
    plan, diags = read_plan(PLANS / "template.md")
    assert plan.shape == "template" and plan.date == ""
    assert [b.priority for b in plan.blocks] == ["must", "nice", None]
    assert plan.blocks[0].claim == "C1" and plan.blocks[0].metrics == "recall@small"
    assert [(m.id, m.name, m.cost_hours, m.risk) for m in plan.milestones] == [
        ("M0", "Sanity", 0.5, ""), ("M1", "Baseline", 4.0, ""), ("M2", "Main", 12.0, ""), ("M2", "Main again", 1.0, "")]
    assert plan.budget.total_gpu_hours == 18.0 and plan.budget.hardware == "1x RTX 4090"
    assert plan.risks == ["adapter underfits → Mitigation: raise the rank"]
    assert (33, "milestone id M2 is used again (first at line 32); runs keyed by milestone will be ambiguous") in messages(diags)
    assert (23, "Block 3: no Priority; expected '- **Priority**: MUST-RUN' or NICE-TO-HAVE") in messages(diags)
    assert not messages(diags, "error")


def test_chinese_template():
    plan, diags = read_plan(PLANS / "zh.md")
    assert (plan.shape, plan.language, plan.title) == ("zh", "zh", "实验计划")
    assert plan.problem == "长上下文检索在 32K 时准确率下降。"
    assert [(c.id, c.text, c.why) for c in plan.claims] == [("C1", "按查询分配优于均匀分配", "主结果")]
    assert [(b.number, b.priority) for b in plan.blocks] == [(1, "must"), (2, "nice")]
    assert plan.blocks[0].systems == "均匀分配，按查询分配" and plan.blocks[0].failure == "预算信号太弱"
    assert [(m.id, m.name, m.stage, m.cost_hours) for m in plan.milestones] == [
        ("M0", "冒烟测试", "sanity", 1.0), ("M1", "主实验", "main", 12.0), ("M2", "消融", "ablation", 4.0)]
    assert plan.milestones[1].runs == "R002-R004" and plan.milestones[1].decision_gate == "EM +2pp"
    assert plan.budget.total_gpu_hours == 17.0 and plan.budget.bottleneck == "主实验"
    assert plan.risks == ["预算信号不稳定 → 缓解：多种子"]
    assert not messages(diags, "error")


# ---------------------------------------------------------------- drift from the templates

def test_milestones_as_headings_with_goal_and_run_table():
    text = """# Experiment Plan
## Run Order and Milestones
### M0: Data pipeline (Days 1-5, ~$30 API)
**Goal:** labels ready.
| Run | Task | Gate |
|---|---|---|
| R001 | stage B | unit test |
| R002 | stage C | — |
**STOP gate:** coverage < 70% stops here.
### M1: Classifier training (~22 GPU-hours)
**Goal:** trained models.
"""
    plan, _ = parse_plan(text, "p.md")
    m0, m1 = plan.milestones
    assert (m0.id, m0.goal, m0.runs, m0.decision_gate, m0.cost_hours) == (
        "M0", "labels ready.", "R001, R002", "coverage < 70% stops here.", None)
    assert (m1.id, m1.cost_hours, m1.line) == ("M1", 22.0, 10)


def test_numbered_run_order_gets_synthesised_ids():
    plan, diags = parse_plan("# Plan\n## Run Order\n1. Profile one model.\n2. Sweep the cost model.\n", "p.md")
    assert [(m.id, m.name, m.line) for m in plan.milestones] == [
        ("M0", "Profile one model.", 3), ("M1", "Sweep the cost model.", 4)]
    assert not messages(diags, "error")


def test_must_and_nice_lines_under_the_run_order_table():
    text = """# P
## Run Order and Milestones
| Milestone | Goal | Runs | Decision Gate | Cost | Risk |
|---|---|---|---|---|---|
| **M0 Sanity** | a | b | c | ~1h | d |
| **M1** Main | a | b | c | ~2h | d |
| M2 Polish | a | b | c | ~3h | d |

**Must-run**: M0, M1. **Nice-to-have**: M2.
"""
    plan, _ = parse_plan(text, "p.md")
    assert [(m.id, m.name, m.priority) for m in plan.milestones] == [
        ("M0", "Sanity", "must"), ("M1", "Main", "must"), ("M2", "Polish", "nice")]
    assert summary_line(plan).endswith("2 must-run, 1 nice-to-have, unknown GPU-hours")


def test_fenced_tables_and_headings_are_ignored():
    text = """# Plan
## Experiment Blocks
```
### Block 7: inside a fence
```
~~~md
| Milestone | Goal |
|---|---|
| M9 | fenced |
~~~
### Block 1: real
- Priority: MUST-RUN
## Run Order
| Milestone | Goal | Runs | Decision Gate | Cost |
|---|---|---|---|---|
| M0: Sanity | ok | 1 | — | ~1h |
"""
    plan, _ = parse_plan(text, "p.md")
    assert [b.number for b in plan.blocks] == [1]
    assert [m.id for m in plan.milestones] == ["M0"]


def test_escaped_and_code_span_pipes_follow_gfm():
    text = """# Plan
## Run Order
| Milestone | Goal | Runs | Decision Gate | Cost |
|---|---|---|---|---|
| M0: Sanity | a \\| b | 1 | — | ~1h |
| M1: Main | `x|y` | 2 | — | ~2h |
"""
    plan, diags = parse_plan(text, "p.md")
    assert plan.milestones[0].goal == "a | b" and plan.milestones[0].cost_hours == 1.0
    assert plan.milestones[1].goal == "`x"  # GFM splits at the unescaped pipe, even in code
    assert (6, "table row has 6 cells but the header (line 3) has 5; an unescaped '|' splits a cell (write it as \\|)") in messages(diags)


def test_front_matter_crlf_and_bom():
    text = "\ufeff---\r\ndate: 2026-04-29\r\nstatus: ready\r\n---\r\n# Experiment Plan\r\n## Run Order\r\n1. one\r\n"
    plan, _ = parse_plan(text, "p.md")
    assert (plan.title, plan.date, [m.line for m in plan.milestones]) == ("Experiment Plan", "2026-04-29", [7])


def test_block_heading_variants():
    text = """# P
## Experiment Blocks
### Block B0: Sanity
- **Priority**: MUST-RUN (first)
### 实验块 2（B2）：消融
- **优先级**：必须 ✅
### E3 — Optional extra (optional)
### B4：Teacher
#### B4.1: a sub-block stays inside B4
- **Priority**: NICE-TO-HAVE
"""
    plan, diags = parse_plan(text, "p.md")
    assert [(b.number, b.name, b.priority) for b in plan.blocks] == [
        (0, "Sanity", "must"), (2, "消融", "must"), (3, "Optional extra (optional)", "nice"), (4, "Teacher", "nice")]


def test_unrecognised_priority_is_reported_with_its_line():
    plan, diags = parse_plan("# P\n## Experiment Blocks\n### Block 1: x\n- **Priority**: DONE ✅\n", "p.md")
    assert plan.blocks[0].priority is None
    assert (4, "Block 1: Priority 'DONE ✅' is neither MUST-RUN (必须运行) nor NICE-TO-HAVE (可选)") in messages(diags)


def test_claim_linking_an_unknown_block_warns():
    text = """# P
## Claim Map
| Claim | Why It Matters | Minimum Convincing Evidence | Linked Blocks |
|---|---|---|---|
| C1: x | y | z | B1, B9 |
## Experiment Blocks
### Block 1: a
- Priority: MUST-RUN
"""
    _, diags = parse_plan(text, "p.md")
    assert (5, "claim C1 links B9, which no '### Block N' heading defines") in messages(diags, "warning")


def test_pointer_plan_is_an_error():
    plan, diags = parse_plan("# Experiment Plan\n\nCurrent: [v2](EXPERIMENT_PLAN_20260903.md).\n", "p.md")
    assert messages(diags, "error") == [(1, "this plan only points to EXPERIMENT_PLAN_20260903.md; expected the plan itself (run the pointed-to plan, or copy it here)")]


def test_pointer_is_followed_only_to_a_sibling_real_plan(tmp_path):
    stub = tmp_path / "EXPERIMENT_PLAN.md"
    stub.write_text("# Experiment Plan\nSee `EXPERIMENT_PLAN_v2.md`.\n")
    _, diags = read_plan(stub)
    assert [d.severity for d in diags] == ["error"]  # the target does not exist
    (tmp_path / "EXPERIMENT_PLAN_v2.md").write_text("# Experiment Plan\n## Run Order\n1. Sanity run\n")
    plan, diags = read_plan(stub)
    assert plan.file == str(tmp_path / "EXPERIMENT_PLAN_v2.md") and [m.id for m in plan.milestones] == ["M0"]
    assert (diags[0].file, diags[0].line, diags[0].severity) == (str(stub), 1, "warning")
    stub.write_text("# Experiment Plan\nSee [it](../elsewhere/EXPERIMENT_PLAN.md).\n")
    assert read_plan(stub)[1][0].severity == "error"  # never outside the plan's directory


@pytest.mark.parametrize("text", ["", "   \n\n", "just prose, no headings\n"])
def test_empty_or_structureless_plan_is_an_error(text):
    plan, diags = parse_plan(text, "p.md")
    assert plan.file == "p.md" and plan.milestones == [] and messages(diags, "error")


def test_unreadable_file_is_a_diagnostic(tmp_path):
    plan, diags = read_plan(tmp_path / "missing.md")
    assert plan.milestones == [] and diags[0].severity == "error" and "cannot read plan" in diags[0].message


def test_budget_from_a_total_row_in_a_table():
    text = """# P
## Run Order
1. x
## Compute Budget
| Phase | GPU-Hours (A100) |
|---|---|
| Baselines | 700 |
| **Total** | **~2,750** |
"""
    plan, _ = parse_plan(text, "p.md")
    assert plan.budget.total_gpu_hours == 2750.0 and plan.budget.line == 8


def test_budget_no_gpu_means_zero():
    plan, _ = parse_plan("# P\n## Run Order\n1. x\n## Compute Budget\n- No GPU required (CPU only).\n", "p.md")
    assert plan.budget.total_gpu_hours == 0.0


# ---------------------------------------------------------------- normalisers

@pytest.mark.parametrize("text,hint,hours", [
    ("~18h", False, 18.0), ("18 GPU-hours", False, 18.0), ("约 18 小时", False, 18.0),
    ("~0.5h", False, 0.5), ("~30 min", False, 0.5), ("2 GPU-days", False, 48.0),
    ("~35–45 GPU-hours (M0–M4)", False, 45.0), ("1.5–2.5 GPUh", False, 2.5),
    ("5 x 4 GPU-hours = ~20 GPU-hours", False, 20.0), ("4×H200, ≤6h", False, 6.0),
    ("**~140h** (3× RTX 4090, ~2 weeks)", False, 140.0), ("~2.5 月", False, None),
    ("CPU only", False, None), ("~$30 API", False, None), ("20 person-hours", False, None),
    ("~2,750", True, 2750.0), ("18", True, 18.0), ("18", False, None), ("≤10", True, 10.0),
])
def test_parse_hours(text, hint, hours):
    assert parse_hours(text, hint) == hours


@pytest.mark.parametrize("text,priority", [
    ("MUST-RUN", "must"), ("**MUST-RUN** (first)", "must"), ("must run", "must"), ("必须运行", "must"),
    ("必须 ✅", "must"), ("NICE-TO-HAVE", "nice"), ("可选", "nice"), ("optional", "nice"),
    ("MUST-RUN if budget allows, else NICE-TO-HAVE", "must"), ("已完成 ✅", None), ("", None),
])
def test_parse_priority(text, priority):
    assert parse_priority(text) == priority


@pytest.mark.parametrize("label,expected", [
    ("M0: Sanity", ("M0", "Sanity")), ("**M0** Sanity", ("M0", "Sanity")), ("**M0 Sanity**", ("M0", "Sanity")),
    ("M0 — repository and protocol", ("M0", "repository and protocol")), ("M0（05→07月）", ("M0", "（05→07月）")),
    ("M1 - MUST RUN: adapter", ("M1", "MUST RUN: adapter")), ("m2b: extra", ("M2B", "extra")),
    ("Sanity", (None, "Sanity")), ("Milestone 3: x", ("M3", "x")),
])
def test_split_milestone_label(label, expected):
    assert split_milestone_label(label) == expected


def test_claim_labels_and_block_refs():
    assert split_claim_label("**C1 (primary)** P2 binds") == ("C1", "(primary) P2 binds")
    assert split_claim_label("C2：中文") == ("C2", "中文")
    assert split_claim_label("no id") == (None, "no id")
    assert block_refs("B1, B2") == ["B1", "B2"] and block_refs("Block 3 + B3") == ["B3"]
    assert block_refs("B2 全流程") == ["B2"]


def test_stage_classification_and_stable_order():
    assert classify_stage("LR Sweep") == "other" and classify_stage("Main method (1 seed)") == "main"
    assert classify_stage("", "Q-gap go/no-go") == "decision"  # nameless rows fall back to the goal
    assert classify_stage("Data Pipeline", "Produce finalized labels") == "other"
    ms = [Milestone(id=i, stage=s) for i, s in
          [("A", "polish"), ("B", "main"), ("C", "other"), ("D", "sanity"), ("E", "ablation"), ("F", "decision")]]
    # "other" keeps the rank of the milestone before it, so C stays right after B.
    assert [m.id for m in order_milestones(ms)] == ["D", "B", "C", "E", "F", "A"]
