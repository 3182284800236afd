"""Property tests for the tracker writer: one edit touches one cell, and people's edits survive."""
from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.status_vocab import STATUSES
from handlers.tracker import parse_tracker, split_lines, split_row
from handlers.tracker_write import CellEdit, append_rows, apply_edits
from tests.plugins.common import corpus_dir

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADER = ("Run ID", "Purpose", "Status", "Notes")
STATUS, NOTES = 2, 3

words = st.text(alphabet=st.characters(whitelist_categories=("L", "N", "Pd", "Po", "Sm", "So"),
                                        blacklist_characters="|\\`*_<>[]#:"), min_size=1, max_size=8)
phrase = st.lists(words, min_size=0, max_size=3).map(" ".join)
statuses = st.sampled_from(["TODO", "DONE", "**DONE**", "✅ done", "完成", "RUNNING", "BLOCKED_BY_M2",
                            "⬜ Pending", "", "DONE ✗"])
notes = st.tuples(phrase, st.one_of(st.none(), phrase)).map(
    lambda t: t[0] if t[1] is None else (f"{t[0]}; eb: {t[1]}" if t[0] else f"eb: {t[1]}"))
pads = st.sampled_from(["", " ", "  "])


@st.composite
def trackers(draw: st.DrawFn) -> str:
    """A tracker with one run table, random padding, pipes, line endings and surrounding prose."""
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    n = draw(st.integers(1, 6))
    rows = [(f"R{k:03d}", draw(phrase).replace("|", "\\|"), draw(statuses),
             draw(notes).replace("|", "\\|")) for k in range(n)]

    def line(cells: tuple[str, ...]) -> str:
        outer = draw(st.booleans()) or not cells[0] or not cells[-1]  # else `R1||` loses a cell
        body = "|".join(draw(pads) + c + draw(pads) if c else draw(pads) for c in cells)
        return f"|{body}|" if outer else body

    lines = [draw(st.sampled_from(["# Experiment Tracker", "# T", "Intro text."])), ""]
    lines += [line(HEADER), "|---|---|:---:|---|"] + [line(r) for r in rows]
    lines += draw(st.sampled_from([[], [""], ["", "Legend: TODO, DONE."]]))
    return eol.join(lines) + (eol if draw(st.booleans()) else "")


def cell_segments(text: str, line_no: int) -> list[str]:
    line = split_lines(text)[line_no - 1]
    return [text[s:e] for s, e in split_row(line).spans]


def other_lines(text: str, skip: int) -> list[str]:
    return [ln.text for ln in split_lines(text) if ln.no != skip]


@SETTINGS
@given(trackers(), st.data())
def test_one_edit_changes_only_that_cell(text: str, data: st.DataObject) -> None:
    rows = parse_tracker(text, "t.md").rows
    row = data.draw(st.sampled_from(rows))
    which = data.draw(st.sampled_from(["status", "notes_eb"]))
    value = data.draw(st.sampled_from(STATUSES + ("RETRY",))) if which == "status" else data.draw(phrase)
    res = apply_edits(text, [CellEdit(row.run_id, **{which: value})], "t.md")
    assert other_lines(res.text, row.line) == other_lines(text, row.line)
    assert text.count("\r\n") == res.text.count("\r\n") and text.endswith(("\n",)) == res.text.endswith("\n")
    old, new = cell_segments(text, row.line), cell_segments(res.text, row.line)
    col = STATUS if which == "status" else NOTES
    assert len(old) == len(new)
    assert [c for k, c in enumerate(old) if k != col] == [c for k, c in enumerate(new) if k != col]
    reread = next(r for r in parse_tracker(res.text, "t.md").rows if r.line == row.line)
    if which == "status":
        assert reread.status == value
    else:
        # "" removes our tail; an edge cell with no outer pipe keeps a bare `eb:` so it survives
        assert (reread.notes_eb or None) == (value.strip() or None)
        assert reread.notes_user == row.notes_user


def person_sets(text: str, line_no: int, col: int, value: str) -> str:
    """A person's edit in their editor: the cell's whole text replaced."""
    line = split_lines(text)[line_no - 1]
    start, end = split_row(line).spans[col]
    return text[:start] + f" {value} " + text[end:]


@SETTINGS
@given(trackers(), st.data())
def test_a_person_edit_to_another_cell_survives_ours(text: str, data: st.DataObject) -> None:
    rows = parse_tracker(text, "t.md").rows
    ours = data.draw(st.sampled_from(rows))
    theirs = data.draw(st.sampled_from(rows))
    col = data.draw(st.sampled_from([1, STATUS, NOTES] if theirs is not ours else [1]))
    value = data.draw(words)
    queued = apply_edits(text, [CellEdit(ours.run_id, status="QUEUED", notes_eb="wait")], "t.md").text
    edited = person_sets(queued, theirs.line, col, value)  # saved after our read, before our write
    edit = CellEdit(ours.run_id, status="RUNNING", notes_eb="gpu0",
                    expect_status="QUEUED", expect_notes_eb="wait")
    res = apply_edits(edited, [edit], "t.md")
    after = {r.line: r for r in parse_tracker(res.text, "t.md").rows}
    assert list(after[theirs.line].cells.values())[col] == value.strip()
    assert after[ours.line].status == "RUNNING" and after[ours.line].notes_eb == "gpu0"


@SETTINGS
@given(trackers(), st.data())
def test_a_person_edit_to_the_same_cell_wins(text: str, data: st.DataObject) -> None:
    rows = parse_tracker(text, "t.md").rows
    row = data.draw(st.sampled_from(rows))
    written = apply_edits(text, [CellEdit(row.run_id, status="RUNNING", notes_eb="gpu0")], "t.md").text
    which = data.draw(st.sampled_from(["status", "notes"]))
    if which == "status":
        person = data.draw(st.sampled_from(["PAUSE", "SKIP", "TODO", "on hold, ask me"]))
        edited = person_sets(written, row.line, STATUS, person)
    else:
        person = data.draw(words)
        edited = person_sets(written, row.line, NOTES, f"{row.notes_user}; eb: {person}".lstrip("; "))
    res = apply_edits(edited, [CellEdit(row.run_id, status="DONE", notes_eb="finished",
                                        expect_status="RUNNING", expect_notes_eb="gpu0")], "t.md")
    now = next(r for r in parse_tracker(res.text, "t.md").rows if r.line == row.line)
    if which == "status":
        assert now.status_raw == person and now.notes_eb == "finished"
        assert [e.status for e, _ in res.skipped] == ["DONE"]
    else:
        assert now.notes_eb == person.strip() and now.status == "DONE"
        assert [e.notes_eb for e, _ in res.skipped] == ["finished"]


@SETTINGS
@given(trackers(), phrase, phrase)
def test_append_inserts_one_line_after_the_table(text: str, purpose: str, note: str) -> None:
    before = parse_tracker(text, "t.md").rows
    new = append_rows(text, [{"run_id": "R900", "Purpose": purpose, "status": "TODO", "Notes": note}], "t.md")
    old_lines, new_lines = [ln.text for ln in split_lines(text)], [ln.text for ln in split_lines(new)]
    at = before[-1].line  # the new row follows the last row
    assert new_lines[:at] == old_lines[:at] and new_lines[at + 1:] == old_lines[at:]
    after = parse_tracker(new, "t.md").rows
    assert [(r.run_id, r.cells) for r in after[:-1]] == [(r.run_id, r.cells) for r in before]
    added = after[-1]
    assert (added.run_id, added.status, added.purpose, added.notes_raw, added.ragged) == (
        "R900", "TODO", purpose.strip() or None, note.strip(), False)
    assert append_rows(new, [{"run_id": "R900", "status": "TODO"}], "t.md") == new


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("|\\-: `~#>*\n\r\tabR01统✅") + ["eb:", "**", "---", "```"]),
                max_size=120).map("".join), st.text(max_size=5))
def test_parser_and_writer_never_raise(text: str, value: str) -> None:
    tracker = parse_tracker(text, "fuzz.md")
    assert not any("internal" in d.message for d in tracker.diagnostics)
    for row in tracker.rows[:3]:
        res = apply_edits(text, [CellEdit(row.run_id, status=value or "DONE", notes_eb=value)], "fuzz.md")
        assert len(split_lines(res.text)) == len(split_lines(text))


def test_truncated_corpus_files_never_raise() -> None:
    files = sorted(corpus_dir().glob("*/**/*TRACKER*.md"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        for cut in range(0, len(text), max(1, len(text) // 25)):
            tracker = parse_tracker(text[:cut], path.name)
            assert not any("internal" in d.message for d in tracker.diagnostics), (path, cut)
