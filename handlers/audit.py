"""The integrity audit's verdict (ARIS /experiment-audit, ARIS_SPEC §2.12, F103): advisory only.

The audit hook writes EXPERIMENT_AUDIT.json (and .md) under its EB_OUT:

    {"date", "auditor", "overall_verdict": "pass|warn|fail", "integrity_status": "pass|warn|fail",
     "checks": {"gt_provenance" | "score_normalization" | "result_existence" | "dead_code" | "scope":
                {"status": "pass|warn|fail", "details": "..."}, "eval_type": "real_gt" | ...},
     "claims": [{"id": "C1", "impact": "supported|needs_qualifier|unsupported"}]}

This module reads and checks it and gives one line for EXPERIMENT_RESULTS.md and `expbridge
status`. Nothing here raises or blocks: a missing or malformed file is itself the verdict
(MISSING / INVALID), with the file and what was expected. PASS continues; WARN tags claims
`[INTEGRITY: WARN]`; FAIL tags them `[INTEGRITY CONCERN]` (ARIS §1.3).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Mapping

from handlers.versioning import write_output

AUDIT_JSON = "EXPERIMENT_AUDIT.json"
AUDIT_MD = "EXPERIMENT_AUDIT.md"
CHECKS = ("gt_provenance", "score_normalization", "result_existence", "dead_code", "scope")
STATUSES = ("PASS", "WARN", "FAIL")
EVAL_TYPES = ("real_gt", "synthetic_proxy", "self_supervised_proxy", "simulation_only", "human_eval")
IMPACTS = ("supported", "needs_qualifier", "unsupported")
TAGS = {"WARN": "[INTEGRITY: WARN]", "FAIL": "[INTEGRITY CONCERN]"}
MAX_BYTES = 1 << 20
Outcome = Literal["PASS", "WARN", "FAIL", "MISSING", "INVALID"]


@dataclass(frozen=True)
class AuditVerdict:
    outcome: Outcome
    file: str
    checks: dict[str, str] = field(default_factory=dict)   # check name -> PASS/WARN/FAIL
    details: dict[str, str] = field(default_factory=dict)
    integrity: str | None = None
    eval_type: str | None = None
    claims: list[tuple[str, str]] = field(default_factory=list)  # (claim id, impact)
    auditor: str | None = None
    date: str | None = None
    problems: list[str] = field(default_factory=list)  # what in the file was not as expected

    @property
    def tag(self) -> str:
        """The marker ARIS puts on claims: `[INTEGRITY: WARN]`, `[INTEGRITY CONCERN]` or ''."""
        return TAGS.get(self.outcome, "")


def _status(raw: Any) -> str | None:
    if isinstance(raw, str) and raw.strip().upper() in STATUSES:
        return raw.strip().upper()
    return None


def _text(raw: Any) -> str | None:
    return raw.strip() if isinstance(raw, str) and raw.strip() else None


def _checks(raw: Any, problems: list[str]) -> tuple[dict[str, str], dict[str, str], str | None]:
    if not isinstance(raw, Mapping):
        problems.append("'checks' must be an object with " + ", ".join(CHECKS))
        return {}, {}, None
    statuses, details = {}, {}
    for name in CHECKS:
        item = raw.get(name)
        status = _status(item.get("status")) if isinstance(item, Mapping) else None
        if status is None:
            problems.append(f"checks.{name}.status missing or not one of pass, warn, fail")
            continue
        statuses[name] = status
        details[name] = _text(item.get("details")) or ""
    eval_type = _text(raw.get("eval_type"))
    if eval_type is not None and eval_type not in EVAL_TYPES:
        problems.append(f"checks.eval_type {eval_type!r} is not one of {', '.join(EVAL_TYPES)}")
    return statuses, details, eval_type


def _claims(raw: Any, problems: list[str]) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append("'claims' must be a list of {id, impact}")
        return []
    claims = []
    for i, item in enumerate(raw):
        cid = _text(item.get("id")) if isinstance(item, Mapping) else None
        impact = _text(item.get("impact")) if isinstance(item, Mapping) else None
        impact = impact.lower().replace(" ", "_") if impact else None  # the .md says "needs qualifier"
        if cid is None or impact not in IMPACTS:
            problems.append(f"claims[{i}] needs an 'id' and an 'impact' of {', '.join(IMPACTS)}")
            continue
        claims.append((cid, impact))
    return claims


def _overall(data: Mapping[str, Any], checks: Mapping[str, str], problems: list[str]) -> str | None:
    """overall_verdict as written; when it is missing, the worst check (a FAIL is never hidden)."""
    stated = _status(data.get("overall_verdict"))
    worst = max(checks.values(), key=STATUSES.index) if checks else None
    if stated is None:
        problems.append("'overall_verdict' missing or not one of pass, warn, fail")
        return worst
    if worst is not None and STATUSES.index(worst) > STATUSES.index(stated):
        problems.append(f"overall_verdict {stated} is milder than a {worst} check")
    return stated


def parse_audit(text: str, file: str) -> AuditVerdict:
    """The verdict of one EXPERIMENT_AUDIT.json text; INVALID when nothing usable is in it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return AuditVerdict("INVALID", file, problems=[
            f"{file}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})"])
    if not isinstance(data, Mapping):
        return AuditVerdict("INVALID", file, problems=[f"{file}:1: expected a JSON object"])
    problems: list[str] = []
    checks, details, eval_type = _checks(data.get("checks"), problems)
    claims = _claims(data.get("claims"), problems)
    overall = _overall(data, checks, problems)
    integrity = _text(data.get("integrity_status"))
    if integrity is not None and _status(integrity) is None:
        problems.append(f"integrity_status {integrity!r} is not one of pass, warn, fail")
    outcome: Outcome = overall if overall in STATUSES else "INVALID"  # type: ignore[assignment]
    return AuditVerdict(outcome, file, checks, details, integrity.lower() if integrity else None,
                        eval_type, claims, _text(data.get("auditor")), _text(data.get("date")),
                        [f"{file}: {p}" for p in problems])


def read_audit(path: Path) -> AuditVerdict:
    """EXPERIMENT_AUDIT.json at `path` (or inside the folder `path`). Never raises."""
    path = Path(path)
    if path.is_dir():
        path = path / AUDIT_JSON
    try:
        data = path.read_bytes()[:MAX_BYTES + 1]
    except FileNotFoundError:
        return AuditVerdict("MISSING", str(path), problems=[f"{path}: not written by the audit hook"])
    except OSError as exc:
        return AuditVerdict("MISSING", str(path), problems=[f"{path}: cannot read ({exc.strerror})"])
    if len(data) > MAX_BYTES:
        return AuditVerdict("INVALID", str(path), problems=[f"{path}: larger than {MAX_BYTES} bytes"])
    return parse_audit(data.decode("utf-8", errors="replace"), str(path))


def audit_line(verdict: AuditVerdict) -> str:
    """One line for the results Summary and `expbridge status`. English: an ARIS key line."""
    if verdict.outcome == "MISSING":
        return "Integrity audit: not available (advisory; no EXPERIMENT_AUDIT.json)"
    if verdict.outcome == "INVALID":
        return f"Integrity audit: unreadable (advisory): {verdict.problems[0] if verdict.problems else ''}"
    flagged = [f"{name} {status}" for name, status in verdict.checks.items() if status != "PASS"]
    parts = [f"Integrity audit: {verdict.outcome}" + (f" {verdict.tag}" if verdict.tag else "")]
    parts.append("; ".join(flagged) if flagged else "all checks pass")
    if verdict.eval_type:
        parts.append(f"eval {verdict.eval_type}")
    weak = [cid for cid, impact in verdict.claims if impact != "supported"]
    if weak:
        parts.append(f"claims needing attention: {', '.join(weak)}")
    if verdict.auditor:
        parts.append(f"by {verdict.auditor}")
    return f"{parts[0]} ({'; '.join(parts[1:])})"


def publish_audit(out_dir: Path, dest_dir: Path, now: datetime,
                  manifest_path: Path | None) -> list[Path]:
    """Copy the hook's EXPERIMENT_AUDIT.md/.json from EB_OUT into `dest_dir` (versioned, with
    MANIFEST rows). The hook never writes the project itself (DESIGN §5). Never raises for a
    missing or unreadable file: it is simply not published."""
    written: list[Path] = []
    for name in (AUDIT_JSON, AUDIT_MD):
        try:
            text = (Path(out_dir) / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        written += write_output(Path(dest_dir) / name, text, now, manifest_path,
                                description="integrity audit (advisory)", skill="/experiment-audit")
    return written
