"""Apply the ablation-planner hook's output (ARIS_SPEC §2.12, F94): blocks to the plan, rows to the tracker.

The hook writes under EB_OUT only:
- `ablations.md`: the blocks to append to EXPERIMENT_PLAN.md (ARIS tables Component Ablations,
  Hyperparameter Sensitivity, Design Choice Comparisons, plus prose sections);
- `rows.json`: the runs, a list (or {"rows": [...]}) of objects such as
  {"name": "ablation-no-module-X", "purpose": "...", "priority": 1, "milestone": "M3",
   "command": "..."}; keys that name a tracker column go to that column.
Without rows.json the runs are read from the ablation tables in ablations.md.

New runs get ids that continue the tracker's numbering (R005 -> R006) and Status TODO. The
tracker is written through handlers.tracker_write.append_rows (every other byte kept); the plan
is versioned first, then the blocks are appended with a marker naming the digest and the run ids,
so re-applying the same output after a crash changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import structlog

from daemon.errors import InputError
from handlers.tracker import Columns, Tracker, norm_header, parse_tracker, run_tables
from handlers.tracker_file import read_text, write_atomic
from handlers.tracker_scan import scan_tables
from handlers.tracker_write import append_rows
from handlers.versioning import append_manifest_rows, manifest_file_name, manifest_row, version_file

log = structlog.get_logger(__name__)
BLOCKS_FILE = "ablations.md"
ROWS_FILE = "rows.json"
MAX_BYTES = 256 * 1024
MAX_ROWS = 100
_MARKER = re.compile(r"<!-- expbridge: ablation blocks (?P<digest>[0-9a-f]{12}) runs (?P<ids>[^ ]*) -->")
_NAME_KEYS = ("name", "system", "variant", "system / variant", "ablation", "run name", "parameter")
_PURPOSE_KEYS = ("purpose", "what it tests", "goal", "tests", "description")
_SYSTEM_HEADERS = ("system / variant", "system", "variant", "name", "method", "config",
                   "experiment", "description", "系统", "方法")
_IGNORED = ("run_id", "run id", "id", "#", "status", "notes", "values to test")


@dataclass
class HookOutput:
    blocks: str | None
    rows: list[dict[str, str]]
    problems: list[str] = field(default_factory=list)
    digest: str = ""


# ---- reading the hook's output ----------------------------------------------------------------

def _cell_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, str)):
        return str(value).strip() or None
    return None


def rows_from_json(text: str, file: str) -> tuple[list[dict[str, str]], list[str]]:
    """rows.json as a list of {lowercased key: text}; each unusable row is named, not fatal."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [f"{file}:{exc.lineno}: not valid JSON ({exc.msg}); expected a list of row objects"]
    if isinstance(data, Mapping):
        data = data.get("rows")
    if not isinstance(data, list):
        return [], [f"{file}: expected a list of row objects (or {{\"rows\": [...]}})"]
    rows, problems = [], []
    for i, item in enumerate(data[:MAX_ROWS]):
        row = {str(k).strip().lower(): t for k, v in item.items() if (t := _cell_text(v))} \
            if isinstance(item, Mapping) else {}
        if not _name_of(row):
            problems.append(f"{file}: rows[{i}] has no name (expected one of: name, system, variant)")
            continue
        rows.append(row)
    if len(data) > MAX_ROWS:
        problems.append(f"{file}: {len(data)} rows; only the first {MAX_ROWS} are used")
    return rows, problems


def rows_from_tables(blocks: str) -> list[dict[str, str]]:
    """Runs from the ARIS ablation tables: one per Name row, one sweep per Parameter row."""
    rows = []
    for table in scan_tables(blocks):
        heads = [norm_header(h) for h in table.header.texts]
        if "name" not in heads and "parameter" not in heads:
            continue
        for raw in table.body:
            cells = dict(zip(heads, raw.texts))
            row = {k: v for k, v in cells.items() if v and k not in ("#",)}
            if "parameter" in row and "name" not in row:
                values = row.pop("values to test", "")
                row["name"] = f"{row.pop('parameter')} sweep" + (f" ({values})" if values else "")
            if _name_of(row):
                rows.append(row)
    return rows[:MAX_ROWS]


def _read_small(path: Path, problems: list[str]) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read ({exc.strerror})")
        return None
    if len(data) > MAX_BYTES:
        problems.append(f"{path}: larger than {MAX_BYTES} bytes; ignored")
        return None
    return data.decode("utf-8", errors="replace")


def read_hook_output(out_dir: Path) -> HookOutput:
    """The planner's blocks and rows; `problems` says what was missing or unusable."""
    problems: list[str] = []
    blocks = _read_small(Path(out_dir) / BLOCKS_FILE, problems)
    blocks = blocks.strip() if blocks and blocks.strip() else None
    raw_rows = _read_small(Path(out_dir) / ROWS_FILE, problems)
    if raw_rows is not None:
        rows, more = rows_from_json(raw_rows, str(Path(out_dir) / ROWS_FILE))
        problems += more
    else:
        rows = rows_from_tables(blocks) if blocks else []
    if blocks is None and not rows:
        problems.append(f"{out_dir}: no {BLOCKS_FILE} and no usable {ROWS_FILE}; nothing to apply")
    digest = hashlib.sha256(json.dumps([blocks, rows], sort_keys=True).encode()).hexdigest()[:12]
    return HookOutput(blocks, rows, problems, digest)


# ---- run ids and rows -------------------------------------------------------------------------

def _name_of(row: Mapping[str, str]) -> str | None:
    return next((row[k] for k in _NAME_KEYS if row.get(k)), None)


def next_run_ids(existing: Iterable[str], n: int, also_taken: str = "") -> list[str]:
    """`n` ids continuing the most common `<letters><digits>` numbering (R001 style, same width);
    ids mentioned in `also_taken` (the plan's text) are skipped too."""
    parsed = [m for i in existing if (m := re.fullmatch(r"([A-Za-z]+[-_]?)(\d+)", i.strip()))]
    prefix = Counter(m.group(1) for m in parsed).most_common(1)[0][0] if parsed else "R"
    numbers = [m.group(2) for m in parsed if m.group(1) == prefix]
    width = max((len(d) for d in numbers), default=3)
    mentioned = re.findall(rf"(?<![A-Za-z0-9]){re.escape(prefix)}(\d+)(?![A-Za-z0-9_])", also_taken)
    start = max((int(d) for d in numbers + mentioned), default=0) + 1
    return [f"{prefix}{k:0{width}d}" for k in range(start, start + n)]


def _next_milestone(tracker: Tracker) -> str | None:
    numbers = [int(m.group(1)) for r in tracker.rows if r.milestone
               and (m := re.fullmatch(r"M(\d+)", r.milestone.strip()))]
    return f"M{max(numbers) + 1}" if numbers else None


def _priority(value: str) -> str:
    """ARIS priorities run from 1 (must-run) to 5 (nice-to-have); the tracker says MUST/NICE."""
    level = value.strip()
    return value if level not in ("1", "2", "3", "4", "5") else ("MUST" if level == "1" else "NICE")


def _free_column(headers: Sequence[str], cols: Columns, wanted: Sequence[str]) -> str | None:
    """The first header among `wanted` that is not already the id, status, notes or a role column."""
    norms = [norm_header(h) for h in headers]
    taken = {cols.run_id, cols.status, cols.notes, *cols.roles.values()}
    return next((headers[norms.index(h)] for h in wanted if h in norms and norms.index(h) not in taken), None)


def _row_cells(row: Mapping[str, str], run_id: str, headers: Sequence[str], cols: Columns,
               milestone: str | None, tag: str) -> tuple[dict[str, str], list[str]]:
    """One tracker row as append_rows takes it (role or header -> text), and the hook keys
    that have no column in this table."""
    name, roles = _name_of(row) or "", cols.roles
    purpose = next((row[k] for k in _PURPOSE_KEYS if row.get(k)), "")
    cells: dict[str, str] = {"run_id": run_id, "status": "TODO"}
    system_col = _free_column(headers, cols, _SYSTEM_HEADERS)
    placed = system_col is not None or "purpose" in roles
    if system_col is not None:
        cells[system_col] = name
    elif name:
        purpose = f"{name}: {purpose}" if purpose else name
    given = {"purpose": purpose, "priority": _priority(row.get("priority", "")),
             "milestone": row.get("milestone") or milestone or "",
             "command": row.get("command") or row.get("cmd") or ""}
    dropped = [k for k, v in given.items() if v and k not in roles and k != "milestone"]
    cells.update({k: v for k, v in given.items() if v and k in roles})
    if cols.notes is not None:
        cells["notes"] = f"eb: added by the ablation planner [{tag}]" + ("" if placed else f": {name}")
    used = set(_NAME_KEYS) | set(_PURPOSE_KEYS) | {"priority", "milestone", "command", "cmd"} | set(_IGNORED)
    for key, value in row.items():
        if key in used:
            continue
        column = _free_column(headers, cols, [norm_header(key)])
        if column is not None and column not in cells:
            cells[column] = value
        else:
            dropped.append(key)
    return cells, dropped


def tracker_rows(hook_rows: Sequence[Mapping[str, str]], tracker: Tracker, plan_text: str,
                 tag: str, milestone: str | None = None) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """(rows for append_rows, their new run ids, problems) for the table append_rows writes to."""
    found = run_tables(tracker.raw_tables)
    if not found:
        return [], [], [f"{tracker.file}: no run table (a `| Run ID | ... | Status |` table) to add rows to"]
    _, table, cols = found[-1]
    ids = next_run_ids([r.run_id for r in tracker.rows], len(hook_rows), plan_text)
    ms = (milestone or _next_milestone(tracker)) if "milestone" in cols.roles else None
    rows, problems = [], []
    for run_id, row in zip(ids, hook_rows):
        cells, dropped = _row_cells(row, run_id, table.header.texts, cols, ms, tag)
        rows.append(cells)
        if dropped:
            problems.append(f"{run_id} ({_name_of(row)}): no tracker column for {', '.join(dropped)}; not written")
    return rows, ids, problems


# ---- the plan ---------------------------------------------------------------------------------

def applied_ids(plan_text: str, digest: str) -> list[str] | None:
    """The run ids recorded when this output was applied before; None if it never was."""
    for m in _MARKER.finditer(plan_text):
        if m.group("digest") == digest:
            return [i for i in m.group("ids").split(",") if i and i != "-"]
    return None


def _dominant_eol(text: str) -> str:
    return "\r\n" if text.count("\r\n") * 2 > text.count("\n") else "\n"


def plan_with_blocks(plan_text: str, blocks: str | None, runs: Sequence[tuple[str, str]],
                     digest: str, stamp: str) -> str:
    """The plan with the blocks and the list of added runs appended; nothing above is touched."""
    if applied_ids(plan_text, digest) is not None:
        return plan_text
    parts = [f"<!-- expbridge: ablation blocks {digest} runs {','.join(i for i, _ in runs) or '-'} -->",
             f"<!-- appended by expbridge from the ablation planner, {stamp} -->"]
    if blocks:
        parts += ["", blocks.strip()]
    if runs:
        parts += ["", "**Ablation runs added to the tracker (expbridge)**:", ""]
        parts += [f"- {run_id}: {name}" for run_id, name in runs]
    eol = _dominant_eol(plan_text)
    body = eol.join(line for part in parts for line in part.splitlines() or [""]) + eol
    sep = "" if not plan_text else (eol if plan_text.endswith(("\n", "\r")) else eol + eol)
    return plan_text + sep + body


# ---- files ------------------------------------------------------------------------------------

def _write_if_unchanged(path: Path, before: str, after: str) -> bool:
    """Write unless a person saved the file since we read it (then the caller starts over)."""
    if read_text(path) != before:
        return False
    write_atomic(path, after)
    return True


def _apply_rows(tracker_path: Path, output: HookOutput, plan_text: str, milestone: str | None,
                now: datetime, notes: list[str], written: list[Path]) -> list[str] | None:
    for _ in range(5):
        text = read_text(tracker_path)
        tracker = parse_tracker(text, str(tracker_path))
        done = [r.run_id for r in tracker.rows if r.notes_eb and f"[{output.digest}]" in r.notes_eb]
        if done:
            return done  # appended before a crash; the plan marker was not written yet
        rows, ids, problems = tracker_rows(output.rows, tracker, plan_text, output.digest, milestone)
        notes += problems
        if not rows:
            return [] if not output.rows else None
        try:
            new = append_rows(text, rows, str(tracker_path))
        except InputError as exc:
            notes.append(str(exc))
            return None
        if (old := version_file(tracker_path, now)) is not None and old not in written:
            written.append(old)
        if _write_if_unchanged(tracker_path, text, new):
            return ids
    notes.append(f"{tracker_path}: kept changing while we wrote it; ablation rows not added")
    return None


def apply_ablations(project_dir: Path, out_dir: Path, now: datetime, *, milestone: str | None = None,
                    notes: list[str] | None = None, plan_path: Path | None = None,
                    tracker_path: Path | None = None) -> list[str]:
    """Apply the planner's output; the new run ids ([] when skipped; `notes` says why). Never
    raises for bad hook output; OSError on the project's own files propagates."""
    notes = notes if notes is not None else []
    project_dir = Path(project_dir)
    plan_path = plan_path or project_dir / "refine-logs" / "EXPERIMENT_PLAN.md"
    tracker_path = tracker_path or project_dir / "refine-logs" / "EXPERIMENT_TRACKER.md"
    output = read_hook_output(Path(out_dir))
    notes += output.problems
    if output.blocks is None and not output.rows:
        return _skip(notes)
    if not plan_path.exists() or not tracker_path.exists():
        notes.append(f"{plan_path if not plan_path.exists() else tracker_path}: not found; ablations not applied")
        return _skip(notes)
    plan_text = read_text(plan_path)
    if (ids := applied_ids(plan_text, output.digest)) is not None:
        return ids
    written: list[Path] = []
    ids = _apply_rows(tracker_path, output, plan_text, milestone, now, notes, written) if output.rows else []
    if ids is None:
        return _skip(notes)
    names = [(i, _name_of(r) or "") for i, r in zip(ids, output.rows)]
    new_plan = plan_with_blocks(plan_text, output.blocks, names, output.digest, f"{now:%Y-%m-%d %H:%M}")
    if (old := version_file(plan_path, now)) is not None:
        written.append(old)
    write_atomic(plan_path, new_plan)
    _manifest(project_dir, written, plan_path, now)
    log.info("ablations applied", project=str(project_dir), runs=ids, notes=len(notes))
    return ids


def _skip(notes: list[str]) -> list[str]:
    log.info("ablation planning skipped", reasons=notes)
    return []


def _manifest(project_dir: Path, written: Sequence[Path], plan_path: Path, now: datetime) -> None:
    manifest = project_dir / "MANIFEST.md"
    rows = [manifest_row(now, manifest_file_name(p, manifest), "timestamped copy before ablation planning")
            for p in written]
    rows.append(manifest_row(now, manifest_file_name(plan_path, manifest), "latest copy: ablation blocks appended"))
    append_manifest_rows(manifest, rows)
