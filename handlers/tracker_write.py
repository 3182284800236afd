"""Write the tracker: Status cells, the daemon's `eb:` tail in Notes, appended rows, the plan switch.

Edits are byte splices into the original text: a cell's trimmed content is replaced, its padding,
the pipes, every other cell and line, the line endings and the (missing) final newline stay as they
were (reference/CORPUS.md §7 "Writing"). A cell a person changed since our last write is theirs:
`expect_*` carries what we wrote last time, and a mismatch skips that cell.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from daemon.errors import InputError
from handlers.diagnostics import Diagnostic
from handlers.status_vocab import DEFAULT_SYMBOLS, leading_symbol, legend_symbols, normalize_status
from handlers.tracker import (EB_MARKER, PLAN_SWITCH_WORDS, SWITCH_RE, Columns, Line, RawRow,
                              RawTable, Row, Tracker, bare, front_matter_end, header_keys,
                              make_row, masked_lines, md_trim, norm_header, parse_tracker,
                              run_tables, split_lines, split_row, strip_separator)
from handlers.tracker_file import TMP_PREFIX, identity, read_text, sha256_text, swap_in, write_atomic

_WS = " \t"
__all__ = ["CellEdit", "EditResult", "apply_edits", "append_rows", "set_plan_switch", "write_atomic",
           "update_tracker", "update_plan_switch", "sha256_text", "read_text", "TMP_PREFIX"]


@dataclass(frozen=True)
class CellEdit:
    run_id: str
    status: str | None = None
    notes_eb: str | None = None        # "" removes our tail (and its `; ` separator)
    expect_status: str | None = None   # what we wrote last time; a different cell is a person's
    expect_notes_eb: str | None = None
    table: int | None = None           # picks one of several rows sharing the run id...
    line: int | None = None            # ...or the row on this line (as last read)


@dataclass
class EditResult:
    text: str
    applied: list[CellEdit] = field(default_factory=list)
    skipped: list[tuple[CellEdit, str]] = field(default_factory=list)


def clean_value(value: str) -> str:
    """A value as it will read back from a cell: one line, trimmed."""
    return md_trim(re.sub(r"\s*(?:\r\n|\r|\n)\s*", " ", value))


def escape_cell(value: str) -> str:
    return clean_value(value).replace("|", "\\|")


def _tail_value(value: str) -> str:
    # Our text must not contain a marker of its own, or the next read would split it there.
    return EB_MARKER.sub("eb :", clean_value(value))


# ---- locating ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    row: Row
    raw: RawRow
    table: RawTable
    cols: Columns


def _targets(tracker: Tracker) -> list[_Target]:
    out = []
    by_line = {r.line: r for r in tracker.rows}
    for number, table, cols in run_tables(tracker.raw_tables):
        for raw in table.body + table.continuation:
            row = by_line.get(raw.line)
            if row is not None and row.table == number:
                out.append(_Target(row, raw, table, cols))
    return out


def _find(targets: list[_Target], edit: CellEdit, file: str) -> _Target | str:
    hits = [t for t in targets if t.row.run_id == edit.run_id
            and (edit.table is None or t.row.table == edit.table)
            and (edit.line is None or t.row.line == edit.line)]
    if not hits:
        at = f" on line {edit.line}" if edit.line is not None else ""
        return f"{file}: no row with run id {edit.run_id!r}{at}"
    if len(hits) > 1:
        lines = ", ".join(str(t.row.line) for t in hits)
        return (f"{file}:{hits[0].row.line}: run id {edit.run_id!r} is on lines {lines}; "
                "not editing an ambiguous row (give its line, or make the ids unique)")
    return hits[0]


def _refresh(target: _Target, line: str) -> _Target:
    """The row re-read from its current line; spans become offsets into that line."""
    raw = split_row(Line(target.row.line, 0, len(line), line))
    row = make_row(raw, target.cols, header_keys(target.table.header.texts), target.row.table,
                   target.row.milestone, target.row.continuation)
    return _Target(row, raw, target.table, target.cols)


# ---- cell formatting --------------------------------------------------------------------------

def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _column_width(table: RawTable, col: int, text: str) -> int | None:
    """The shared width of a space-padded column, or None when the table is not aligned. A
    clear majority decides, so one over-long cell (ours or a person's) does not end padding."""
    rows = (table.header, table.delimiter) + table.body
    widths = [_width(text[r.spans[col][0]:r.spans[col][1]]) for r in rows if col < len(r.spans)]
    if not table.body or not widths:
        return None
    common = max(set(widths), key=widths.count)
    padded_head = widths[0] == widths[1] == common  # equal values alone do not make alignment
    return common if padded_head and widths.count(common) >= max(3, 0.6 * len(widths)) else None


def _splice_cell(text: str, span: tuple[int, int], inner: str, width: int | None) -> str:
    """The new raw cell: the trimmed content replaced, the cell's own padding kept (or, in a
    space-padded column, the column's width)."""
    raw = text[span[0]:span[1]]
    old = raw.strip(_WS)
    if old:
        lead = raw[:len(raw) - len(raw.lstrip(_WS))]
        trail = raw[len(lead) + len(old):]
    else:
        lead, trail = raw[:1] or " ", raw[1:] or " "
    if width is not None:
        trail = " " * max(1 if trail else 0, width - _width(lead + inner))
    if inner.endswith("\\") and not trail:
        trail = " "  # a backslash right before the pipe would escape it
    return lead + inner + trail


def _status_inner(old: str, status: str, legend: dict[str, str]) -> str:
    """The new Status text in the cell's own style: bold stays bold, `⬜ Pending` becomes
    `🔄 RUNNING` with the symbol from the file's legend when it has one."""
    value = escape_cell(status)
    mark = next((m for m in ("**", "__") if len(old) > 4 and old.startswith(m) and old.endswith(m)), "")
    if leading_symbol(old) is not None:
        normal = normalize_status(status)
        symbol = legend.get(normal or "") or DEFAULT_SYMBOLS.get(normal or "")
        if symbol in legend.values() and legend.get(normal or "") != symbol:
            symbol = None  # the file's legend gives this symbol another meaning
        value = f"{symbol} {value}" if symbol else value
    return f"{mark}{value}{mark}"


def _notes_inner(old: str, tail: str) -> str:
    marks = list(EB_MARKER.finditer(old))
    if not tail:
        return strip_separator(old[:marks[-1].start()]) if marks else old
    value = escape_cell(_tail_value(tail))
    if marks:
        return old[:marks[-1].end()] + " " + value
    if not old:
        return "eb: " + value
    return old + "; eb: " + value  # always `; `: the reader removes exactly one separator


# ---- apply ------------------------------------------------------------------------------------

def apply_edits(text: str, edits: Sequence[CellEdit], file: str) -> EditResult:
    """Pure: the new text plus, per cell, what was applied and what was skipped and why.
    One parse; each edit then works on its row's current line, so edits compose."""
    tracker = parse_tracker(text, file)
    targets, legend = _targets(tracker), legend_symbols(text)
    lines = {ln.no: ln for ln in split_lines(text)}
    current: dict[int, str] = {}
    result = EditResult(text)
    for edit in edits:
        found = _find(targets, edit, file)
        if isinstance(found, str):
            result.skipped.append((edit, found))
            continue
        line = current.get(found.row.line, lines[found.row.line].text)
        target, applied = _refresh(found, line), {}
        for name, value in (("status", edit.status), ("notes_eb", edit.notes_eb)):
            if value is None:
                continue
            reason = _refusal(line, target, name, edit, file, legend)
            if reason:
                result.skipped.append((_only(edit, name), reason))
                continue
            width = _column_width(found.table, _col(target, name), text)
            line = _write_cell(line, target, name, value, legend, width)
            target, applied[name] = _refresh(found, line), value
        current[found.row.line] = line
        if applied:
            result.applied.append(_only(edit, *applied))
    result.text = _join(text, lines, current)
    return result


def _join(text: str, lines: dict[int, Line], current: dict[int, str]) -> str:
    parts, pos = [], 0
    for no in sorted(current):
        parts += [text[pos:lines[no].start], current[no]]
        pos = lines[no].end
    return "".join(parts) + text[pos:]


def _col(target: _Target, name: str) -> int:
    col = target.cols.status if name == "status" else target.cols.notes
    assert col is not None
    return col


def _only(edit: CellEdit, *names: str) -> CellEdit:
    keep = {n: getattr(edit, n) for n in names}
    keep.update({f"expect_{n}": getattr(edit, f"expect_{n}") for n in names})
    return CellEdit(edit.run_id, table=edit.table, line=edit.line, **keep)


def _refusal(line: str, target: _Target, name: str, edit: CellEdit, file: str,
             legend: dict[str, str]) -> str | None:
    row, where = target.row, f"{file}:{target.row.line}"
    if name == "status" and not clean_value(edit.status or ""):
        return f"{where}: an empty Status is not written (write TODO to queue {row.run_id})"
    if name == "notes_eb" and target.cols.notes is None:
        return f"{where}: table has no Notes column; {row.run_id} notes not written"
    if row.ragged and (name == "notes_eb" or row.status is None):
        return (f"{where}: row has {len(target.raw.texts)} cells but the header has "
                f"{target.table.width}; {name.split('_')[0]} of {row.run_id} not written")
    if name == "status" and edit.expect_status is not None:
        span = target.raw.spans[target.cols.status]
        if not _is_ours(line[span[0]:span[1]].strip(_WS), edit.expect_status, legend):
            return (f"{where}: Status of {row.run_id} was changed by a person to "
                    f"{row.status_raw!r} (we wrote {edit.expect_status!r}); keeping theirs")
    if name == "notes_eb" and edit.expect_notes_eb is not None:
        if (row.notes_eb or "") != _tail_value(edit.expect_notes_eb):
            return (f"{where}: the eb: part of Notes of {row.run_id} was changed by a person to "
                    f"{row.notes_eb!r} (we wrote {edit.expect_notes_eb!r}); keeping theirs")
    return None


def _is_ours(now: str, expected: str, legend: dict[str, str]) -> bool:
    """The Status cell still holds `expected`: as our writer styled it, or literally."""
    literal = escape_cell(expected)
    return now in (_status_inner(now, expected, legend), literal) or bare(now) == bare(literal)


def _open_edge(text: str, span: tuple[int, int]) -> bool:
    """A first or last cell with no pipe on its outer side (`R1 | x` rather than `| R1 | x |`)."""
    before = text[:span[0]].rstrip(" \t")
    after = text[span[1]:].lstrip(" \t")
    return not before.endswith("|") or not after.startswith("|")


def _write_cell(line: str, target: _Target, name: str, value: str, legend: dict[str, str],
                width: int | None) -> str:
    span = target.raw.spans[_col(target, name)]
    old = line[span[0]:span[1]].strip(_WS)
    inner = _status_inner(old, value, legend) if name == "status" else _notes_inner(old, value)
    if not inner and _open_edge(line, span):
        inner = "eb:"  # an empty edge cell without its outer pipe would vanish (GFM drops it)
    if inner == old:
        return line
    return line[:span[0]] + _splice_cell(line, span, inner, width) + line[span[1]:]


# ---- appending rows ---------------------------------------------------------------------------

def append_rows(text: str, rows: Sequence[Mapping[str, str]], file: str,
                after_run: str | None = None) -> str:
    """Append rows at the end of a run table; a row whose run id already exists is not added
    again, so a retried append after a crash is harmless."""
    tracker = parse_tracker(text, file)
    found = run_tables(tracker.raw_tables)
    if not found:
        raise InputError(f"{file}: cannot append rows: no table with a run-id and a status column",
                         [Diagnostic(file, 0, "error", "no run table to append to")])
    number, table, cols = found[-1]
    if after_run is not None:
        row = next((r for r in tracker.rows if r.run_id == after_run), None)
        if row is not None:
            number, table, cols = found[row.table]
    existing = {r.run_id for r in tracker.rows}
    new_lines = []
    for values in rows:
        cells = _row_cells(values, table, cols, file)
        if bare(cells[cols.run_id]) in existing:
            continue
        existing.add(bare(cells[cols.run_id]))
        new_lines.append(_format_row(text, table, cells))
    return _insert_after(text, table.last_line, new_lines) if new_lines else text


def _row_cells(values: Mapping[str, str], table: RawTable, cols: Columns, file: str) -> list[str]:
    roles = {"run_id": cols.run_id, "status": cols.status, **cols.roles}
    if cols.notes is not None:
        roles["notes"] = cols.notes
    norms = [norm_header(h) for h in table.header.texts]
    cells = [""] * table.width
    for key, value in values.items():
        col = roles.get(key)
        if col is None and norm_header(key) in norms:
            col = norms.index(norm_header(key))
        if col is None:
            raise InputError(f"{file}:{table.header.line}: cannot append a {key!r} cell: the "
                             f"table's columns are {', '.join(table.header.texts)}")
        cells[col] = escape_cell(str(value))
    if not cells[cols.run_id]:
        raise InputError(f"{file}:{table.header.line}: an appended row needs a run id")
    return cells


def _format_row(text: str, table: RawTable, cells: list[str]) -> str:
    model = (table.continuation or table.body or (table.header,))[-1]
    lines = split_lines(text)
    line = lines[model.line - 1]
    first, last = model.spans[0][0], model.spans[-1][1]
    prefix, suffix = text[line.start:first], text[last:line.end]
    parts = []
    for k, value in enumerate(cells):
        width = _column_width(table, k, text)
        if width is not None:
            parts.append(" " + value + " " * max(1, width - 1 - _width(value)))
        else:
            parts.append(f" {value} " if value else " ")
    if "|" not in prefix:
        parts[0] = parts[0].lstrip(" ")
    if not cells[-1] and "|" not in suffix:
        suffix = "|" + suffix  # an empty last cell needs its outer pipe, or GFM drops it
    elif "|" not in suffix:
        parts[-1] = parts[-1].rstrip(" ")
    return prefix + "|".join(parts) + suffix


def _insert_after(text: str, line_no: int, new_lines: list[str]) -> str:
    lines = split_lines(text)
    line = lines[line_no - 1]
    eol = text[line.end:line.end + 2] if text.startswith("\r\n", line.end) else text[line.end:line.end + 1]
    if eol:
        insert = "".join(nl + eol for nl in new_lines)
        return text[:line.end + len(eol)] + insert + text[line.end + len(eol):]
    newline = _dominant_eol(text)
    return text + "".join(newline + nl for nl in new_lines)


def _dominant_eol(text: str) -> str:
    return "\r\n" if text.count("\r\n") * 2 > text.count("\n") else "\n"


# ---- plan switch ------------------------------------------------------------------------------

def set_plan_switch(text: str, word: str) -> str:
    """Set `**expbridge**: WORD` under the first heading (the one edit outside a cell)."""
    if word not in PLAN_SWITCH_WORDS:
        raise ValueError(f"plan switch word must be one of {PLAN_SWITCH_WORDS}, not {word!r}")
    lines = split_lines(text)
    masked = masked_lines(lines)
    for line in lines:
        m = SWITCH_RE.match(line.text)
        if m and line.no not in masked:
            start, end = line.start + m.start("word"), line.start + m.end("word")
            return text[:start] + word + text[end:]
    eol, switch = _dominant_eol(text), f"**expbridge**: {word}"
    heading = next((ln for ln in lines if ln.no not in masked
                    and re.match(r"^ {0,3}#{1,6}(?:[ \t]|$)", ln.text)), None)
    if heading is None:
        top = front_matter_end(lines)
        if not top:
            bom = "\ufeff" if text.startswith("\ufeff") else ""  # the mark stays first
            return bom + switch + eol + eol + text[len(bom):]
        heading = lines[top - 1]
    following = lines[heading.no] if heading.no < len(lines) else None
    blank_after = eol if following is not None and md_trim(following.text) else ""
    return text[:heading.end] + eol + eol + switch + blank_after + text[heading.end:]


# ---- files ------------------------------------------------------------------------------------

def update_plan_switch(path: Path, word: str) -> str:
    """set_plan_switch on a file, bytes and line endings kept; no write when already set."""
    path = Path(path)
    text = read_text(path)
    new = set_plan_switch(text, word)
    return sha256_text(text) if new == text else write_atomic(path, new)


def update_tracker(path: Path, edits: Sequence[CellEdit]) -> tuple[EditResult, str]:
    """Read, edit, write, and check what the write replaced. If a person saved in between, their
    text comes back from the exchange and our edits are redone on it, so their save survives.
    If the file keeps changing, their latest text is put back and every edit is reported
    skipped. No write when nothing changes. Returns (result, sha256 of the file as it now is)."""
    path = Path(path)
    seen = identity(path)
    text = read_text(path)
    for _ in range(8):
        result = apply_edits(text, edits, str(path))
        if result.text == text:
            return result, sha256_text(text)
        sha, replaced = swap_in(path, result.text, base=text, seen=seen)
        seen = identity(path)
        if replaced is None or replaced == text:
            return result, sha
        text = replaced  # a person's save landed first (and is back in place): build on it
    sha = sha256_text(text)
    busy = f"{path}: the file kept changing while we wrote it; nothing written, will retry"
    return EditResult(text, [], [(edit, busy) for edit in edits]), sha
