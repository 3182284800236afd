"""The tracker Status vocabulary: map what people write onto our nine statuses (plus RETRY).

Real trackers write `**DONE**`, `✅ done`, `⬜ Pending`, `[ ]`, `完成`, `DONE ✗`, `BLOCKED_BY_M2`,
`DONE/GATE-PASSED`, `TODO — depends R121` and long narrative cells (reference/CORPUS.md §3). The
lifecycle word is the head of the cell: the text before the first separator, without emphasis,
emoji or checkboxes. Whatever cannot be read confidently maps to None, so the caller leaves the
row alone instead of guessing (DESIGN §4: an unrecognised status is left as it is).
"""
from __future__ import annotations

import re

STATUSES = ("TODO", "QUEUED", "RUNNING", "PAUSED", "DONE", "FAILED", "STUCK", "BLOCKED", "SKIPPED")
RETRY = "RETRY"

_WORDS: dict[str, tuple[str, ...]] = {
    "TODO": ("TODO", "TO_DO", "PENDING", "NOT_STARTED", "NOT_RUN", "NOT_YET_RUN", "NOT_TESTED",
             "PLANNED", "READY", "NEW", "OPEN", "NEXT", "RESUME", "UNSTARTED"),
    "QUEUED": ("QUEUED", "QUEUE", "ENQUEUED", "SCHEDULED", "SUBMITTED"),
    "RUNNING": ("RUNNING", "IN_PROGRESS", "INPROGRESS", "ONGOING", "ACTIVE", "STARTED", "WIP",
                "TRAINING"),
    "PAUSED": ("PAUSED", "PAUSE", "HOLD", "ON_HOLD", "SUSPENDED"),
    "DONE": ("DONE", "COMPLETE", "COMPLETED", "FINISHED", "PASS", "PASSED", "SUCCESS",
             "SUCCEEDED", "OK"),
    "FAILED": ("FAILED", "FAIL", "FAILURE", "ERROR", "CRASHED"),
    "STUCK": ("STUCK", "HUNG"),
    "BLOCKED": ("BLOCKED", "WAITING", "WAIT"),
    "SKIPPED": ("SKIPPED", "SKIP", "CANCELLED", "CANCELED", "CANCEL", "CUT", "DROPPED", "DISCARD",
                "DISCARDED", "ABANDONED", "WONTFIX"),
    RETRY: ("RETRY", "RERUN", "RE_RUN"),
}
_EXACT = {word: status for status, words in _WORDS.items() for word in words}

# A suffix after these words only qualifies them (`BLOCKED_BY_M2`, `COMPLETE_NEGATIVE`);
# other words with a suffix (`READY_CLOUD`, `PENDING_EV7`) may mean something else entirely.
_PREFIX_OK = ("DONE", "COMPLETE", "COMPLETED", "PASS", "PASSED", "FAILED", "BLOCKED", "SKIPPED",
              "SKIP", "CANCELLED", "STUCK", "RUNNING", "PAUSED", "WAIT", "WAITING")

# Chinese has no word breaks: match the longest known prefix (未完成 before 完成).
_ZH = sorted({
    "未完成": "TODO", "未开始": "TODO", "待办": "TODO", "待做": "TODO", "待开始": "TODO",
    "待运行": "TODO", "未运行": "TODO", "待跑": "TODO", "计划中": "TODO",
    "排队": "QUEUED", "队列中": "QUEUED",
    "进行中": "RUNNING", "运行中": "RUNNING", "在跑": "RUNNING", "训练中": "RUNNING",
    "正在运行": "RUNNING", "正在跑": "RUNNING",
    "暂停": "PAUSED", "已暂停": "PAUSED",
    "完成": "DONE", "已完成": "DONE", "通过": "DONE", "已通过": "DONE", "成功": "DONE",
    "失败": "FAILED", "未通过": "FAILED", "卡住": "STUCK",
    "阻塞": "BLOCKED", "受阻": "BLOCKED", "等待": "BLOCKED",
    "跳过": "SKIPPED", "已跳过": "SKIPPED", "取消": "SKIPPED", "已取消": "SKIPPED",
    "作废": "SKIPPED", "淘汰": "SKIPPED", "放弃": "SKIPPED",
    "重试": RETRY, "重跑": RETRY,
}.items(), key=lambda kv: -len(kv[0]))

# A symbol decides only when the cell has no word: `DONE ✗` is a finished run with a bad result.
_SYMBOLS = {
    "✅": "DONE", "✔": "DONE", "✓": "DONE", "☑": "DONE", "🟢": "DONE",
    "⬜": "TODO", "☐": "TODO", "🕐": "TODO", "⏳": "QUEUED",
    "🔄": "RUNNING", "▶": "RUNNING", "🏃": "RUNNING", "🚀": "RUNNING",
    "⏸": "PAUSED", "❌": "FAILED", "✗": "FAILED", "✘": "FAILED", "🔴": "FAILED",
    "⛔": "BLOCKED", "🚫": "BLOCKED", "⏭": "SKIPPED", "🔁": RETRY,
}

_DECORATION = re.compile(r"\*\*|__|`|~~|<[/]?(?:b|strong|em|i)>|\ufe0f")
_CHECKBOX = re.compile(r"^(?:[-*+]\s+)?\[([ xX✓])\]\s*")
_SEPARATORS = re.compile(r"\s+[—–-]\s+|[;；,，、(（:：/]|\s+[—–]|[—–]\s+")
_LETTERS = re.compile(r"[A-Za-z][A-Za-z0-9_\-. ]*")


def normalize_status(raw: str) -> str | None:
    """One of STATUSES, "RETRY", or None when the cell does not say a lifecycle state."""
    text = _DECORATION.sub("", raw or "").strip()
    box = _CHECKBOX.match(text)
    if box:
        rest = text[box.end():].strip()
        return _head_status(rest) if rest else ("TODO" if box.group(1) == " " else "DONE")
    return _head_status(text)


def _head_status(text: str) -> str | None:
    segments = [s.strip() for s in _SEPARATORS.split(text) if s and s.strip()]
    if not segments:
        return None
    status = _segment_status(segments[0])
    # `TODO/BLOCKED-UNTIL-R049`: not runnable yet, whatever the first word says.
    if status == "TODO" and any(_segment_status(s) == "BLOCKED" for s in segments[1:]):
        return "BLOCKED"
    return status


def _segment_status(segment: str) -> str | None:
    for word, status in _ZH:
        if segment.startswith(word):
            return status
    match = _LETTERS.match(segment[len(_symbol_chars(segment)):])
    if match:
        return _word_status(match.group(0))
    if not re.search(r"[A-Za-z0-9\u4e00-\u9fff]", segment):
        return next((s for ch, s in _SYMBOLS.items() if ch in segment), None)
    return None


def _symbol_chars(segment: str) -> str:
    """The leading run of non-letters (emoji, spaces) to skip before the head word."""
    lead = re.match(r"[^A-Za-z0-9\u4e00-\u9fff]*", segment)
    return lead.group(0) if lead else ""


def _word_status(words: str) -> str | None:
    key = re.sub(r"[\s\-]+", "_", words.strip(" ._-").upper())
    if key in _EXACT:
        return _EXACT[key]
    for word in _PREFIX_OK:
        if key.startswith(word + "_"):
            return _EXACT[word]
    return None


def command_of(normalized: str | None) -> str | None:
    """The steering command a person expresses by writing this status (DESIGN §4)."""
    return {"PAUSED": "pause", "TODO": "resume", "SKIPPED": "skip", RETRY: "retry"}.get(normalized or "")


# What we write when a Status cell uses the emoji-plus-word style (`⬜ Pending` -> `🔄 RUNNING`)
# and the file's own legend does not say otherwise.
DEFAULT_SYMBOLS = {"TODO": "⬜", "QUEUED": "⏳", "RUNNING": "🔄", "PAUSED": "⏸️", "DONE": "✅",
                   "FAILED": "❌", "STUCK": "⚠️", "BLOCKED": "⛔", "SKIPPED": "⏭️", RETRY: "🔁"}
_LEGEND = re.compile("((?:" + "|".join(map(re.escape, sorted(_SYMBOLS, key=len, reverse=True)))
                     + r")\ufe0f?)[ \t]*([^\s·/|,;，；、]+(?:[ \t][A-Za-z]+)?)")


def legend_symbols(text: str) -> dict[str, str]:
    """Status -> symbol as the file itself uses them (`⏳ running · ✅ done`, `🔄 运行中`)."""
    found: dict[str, str] = {}
    for match in _LEGEND.finditer(text):
        status = normalize_status(match.group(2))
        if status is not None and status not in found:
            found[status] = match.group(1)
    return found


_ALL_SYMBOLS = sorted(set(_SYMBOLS) | {s.rstrip("\ufe0f") for s in DEFAULT_SYMBOLS.values()},
                      key=len, reverse=True)


def leading_symbol(cell: str) -> str | None:
    """The status symbol a cell starts with, if any (`✅ done` -> `✅`)."""
    stripped = _DECORATION.sub("", cell).strip()
    return next((ch for ch in _ALL_SYMBOLS if stripped.startswith(ch)), None)
