"""The tracker reader on synthetic fixtures: tables, cells, statuses, diagnostics, plan switch."""
from __future__ import annotations

from pathlib import Path

import pytest

from handlers.tracker import Tracker, parse_tracker, read_tracker

FIXTURES = Path(__file__).parent / "fixtures" / "tracker"


def read(name: str, crlf: bool = False) -> Tracker:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    if crlf:
        text = text.replace("\n", "\r\n")
    return parse_tracker(text, name)


def by_id(tracker: Tracker) -> dict[str, object]:
    return {r.run_id: r for r in tracker.rows}


def messages(tracker: Tracker) -> list[str]:
    return [f"{d.line}:{d.message}" for d in tracker.diagnostics]


@pytest.mark.parametrize("crlf", [False, True])
def test_template_table(crlf: bool) -> None:
    t = read("template.md", crlf)
    assert t.tables == 1 and [r.run_id for r in t.rows] == ["R001", "R002", "R003", "R004"]
    r1, r2, r3, r4 = t.rows
    assert (r1.status, r1.milestone, r1.purpose, r1.priority, r1.line) == ("DONE", "M0", "sanity", "must", 5)
    assert (r2.status_raw, r2.status) == ("**RUNNING**", "RUNNING")
    assert r3.notes_raw == "compare with R002; eb: queued behind R002"
    assert (r3.notes_user, r3.notes_eb) == ("compare with R002", "queued behind R002")
    assert r4.priority == "nice" and r4.notes_raw == "" and r4.notes_eb is None
    assert r1.cells["System / Variant"] == "toy-mlp" and r1.command is None
    assert t.diagnostics == []


def test_sha_is_of_the_bytes(tmp_path: Path) -> None:
    import hashlib
    data = (FIXTURES / "chinese.md").read_bytes()
    path = tmp_path / "EXPERIMENT_TRACKER.md"
    path.write_bytes(data)
    assert read_tracker(path).sha == hashlib.sha256(data).hexdigest()


def test_several_tables_any_headers_and_group_labels() -> None:
    t = read("multi_table.md")
    assert t.tables == 3  # the legend and the decision log have no run-id + status pair
    rows = by_id(t)
    assert [r.run_id for r in t.rows] == ["S01", "S02", "Z01", "Z02", "Z03", "A01", "A02"]
    assert rows["S01"].status == "DONE" and rows["S02"].status == "TODO"
    assert rows["S01"].milestone == "M0"      # from the heading `## M0 · Sanity`
    assert rows["Z03"].status == "DONE" and rows["Z02"].status == "RUNNING"
    assert rows["Z01"].notes_user == "最佳 0.81" and rows["Z01"].table == 1
    assert rows["A01"].status == "TODO" and rows["A02"].status == "BLOCKED"
    assert rows["A01"].milestone == "M3"      # from the one-cell section row, not a run
    assert all(not r.ragged for r in t.rows)


def test_hard_cells_follow_gfm() -> None:
    t = read("hard_cells.md")
    rows = by_id(t)
    assert rows["H01"].command == "python eval.py --metric max|x|"
    assert rows["H01"].notes_user == "uses |C_r|=0.05 on spider|bird"
    # a pipe inside a code span still splits the cell (GFM); the row is then one cell too wide
    assert rows["H02"].ragged and rows["H02"].status is None
    assert rows["H03"].ragged and rows["H03"].status == "TODO" and rows["H03"].notes_raw == ""
    assert rows["H04"].status_raw == "" and rows["H04"].status is None
    assert rows["H05"].ragged and rows["H05"].status == "FAILED"
    assert rows["H06"].status_raw == "MUST" and rows["H06"].status is None
    assert rows["H07"].status == "QUEUED" and rows["H07"].notes_user == "tight cells"
    assert rows["H08"].notes_user == "path C:\\data\\" and rows["H08"].status == "RETRY"
    assert rows["H09"].status == "PAUSED"
    text = "\n".join(messages(t))
    for line in (6, 7, 9, 10):
        assert f"{line}:row has" in text
    assert "8:Status of H04 is empty" in text and "10:status 'MUST' of H06" in text


def test_fences_comments_front_matter_and_indented_code_are_not_tables() -> None:
    t = read("fences.md")
    assert [r.run_id for r in t.rows] == ["F01", "F02"] and t.tables == 1
    assert (t.plan_switch, t.plan_switch_line) == ("AWAITING_APPROVAL", 8)


def test_duplicate_and_missing_ids_are_reported_not_merged() -> None:
    t = read("duplicates.md")
    assert [(r.run_id, r.line) for r in t.rows] == [
        ("D01", 5), ("D01", 6), ("D02", 7), ("—", 8), ("", 9), ("D02", 15)]
    text = messages(t)
    assert "6:run id 'D01' repeats (first at line 5); the rows are kept apart, not merged" in text
    assert any(m.startswith("15:run id 'D02' repeats (first at line 7)") for m in text)
    assert any(m.startswith("8:row has no run id") for m in text)
    assert any(m.startswith("9:row has no run id") for m in text)
    assert {r.table for r in t.rows if r.run_id == "D02"} == {0, 1}


def test_rows_after_a_blank_line_continue_the_table_with_a_warning() -> None:
    t = read("blank_split.md")
    assert [(r.run_id, r.continuation) for r in t.rows] == [
        ("B01", False), ("B02", False), ("B03", True), ("B04", True)]
    assert any(d.line == 8 and "blank line" in d.message for d in t.diagnostics)


def test_chinese_headers_and_statuses() -> None:
    t = read("chinese.md")
    assert [(r.run_id, r.status) for r in t.rows] == [
        ("C01", "DONE"), ("C02", "RUNNING"), ("C03", "TODO"), ("C04", "SKIPPED")]
    assert t.rows[0].purpose == "冒烟测试" and t.rows[0].notes_user == "在 A100 上跑"


def test_aligned_and_no_final_newline() -> None:
    a = read("aligned.md")
    assert [(r.run_id, r.status, r.notes_raw) for r in a.rows] == [
        ("P000", "DONE", "teacher sim v0"), ("P001", "TODO", ""), ("P002", "BLOCKED", "needs P001")]
    n = read("no_final_newline.md")
    assert [(r.run_id, r.line) for r in n.rows] == [("N01", 5), ("N02", 6)]


def test_no_table_is_a_diagnostic_not_an_error() -> None:
    t = read("no_table.md")
    assert t.rows == [] and t.tables == 0
    assert t.diagnostics[0].line == 0 and "no table with a run-id column" in t.diagnostics[0].message


@pytest.mark.parametrize(("line", "word", "ok"), [
    ("**expbridge**: PAUSED", "PAUSED", True), ("**expbridge**: paused", "PAUSED", True),
    ("**expbridge**: APPROVE", "APPROVED", True), ("**expbridge**:RUNNING", "RUNNING", True),
    ("**expbridge**: MAYBE", None, False), ("**expbridge**:", None, False),
])
def test_plan_switch_words(line: str, word: str | None, ok: bool) -> None:
    t = parse_tracker(f"# T\n\n{line}\n\n| Run ID | Status |\n|---|---|\n| R1 | TODO |\n", "f.md")
    assert t.plan_switch == word and t.plan_switch_line == 3
    assert any(d.severity == "error" and d.line == 3 for d in t.diagnostics) is not ok


def test_bom_and_invalid_utf8_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "t.md"
    path.write_bytes(b"\xef\xbb\xbf| Run ID | Status |\n|---|---|\n| R1 | TODO \xff |\n")
    t = read_tracker(path)
    assert [(r.run_id, r.status) for r in t.rows] == [("R1", "TODO")]
    assert "not valid UTF-8" in t.diagnostics[0].message


@pytest.mark.parametrize("text", [
    "", "\n", "|", "||\n|-|", "| a |\n|---|\n", "| Run ID | Status |\n|---|---|", "```\n| a |",
    "| Run ID | Status |\n|---|---|\n|", "---\n", "<!--\n| Run ID | Status |\n|---|---|\n| X | TODO |",
    "| Run ID | Status | Status |\n|--|--|--|\n| X | DONE | TODO |\n", "\r\r\r| Run ID | Status |\r|-|-|\r| Z | DONE |",
])
def test_odd_inputs_never_raise(text: str) -> None:
    t = parse_tracker(text, "odd.md")
    assert not any("internal" in d.message for d in t.diagnostics)


def test_old_mac_line_endings() -> None:
    t = parse_tracker("| Run ID | Status |\r|-|-|\r| Z | DONE |", "cr.md")
    assert [(r.run_id, r.status, r.line) for r in t.rows] == [("Z", "DONE", 3)]


def test_duplicate_header_names_get_distinct_keys() -> None:
    t = parse_tracker("| ID | Decision | Status | Decision |\n|-|-|-|-|\n| X | a | DONE | b |\n", "d.md")
    assert t.rows[0].cells == {"ID": "X", "Decision": "a", "Status": "DONE", "Decision #2": "b"}


def test_id_column_prefers_id_like_values() -> None:
    text = ("| Block | Run | Status |\n|---|---|---|\n| E0 | gradient spectrum | TODO |\n"
            "| E1 | rank sweep | DONE |\n")
    assert [r.run_id for r in parse_tracker(text, "b.md").rows] == ["E0", "E1"]


def test_a_leading_thematic_break_is_not_front_matter() -> None:
    text = "---\n# Tracker\n\n| Run ID | Status |\n|---|---|\n| R1 | TODO |\n\n---\nfooter\n"
    assert [r.run_id for r in parse_tracker(text, "t.md").rows] == ["R1"]
