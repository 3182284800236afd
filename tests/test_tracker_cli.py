"""`expbridge tracker set|show`, through main() and as a real subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.tracker import read_tracker
from handlers.tracker_cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "tracker"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracker(tmp_path: Path) -> Path:
    path = tmp_path / "EXPERIMENT_TRACKER.md"
    path.write_bytes((FIXTURES / "template.md").read_bytes())
    return path


def test_set_status_and_notes(tracker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tracker.read_text()
    assert main(["tracker", "set", str(tracker), "R003", "--status", "PAUSED", "--notes", "held by me"]) == 0
    row = next(r for r in read_tracker(tracker).rows if r.run_id == "R003")
    assert (row.status, row.notes_user, row.notes_eb) == ("PAUSED", "compare with R002", "held by me")
    assert f"{tracker}:7: R003" in capsys.readouterr().out
    changed = [a for a, b in zip(before.splitlines(), tracker.read_text().splitlines()) if a != b]
    assert len(changed) == 1


def test_unknown_run_id_fails_with_file_and_id(tracker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tracker.read_bytes()
    assert main(["set", str(tracker), "R999", "--status", "TODO"]) == 1
    err = capsys.readouterr().err
    assert str(tracker) in err and "no row with run id 'R999'" in err
    assert tracker.read_bytes() == before


def test_ambiguous_id_needs_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.md"
    path.write_bytes((FIXTURES / "duplicates.md").read_bytes())
    assert main(["set", str(path), "D01", "--status", "RETRY"]) == 1
    assert f"{path}:5" in capsys.readouterr().err
    assert main(["set", str(path), "D01", "--status", "RETRY", "--line", "5"]) == 0
    assert [r.status for r in read_tracker(path).rows if r.run_id == "D01"] == ["RETRY", "RUNNING"]


def test_missing_file_and_missing_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["set", str(tmp_path / "nope.md"), "R1", "--status", "TODO"]) == 1
    assert "nope.md: no such file" in capsys.readouterr().err
    (tmp_path / "t.md").write_text("| Run ID | Status |\n|---|---|\n| R1 | TODO |\n")
    assert main(["set", str(tmp_path / "t.md"), "R1"]) == 2


def test_notes_on_a_table_without_notes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.md"
    path.write_text("| Run ID | Status |\n|---|---|\n| R1 | TODO |\n")
    assert main(["set", str(path), "R1", "--status", "SKIP", "--notes", "x"]) == 1
    assert "no Notes column" in capsys.readouterr().err
    assert path.read_text() == "| Run ID | Status |\n|---|---|\n| R1 | SKIP |\n"


def test_subprocess_set_and_show_json(tracker: Path) -> None:
    code = "import sys; from handlers.tracker_cli import main; raise SystemExit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, "tracker", "set", str(tracker), "R004",
                          "--status", "SKIPPED"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    show = subprocess.run([sys.executable, "-c", code, "show", str(tracker), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    data = json.loads(show.stdout)
    assert {r["run_id"]: r["status"] for r in data["rows"]}["R004"] == "SKIPPED"
    assert data["tables"] == 1 and data["diagnostics"] == []
