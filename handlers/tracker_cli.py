"""`expbridge tracker set|show`: edit one run's Status / eb: notes, or print what was understood.

`set` goes through the same writer as the daemon (re-read, cell-only splice, atomic rename), so a
person's other edits survive. `--notes` sets only the daemon's `eb:` part of the Notes cell.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from handlers.status_vocab import normalize_status
from handlers.tracker import read_tracker
from handlers.tracker_write import CellEdit, update_tracker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expbridge tracker",
                                     description="Read or edit refine-logs/EXPERIMENT_TRACKER.md")
    sub = parser.add_subparsers(dest="action", required=True)
    put = sub.add_parser("set", help="set one run's Status and/or the eb: part of its Notes")
    put.add_argument("file", type=Path)
    put.add_argument("run_id")
    put.add_argument("--status", help="new Status text, e.g. TODO, PAUSED, SKIPPED, RETRY")
    put.add_argument("--notes", help="text after `eb:` in Notes (the person's text is kept)")
    put.add_argument("--line", type=int, help="the row's line, when the run id repeats")
    show = sub.add_parser("show", help="print the rows and diagnostics the reader found")
    show.add_argument("file", type=Path)
    show.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    args = list(argv)
    if args[:1] == ["tracker"]:
        args = args[1:]
    ns = _parser().parse_args(args)
    if not ns.file.is_file():
        print(f"{ns.file}: no such file (expected refine-logs/EXPERIMENT_TRACKER.md)", file=sys.stderr)
        return 1
    return _set(ns) if ns.action == "set" else _show(ns)


def _set(ns: argparse.Namespace) -> int:
    if ns.status is None and ns.notes is None:
        print("tracker set: give --status and/or --notes", file=sys.stderr)
        return 2
    if ns.status is not None and normalize_status(ns.status) is None:
        print(f"warning: {ns.status!r} is not a status expbridge recognises; written as given",
              file=sys.stderr)
    edit = CellEdit(ns.run_id, status=ns.status, notes_eb=ns.notes, line=ns.line)
    result, _ = update_tracker(ns.file, [edit])
    for _edit, reason in result.skipped:
        print(f"error: {reason}", file=sys.stderr)
    rows = [r for r in read_tracker(ns.file).rows if r.run_id == ns.run_id
            and (ns.line is None or r.line == ns.line)]
    for row in rows if result.applied else []:
        print(f"{ns.file}:{row.line}: {row.run_id}: Status {row.status_raw!r}"
              + (f", eb: {row.notes_eb!r}" if row.notes_eb is not None else ""))
    return 1 if result.skipped else 0


def _show(ns: argparse.Namespace) -> int:
    tracker = read_tracker(ns.file)
    if ns.json:
        print(json.dumps({
            "file": tracker.file, "sha": tracker.sha, "tables": tracker.tables,
            "plan_switch": tracker.plan_switch,
            "rows": [{"run_id": r.run_id, "line": r.line, "table": r.table, "status": r.status,
                      "status_raw": r.status_raw, "milestone": r.milestone, "notes_eb": r.notes_eb}
                     for r in tracker.rows],
            "diagnostics": [d.as_dict() for d in tracker.diagnostics]}, ensure_ascii=False, indent=1))
        return 0
    for row in tracker.rows:
        print(f"{tracker.file}:{row.line}: [{row.table}] {row.run_id}: {row.status or '?'}"
              f" ({row.status_raw})")
    for diag in tracker.diagnostics:
        print(diag, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
