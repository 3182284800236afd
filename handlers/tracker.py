"""Read EXPERIMENT_TRACKER.md: every run table, whatever its headers and however many.

Tables come from handlers.tracker_scan (GFM rules, byte spans). Rows after a blank line that
continue a table are read as its rows, with a warning; one-cell rows are group labels, not runs
(reference/CORPUS.md §7).

A run table is one with a run-id column and a status column (synonym sets below). Rows keep
their raw text and are never merged by id. A row wider or narrower than its header is read by
position like GFM does and flagged `ragged`; the writer then touches its Status only while the
cell under Status reads as a status, and never its Notes.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from handlers.diagnostics import Diagnostic
from handlers.status_vocab import STATUSES, normalize_status
from handlers.tracker_scan import (WS, Line, RawRow, RawTable, front_matter_end, masked_lines,
                                   md_trim, scan_tables, split_lines, split_row, unescape)

__all__ = ["Row", "Tracker", "parse_tracker", "read_tracker", "Line", "RawRow", "RawTable",
           "front_matter_end", "masked_lines", "md_trim", "scan_tables", "split_lines",
           "split_row", "unescape"]

_ID_HEADERS = ("run id", "run_id", "runid", "run-id", "id", "todo id", "job id", "exp id",
               "experiment id", "编号", "exp", "run", "runs", "block", "item", "experiment", "实验")
_STATUS_HEADERS = ("status", "状态", "state", "current state", "verdict", "status / result",
                   "result / status")
_NOTES_WORDS = ("notes", "note", "备注", "ghi chú", "remarks", "comments", "comment")
_ROLE_WORDS = {
    "milestone": ("milestone", "里程碑", "phase", "stage", "阶段"),
    "purpose": ("purpose", "目的", "mục đích", "goal"),
    "priority": ("priority", "优先级"),
    "command": ("command", "cmd", "命令", "run command"),
}
PLAN_SWITCH_WORDS = ("RUNNING", "PAUSED", "AWAITING_APPROVAL", "APPROVED")
_SWITCH_ALIASES = {"PAUSE": "PAUSED", "RUN": "RUNNING", "RESUME": "RUNNING", "RESUMED": "RUNNING",
                   "APPROVE": "APPROVED", "AWAITING": "AWAITING_APPROVAL"}
SWITCH_RE = re.compile(r"^[ \t]*\*\*expbridge\*\*[ \t]*:[ \t]*(?P<word>\S*)[ \t]*$", re.IGNORECASE)
EB_MARKER = re.compile(r"(?<![\w])eb:")


@dataclass(frozen=True)
class Row:
    run_id: str              # the id cell without wrapping bold/code; may repeat across rows
    status_raw: str          # the Status cell as written (unescaped, trimmed)
    status: str | None       # normalised: one of STATUSES, "RETRY", or None (unrecognised)
    notes_raw: str | None    # None when the table has no Notes column
    notes_user: str          # the person's part of Notes
    notes_eb: str | None     # the daemon's part, after `eb:`; None when there is no marker
    milestone: str | None    # "M0"... from a Milestone column, a section row or the heading
    purpose: str | None
    priority: str | None     # "must" / "nice" / None
    command: str | None      # a Command column, if the table has one
    cells: dict[str, str]    # header text -> cell text, padded/cut to the header like GFM
    line: int                # 1-based
    table: int               # index among the file's run tables
    ragged: bool = False     # the row has more or fewer cells than its header
    continuation: bool = False  # read from rows after a blank line (not a table in Markdown)


@dataclass
class Tracker:
    file: str
    text: str
    sha: str
    rows: list[Row]
    diagnostics: list[Diagnostic]
    tables: int
    plan_switch: str | None
    plan_switch_line: int | None
    raw_tables: list[RawTable] = field(default_factory=list)


def norm_header(h: str) -> str:
    h = re.sub(r"\*\*|__|`", "", h).lower()
    h = re.sub(r"\s*/\s*", " / ", h)
    return re.sub(r"\s+", " ", md_trim(h))


# ---- run tables -> rows ---------------------------------------------------------------------

@dataclass(frozen=True)
class Columns:
    run_id: int
    status: int
    notes: int | None
    roles: dict[str, int]


def classify(headers: tuple[str, ...], body: tuple[RawRow, ...] = ()) -> Columns | None:
    """Which columns hold the run id, status, notes...; None when this is not a run table."""
    norm = [norm_header(h) for h in headers]
    status = next((k for k, h in enumerate(norm) if h in _STATUS_HEADERS), None)
    ids = sorted((_ID_HEADERS.index(h), k) for k, h in enumerate(norm) if h in _ID_HEADERS)
    if status is None or not ids:
        return None
    id_like = [k for _, k in ids if _mostly_id_like(body, k)]
    run_id = id_like[0] if id_like else ids[0][1]
    notes = next((k for k, h in enumerate(norm) if any(
        w in _NOTES_WORDS for w in h.split(" / "))), None)
    roles = {}
    for role, words in _ROLE_WORDS.items():
        hit = next((k for k, h in enumerate(norm) if h in words or (
            role != "command" and any(w in words for w in h.split(" / ")))), None)
        if hit is not None:
            roles[role] = hit
    return Columns(run_id, status, notes, roles)


def _mostly_id_like(body: tuple[RawRow, ...], col: int) -> bool:
    values = [r.texts[col] for r in body if col < len(r.texts) and r.texts[col]]
    return bool(values) and sum(not re.search(r"\s", v) for v in values) * 2 >= len(values)


def bare(cell: str) -> str:
    """A cell without wrapping emphasis or code: `**R001**` -> `R001`."""
    s = md_trim(cell)
    for mark in ("**", "__", "`", "*", "_"):
        if len(s) > 2 * len(mark) and s.startswith(mark) and s.endswith(mark):
            s = md_trim(s[len(mark):-len(mark)])
    return s


def split_notes(notes: str) -> tuple[str, str | None]:
    """(person's part, daemon's part after the last `eb:`)."""
    marks = list(EB_MARKER.finditer(notes))
    if not marks:
        return notes, None
    m = marks[-1]
    return strip_separator(notes[:m.start()]), md_trim(notes[m.end():])


def strip_separator(user: str) -> str:
    """The person's text before our marker, without the one `; ` the writer put there."""
    user = user.rstrip(WS)
    return user[:-1].rstrip(WS) if user.endswith((";", "；")) else user


def _milestone(cell: str | None, fallback: str | None) -> str | None:
    value = bare(cell) if cell is not None else ""
    if not value or value in ("—", "-", "–", "n/a", "N/A"):
        return fallback
    m = re.match(r"^(M\d+[A-Za-z0-9.']*)", value)
    return m.group(1) if m else value


def _priority(cell: str | None) -> str | None:
    value = bare(cell or "").lower()
    if value.startswith("must") or value.startswith("必须"):
        return "must"
    if value.startswith("nice") or value.startswith("可选"):
        return "nice"
    return None


def header_keys(headers: tuple[str, ...]) -> list[str]:
    keys: list[str] = []
    for h in headers:
        key, n = h, 2
        while key in keys:
            key, n = f"{h} #{n}", n + 1
        keys.append(key)
    return keys


def make_row(raw: RawRow, cols: Columns, keys: list[str], table: int, hint: str | None,
              cont: bool) -> Row:
    width = len(keys)
    texts = list(raw.texts[:width]) + [""] * (width - len(raw.texts))
    role = {r: texts[k] for r, k in cols.roles.items()}
    notes_raw = texts[cols.notes] if cols.notes is not None else None
    user, eb = split_notes(notes_raw) if notes_raw is not None else ("", None)
    return Row(run_id=bare(texts[cols.run_id]), status_raw=texts[cols.status],
               status=normalize_status(texts[cols.status]), notes_raw=notes_raw,
               notes_user=user, notes_eb=eb, milestone=_milestone(role.get("milestone"), hint),
               purpose=role.get("purpose") or None, priority=_priority(role.get("priority")),
               command=bare(role["command"]) or None if "command" in role else None,
               cells=dict(zip(keys, texts)), line=raw.line, table=table,
               ragged=len(raw.texts) != width, continuation=cont)


def run_tables(tables: list[RawTable]) -> list[tuple[int, RawTable, Columns]]:
    """(table number, table, columns) of each run table; numbers count run tables from 0."""
    found = []
    for table in tables:
        cols = classify(table.header.texts, table.body)
        if cols is not None:
            found.append((len(found), table, cols))
    return found


def parse_tracker(text: str, file: str) -> Tracker:
    """Never raises: whatever cannot be read becomes a diagnostic."""
    sha = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    try:
        return _parse(text, file, sha)
    except Exception as exc:  # noqa: BLE001 - a parser bug must not take the daemon down
        diag = Diagnostic(file, 0, "error", f"internal tracker parser error: {exc!r}")
        return Tracker(file, text, sha, [], [diag], 0, None, None)


def _parse(text: str, file: str, sha: str) -> Tracker:
    lines = split_lines(text)
    tables = scan_tables(text, lines)
    diags: list[Diagnostic] = []
    rows: list[Row] = []
    found = run_tables(tables)
    for number, table, cols in found:
        rows.extend(_table_rows(number, table, cols, file, diags))
    if not found:
        diags.append(Diagnostic(file, 0, "warning", "no table with a run-id column and a status "
                                "column (expected a header like `| Run ID | ... | Status |`)"))
    _check_ids(rows, file, diags)
    switch, switch_line = _plan_switch(lines, masked_lines(lines), file, diags)
    return Tracker(file, text, sha, rows, diags, len(found), switch, switch_line, tables)


def _table_rows(number: int, table: RawTable, cols: Columns, file: str,
                diags: list[Diagnostic]) -> list[Row]:
    keys = header_keys(table.header.texts)
    rows, hint = [], table.milestone_hint
    if table.continuation:
        diags.append(Diagnostic(file, table.continuation[0].line, "warning", (
            f"rows after a blank line are not part of the table at line {table.header.line} in "
            "Markdown; read as its rows (remove the blank line to make it one table)")))
    for raw, cont in [(r, False) for r in table.body] + [(r, True) for r in table.continuation]:
        if len(raw.texts) <= 1 < table.width:
            label = raw.texts[0] if raw.texts else ""
            m = re.search(r"\b(M\d+[A-Za-z0-9.']*)", label)
            hint = m.group(1) if m else hint
            continue
        row = make_row(raw, cols, keys, number, hint, cont)
        rows.append(row)
        _row_diagnostics(row, raw, table, file, diags)
    return rows


def _row_diagnostics(row: Row, raw: RawRow, table: RawTable, file: str,
                     diags: list[Diagnostic]) -> None:
    if row.ragged:
        diags.append(Diagnostic(file, row.line, "warning", (
            f"row has {len(raw.texts)} cells but the header (line {table.header.line}) has "
            f"{table.width}; cells were read by position (Status is written only while the cell "
            "under Status reads as a status; Notes is never written)")))
    if not row.run_id or row.run_id in ("—", "-", "–"):
        diags.append(Diagnostic(file, row.line, "warning", "row has no run id; it is not scheduled"))
    elif not row.status_raw:
        diags.append(Diagnostic(file, row.line, "warning", (
            f"Status of {row.run_id} is empty (expected TODO to run it); the row is left as it is")))
    elif row.status is None:
        diags.append(Diagnostic(file, row.line, "warning", (
            f"status {row.status_raw!r} of {row.run_id} is not recognised (expected one of "
            f"{', '.join(STATUSES)}, or RETRY); the row is left as it is")))


def _check_ids(rows: list[Row], file: str, diags: list[Diagnostic]) -> None:
    first: dict[str, Row] = {}
    for row in rows:
        if not row.run_id or row.run_id in ("—", "-", "–"):
            continue
        if row.run_id in first:
            diags.append(Diagnostic(file, row.line, "warning", (
                f"run id {row.run_id!r} repeats (first at line {first[row.run_id].line}); "
                "the rows are kept apart, not merged")))
        else:
            first[row.run_id] = row


def _plan_switch(lines: list[Line], masked: set[int], file: str,
                 diags: list[Diagnostic]) -> tuple[str | None, int | None]:
    for line in lines:
        m = SWITCH_RE.match(line.text)
        if not m or line.no in masked:
            continue
        word = m.group("word").strip("*_`").upper()
        word = _SWITCH_ALIASES.get(word, word)
        if word in PLAN_SWITCH_WORDS:
            return word, line.no
        diags.append(Diagnostic(file, line.no, "error", (
            f"plan switch {m.group('word')!r} is not one of {', '.join(PLAN_SWITCH_WORDS)}; "
            "the plan keeps its current state")))
        return None, line.no
    return None, None


def read_tracker(path: Path) -> Tracker:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
        bad = False
    except UnicodeDecodeError:
        text, bad = data.decode("utf-8", "surrogateescape"), True
    tracker = parse_tracker(text, str(path))
    if bad:
        tracker.diagnostics.insert(0, Diagnostic(str(path), 0, "warning",
                                                 "file is not valid UTF-8; odd bytes are kept as they are"))
    return tracker
