"""The tracker writer: cell-only splices, Notes ownership, appends, the plan switch, atomic files."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daemon.errors import InputError
from handlers.tracker import parse_tracker, read_tracker
from handlers.tracker_write import (CellEdit, append_rows, apply_edits, set_plan_switch,
                                    update_tracker, write_atomic)
from tests.plugins.common import unavailable

FIXTURES = Path(__file__).parent / "fixtures" / "tracker"


def fixture(name: str, crlf: bool = False) -> str:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return text.replace("\n", "\r\n") if crlf else text


def changed_lines(old: str, new: str) -> list[int]:
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(a) == len(b)
    return [k + 1 for k, (x, y) in enumerate(zip(a, b)) if x != y]


def row(text: str, run_id: str):
    return next(r for r in parse_tracker(text, "t.md").rows if r.run_id == run_id)


@pytest.mark.parametrize("crlf", [False, True])
def test_status_and_first_notes_write_touch_only_those_cells(crlf: bool) -> None:
    text = fixture("template.md", crlf)
    res = apply_edits(text, [CellEdit("R001", status="RUNNING", notes_eb="started on gpu0")], "t.md")
    assert res.skipped == [] and len(res.applied) == 1
    eol = "\r\n" if crlf else "\n"
    assert res.text == text.replace(
        f"| MUST | DONE | loss falls in 50 steps |{eol}",
        f"| MUST | RUNNING | loss falls in 50 steps; eb: started on gpu0 |{eol}")
    r = row(res.text, "R001")
    assert (r.status, r.notes_user, r.notes_eb) == ("RUNNING", "loss falls in 50 steps", "started on gpu0")


def test_later_notes_writes_replace_only_our_tail() -> None:
    text = fixture("template.md")
    res = apply_edits(text, [CellEdit("R003", notes_eb="running on gpu1 | attempt 2")], "t.md")
    assert "| compare with R002; eb: running on gpu1 \\| attempt 2 |" in res.text
    r = row(res.text, "R003")
    assert (r.notes_user, r.notes_eb) == ("compare with R002", "running on gpu1 | attempt 2")
    cleared = apply_edits(res.text, [CellEdit("R003", notes_eb="")], "t.md").text
    assert cleared == text.replace("compare with R002; eb: queued behind R002", "compare with R002")


def test_empty_notes_cell_gets_a_bare_marker_and_bold_status_stays_bold() -> None:
    text = fixture("template.md")
    res = apply_edits(text, [CellEdit("R002", status="DONE", notes_eb="top-1 71.2")], "t.md")
    assert "| MUST | **DONE** | eb: top-1 71.2 |\n" in res.text
    assert changed_lines(text, res.text) == [6]


def test_new_text_is_one_line_and_cannot_fake_a_marker() -> None:
    text = fixture("template.md")
    res = apply_edits(text, [CellEdit("R004", status="FAILED", notes_eb="exit 1\nsee log; eb: x")], "t.md")
    r = row(res.text, "R004")
    assert r.notes_eb == "exit 1 see log; eb : x" and r.notes_user == ""
    assert changed_lines(text, res.text) == [8]


def test_table_without_notes_never_gets_one() -> None:
    text = "| Run ID | Status |\n|---|---|\n| R1 | TODO |\n"
    res = apply_edits(text, [CellEdit("R1", status="RUNNING", notes_eb="x")], "t.md")
    assert res.text == "| Run ID | Status |\n|---|---|\n| R1 | RUNNING |\n"
    assert [e.status for e in res.applied] == ["RUNNING"]
    assert [(e.notes_eb, "no Notes column" in why) for e, why in res.skipped] == [("x", True)]


def test_aligned_table_keeps_column_widths() -> None:
    text = fixture("aligned.md")
    res = apply_edits(text, [CellEdit("P001", status="RUNNING", notes_eb="gpu3")], "t.md")
    assert "| P001   | M1        | student distill   | MUST     | RUNNING | eb: gpu3             |\n" in res.text
    res2 = apply_edits(text, [CellEdit("P000", notes_eb="a much longer note than the column")], "t.md")
    assert "| teacher sim v0; eb: a much longer note than the column |\n" in res2.text
    assert changed_lines(text, res.text) == [6]


def test_no_final_newline_and_trailing_text_survive() -> None:
    text = fixture("no_final_newline.md")
    res = apply_edits(text, [CellEdit("N02", status="FAILED")], "t.md")
    assert res.text == text.replace("| N02 | DONE |", "| N02 | FAILED |") and not res.text.endswith("\n")


def test_tight_cells_and_trailing_backslash() -> None:
    text = fixture("hard_cells.md")
    res = apply_edits(text, [CellEdit("H07", status="RUNNING", notes_eb="ok"),
                             CellEdit("H08", notes_eb="under C:\\tmp\\")], "t.md")
    assert "|H07|no padding|bash go.sh|RUNNING|tight cells; eb: ok|\n" in res.text
    assert row(res.text, "H08").notes_eb == "under C:\\tmp\\"
    assert changed_lines(text, res.text) == [11, 12]


def test_ragged_rows_are_written_only_where_safe() -> None:
    text = fixture("hard_cells.md")
    res = apply_edits(text, [CellEdit("H05", status="RETRY", notes_eb="x"),
                             CellEdit("H06", status="RUNNING")], "t.md")
    assert "| H05 | wide row but status in place | bash run.sh | RETRY | oom at step 9 | extra cell |" in res.text
    assert "| H06 | wide row, shifted | bash run.sh | MUST | TODO | note |" in res.text
    reasons = [why for _, why in res.skipped]
    assert len(reasons) == 2 and all("t.md:" in why and "cells but the header has 5" in why for why in reasons)


def test_person_edit_to_the_same_cell_wins() -> None:
    text = fixture("template.md").replace("| MUST | DONE |", "| MUST | PAUSE |")
    res = apply_edits(text, [CellEdit("R001", status="RUNNING", expect_status="DONE")], "t.md")
    assert res.text == text and res.applied == []
    (edit, why), = res.skipped
    assert edit.status == "RUNNING" and "t.md:5" in why and "changed by a person" in why
    # ours matches what is there: written
    ok = apply_edits(text, [CellEdit("R001", status="RUNNING", expect_status="PAUSE")], "t.md")
    assert row(ok.text, "R001").status == "RUNNING"


def test_person_edit_to_our_notes_tail_wins_but_their_own_text_does_not_block_us() -> None:
    text = fixture("template.md")
    edited = text.replace("eb: queued behind R002", "eb: please wait for me")
    res = apply_edits(edited, [CellEdit("R003", notes_eb="now", expect_notes_eb="queued behind R002")], "t.md")
    assert res.text == edited and len(res.skipped) == 1
    theirs = text.replace("compare with R002;", "compare with R002 and R001;")
    res2 = apply_edits(theirs, [CellEdit("R003", notes_eb="now", expect_notes_eb="queued behind R002")], "t.md")
    assert row(res2.text, "R003").notes_raw == "compare with R002 and R001; eb: now"


def test_unknown_and_ambiguous_run_ids_are_reported() -> None:
    text = fixture("duplicates.md")
    res = apply_edits(text, [CellEdit("NOPE", status="DONE"), CellEdit("D01", status="DONE")], "dup.md")
    assert res.text == text
    assert "no row with run id 'NOPE'" in res.skipped[0][1]
    assert "dup.md:5" in res.skipped[1][1] and "lines 5, 6" in res.skipped[1][1]
    by_line = apply_edits(text, [CellEdit("D01", status="DONE", line=6)], "dup.md")
    assert changed_lines(text, by_line.text) == [6]
    by_table = apply_edits(text, [CellEdit("D02", status="SKIPPED", table=1)], "dup.md")
    assert changed_lines(text, by_table.text) == [15]


def test_continuation_rows_are_writable() -> None:
    text = fixture("blank_split.md")
    res = apply_edits(text, [CellEdit("B04", status="RUNNING", notes_eb="gpu0")], "t.md")
    assert "| B04 | M1 | RUNNING | eb: gpu0 |\n" in res.text and changed_lines(text, res.text) == [9]


def test_several_edits_to_one_row_compose() -> None:
    text = fixture("chinese.md")
    res = apply_edits(text, [CellEdit("C03", status="RUNNING"), CellEdit("C03", notes_eb="第 1 次"),
                             CellEdit("C03", status="DONE")], "t.md")
    r = row(res.text, "C03")
    assert (r.status, r.notes_user, r.notes_eb) == ("DONE", "依赖 C02", "第 1 次")
    assert changed_lines(text, res.text) == [7]


# ---- append_rows ------------------------------------------------------------------------------

def test_append_goes_after_the_last_row_before_trailing_prose() -> None:
    text = fixture("template.md")
    new = append_rows(text, [{"Run ID": "R005", "Milestone": "M3", "purpose": "ablation",
                              "status": "TODO", "Notes": "a|b"}], "t.md")
    assert new == text.replace(
        "| NICE-TO-HAVE | TODO | |\n",
        "| NICE-TO-HAVE | TODO | |\n| R005 | M3 | ablation | | | | | TODO | a\\|b |\n")
    assert row(new, "R005").notes_user == "a|b"
    assert append_rows(new, [{"run_id": "R005", "status": "TODO"}], "t.md") == new  # idempotent


def test_append_to_a_named_table_crlf_and_no_final_newline() -> None:
    text = fixture("multi_table.md", crlf=True)
    new = append_rows(text, [{"编号": "Z04", "状态": "TODO"}], "t.md", after_run="Z01")
    assert "| Z03 | 主实验 α=2.0 | 已完成；结果偏低，淘汰 | 需要复查 |\r\n| Z04 | | TODO | |\r\n\r\n" in new
    tail = fixture("no_final_newline.md")
    new2 = append_rows(tail, [{"run_id": "N03", "status": "TODO"}], "t.md")
    assert new2 == tail + "\n| N03 | TODO | |"


def test_append_after_continuation_rows_and_aligned() -> None:
    assert "| B04 | M1 | TODO | |\n| B05 | | TODO | |\n\nNext" in append_rows(
        fixture("blank_split.md"), [{"run_id": "B05", "status": "TODO"}], "t.md")
    new = append_rows(fixture("aligned.md"), [{"run_id": "P003", "status": "TODO"}], "t.md")
    assert new.endswith("| P003   |           |                   |          | TODO    |                      |\n")


def test_append_rejects_unknown_columns_and_missing_tables() -> None:
    with pytest.raises(InputError, match="t.md:3: cannot append a 'GPU Hours' cell"):
        append_rows(fixture("template.md"), [{"run_id": "R9", "GPU Hours": "3"}], "t.md")
    with pytest.raises(InputError, match="no table with a run-id"):
        append_rows(fixture("no_table.md"), [{"run_id": "R9"}], "t.md")


# ---- plan switch ------------------------------------------------------------------------------

def test_plan_switch_insert_and_edit() -> None:
    text = fixture("template.md")
    new = set_plan_switch(text, "AWAITING_APPROVAL")
    assert new == text.replace("# Experiment Tracker\n\n", "# Experiment Tracker\n\n**expbridge**: AWAITING_APPROVAL\n\n", 1)
    assert parse_tracker(new, "t.md").plan_switch == "AWAITING_APPROVAL"
    again = set_plan_switch(new, "APPROVED")
    assert again == new.replace("AWAITING_APPROVAL", "APPROVED")
    assert set_plan_switch(again, "APPROVED") == again
    with pytest.raises(ValueError):
        set_plan_switch(text, "MAYBE")


@pytest.mark.parametrize(("text", "expected"), [
    ("# T\n| Run ID | Status |\n", "# T\n\n**expbridge**: PAUSED\n\n| Run ID | Status |\n"),
    ("# T", "# T\n\n**expbridge**: PAUSED"),
    ("# T\r\n\r\nx\r\n", "# T\r\n\r\n**expbridge**: PAUSED\r\n\r\nx\r\n"),
    ("no heading\n", "**expbridge**: PAUSED\n\nno heading\n"),
    ("\ufeffno heading\n", "\ufeff**expbridge**: PAUSED\n\nno heading\n"),
    ("\ufeff# T\n", "\ufeff# T\n\n**expbridge**: PAUSED\n"),
    ("---\na: 1\n---\nbody\n", "---\na: 1\n---\n\n**expbridge**: PAUSED\n\nbody\n"),
    ("```\n# not a heading\n```\n# Real\n", "```\n# not a heading\n```\n# Real\n\n**expbridge**: PAUSED\n"),
])
def test_plan_switch_placement(text: str, expected: str) -> None:
    out = set_plan_switch(text, "PAUSED")
    assert out == expected and parse_tracker(out, "t.md").plan_switch == "PAUSED"


# ---- files ------------------------------------------------------------------------------------

def test_write_atomic_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "EXPERIMENT_TRACKER.md"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    sha = write_atomic(path, "new\r\nno final newline")
    assert path.read_bytes() == b"new\r\nno final newline"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    import hashlib
    assert sha == hashlib.sha256(b"new\r\nno final newline").hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["EXPERIMENT_TRACKER.md"]


def test_write_atomic_keeps_the_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("giving a file to another owner needs root (the daemon's system unit runs as root)")
    path = tmp_path / "t.md"
    path.write_text("x\n")
    os.chown(path, 1234, 2345)
    write_atomic(path, "y\n")
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 2345)


def test_update_tracker_writes_once_and_not_when_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "EXPERIMENT_TRACKER.md"
    path.write_bytes(fixture("template.md", crlf=True).encode())
    result, sha = update_tracker(path, [CellEdit("R004", status="RUNNING", notes_eb="gpu0")])
    assert result.applied and read_tracker(path).sha == sha
    assert row(path.read_bytes().decode(), "R004").status == "RUNNING"
    inode = path.stat().st_ino
    result2, sha2 = update_tracker(path, [CellEdit("R004", status="RUNNING", notes_eb="gpu0")])
    assert sha2 == sha and path.stat().st_ino == inode  # no rename happened
    data = path.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") == fixture("template.md").count("\n")


def test_emoji_status_style_follows_the_files_legend() -> None:
    text = ("# T\n\nLegend: ☐ not started · ⏳ running · ✅ done\n\n| ID | Status | Notes |\n|---|---|---|\n"
            "| E1 | ☐ not started | |\n| E2 | **✅ done** | |\n| E3 | TODO | |\n")
    res = apply_edits(text, [CellEdit("E1", status="RUNNING"), CellEdit("E2", status="FAILED"),
                             CellEdit("E3", status="RUNNING")], "t.md")
    assert "| E1 | ⏳ RUNNING | |\n| E2 | **❌ FAILED** | |\n| E3 | RUNNING | |\n" in res.text
    assert [r.status for r in parse_tracker(res.text, "t.md").rows] == ["RUNNING", "FAILED", "RUNNING"]
    # what we wrote is recognised as ours, so the next write goes through
    nxt = apply_edits(res.text, [CellEdit("E1", status="DONE", expect_status="RUNNING")], "t.md")
    assert nxt.skipped == [] and "| E1 | ✅ DONE | |" in nxt.text


def test_aligned_column_stays_padded_after_one_cell_outgrows_it() -> None:
    text = fixture("aligned.md")
    res = apply_edits(text, [CellEdit("P000", status="RUNNING"), CellEdit("P001", status="FAILED")], "t.md")
    assert "| MUST     | RUNNING | teacher sim v0       |\n" in res.text
    assert "| MUST     | FAILED  |                      |\n" in res.text
    assert changed_lines(text, res.text) == [5, 6]


@pytest.mark.parametrize("cell", ["**TODO**", "⬜ Pending", "TODO", "`TODO`"])
def test_expect_status_may_be_the_literal_cell_text(cell: str) -> None:
    text = f"| Run ID | Status |\n|---|---|\n| R1 | {cell} |\n"
    res = apply_edits(text, [CellEdit("R1", status="RUNNING", expect_status=cell)], "t.md")
    assert res.skipped == [] and parse_tracker(res.text, "t.md").rows[0].status == "RUNNING"
    person = apply_edits(text, [CellEdit("R1", status="RUNNING", expect_status="DONE")], "t.md")
    assert person.text == text and len(person.skipped) == 1


def test_update_plan_switch_keeps_crlf(tmp_path: Path) -> None:
    from handlers.tracker_write import update_plan_switch
    path = tmp_path / "EXPERIMENT_TRACKER.md"
    path.write_bytes(fixture("template.md", crlf=True).encode())
    sha = update_plan_switch(path, "APPROVED")
    data = path.read_bytes()
    assert b"# Experiment Tracker\r\n\r\n**expbridge**: APPROVED\r\n\r\n| Run ID" in data
    assert data.count(b"\n") == data.count(b"\r\n") and read_tracker(path).sha == sha
    inode = path.stat().st_ino
    assert update_plan_switch(path, "APPROVED") == sha and path.stat().st_ino == inode
