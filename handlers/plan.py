"""Read refine-logs/EXPERIMENT_PLAN.md into a Plan: claims, blocks, milestones, budget, risks.

Three shapes are understood (ARIS_SPEC §2.1): what /experiment-plan writes ("skill"), the
hand-written template ("template") and the Chinese template ("zh"). Real plans drift from all
three, so every section is found by what its heading or table header says, wherever it is, and
whatever is missing becomes a warning with file:line. parse_plan never raises.
"""
from __future__ import annotations

import re
from pathlib import Path

from handlers.diagnostics import Diagnostic
from handlers.plan_md import (Ctx, Item, Section, Table, cell, check_width, column, extension,
                              items_in, read_doc)
from handlers.plan_runorder import budget, milestones, risks
from handlers.plan_model import (Block, Budget, Claim, Milestone, Plan, block_refs, label_key,
                                 order_milestones, parse_priority, plain, split_claim_label)

__all__ = ["Block", "Budget", "Claim", "Milestone", "Plan", "parse_plan", "pointer_target",
           "read_plan", "summary_line"]

_CLAIM_SECTION = re.compile(r"claim|主张", re.I)
_BLOCK_SECTION = re.compile(r"experiment(al)? blocks|\bblocks\b|实验块|实验设计", re.I)
_BLOCK_HEADING = re.compile(
    r"^(?:(?:experiment\s+)?block\s*B?(\d+)|实验块\s*(\d+)|B(\d+)(?![\d.])|E(\d+)(?![\d.]))"
    r"\s*(?:[(（][^)）]*[)）])?\s*[:：.—–\-·]*\s*(.*)$", re.I)
_POINTER = re.compile(r"\[[^\]]*\]\(([^)\s]+\.md)\)|`([^`\s]+\.md)`")
_FIELD_LABELS: list[tuple[str, tuple[str, ...]]] = [
    ("claim", ("claim", "验证 claim", "验证claim", "对应 claim", "supports")),
    ("why", ("why", "purpose", "question", "目的", "动机")),
    ("dataset", ("dataset", "data", "数据集", "数据")),
    ("systems", ("compared systems", "systems", "对比系统", "policies", "baselines", "对比")),
    ("metrics", ("metric", "评估指标", "指标")),
    ("setup", ("setup", "实验设置", "设置", "config")),
    ("success", ("success", "成功标准", "成功判据", "pass condition")),
    ("failure", ("failure", "失败解读", "失败")),
    ("table_target", ("table", "figure", "图表", "论文位置")),
    ("priority", ("priority", "优先级")),
]
# The bullets each shape's template writes for every block (the Chinese one has no why/target).
_SHAPE_FIELDS = {"skill": ("claim", "why", "dataset", "systems", "metrics", "setup", "success",
                           "failure", "table_target"),
                 "zh": ("claim", "dataset", "systems", "metrics", "setup", "success", "failure")}


def read_plan(path: Path, follow: bool = True) -> tuple[Plan, list[Diagnostic]]:
    """Read and parse a plan file; an unreadable file is an error diagnostic, not an exception.

    A stub that only points to a sibling plan ("current version: [X](X.md)", common in real
    projects) is followed once when X exists next to it and has blocks or milestones.
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        return Plan(file=str(path)), [Diagnostic(str(path), 0, "error", f"cannot read plan: {exc.strerror or exc}")]
    plan, diags = parse_plan(text, str(path))
    target = pointer_target(text) if follow and not (plan.blocks or plan.milestones) else None
    if target:
        followed = (path.parent / target).resolve()
        if followed.is_file() and followed.parent == path.parent.resolve() and followed != path.resolve():
            other, found = read_plan(followed, follow=False)
            if other.blocks or other.milestones:
                note = Diagnostic(str(path), 1, "warning", f"this plan only points to {target}; read {followed.name} instead "
                                  "(edits to it are picked up only when this file changes too)")
                return other, [note, *found]
    return plan, diags


def pointer_target(text: str) -> str | None:
    """The .md file a short stub plan points to, if the text is such a stub."""
    if len(text) > 1200 or "\n|" in text:
        return None
    match = _POINTER.search(text)
    return (match.group(1) or match.group(2)) if match else None


def parse_plan(text: str, file: str) -> tuple[Plan, list[Diagnostic]]:
    """Parse plan text. Never raises: a parser defect is reported as an error diagnostic."""
    try:
        return _parse(text, file)
    except Exception as exc:  # noqa: BLE001 - the daemon must keep serving other plans
        return Plan(file=file), [Diagnostic(file, 0, "error", f"internal parser error ({type(exc).__name__}: {exc}); please report this plan")]


def _parse(text: str, file: str) -> tuple[Plan, list[Diagnostic]]:
    ctx = Ctx(read_doc(text), file)
    plan = Plan(file=file, title=_title(ctx))
    if not text.strip():
        ctx.error(0, "the plan is empty; expected '# Experiment Plan' with blocks and a run order")
        return plan, ctx.diags
    _header(ctx, plan)
    plan.claims = _claims(ctx)
    plan.blocks = _blocks(ctx)
    plan.milestones = order_milestones(milestones(ctx))
    plan.budget = budget(ctx)
    plan.risks = risks(ctx)
    plan.shape = _shape(ctx, plan)
    plan.language = "zh" if plan.shape == "zh" or ctx.doc.han_share() >= 0.3 else "en"
    _check(ctx, plan)
    return plan, ctx.diags


# ---------------------------------------------------------------- header

def _title(ctx: Ctx) -> str:
    heads = ctx.doc.sections
    first = next((s for s in heads if s.level == 1), heads[0] if heads else None)
    return first.title if first else ""


def _preamble(ctx: Ctx) -> list[Item]:
    first = next((s for s in ctx.doc.sections if s.level >= 2), None)
    return items_in(ctx.doc, 0, first.index if first else len(ctx.doc.lines))


def _header(ctx: Ctx, plan: Plan) -> None:
    plan.date = ctx.doc.front_matter.get("date", "")
    for item in _preamble(ctx):
        key = label_key(item.label or "")
        if not key:
            continue
        if key.startswith(("problem", "问题")) and not plan.problem:
            plan.problem = " ".join(item.value.split())
        elif key.startswith(("method thesis", "方法论点", "thesis")) and not plan.method_thesis:
            plan.method_thesis = " ".join(item.value.split())
        elif key.startswith(("date", "日期")) and not plan.date:
            plan.date = item.value


# ---------------------------------------------------------------- claims

def _claims(ctx: Ctx) -> list[Claim]:
    for section in ctx.doc.find(_CLAIM_SECTION, exclude=re.compile(r"anti", re.I)):
        for table in ctx.doc.tables_in(section):
            claims = _claims_from_table(ctx, table)
            if claims:
                return claims
        claims = [c for c in (_claim_from_item(i) for i in ctx.doc.items(section)) if c]
        if claims:
            return claims
    return []


def _claims_from_table(ctx: Ctx, table: Table) -> list[Claim]:
    h = table.header
    col = column(h, r"claim|主张")
    if col is None or col > 1:  # a claim map starts with its claims; later columns are outcomes
        return []
    ident = column(h, r"^(#|id)$")
    text_col = column(h, r"内容|content|description|statement", (col,))
    why, evidence = column(h, r"why|重要|matters|importance", (col,)), column(h, r"evidence|证据|pass|required", (col,))
    blocks = column(h, r"block|实验块|linked|关联|experiment|正式实验", (col,))
    claims: list[Claim] = []
    for row in table.rows:
        cid, rest = split_claim_label(cell(row.cells, col))
        if ident is not None:
            cid = split_claim_label(cell(row.cells, ident))[0] or cell(row.cells, ident) or cid
            rest = cell(row.cells, col)
        if not (cid or rest):
            continue
        claims.append(Claim(id=cid or f"C{len(claims) + 1}", text=cell(row.cells, text_col) or rest,
                            why=cell(row.cells, why), evidence=cell(row.cells, evidence),
                            blocks=block_refs(cell(row.cells, blocks)), line=row.line))
        check_width(ctx, table, row)
    return claims


def _claim_from_item(item: Item) -> Claim | None:
    cid, rest = split_claim_label(item.text)
    return Claim(id=cid, text=rest, line=item.line) if cid else None


# ---------------------------------------------------------------- blocks

def _block_sections(ctx: Ctx) -> tuple[list[Section], str]:
    """The block headings, and the heading above them ("## Must-run blocks" sets a default)."""
    for parent in ctx.doc.find(_BLOCK_SECTION):
        children = ctx.doc.children(parent)
        if children:
            level = min(c.level for c in children)
            return [c for c in children if c.level == level], parent.title
    return [s for s in ctx.doc.sections if s.level >= 2 and _BLOCK_HEADING.match(plain(s.title))
            and re.match(r"^(block|实验块|B\d)", plain(s.title), re.I)], ""


def _blocks(ctx: Ctx) -> list[Block]:
    sections, parent = _block_sections(ctx)
    blocks = [_block(ctx, s) for s in sections]
    default = parse_priority(parent)
    for block in blocks:
        if block.priority is None and "priority" not in {_field_key(label_key(k)) for k in block.fields}:
            block.priority = default
    return blocks


def _block(ctx: Ctx, section: Section) -> Block:
    title = plain(section.title)
    match = _BLOCK_HEADING.match(title)
    number = next((int(g) for g in match.groups()[:4] if g), None) if match else None
    name = re.split(r"\s+·\s+priority", match.group(5) if match else title, flags=re.I)[0].strip()
    block = Block(number=number, name=name, line=section.line)
    for item in ctx.doc.items(section):
        if not item.label:
            continue
        block.fields.setdefault(plain(item.label), item.value)
        key = _field_key(label_key(item.label))
        if key and not getattr(block, key):
            setattr(block, key, parse_priority(item.value) if key == "priority" else item.value)
            if key == "priority" and block.priority is None:
                ctx.warn(item.line, f"{_block_name(block)}: Priority '{item.value}' is neither MUST-RUN (必须运行) nor NICE-TO-HAVE (可选)")
    if block.priority is None and "priority" not in {_field_key(label_key(k)) for k in block.fields}:
        block.priority = parse_priority(title)
    block.extension = extension(ctx, section)
    return block


def _field_key(key: str) -> str | None:
    return next((name for name, prefixes in _FIELD_LABELS if key.startswith(prefixes)), None)


def _block_name(block: Block) -> str:
    return f"Block {block.number}" if block.number is not None else f"block '{block.name}'"


# ---------------------------------------------------------------- shape and checks

def _shape(ctx: Ctx, plan: Plan) -> str:
    keys = [label_key(s.title) for s in ctx.doc.sections]
    zh = sum([("实验计划" in plan.title), any("实验块" in k for k in keys), any("运行顺序" in k for k in keys),
              any("算力预算" in k for k in keys), any("claim 映射" in k for k in keys)])
    skill = sum([bool(plan.date), any("paper storyline" in k for k in keys),
                 any("run order and milestones" in k for k in keys), any("compute and data budget" in k for k in keys)])
    template = sum([any(re.search(r"\brun order$", k) for k in keys), any(k.endswith("compute budget") for k in keys),
                    any(re.search(r"\brisks$", k) for k in keys)])
    if zh >= 2:
        return "zh"
    if skill and skill >= template:
        return "skill"
    return "template" if template else "unknown"


def _check(ctx: Ctx, plan: Plan) -> None:
    if not plan.title:
        ctx.warn(1, "no title; expected '# Experiment Plan' (or '# 实验计划')")
    if not plan.blocks and not plan.milestones:
        target = pointer_target("\n".join(ln.text for ln in ctx.doc.lines))
        if target:
            ctx.error(1, f"this plan only points to {target}; expected the plan itself (run the pointed-to plan, or copy it here)")
        else:
            ctx.error(0, "nothing to run: no experiment blocks ('## Experiment Blocks' / '### Block N:') and no milestones ('## Run Order and Milestones' table)")
        return
    if not plan.claims:
        ctx.warn(0, "no Claim Map; expected '## Claim Map' with | Claim | Why It Matters | Minimum Convincing Evidence | Linked Blocks |")
    if not plan.blocks:
        ctx.warn(0, "no experiment blocks; expected '## Experiment Blocks' with '### Block N: name' (or '### 实验块 N:')")
    if not plan.milestones:
        ctx.warn(0, "no milestones; expected '## Run Order and Milestones' with | Milestone | Goal | Runs | Decision Gate | Cost |")
    if plan.budget.total_gpu_hours is None:
        ctx.warn(plan.budget.line, "no total GPU-hours; expected '- **Total estimated GPU-hours**: ~18h' under '## Compute Budget'")
    _check_blocks(ctx, plan)
    _check_claims(ctx, plan)


def _check_blocks(ctx: Ctx, plan: Plan) -> None:
    seen: dict[int, int] = {}
    for block in plan.blocks:
        keys = {_field_key(label_key(k)) for k in block.fields}
        if block.priority is None and "priority" not in keys:
            ctx.warn(block.line, f"{_block_name(block)}: no Priority; expected '- **Priority**: MUST-RUN' or NICE-TO-HAVE")
        expected = _SHAPE_FIELDS.get(plan.shape, ())
        missing = [k for k in expected if k not in keys]
        if missing and len(missing) < len(expected):
            ctx.warn(block.line, f"{_block_name(block)}: no {', '.join(missing)} bullet")
        if block.number is not None and block.number in seen:
            ctx.warn(block.line, f"Block {block.number} appears twice (first at line {seen[block.number]})")
        seen.setdefault(block.number, block.line) if block.number is not None else None


def _check_claims(ctx: Ctx, plan: Plan) -> None:
    known = {b.id for b in plan.blocks if b.number is not None}
    if not known:
        return
    for claim in plan.claims:
        unknown = [b for b in claim.blocks if re.fullmatch(r"B\d+", b) and b not in known]
        if unknown:
            ctx.warn(claim.line, f"claim {claim.id} links {', '.join(unknown)}, which no '### Block N' heading defines")


def summary_line(plan: Plan) -> str:
    """The ARIS "plan loaded" summary (F10): milestones by stage, must/nice counts, GPU-hours."""
    stages = []
    for m in plan.milestones:
        if m.stage != "other" and m.stage not in stages:
            stages.append(m.stage)
    units = plan.blocks if any(b.priority for b in plan.blocks) else plan.milestones
    must = sum(1 for u in units if u.priority == "must")
    nice = sum(1 for u in units if u.priority == "nice")
    hours = plan.budget.total_gpu_hours
    flow = f" ({' → '.join(stages)})" if stages else ""
    return (f"Plan loaded: {len(plan.milestones)} milestones{flow}, {must} must-run, {nice} nice-to-have, "
            f"{'unknown' if hours is None else f'~{hours:g}'} GPU-hours")
