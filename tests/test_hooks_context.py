"""prepare_context: what lands in EB_CONTEXT_DIR, with ARIS's stage-then-root fallbacks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.hook_context import FAILURE_LOG_BYTES, prepare_context


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "refine-logs").mkdir(parents=True)
    return root


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_bare_project_still_gets_the_checklist(project: Path, tmp_path: Path) -> None:
    ctx = prepare_context(tmp_path / "ctx", project, "review")
    assert listing(ctx) == {"checklist.md", "code_paths.txt", "index.json"}
    checklist = (ctx / "checklist.md").read_text()
    for item in ("Method match", "Every hyperparameter exposed", "Controllable seeds",
                 "Parseable outputs", "Logic bugs", "ground-truth rule"):
        assert item in checklist
    assert "dataset's labels" in checklist and "never against another" in checklist
    assert (ctx / "code_paths.txt").read_text() == f"{project.resolve()}\n"


def test_inputs_are_copied_from_stage_paths_first(project: Path, tmp_path: Path) -> None:
    (project / "refine-logs" / "FINAL_PROPOSAL.md").write_text("stage proposal")
    (project / "FINAL_PROPOSAL.md").write_text("root proposal")
    (project / "idea-stage").mkdir()
    (project / "idea-stage" / "IDEA_CANDIDATES.md").write_text("stage candidates")
    (project / "IDEA_CANDIDATES.md").write_text("root candidates")
    (project / "IDEA_REPORT.md").write_text("root report")  # only at the legacy root path
    ctx = prepare_context(tmp_path / "ctx", project, "implement", plan_excerpt="## M0 sanity\n")
    assert (ctx / "FINAL_PROPOSAL.md").read_text() == "stage proposal"
    assert (ctx / "IDEA_CANDIDATES.md").read_text() == "stage candidates"
    assert (ctx / "IDEA_REPORT.md").read_text() == "root report"
    assert (ctx / "plan_excerpt.md").read_text() == "## M0 sanity\n"
    index = json.loads((ctx / "index.json").read_text())
    assert index["phase"] == "implement" and index["project"] == str(project.resolve())
    assert set(index["files"]) | {"index.json"} == listing(ctx)


def test_failure_logs_are_tails_in_order(project: Path, tmp_path: Path) -> None:
    big = tmp_path / "R001.a1.log"
    big.write_text("x" * (FAILURE_LOG_BYTES + 500) + "\nCUDA out of memory\n")
    again = tmp_path / "again" / "R001.a1.log"  # same name, another attempt's folder
    again.parent.mkdir()
    again.write_text("second attempt\n")
    ctx = prepare_context(tmp_path / "ctx", project, "debug",
                          failure_logs=[big, again, tmp_path / "missing.log"])
    first = (ctx / "failure_logs" / "01-R001.a1.log").read_text()
    assert len(first) <= FAILURE_LOG_BYTES and first.endswith("CUDA out of memory\n")
    assert (ctx / "failure_logs" / "02-R001.a1.log").read_text() == "second attempt\n"
    assert "log not found" in (ctx / "failure_logs" / "03-missing.log").read_text()


def test_code_paths_and_extra_files(project: Path, tmp_path: Path) -> None:
    (project / "base_repo").mkdir()
    ctx = prepare_context(tmp_path / "ctx", project, "judge",
                          extra_files={"results/R001.json": '{"acc": 0.9}', "checklist.md": "mine"})
    assert (ctx / "code_paths.txt").read_text().splitlines() == [
        str(project.resolve()), str((project / "base_repo").resolve())]
    assert (ctx / "results" / "R001.json").read_text() == '{"acc": 0.9}'
    assert "ground-truth rule" in (ctx / "checklist.md").read_text()  # extras cannot replace it
    explicit = prepare_context(tmp_path / "ctx2", project, "judge", code_paths=[project / "src"])
    assert (explicit / "code_paths.txt").read_text() == f"{(project / 'src').resolve()}\n"


@pytest.mark.parametrize("name", ["../escape.md", "/etc/passwd", "a/../../b"])
def test_extra_files_stay_inside(project: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="relative path inside"):
        prepare_context(tmp_path / "ctx", project, "review", extra_files={name: "x"})
    assert not (tmp_path / "escape.md").exists()
