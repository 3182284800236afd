"""The EXPERIMENT_PLAN.md data model, and the value normalisers that turn plan prose into fields.

The models are what the rest of expbridge consumes; `handlers.plan` fills them. The normalisers
here are pure functions on strings (hours, priority, stage, ids), so they are testable alone.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

Priority = Literal["must", "nice"]
Stage = Literal["sanity", "baseline", "main", "ablation", "decision", "polish", "other"]
Shape = Literal["skill", "template", "zh", "unknown"]


class Claim(BaseModel):
    id: str
    text: str = ""
    why: str = ""
    evidence: str = ""
    blocks: list[str] = Field(default_factory=list)
    line: int = 0


class Block(BaseModel):
    number: int | None = None
    name: str = ""
    claim: str = ""
    why: str = ""
    dataset: str = ""
    systems: str = ""
    metrics: str = ""
    setup: str = ""
    success: str = ""
    failure: str = ""
    table_target: str = ""
    priority: Priority | None = None
    line: int = 0
    fields: dict[str, str] = Field(default_factory=dict)
    # F11: an optional fenced YAML block with cmd/grid/seeds/est_hours/expected_output/depends_on.
    extension: dict[str, Any] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"B{self.number}" if self.number is not None else self.name


class Milestone(BaseModel):
    id: str
    name: str = ""
    stage: Stage = "other"
    goal: str = ""
    runs: str = ""
    decision_gate: str = ""
    cost_hours: float | None = None
    risk: str = ""
    line: int = 0
    priority: Priority | None = None
    extension: dict[str, Any] = Field(default_factory=dict)


class Budget(BaseModel):
    total_gpu_hours: float | None = None
    hardware: str = ""
    bottleneck: str = ""
    data_needs: str = ""
    line: int = 0


class Plan(BaseModel):
    file: str
    title: str = ""
    shape: Shape = "unknown"
    problem: str = ""
    method_thesis: str = ""
    date: str = ""
    language: Literal["en", "zh"] = "en"
    claims: list[Claim] = Field(default_factory=list)
    blocks: list[Block] = Field(default_factory=list)
    milestones: list[Milestone] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    risks: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- text cleaning

_EMPHASIS = re.compile(r"(\*\*|__|~~)")


def plain(text: str) -> str:
    """Cell or label text without bold/strike markers and surrounding space."""
    return _EMPHASIS.sub("", text).strip()


def label_key(label: str) -> str:
    """A label reduced for synonym matching: no emphasis, no trailing colon, one space, lower."""
    text = plain(label).strip().rstrip(":：").strip()
    return re.sub(r"\s+", " ", text).lower()


# ---------------------------------------------------------------- hours

_NUM = r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)"
_RANGE = rf"{_NUM}(?:\s*(?:-|–|—|~|to|到|至)\s*{_NUM})?"
_HOUR_UNIT = (r"gpu[\s-]?h(?:ours?|rs?)?\b|gpuh\b|gpu[\s-]?小时|h(?:ours?|rs?)?(?![a-z])"
              r"|小时|个小时|卡时")
_MIN_UNIT = r"min(?:ute)?s?\b|分钟"
_DAY_UNIT = r"gpu[\s-]?days?\b|gpu[\s-]?天|卡天"
_QTY = re.compile(rf"{_RANGE}\s*-?\s*(?:(?P<h>{_HOUR_UNIT})|(?P<m>{_MIN_UNIT})|(?P<d>{_DAY_UNIT}))",
                  re.IGNORECASE)
_BARE = re.compile(rf"^[~≈≤<约大概\s]*{_RANGE}\s*[hH]?\s*$")
_NO_GPU = re.compile(r"no gpu|cpu[\s-]?only|gpu[\s-]?free|无需\s*gpu|不需要\s*gpu|不用\s*gpu|纯\s*cpu",
                     re.IGNORECASE)


def _number(text: str | None) -> float | None:
    return float(text.replace(",", "")) if text else None


def _quantity(match: re.Match[str]) -> float:
    # A range counts at its upper end: a budget should not be under-estimated.
    low, high = _number(match.group(1)), _number(match.group(2))
    value = high if high is not None else low
    assert value is not None
    if match.group("m"):
        return round(value / 60.0, 4)
    if match.group("d"):
        return value * 24.0
    return value


def parse_hours(text: str, unit_hint: bool = False) -> float | None:
    """Hours in a cost/budget phrase: "~18h" -> 18.0, "约 18 小时", "~30 min" -> 0.5, "2 GPU-days" -> 48.

    After an "=" the result of a calculation wins ("5 x 4 GPU-hours = ~20 GPU-hours" -> 20).
    With unit_hint (the label or column already says hours), a bare number counts as hours.
    """
    text = plain(text).replace("`", "")
    tail = text.rsplit("=", 1)[-1] if "=" in text else text
    for candidate in (tail, text):
        match = _QTY.search(candidate)
        if match:
            return _quantity(match)
    if unit_hint:
        bare = _BARE.match(text)
        if bare:
            return _number(bare.group(2)) or _number(bare.group(1))
    return None


def says_no_gpu(text: str) -> bool:
    return bool(_NO_GPU.search(text))


def names_hours(label: str) -> bool:
    """Whether a label or header already carries the hours unit ("GPU-hours", "GPU-h", "GPU 小时")."""
    key = label_key(label)
    return bool(re.search(r"gpu[\s-]?h|gpu[\s-]?小时|hours|hrs|小时|耗时", key))


# ---------------------------------------------------------------- priority

_MUST = re.compile(r"must[\s_-]*run|\bmust\b|必须运行|必须|必做|必跑|required|mandatory", re.IGNORECASE)
_NICE = re.compile(r"nice[\s_-]*to[\s_-]*have|\bnice\b|optional|可选|应做|选做|appendix|if time",
                   re.IGNORECASE)


def parse_priority(text: str) -> Priority | None:
    """MUST-RUN / NICE-TO-HAVE (also 必须运行 / 可选, "optional"): the earliest keyword decides."""
    must, nice = _MUST.search(text), _NICE.search(text)
    if must and (not nice or must.start() <= nice.start()):
        return "must"
    return "nice" if nice else None


# ---------------------------------------------------------------- stages and ordering

_STAGE_WORDS: list[tuple[Stage, re.Pattern[str]]] = [
    ("sanity", re.compile(r"sanity|smoke|preflight|pre-flight|dry[\s-]?run|冒烟|健全|自检|连通", re.I)),
    ("baseline", re.compile(r"baseline|基线|复现", re.I)),
    ("ablation", re.compile(r"ablation|消融|sensitivity|robustness|鲁棒", re.I)),
    ("decision", re.compile(r"decision|decisive|go/no-go|决策", re.I)),
    ("polish", re.compile(r"polish|appendix|figures|writing|定稿|润色|附录|写作", re.I)),
    ("main", re.compile(r"\bmain\b|core|full method|confirmatory|headline|主实验|主结果|主方法|正式", re.I)),
]
STAGE_RANK: dict[str, int] = {"sanity": 0, "baseline": 1, "main": 2, "ablation": 3, "decision": 3,
                              "polish": 4}


def classify_stage(name: str, goal: str = "") -> Stage:
    """The canonical stage a milestone's name names; the goal counts only for a nameless milestone."""
    has_words = re.search(r"[^\W\d_]{2,}", re.sub(r"[(（][^)）]*[)）]", "", name))
    for text in (name,) if has_words else (name, goal):
        for stage, pattern in _STAGE_WORDS:
            if pattern.search(text):
                return stage
    return "other"


def order_milestones(milestones: list[Milestone]) -> list[Milestone]:
    """sanity -> baseline -> main -> ablation/decision -> polish, stable within a stage.

    An "other" milestone keeps the rank of the classified one before it, so unclassified work
    stays where the author put it relative to its neighbours.
    """
    ranks: list[int] = []
    current = 0
    for m in milestones:
        current = STAGE_RANK.get(m.stage, current)
        ranks.append(current)
    order = sorted(range(len(milestones)), key=lambda i: (ranks[i], i))
    return [milestones[i] for i in order]


# ---------------------------------------------------------------- ids

_MILESTONE_ID = re.compile(
    r"^(?:milestone\s*(\d+)|(M\d+(?:\.\d+)?[a-z]?'*))(?![\w])\s*(?:[:：—–\-.·|]\s*)*(.*)$", re.I)
_CLAIM_ID = re.compile(r"^(?:claim\s*)?(C\d+[a-z]?)(?![\w])[\s:：.—–\-]*(.*)$", re.I | re.S)
_BLOCK_REF = re.compile(r"\b(?:Block\s*|实验块\s*)?([A-Z]{1,2}\d+(?:\.\d+)?[a-z]?)\b|\bBlock\s*(\d+)\b")


def split_milestone_label(label: str) -> tuple[str | None, str]:
    """"M0: Sanity" / "**M0** Sanity" / "M0 — repo" / "M0（05→07月）" -> ("M0", name)."""
    text = plain(label)
    match = _MILESTONE_ID.match(text)
    if not match:
        return None, text
    ident = f"M{match.group(1)}" if match.group(1) else match.group(2).upper()
    return ident, match.group(3).strip()


def split_claim_label(label: str) -> tuple[str | None, str]:
    """"C1: text" / "**C1 (primary)** text" -> ("C1", rest)."""
    text = plain(label)
    match = _CLAIM_ID.match(text)
    if not match:
        return None, text
    return match.group(1).upper(), match.group(2).strip()


def block_refs(text: str) -> list[str]:
    """Block ids a Linked Blocks cell names: "B1, B2", "Block 3", "B2 全流程" -> ["B1", "B2"]."""
    refs: list[str] = []
    for match in _BLOCK_REF.finditer(plain(text)):
        ref = match.group(1) or f"B{match.group(2)}"
        if ref not in refs:
            refs.append(ref)
    return refs
