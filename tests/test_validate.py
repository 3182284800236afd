"""`expbridge validate`: goldens on synthetic projects, single files, exit codes, text output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.validate import build_report, main, render_text

HERE = Path(__file__).parent
PROJECTS = HERE / "fixtures" / "projects"
GOLDEN = HERE / "golden"
NAMES = ["skill", "template", "zh", "ragged", "pointer"]


def _golden(name: str, report: dict) -> dict:
    """The checked-in golden; EXPBRIDGE_UPDATE_GOLDEN=1 rewrites it from the current output."""
    path = GOLDEN / f"validate_{name}.json"
    if os.environ.get("EXPBRIDGE_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", NAMES)
def test_json_report_matches_golden(name, monkeypatch, capsys):
    # Paths in the report are relative to the working directory, so the goldens are stable.
    monkeypatch.chdir(PROJECTS / name)
    code = main([".", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report == _golden(name, report)
    assert code == (0 if report["usable"] else 1)


def test_every_tracker_row_is_reported_with_raw_and_normalised_status(monkeypatch):
    monkeypatch.chdir(PROJECTS / "ragged")
    runs = build_report(Path("."))["runs"]
    assert [(r["run_id"], r["status_raw"], r["status"], r["line"]) for r in runs] == [
        ("R001", "DONE", "DONE", 11), ("R002", "TODO", "TODO", 12), ("R002", "FAILED", "FAILED", 13),
        ("R003", "✅ done", "DONE", 14), ("R004", "🔄 running", "RUNNING", 15)]
    assert all(r["file"] == "refine-logs/EXPERIMENT_TRACKER.md" for r in runs)
    assert "R900" not in {r["run_id"] for r in runs}  # the table inside a code fence is not read


def test_milestones_carry_run_and_job_counts(monkeypatch):
    monkeypatch.chdir(PROJECTS / "skill")
    report = build_report(Path("."))
    assert [(m["id"], m["runs"], m["jobs"]) for m in report["milestones"]] == [
        ("M0", ["R001"], 1), ("M1", ["R002", "R003"], 2), ("M2", ["R004", "R005"], 2), ("M3", [], 0)]
    assert report["summary"].startswith("Plan loaded: 4 milestones (sanity → main → ablation → polish)")
    assert report["usable"] and report["errors"] == 0


def test_text_output_lists_what_was_understood_and_where(monkeypatch, capsys):
    monkeypatch.chdir(PROJECTS / "template")
    assert main(["."]) == 0
    out = capsys.readouterr().out
    assert "Plan loaded: 4 milestones (sanity → baseline → main), 1 must-run, 1 nice-to-have, ~18 GPU-hours" in out
    assert "M0 Sanity [sanity, ~30 min] runs: 1, jobs: 0 (line 30)" in out
    assert "M2 Main [main, ~12h] runs: 1, jobs: 0 (line 32)" in out
    assert "refine-logs/EXPERIMENT_PLAN.md:33: warning: milestone id M2 is used again" in out
    assert "refine-logs/EXPERIMENT_TRACKER.md:8: warning: run R009 is in milestone 'M7'" in out
    assert out.rstrip().endswith("usable: 0 error(s), 5 warning(s)")


def test_runs_named_after_milestones_are_attributed_to_them(tmp_path, monkeypatch):
    refine = tmp_path / "refine-logs"
    refine.mkdir()
    (refine / "EXPERIMENT_PLAN.md").write_text("# P\n## Run Order\n- M0: Sanity\n- M1: Main\n")
    (refine / "EXPERIMENT_TRACKER.md").write_text(
        "| Run | Stage | Status |\n|---|---|---|\n| M1a | 边界 | TODO |\n| M1b | 边界 | DONE |\n| M10 | x | TODO |\n")
    monkeypatch.chdir(tmp_path)
    report = build_report(Path("."))
    assert [(m["id"], m["runs"]) for m in report["milestones"]] == [("M0", []), ("M1", ["M1a", "M1b"])]
    unknown = [d["message"] for d in report["diagnostics"] if "does not define" in d["message"]]
    assert unknown == ["run M10 is in milestone 'x', which the plan's run order does not define (M0, M1)"]


def test_pointer_plan_is_not_usable(monkeypatch, capsys):
    monkeypatch.chdir(PROJECTS / "pointer")
    assert main(["."]) == 1
    out = capsys.readouterr().out
    assert "refine-logs/EXPERIMENT_PLAN.md:1: error: this plan only points to" in out
    assert "NOT usable: 1 error(s)" in out


def test_missing_plan_is_an_error_missing_tracker_and_manifest_warnings(tmp_path, monkeypatch):
    (tmp_path / "refine-logs").mkdir()
    monkeypatch.chdir(tmp_path)
    report = build_report(Path("."))
    found = {(d["file"], d["severity"]) for d in report["diagnostics"]}
    assert found == {("refine-logs/EXPERIMENT_PLAN.md", "error"), ("refine-logs/EXPERIMENT_TRACKER.md", "warning"),
                     ("refine-logs/EXPERIMENT_QUEUE.yaml", "warning")}
    assert not report["usable"] and main(["."]) == 1


def test_refine_logs_directory_is_accepted_as_the_project(monkeypatch):
    monkeypatch.chdir(PROJECTS / "zh")
    assert build_report(Path("refine-logs"))["files"]["plan"] == "refine-logs/EXPERIMENT_PLAN.md"


@pytest.mark.parametrize("name,kind", [("EXPERIMENT_PLAN.md", "plan"), ("EXPERIMENT_TRACKER.md", "tracker"),
                                       ("EXPERIMENT_QUEUE.yaml", "manifest")])
def test_single_file_targets_read_only_that_file(name, kind, monkeypatch):
    monkeypatch.chdir(PROJECTS / "skill")
    report = build_report(Path("refine-logs") / name)
    assert {k for k, v in report["files"].items() if v} == {kind}
    assert report["usable"]
    assert bool(report["plan"]) == (kind == "plan") and bool(report["runs"]) == (kind == "tracker")
    assert bool(report["jobs"]) == (kind == "manifest")


def test_unknown_or_missing_target_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for target in (tmp_path / "notes.txt", tmp_path / "nope.md"):
        report = build_report(target)
        assert not report["usable"] and report["diagnostics"][0]["severity"] == "error"


def test_preflight_reports_unmet_preconditions_and_says_what_it_does_not_check(tmp_path, monkeypatch):
    refine = tmp_path / "refine-logs"
    refine.mkdir()
    (refine / "EXPERIMENT_PLAN.md").write_text("# Experiment Plan\n## Run Order\n1. Sanity run\n")
    (refine / "EXPERIMENT_QUEUE.yaml").write_text(
        "project: p\ncwd: .\njobs:\n  - id: a\n    cmd: python a.py\n    preconditions:\n"
        "      - {type: file_exists, path: data/train.bin}\n  - id: b\n    cmd: python b.py\n")
    monkeypatch.chdir(tmp_path)
    pre = build_report(Path("."), preflight=True)["preflight"]
    assert [b["job"] for b in pre["blocked"]] == ["a"] and "data/train.bin" in pre["blocked"][0]["reasons"][0]
    assert "free GPUs >= max_parallel" in pre["not_checked"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.bin").write_bytes(b"x")
    assert build_report(Path("."), preflight=True)["preflight"]["blocked"] == []
    assert "preflight (partial)" in render_text(build_report(Path("."), preflight=True))


def test_validate_on_corpus_projects_never_crashes(capsys):
    from tests.plugins.common import corpus_dir

    for project in sorted(p for p in corpus_dir().iterdir() if p.is_dir()):
        report = build_report(project)
        assert not any("internal" in d["message"] for d in report["diagnostics"]), project
        assert render_text(report)


def test_expbridge_validate_through_the_real_command_line():
    repo = HERE.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "validate", ".", "--json"], cwd=PROJECTS / "skill",
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == _golden("skill", json.loads(proc.stdout))
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "validate", "."], cwd=PROJECTS / "pointer",
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "refine-logs/EXPERIMENT_PLAN.md:1: error:" in proc.stdout


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=300))
def test_random_project_files_never_crash(plan, tracker, manifest):
    with tempfile.TemporaryDirectory() as tmp:
        refine = Path(tmp) / "refine-logs"
        refine.mkdir()
        for name, text in (("EXPERIMENT_PLAN.md", plan), ("EXPERIMENT_TRACKER.md", tracker),
                           ("EXPERIMENT_QUEUE.yaml", manifest)):
            (refine / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        report = build_report(Path(tmp), preflight=True)
        json.dumps(report, ensure_ascii=False)
        assert render_text(report) and report["usable"] == (report["errors"] == 0)
