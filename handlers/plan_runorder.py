"""The plan's run order and resources: milestones, the compute budget and the risks.

Milestones come from the first run-order section that yields any: a table with a milestone
column, else "### M0: ..." sub-headings, else a list. They are returned in the plan's order;
handlers.plan orders them by stage.
"""
from __future__ import annotations

import re

from handlers.plan_md import Ctx, Item, Section, Table, cell, check_width, column, extension
from handlers.plan_model import (Budget, Milestone, classify_stage, label_key, names_hours,
                                 parse_hours, parse_priority, plain, says_no_gpu,
                                 split_milestone_label)

_ORDER_SECTION = re.compile(r"run order|milestone|运行顺序|里程碑|执行顺序|timeline|schedule|roadmap", re.I)
_BUDGET_SECTION = re.compile(r"budget|预算|算力|compute", re.I)
_RISK_SECTION = re.compile(r"risk|风险", re.I)


def milestones(ctx: Ctx) -> list[Milestone]:
    """The milestones of the first run-order section that has any, in the plan's order."""
    exclude = re.compile(r"claim|主张", re.I)
    for section in (s for s in ctx.doc.find(_ORDER_SECTION, exclude=exclude) if s.level <= 3):
        found = (_milestones_from_tables(ctx, section) or _milestones_from_headings(ctx, section)
                 or _milestones_from_list(ctx, section))
        if found:
            _priorities_from_lines(ctx, section, found)
            _check_duplicate_ids(ctx, found)
            return found
    return []


def _milestones_from_tables(ctx: Ctx, section: Section) -> list[Milestone]:
    for table in ctx.doc.tables_in(section, direct=True):
        h = table.header
        col = column(h, r"^(milestone|里程碑|stage|phase|阶段|week)")
        if col is None and column(h, r"goal|purpose|目标|gate|关卡") is not None:
            col = 0
        if col is None:
            continue
        cols = {"goal": column(h, r"goal|purpose|目标|目的|objective", (col,)),
                "runs": column(h, r"^(runs?|运行|experiments?|blocks?|任务|tasks?)", (col,)),
                "decision_gate": column(h, r"gate|决策|关卡|stop|go/no", (col,)),
                "risk": column(h, r"risk|风险", (col,))}
        cost = column(h, r"cost|耗时|gpu|hours|时间|time", (col,))
        found = []
        for i, row in enumerate(table.rows):
            check_width(ctx, table, row)
            label = cell(row.cells, col)
            if not label:
                continue
            ident, name = split_milestone_label(label)
            values = {k: cell(row.cells, c) for k, c in cols.items()}
            found.append(Milestone(
                id=ident or f"M{i}", name=name, stage=classify_stage(name or label, values["goal"]),
                cost_hours=parse_hours(cell(row.cells, cost), names_hours(h[cost]) if cost is not None else False),
                priority=parse_priority(name) if re.search(r"optional|可选|must", name, re.I) else None,
                line=row.line, **values))
        if found:
            return found
    return []


def _milestones_from_headings(ctx: Ctx, section: Section) -> list[Milestone]:
    children = ctx.doc.children(section)
    if not children:
        return []
    level = min(c.level for c in children)
    found = []
    for i, child in enumerate(c for c in children if c.level == level):
        ident, name = split_milestone_label(child.title)
        labelled = {_milestone_key(label_key(it.label)): it.value for it in ctx.doc.items(child) if it.label}
        first = next((it.text for it in ctx.doc.items(child)), "")
        goal = labelled.get("goal", "") or first
        found.append(Milestone(
            id=ident or f"M{i}", name=name, stage=classify_stage(name, goal), goal=goal,
            runs=labelled.get("runs", "") or _run_ids(ctx, child),
            decision_gate=labelled.get("decision_gate", ""), risk=labelled.get("risk", ""),
            cost_hours=parse_hours(child.title) if parse_hours(child.title) is not None
            else parse_hours(labelled.get("cost", "")),
            priority=parse_priority(child.title), line=child.line, extension=extension(ctx, child)))
    return found


def _milestone_key(key: str) -> str:
    for name, pattern in (("decision_gate", r"gate|关卡|decision|stop"), ("goal", r"^(goal|purpose|目标|目的)"),
                          ("runs", r"^(runs?|运行)"), ("cost", r"cost|budget|耗时|预算"), ("risk", r"risk|风险")):
        if re.search(pattern, key):
            return name
    return key


def _run_ids(ctx: Ctx, section: Section) -> str:
    for table in ctx.doc.tables_in(section):
        col = column(table.header, r"^(run|run id|id|exp)$")
        if col is not None:
            return ", ".join(c for c in (cell(r.cells, col) for r in table.rows) if c)
    return ""


def _milestones_from_list(ctx: Ctx, section: Section) -> list[Milestone]:
    found = []
    for i, item in enumerate(it for it in ctx.doc.items(section) if it.bullet):
        ident, name = split_milestone_label(item.text)
        found.append(Milestone(id=ident or f"M{i}", name=name, stage=classify_stage(name),
                               cost_hours=parse_hours(item.text), line=item.line))
    return found


def _priorities_from_lines(ctx: Ctx, section: Section, milestones: list[Milestone]) -> None:
    """"**Must-run**: M0, M1. **Nice-to-have**: M3" lines under the run order table."""
    by_id = {m.id: m for m in milestones}
    for line in ctx.doc.text_lines(section):
        if line.lstrip().startswith("|"):
            continue  # table cells say "must-win" and the like; only prose lines assign priority
        for part in re.split(r"(?=\*\*(?:must|nice|必须|可选))", line, flags=re.I):
            priority = parse_priority(part.split(":")[0].split("：")[0])
            for ident in re.findall(r"\bM\d+\b", part) if priority else []:
                if ident in by_id and by_id[ident].priority is None:
                    by_id[ident].priority = priority


def _check_duplicate_ids(ctx: Ctx, milestones: list[Milestone]) -> None:
    seen: dict[str, int] = {}
    for m in milestones:
        if m.id in seen:
            ctx.warn(m.line, f"milestone id {m.id} is used again (first at line {seen[m.id]}); runs keyed by milestone will be ambiguous")
        seen.setdefault(m.id, m.line)


# ---------------------------------------------------------------- budget and risks

def budget(ctx: Ctx) -> Budget:
    """Total GPU-hours, hardware, bottleneck and data needs from the budget section(s)."""
    sections = ctx.doc.find(_BUDGET_SECTION)
    found = Budget(line=sections[0].line if sections else 0)
    for section in sections:
        for item in ctx.doc.items(section, headings_as_labels=True):
            _budget_item(found, item)
        for table in ctx.doc.tables_in(section):
            _budget_table(found, table)
    if found.total_gpu_hours is None:
        for item in ctx.doc.items(None):
            _budget_total(found, item)
    if found.total_gpu_hours is None and any(says_no_gpu(ctx.doc.section_text(s)) for s in sections):
        found.total_gpu_hours = 0.0
    return found


def _budget_total(budget: Budget, item: Item) -> None:
    key = label_key(item.label or "")
    if budget.total_gpu_hours is None and re.search(r"total|总|合计", key) and re.search(r"gpu|卡", key + item.value, re.I):
        budget.total_gpu_hours = parse_hours(item.value, names_hours(key))
        budget.line = item.line if budget.total_gpu_hours is not None else budget.line


def _budget_item(budget: Budget, item: Item) -> None:
    key = label_key(item.label or "")
    _budget_total(budget, item)
    if re.search(r"hardware|硬件|卡池|gpu type|机器", key) and not budget.hardware:
        budget.hardware = item.value
    elif re.search(r"bottleneck|瓶颈", key) and not budget.bottleneck:
        budget.bottleneck = item.value
    elif re.search(r"^data|数据", key) and not budget.data_needs:
        budget.data_needs = item.value


def _budget_table(budget: Budget, table: Table) -> None:
    for row in table.rows:
        if budget.total_gpu_hours is None and re.search(r"^(total|总|合计)", cell(row.cells, 0), re.I):
            for i, text in enumerate(row.cells[1:], start=1):
                hint = i < len(table.header) and names_hours(table.header[i])
                hours = parse_hours(text, hint)
                if hours is not None:
                    budget.total_gpu_hours, budget.line = hours, row.line
                    return


def risks(ctx: Ctx) -> list[str]:
    """One line per risk, its mitigation appended after an arrow."""
    risks: list[str] = []
    for section in ctx.doc.find(_RISK_SECTION):
        for table in ctx.doc.tables_in(section):
            mitigation = column(table.header, r"mitigation|对策|缓解|应对")
            risks += [cell(r.cells, 0) + (f" → {cell(r.cells, mitigation)}" if mitigation else "")
                      for r in table.rows if cell(r.cells, 0)]
        for item in ctx.doc.items(section):
            key = label_key(item.label or "")
            if key.startswith(("mitigation", "缓解", "对策")) and risks:
                risks[-1] += f" → {item.value}"
            elif item.bullet or item.label:
                text = item.value if key in ("risk", "风险") else item.text
                risks.append(" ".join(plain(text).split()))
        if risks:
            break
    return risks
