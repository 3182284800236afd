"""The ablation-planner round trip: hook output -> plan blocks (after a versioned copy) and
tracker rows through the real writer, every other byte kept (F94)."""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from handlers.ablation import (apply_ablations, next_run_ids, plan_with_blocks, read_hook_output,
                               rows_from_tables)
from handlers.tracker import read_tracker

FIXTURE = Path(__file__).parent / "fixtures" / "projects" / "skill"
NOW = datetime(2026, 6, 3, 14, 30, 5)
BLOCKS = """## Ablation Plan

### Component Ablations
| # | Name | What It Tests | Expected If Matters | Priority |
|---|------|---------------|---------------------|----------|
| 1 | ablation-no-replay | replay buffer | acc drops | 1 |
| 2 | ablation-no-rare-weight | rare weighting | rare acc drops | 2 |

### Hyperparameter Sensitivity
| # | Parameter | Values to Test | What It Tests | Priority |
|---|-----------|----------------|---------------|----------|
| 1 | buffer size | 1k, 10k | capacity | 3 |

### Run Order
Config-only ablations first.
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    dest = tmp_path / "proj"
    shutil.copytree(FIXTURE, dest)
    return dest


def hook_out(tmp_path: Path, blocks: str | None = BLOCKS, rows: object = None) -> Path:
    out = tmp_path / "eb_out"
    out.mkdir(exist_ok=True)
    if blocks is not None:
        (out / "ablations.md").write_text(blocks)
    if rows is not None:
        (out / "rows.json").write_text(rows if isinstance(rows, str) else json.dumps(rows))
    return out


ROWS = [
    {"name": "ablation-no-replay", "what it tests": "replay buffer", "priority": 1, "split": "test",
     "metrics": "rare acc", "foo": "bar"},
    {"name": "ablation-no-rare-weight", "purpose": "rare weighting", "priority": 2, "milestone": "M3"},
]


def test_round_trip(project: Path, tmp_path: Path) -> None:
    plan = project / "refine-logs" / "EXPERIMENT_PLAN.md"
    tracker = project / "refine-logs" / "EXPERIMENT_TRACKER.md"
    plan_before, tracker_before = plan.read_bytes(), tracker.read_bytes()
    notes: list[str] = []
    ids = apply_ablations(project, hook_out(tmp_path, rows=ROWS), NOW, notes=notes)
    assert ids == ["R006", "R007"]
    assert notes == ["R006 (ablation-no-replay): no tracker column for foo; not written"]

    # the plan: a versioned copy of the old bytes, then the old bytes plus the blocks
    copy = plan.with_name("EXPERIMENT_PLAN_20260603_143005.md")
    assert copy.read_bytes() == plan_before
    after = plan.read_bytes()
    assert after.startswith(plan_before)
    tail = after[len(plan_before):].decode()
    assert "### Component Ablations" in tail and "| 1 | ablation-no-replay |" in tail
    assert "- R006: ablation-no-replay" in tail and "- R007: ablation-no-rare-weight" in tail

    # the tracker: a versioned copy, then the new rows appended at the end of the table
    assert tracker.with_name("EXPERIMENT_TRACKER_20260603_143005.md").read_bytes() == tracker_before
    text = tracker.read_bytes()
    assert text.startswith(tracker_before)
    rows = {r.run_id: r for r in read_tracker(tracker).rows}
    assert list(rows) == ["R001", "R002", "R003", "R004", "R005", "R006", "R007"]
    r6, r7 = rows["R006"], rows["R007"]
    assert (r6.status, r6.milestone, r6.purpose, r6.priority) == ("TODO", "M3", "replay buffer", "must")
    assert r6.cells["System / Variant"] == "ablation-no-replay" and r6.cells["Split"] == "test"
    assert (r7.milestone, r7.priority) == ("M3", "nice")
    assert r6.notes_eb and r6.notes_eb.startswith("added by the ablation planner [")

    manifest = (project / "MANIFEST.md").read_text()
    assert "refine-logs/EXPERIMENT_PLAN_20260603_143005.md" in manifest
    assert "refine-logs/EXPERIMENT_TRACKER_20260603_143005.md" in manifest
    assert "| refine-logs/EXPERIMENT_PLAN.md | implementation | latest copy: ablation blocks appended |" in manifest


def test_reapplying_the_same_output_changes_nothing(project: Path, tmp_path: Path) -> None:
    out = hook_out(tmp_path, rows=ROWS)
    first = apply_ablations(project, out, NOW)
    files = {p.name: p.read_bytes() for p in (project / "refine-logs").iterdir()}
    assert apply_ablations(project, out, NOW) == first
    assert {p.name: p.read_bytes() for p in (project / "refine-logs").iterdir()} == files


def test_crash_between_tracker_and_plan_does_not_duplicate_rows(project: Path, tmp_path: Path) -> None:
    out = hook_out(tmp_path, rows=ROWS)
    plan = project / "refine-logs" / "EXPERIMENT_PLAN.md"
    plan_before = plan.read_bytes()
    apply_ablations(project, out, NOW)
    plan.write_bytes(plan_before)  # as if the plan write had never happened
    assert apply_ablations(project, out, NOW) == ["R006", "R007"]
    ids = [r.run_id for r in read_tracker(project / "refine-logs" / "EXPERIMENT_TRACKER.md").rows]
    assert ids.count("R006") == 1 and len(ids) == 7
    assert plan.read_text().count("ablation blocks") == 1


def test_rows_from_the_aris_tables_when_there_is_no_rows_json(project: Path, tmp_path: Path) -> None:
    ids = apply_ablations(project, hook_out(tmp_path), NOW)
    assert ids == ["R006", "R007", "R008"]
    rows = {r.run_id: r for r in read_tracker(project / "refine-logs" / "EXPERIMENT_TRACKER.md").rows}
    assert rows["R008"].cells["System / Variant"] == "buffer size sweep (1k, 10k)"
    assert rows["R008"].purpose == "capacity" and rows["R008"].priority == "nice"


def test_crlf_and_no_final_newline_are_kept(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "refine-logs").mkdir(parents=True)
    plan = project / "refine-logs" / "EXPERIMENT_PLAN.md"
    plan.write_bytes(b"# Plan\r\n\r\nSome text")
    tracker = project / "refine-logs" / "EXPERIMENT_TRACKER.md"
    tracker.write_bytes(b"# T\r\n\r\n| ID | Status |\r\n|---|---|\r\n| E-01 | DONE |\r\n| E-09 | TODO |")
    ids = apply_ablations(project, hook_out(tmp_path, blocks="## Ablations\n\ntext\n",
                                            rows=[{"name": "no-x"}]), NOW)
    assert ids == ["E-10"]
    assert tracker.read_bytes().startswith(b"# T\r\n\r\n| ID | Status |\r\n|---|---|\r\n| E-01 | DONE |\r\n| E-09 | TODO |")
    assert b"| E-10 | TODO |" in tracker.read_bytes()
    new_plan = plan.read_bytes()
    assert new_plan.startswith(b"# Plan\r\n\r\nSome text\r\n\r\n<!-- expbridge: ablation blocks ")
    assert b"\n" not in new_plan.replace(b"\r\n", b"")  # our lines use the file's CRLF
    # the tracker has no Notes and no Purpose column: the name cannot go anywhere but is not fatal
    assert [r.run_id for r in read_tracker(tracker).rows] == ["E-01", "E-09", "E-10"]


@pytest.mark.parametrize(("blocks", "rows", "expected"), [
    (None, None, "no ablations.md and no usable rows.json"),
    (None, "{broken", "rows.json:1: not valid JSON"),
    (None, {"rows": "nope"}, "expected a list of row objects"),
    (None, [{"purpose": "no name"}], "rows[0] has no name"),
])
def test_nothing_valid_is_skipped_with_a_note(project: Path, tmp_path: Path, blocks: str | None,
                                               rows: object, expected: str) -> None:
    before = {p.name: p.read_bytes() for p in (project / "refine-logs").iterdir()}
    notes: list[str] = []
    assert apply_ablations(project, hook_out(tmp_path, blocks=blocks, rows=rows), NOW, notes=notes) == []
    assert any(expected in n for n in notes), notes
    assert {p.name: p.read_bytes() for p in (project / "refine-logs").iterdir()} == before
    assert not (project / "MANIFEST.md").exists()


def test_no_run_table_is_a_note_not_an_error(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / "refine-logs").mkdir(parents=True)
    (project / "refine-logs" / "EXPERIMENT_PLAN.md").write_text("# Plan\n")
    (project / "refine-logs" / "EXPERIMENT_TRACKER.md").write_text("# Tracker\n\nnothing yet\n")
    notes: list[str] = []
    assert apply_ablations(project, hook_out(tmp_path, rows=[{"name": "x"}]), NOW, notes=notes) == []
    assert any("no run table" in n for n in notes)
    assert (project / "refine-logs" / "EXPERIMENT_PLAN.md").read_text() == "# Plan\n"


def test_next_run_ids() -> None:
    assert next_run_ids(["R001", "R002", "R010"], 2) == ["R011", "R012"]
    assert next_run_ids(["R1", "R2", "B1"], 1) == ["R3"]
    assert next_run_ids([], 2) == ["R001", "R002"]
    assert next_run_ids(["R001"], 1, also_taken="see R007 in the plan; R0070x is not an id") == ["R008"]
    assert next_run_ids(["exp_01", "exp_02"], 1) == ["exp_03"]


def test_pure_pieces() -> None:
    assert [r["name"] for r in rows_from_tables(BLOCKS)] == [
        "ablation-no-replay", "ablation-no-rare-weight", "buffer size sweep (1k, 10k)"]
    text = plan_with_blocks("# P\n", "## A", [("R9", "x")], "0123456789ab", "2026-01-01 00:00")
    assert text.startswith("# P\n\n<!-- expbridge: ablation blocks 0123456789ab runs R9 -->\n")
    assert plan_with_blocks(text, "## A", [("R9", "x")], "0123456789ab", "later") == text


def test_read_hook_output_bounds(tmp_path: Path) -> None:
    out = hook_out(tmp_path, blocks="x" * (300 * 1024), rows=[{"name": f"a{i}"} for i in range(150)])
    got = read_hook_output(out)
    assert got.blocks is None and len(got.rows) == 100
    assert any("larger than" in p for p in got.problems) and any("only the first 100" in p for p in got.problems)
