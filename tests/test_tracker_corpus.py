"""Every real tracker in ../shared/corpus: parsed without error, written back byte for byte, rows
equal to what markdown-it finds (differences explained in tests/allowlists/tracker_oracle.txt), and
every row writable in exactly its own line."""
from __future__ import annotations

import re
from pathlib import Path

from markdown_it import MarkdownIt

from handlers.tracker import Row, Tracker, classify, parse_tracker, read_tracker, run_tables
from handlers.tracker_write import CellEdit, apply_edits, write_atomic
from tests.plugins.common import corpus_dir

ALLOWLIST = Path(__file__).parent / "allowlists" / "tracker_oracle.txt"


def trackers() -> list[Path]:
    files = sorted(corpus_dir().glob("*/**/*TRACKER*.md"))
    assert files, "the corpus holds no tracker"
    return files


def rel(path: Path) -> str:
    return path.relative_to(corpus_dir()).as_posix()


def test_every_tracker_parses_and_round_trips(tmp_path: Path) -> None:
    for path in trackers():
        data = path.read_bytes()
        tracker = read_tracker(path)
        assert not any("internal" in d.message for d in tracker.diagnostics), rel(path)
        assert apply_edits(tracker.text, [], rel(path)).text == tracker.text
        copy = tmp_path / "EXPERIMENT_TRACKER.md"
        write_atomic(copy, tracker.text)
        assert copy.read_bytes() == data, rel(path)


# ---- oracle -----------------------------------------------------------------------------------

def oracle_tables(text: str) -> dict[int, tuple[tuple[str, ...], dict[int, list[str]]]]:
    """markdown-it's tables: header line -> (header cells, {row line: cells})."""
    tables: dict[int, tuple[tuple[str, ...], dict[int, list[str]]]] = {}
    header: list[str] | None = None
    rows: dict[int, list[str]] = {}
    start = line = 0
    cells: list[str] = []
    for tok in MarkdownIt("commonmark").enable("table").parse(text):
        if tok.type == "table_open":
            start, header, rows = tok.map[0] + 1, None, {}
        elif tok.type == "tr_open":
            line, cells = tok.map[0] + 1, []
        elif tok.type == "inline" and tok.map and line:
            cells.append(tok.content)
        elif tok.type == "tr_close":
            if header is None:
                header = cells
            else:
                rows[line] = cells
            line = 0
        elif tok.type == "table_close":
            tables[start] = (tuple(header or ()), rows)
    return tables


def oracle_differences(path: Path) -> set[str]:
    tracker = read_tracker(path)
    theirs = oracle_tables(tracker.text)
    out: set[str] = set()
    mine_headers = set()
    for number, table, _cols in run_tables(tracker.raw_tables):
        hl = table.header.line
        mine_headers.add(hl)
        if hl not in theirs:
            out.add(f"{rel(path)}:{hl} table-extra")
            continue
        mine = {r.line: list(r.cells.values()) for r in tracker.rows if r.table == number}
        their_rows = theirs[hl][1]
        for line in set(mine) | set(their_rows):
            if line not in their_rows:
                out.add(f"{rel(path)}:{line} extra")
            elif line not in mine:
                out.add(f"{rel(path)}:{line} missing")
            elif mine[line] != their_rows[line]:
                out.add(f"{rel(path)}:{line} cells")
    for hl, (header, _rows) in theirs.items():
        if hl not in mine_headers and classify(header) is not None:
            out.add(f"{rel(path)}:{hl} table-missing")
    return out


def allowed() -> dict[str, str]:
    """`path:LINE[-LINE] kind -- reason` lines; every entry needs a reason."""
    entries: dict[str, str] = {}
    for n, raw in enumerate(ALLOWLIST.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        m = re.fullmatch(r"(\S+):(\d+)(?:-(\d+))? (\S+) -- (.+)", raw.strip())
        assert m, f"{ALLOWLIST.name}:{n}: expected `path:LINE[-LINE] kind -- reason`"
        first, last = int(m.group(2)), int(m.group(3) or m.group(2))
        for line in range(first, last + 1):
            entries[f"{m.group(1)}:{line} {m.group(4)}"] = m.group(5)
    return entries


def test_rows_match_markdown_it_or_the_difference_is_explained() -> None:
    found = set().union(*(oracle_differences(p) for p in trackers()))
    explained = allowed()
    unexplained = sorted(found - set(explained))
    stale = sorted(set(explained) - found)
    assert not unexplained, "differences from markdown-it without a reason in the allowlist:\n" + "\n".join(unexplained)
    assert not stale, "allowlist entries that no longer differ (remove them):\n" + "\n".join(stale)


# ---- sweep ------------------------------------------------------------------------------------

def untouched_cells(tracker: Tracker, row: Row) -> dict[str, str]:
    """The row's cells other than Status and Notes."""
    _n, _table, cols = run_tables(tracker.raw_tables)[row.table]
    keys = list(row.cells)
    mine = {keys[cols.status]} | ({keys[cols.notes]} if cols.notes is not None else set())
    return {k: v for k, v in row.cells.items() if k not in mine}


def test_sweep_every_row_is_writable_in_its_own_line() -> None:
    n_files = n_rows = unrecognised = refused = 0
    for path in trackers():
        tracker = read_tracker(path)
        n_files += 1
        before = tracker.text.splitlines(keepends=True)
        for row in tracker.rows:
            n_rows += 1
            unrecognised += row.status is None
            new_status = "PAUSED" if row.status == "RUNNING" else "RUNNING"
            note = "sweep | ✓ 12"
            edit = CellEdit(row.run_id, status=new_status, notes_eb=note, line=row.line)
            res = apply_edits(tracker.text, [edit], rel(path))
            after = res.text.splitlines(keepends=True)
            assert len(after) == len(before), f"{rel(path)}:{row.line}"
            changed = [k + 1 for k, (a, b) in enumerate(zip(before, after)) if a != b]
            if row.ragged and row.status is None:
                assert changed == [] and res.applied == [], f"{rel(path)}:{row.line}"
                assert all(f"{rel(path)}:{row.line}" in why for _, why in res.skipped)
                refused += 1
                continue
            assert changed == [row.line], f"{rel(path)}:{row.line}: changed {changed}"
            new = next(r for r in parse_tracker(res.text, rel(path)).rows if r.line == row.line)
            assert new.status == new_status and new.run_id == row.run_id
            assert untouched_cells(tracker, new) == untouched_cells(tracker, row)
            if row.notes_raw is not None and not row.ragged:
                assert (new.notes_user, new.notes_eb) == (row.notes_user, note), f"{rel(path)}:{row.line}"
            else:
                assert new.notes_raw == row.notes_raw
                assert [e.notes_eb for e, _ in res.skipped] == [note]
    print(f"\n{n_files} trackers, {n_rows} rows, {unrecognised} unrecognised statuses"
          f" ({refused} ragged rows refused)")
    assert n_files >= 20 and n_rows > 100
