"""The Markdown structure of a plan: lines, headings, GFM tables, labelled bullets, fences.

Only what the plan reader needs, and lenient: code fences and YAML front matter are skipped,
table cells are split the GFM way (an unescaped '|' always splits, even in a code span), and a
bullet's label may be bold or plain, followed by ':' or the full-width '：'.
"""
from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML

from handlers.diagnostics import Diagnostic
from handlers.plan_model import plain

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`\s]*)")
_BULLET = re.compile(r"^(\s*)(?:[-*+]|\d+[.)])\s+(.*)$")
_DELIM_CELL = re.compile(r"^\s*:?-+:?\s*$")
_BOLD_LABEL = re.compile(r"^(?:\*\*|__)([^*_]{1,80}?)[:：]\s*(?:\*\*|__)\s*(.*)$"
                         r"|^(?:\*\*|__)([^*_]{1,80}?)(?:\*\*|__)([^:：*]{0,40}?)[:：]\s*(.*)$")
_PLAIN_LABEL = re.compile(r"^([^:：|`*\[\]()（）]{1,50}?)\s*[:：](?:\s+(.*)|\s*)$")


@dataclass(frozen=True)
class Line:
    no: int          # 1-based line number in the file
    text: str
    code: bool       # inside a code fence or the front matter


@dataclass(frozen=True)
class Section:
    index: int       # index of the heading line in Doc.lines
    end: int         # index one past the section's last line (next heading of the same or a higher level)
    level: int
    title: str

    @property
    def line(self) -> int:
        return self.index + 1


@dataclass(frozen=True)
class Row:
    line: int
    cells: list[str]


@dataclass(frozen=True)
class Table:
    line: int
    header: list[str]
    rows: list[Row]


@dataclass(frozen=True)
class Item:
    """A top-level bullet or paragraph line, with its continuation lines folded into value."""
    line: int
    text: str                  # the first line's content, markers removed
    label: str | None          # "Claim tested" for "- **Claim tested**: C1"
    value: str                 # the text after the label, plus continuation lines
    bullet: bool


@dataclass
class Fence:
    line: int
    info: str
    body: str
    error: str = ""

    def yaml(self) -> Any:
        try:
            return YAML(typ="safe", pure=True).load(io.StringIO(self.body))
        except Exception as exc:  # noqa: BLE001 - any YAML failure is a user error to report
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None


@dataclass
class Doc:
    lines: list[Line]
    sections: list[Section]
    front_matter: dict[str, str] = field(default_factory=dict)

    def find(self, pattern: re.Pattern[str], exclude: re.Pattern[str] | None = None) -> list[Section]:
        """Sections whose heading matches pattern (level >= 2), in document order."""
        return [s for s in self.sections if s.level >= 2 and pattern.search(s.title)
                and not (exclude and exclude.search(s.title))]

    def children(self, parent: Section) -> list[Section]:
        return [s for s in self.sections if parent.index < s.index < parent.end]

    def _span(self, section: Section | None) -> tuple[int, int]:
        return (section.index + 1, section.end) if section else (0, len(self.lines))

    def tables_in(self, section: Section | None, direct: bool = False) -> list[Table]:
        """Tables in the section; with direct, only those before its first sub-heading."""
        start, end = self._span(section)
        if direct and section is not None:
            end = next((c.index for c in self.children(section)), end)
        return tables_between(self, start, end)

    def items(self, section: Section | None, headings_as_labels: bool = False) -> list[Item]:
        start, end = self._span(section)
        return items_in(self, start, end, headings_as_labels)

    def fences_in(self, section: Section | None) -> list[Fence]:
        start, end = self._span(section)
        return fences_between(self, start, end)

    def text_lines(self, section: Section | None) -> list[str]:
        start, end = self._span(section)
        return [ln.text for ln in self.lines[start:end] if not ln.code]

    def section_text(self, section: Section | None) -> str:
        return "\n".join(self.text_lines(section))

    def han_share(self) -> float:
        letters = han = 0
        for ln in self.lines:
            for ch in ln.text:
                if ch.isalpha():
                    letters += 1
                    han += unicodedata.name(ch, "").startswith("CJK UNIFIED")
        return han / letters if letters else 0.0


def read_doc(text: str) -> Doc:
    raw = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    code = [False] * len(raw)
    front = _front_matter(raw, code)
    _mark_fences(raw, code)
    lines = [Line(i + 1, t, code[i]) for i, t in enumerate(raw)]
    return Doc(lines, _sections(lines), front)


def _front_matter(raw: list[str], code: list[bool]) -> dict[str, str]:
    if not raw or raw[0].strip() != "---":
        return {}
    for end in range(1, min(len(raw), 60)):
        if raw[end].strip() in ("---", "..."):
            pairs = [r.split(":", 1) for r in raw[1:end] if ":" in r]
            if len(pairs) < end - 1 - sum(1 for r in raw[1:end] if not r.strip()):
                return {}  # not all key: value lines, so a thematic break, not front matter
            for i in range(end + 1):
                code[i] = True
            return {k.strip().lower(): v.strip() for k, v in pairs}
    return {}


def _mark_fences(raw: list[str], code: list[bool]) -> None:
    opener: str | None = None
    for i, text in enumerate(raw):
        if code[i] and opener is None:
            continue
        match = _FENCE.match(text)
        if opener is None and match:
            opener = match.group(1)
            code[i] = True
        elif opener is not None:
            code[i] = True
            stripped = text.strip()
            if stripped.startswith(opener[0] * len(opener)) and not stripped.strip(opener[0]):
                opener = None


def _sections(lines: list[Line]) -> list[Section]:
    heads = []
    for i, ln in enumerate(lines):
        match = None if ln.code else _HEADING.match(ln.text)
        if match:
            heads.append((i, len(match.group(1)), match.group(2).strip()))
    sections = []
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        sections.append(Section(i, end, level, title))
    return sections


# ---------------------------------------------------------------- tables

def split_cells(text: str) -> list[str]:
    """GFM cell split: '\\|' is a literal pipe, every other '|' splits; outer pipes optional."""
    body = text.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    cells = re.split(r"(?<!\\)\|", body)
    return [c.replace("\\|", "|").strip() for c in cells]


def _is_delimiter(text: str) -> bool:
    if "-" not in text:
        return False
    cells = split_cells(text)
    return bool(cells) and all(_DELIM_CELL.match(c) for c in cells)


def _is_row(ln: Line) -> bool:
    return not ln.code and "|" in ln.text and bool(ln.text.strip()) and not _HEADING.match(ln.text)


def tables_between(doc: Doc, start: int, end: int) -> list[Table]:
    tables, i = [], start
    while i < end - 1:
        ln, nxt = doc.lines[i], doc.lines[i + 1]
        if _is_row(ln) and _is_row(nxt) and _is_delimiter(nxt.text) and not _is_delimiter(ln.text):
            rows, j = [], i + 2
            while j < end and _is_row(doc.lines[j]):
                rows.append(Row(doc.lines[j].no, split_cells(doc.lines[j].text)))
                j += 1
            tables.append(Table(ln.no, split_cells(ln.text), rows))
            i = j
        else:
            i += 1
    return tables


# ---------------------------------------------------------------- labelled items

def split_label(content: str) -> tuple[str | None, str]:
    """'**Label**: value', '**Label:** value' or 'Label: value' -> (label, value)."""
    match = _BOLD_LABEL.match(content)
    if match:
        if match.group(1) is not None:
            label, value = match.group(1), match.group(2)
        else:
            label, value = f"{match.group(3)} {match.group(4).strip()}", match.group(5)
        return label.strip().rstrip(":：").strip(), (value or "").strip()
    match = _PLAIN_LABEL.match(content)
    if match and len(match.group(1).split()) <= 8 and not re.match(r"^\d+(\.\d+)?$", match.group(1)):
        return match.group(1).strip(), (match.group(2) or "").strip()
    return None, content.strip()


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" \t"))


def items_in(doc: Doc, start: int, end: int, headings_as_labels: bool = False) -> list[Item]:
    """Top-level bullets and paragraph lines in [start, end); deeper lines continue the item.

    A table, fence or heading ends the current item. With headings_as_labels a sub-heading is
    an item whose value is the text under it ("### Data needs" in a budget section).
    """
    window = doc.lines[start:end]
    bullets = [_indent(ln.text) for ln in window if not ln.code and _BULLET.match(ln.text)]
    base = min(bullets) if bullets else 0
    items: list[Item] = []
    parts: list[str] = []
    state = {"open": False, "blank": False, "heading": False}

    def close() -> None:
        if items and parts:
            last = items[-1]
            items[-1] = Item(last.line, last.text, last.label, "\n".join([last.value, *parts]).strip(), last.bullet)
        parts.clear()

    for ln in window:
        heading = None if ln.code else _HEADING.match(ln.text)
        if ln.code or heading or ln.text.lstrip().startswith("|"):
            close()
            state.update(open=False, blank=False, heading=False)
            if heading and headings_as_labels:
                items.append(Item(ln.no, heading.group(2), heading.group(2), "", False))
                state.update(open=True, heading=True)
            continue
        if not ln.text.strip():
            state["blank"] = True
            continue
        if state["heading"]:
            parts.append(ln.text.strip())
            state.update(blank=False, heading=False)
            continue
        labelled = bool(items and items[-1].label)
        if _is_top(ln.text, base, state["blank"], state["open"], labelled):
            close()
            bullet = _BULLET.match(ln.text)
            content = (bullet.group(2) if bullet else ln.text).strip()
            label, value = split_label(content)
            items.append(Item(ln.no, content, label, value, bool(bullet)))
            state["open"] = True
        elif state["open"]:
            parts.append(ln.text.strip())
        state["blank"] = False
    close()
    return items


def _is_top(text: str, base: int, blank: bool, open_item: bool, after_label: bool) -> bool:
    """Whether a line starts a new item rather than continuing the open one."""
    if _BULLET.match(text):
        return _indent(text) <= base + 1
    if _indent(text) >= 2:
        return not open_item
    if blank or not open_item or _BOLD_LABEL.match(text.strip()):
        return True
    # "Date: ...\nProject: ..." lines: a run of plain labels is a run of items.
    return after_label and split_label(text.strip())[0] is not None


def fences_between(doc: Doc, start: int, end: int) -> list[Fence]:
    fences, i = [], start
    while i < end:
        match = _FENCE.match(doc.lines[i].text) if doc.lines[i].code else None
        if match:
            j = i + 1
            while j < end and not doc.lines[j].text.strip().startswith(match.group(1)):
                j += 1
            body = "\n".join(ln.text for ln in doc.lines[i + 1:j])
            fences.append(Fence(doc.lines[i].no, match.group(2), body))
            i = j + 1
        else:
            i += 1
    return fences


# ---------------------------------------------------------------- reading context and table helpers


@dataclass
class Ctx:
    """The document being read and the diagnostics found so far."""
    doc: Doc
    file: str
    diags: list[Diagnostic] = field(default_factory=list)

    def warn(self, line: int, message: str) -> None:
        self.diags.append(Diagnostic(self.file, line, "warning", message))

    def error(self, line: int, message: str) -> None:
        self.diags.append(Diagnostic(self.file, line, "error", message))


def column(header: list[str], pattern: str, skip: tuple[int, ...] = ()) -> int | None:
    regex = re.compile(pattern, re.I)
    return next((i for i, h in enumerate(header) if i not in skip and regex.search(plain(h))), None)


def cell(cells: list[str], index: int | None) -> str:
    return plain(cells[index]) if index is not None and index < len(cells) else ""


def check_width(ctx: Ctx, table: Table, row: Row) -> None:
    if len(row.cells) != len(table.header):
        ctx.warn(row.line, f"table row has {len(row.cells)} cells but the header (line {table.line}) has {len(table.header)}; "
                           "an unescaped '|' splits a cell (write it as \\|)")


_EXTENSION_KEYS = {"cmd", "grid", "seeds", "est_hours", "expected_output", "depends_on"}


def extension(ctx: Ctx, section: Section) -> dict:
    """F11: a fenced YAML block (cmd, grid, seeds, est_hours, expected_output, depends_on)."""
    for fence in ctx.doc.fences_in(section):
        if fence.info.lower() not in ("yaml", "yml"):
            continue
        data = fence.yaml()
        if isinstance(data, dict) and _EXTENSION_KEYS & set(map(str, data)):
            return {str(k): v for k, v in data.items()}
        if data is None and fence.error:
            ctx.warn(fence.line, f"YAML block does not parse: {fence.error}")
    return {}
