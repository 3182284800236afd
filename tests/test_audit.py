"""The advisory integrity audit: EXPERIMENT_AUDIT.json read, checked, summarised (F103)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from handlers.audit import AUDIT_JSON, audit_line, parse_audit, publish_audit, read_audit


def audit(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "date": "2026-06-03", "auditor": "gpt-5-xhigh", "overall_verdict": "warn",
        "integrity_status": "warn",
        "checks": {
            "gt_provenance": {"status": "pass", "details": "dataset labels"},
            "score_normalization": {"status": "warn", "details": "boundary uses self-ref"},
            "result_existence": {"status": "pass", "details": "all files match"},
            "dead_code": {"status": "pass", "details": "all metrics called"},
            "scope": {"status": "warn", "details": "2 scenes only"},
            "eval_type": "real_gt",
        },
        "claims": [{"id": "C1", "impact": "supported"}, {"id": "C2", "impact": "Needs qualifier"}],
    }
    data.update(changes)
    return data


def test_warn_audit_is_read_and_summarised(tmp_path: Path) -> None:
    (tmp_path / AUDIT_JSON).write_text(json.dumps(audit()))
    verdict = read_audit(tmp_path)  # a folder finds the file in it
    assert verdict.outcome == "WARN" and verdict.tag == "[INTEGRITY: WARN]"
    assert verdict.checks == {"gt_provenance": "PASS", "score_normalization": "WARN",
                              "result_existence": "PASS", "dead_code": "PASS", "scope": "WARN"}
    assert verdict.claims == [("C1", "supported"), ("C2", "needs_qualifier")]
    assert verdict.problems == []
    assert audit_line(verdict) == ("Integrity audit: WARN [INTEGRITY: WARN] (score_normalization WARN; "
                                   "scope WARN; eval real_gt; claims needing attention: C2; by gpt-5-xhigh)")


def test_pass_and_fail() -> None:
    checks = {name: {"status": "PASS", "details": ""} for name in
              ("gt_provenance", "score_normalization", "result_existence", "dead_code", "scope")}
    ok = parse_audit(json.dumps(audit(overall_verdict="PASS", checks=checks, claims=[], auditor=None)), "a.json")
    assert ok.outcome == "PASS" and ok.tag == ""
    assert audit_line(ok) == "Integrity audit: PASS (all checks pass)"
    checks["gt_provenance"]["status"] = "fail"
    bad = parse_audit(json.dumps(audit(overall_verdict="fail", checks=checks)), "a.json")
    assert bad.outcome == "FAIL" and bad.tag == "[INTEGRITY CONCERN]"
    assert "gt_provenance FAIL" in audit_line(bad)


def test_a_milder_overall_verdict_than_a_check_is_reported() -> None:
    data = audit(overall_verdict="pass")
    data["checks"]["dead_code"]["status"] = "fail"
    verdict = parse_audit(json.dumps(data), "x.json")
    assert verdict.outcome == "PASS"  # as written; the mismatch is named
    assert any("milder than a FAIL check" in p for p in verdict.problems)


def test_missing_overall_verdict_takes_the_worst_check() -> None:
    data = audit()
    del data["overall_verdict"]
    verdict = parse_audit(json.dumps(data), "x.json")
    assert verdict.outcome == "WARN"
    assert verdict.problems == ["x.json: 'overall_verdict' missing or not one of pass, warn, fail"]


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "x.json:1: not valid JSON"),
    ("[1, 2]", "x.json:1: expected a JSON object"),
    (json.dumps({"checks": "all good"}), "'checks' must be an object"),
])
def test_bad_files_are_invalid_not_errors(text: str, expected: str) -> None:
    verdict = parse_audit(text, "x.json")
    assert verdict.outcome == "INVALID"
    assert any(expected in p for p in verdict.problems)
    assert audit_line(verdict).startswith("Integrity audit: unreadable (advisory): x.json")


def test_bad_parts_are_named_but_the_rest_is_kept() -> None:
    data = audit(claims=[{"id": "C1", "impact": "maybe"}, "C2"])
    data["checks"]["scope"] = {"details": "no status"}
    data["checks"]["eval_type"] = "vibes"
    verdict = parse_audit(json.dumps(data), "x.json")
    assert verdict.outcome == "WARN" and "scope" not in verdict.checks
    assert verdict.claims == []
    text = "\n".join(verdict.problems)
    for part in ("checks.scope.status", "checks.eval_type 'vibes'", "claims[0]", "claims[1]"):
        assert part in text


def test_missing_file(tmp_path: Path) -> None:
    verdict = read_audit(tmp_path / AUDIT_JSON)
    assert verdict.outcome == "MISSING" and verdict.tag == ""
    assert audit_line(verdict) == "Integrity audit: not available (advisory; no EXPERIMENT_AUDIT.json)"


def test_publish_copies_from_the_hook_output_with_manifest_rows(tmp_path: Path) -> None:
    out, project = tmp_path / "out", tmp_path / "project"
    out.mkdir()
    project.mkdir()
    (out / AUDIT_JSON).write_text(json.dumps(audit()))
    (out / "EXPERIMENT_AUDIT.md").write_text("# Experiment Audit\n")
    now = datetime(2026, 6, 3, 12, 0, 0)
    written = publish_audit(out, project, now, project / "MANIFEST.md")
    assert [p.name for p in written] == [AUDIT_JSON, "EXPERIMENT_AUDIT.md"]
    assert read_audit(project).outcome == "WARN"
    manifest = (project / "MANIFEST.md").read_text()
    assert "| /experiment-audit | EXPERIMENT_AUDIT.json | implementation |" in manifest
    (out / "EXPERIMENT_AUDIT.md").write_text("# Experiment Audit v2\n")
    again = publish_audit(out, project, now, project / "MANIFEST.md")
    assert [p.name for p in again] == ["EXPERIMENT_AUDIT_20260603_120000.md", "EXPERIMENT_AUDIT.md"]
    assert publish_audit(tmp_path / "nothing", project, now, None) == []
