"""The hook-driven phases through `expbridge run`, with small scripts standing in for models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.projects import Proj

pytestmark = pytest.mark.slow

ONE_JOB = """
    jobs:
      - {id: main, run: R001, milestone: M1, cmd: "echo acc=0.9 > out.log", expected_output: out.log}
"""
SANITY = """
    phases:
      - name: sanity
        milestone: M0
        jobs: [{id: smoke, run: R001, cmd: "echo try >> tries; exit 1"}]
      - name: main
        milestone: M1
        depends_on: sanity
        jobs: [{id: main, run: R002, cmd: "true"}]
"""


def hook(tmp: Path, name: str, body: str) -> str:
    script = tmp / f"{name}.sh"
    script.write_text("#!/bin/sh\nset -e\necho called >> \"$EB_PROJECT/$EB_PHASE.calls\"\n" + body)
    return f"sh {script}"


def result(status: str = "ok", findings: list | None = None) -> str:
    doc = json.dumps({"status": status, "findings": findings or []})
    return f"cat > \"$EB_OUT/result.json\" <<'EOF'\n{doc}\nEOF\n"


def with_config(p: Proj, tmp: Path, hooks: dict[str, str], extra: str = "") -> tuple[str, ...]:
    lines = ["defaults:", "  backend: local", "  hooks:", "    timeout_s: 5", "    heartbeat_s: 0.2"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in hooks.items()]
    config = tmp / "config.yaml"
    config.write_text("\n".join(lines) + "\n" + extra)
    return ("--config", str(config))


def calls(p: Proj, phase: str) -> int:
    f = p.path / f"{phase}.calls"
    return len(f.read_text().split()) if f.exists() else 0


def test_hook_past_its_timeout_is_killed_and_blocks_the_plan(project_factory, tmp_path: Path) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    cfg = with_config(p, tmp_path, {"implement": hook(tmp_path, "impl", "sleep 30 & sleep 31\n")})
    out = p.run(*cfg)
    assert out.returncode == 1
    assert "implement hook timeout" in out.stderr
    logs = list(p.path.glob("experiment_queue/*/logs/hook-implement-*.log"))
    assert logs and "heartbeat" in logs[0].read_text().lower()
    assert p.job_states() == {"main": "pending"}


def test_blocking_findings_twice_block_the_plan_on_review(project_factory, tmp_path: Path) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    finding = {"severity": "BLOCKING", "file": "train.py", "line": 3, "issue": "seed not set", "fix": "set it"}
    cfg = with_config(p, tmp_path, {"implement": hook(tmp_path, "impl", result()),
                                    "review": hook(tmp_path, "rev", result("ok", [finding]))})
    out = p.run(*cfg)
    assert out.returncode == 1
    assert "review: 1 blocking finding(s)" in out.stderr
    assert (calls(p, "implement"), calls(p, "review")) == (2, 2)
    review = (p.path / "refine-logs" / "EXPERIMENT_CODE_REVIEW.md").read_text()
    assert "seed not set" in review and "Round 2" in review
    assert p.job_states() == {"main": "pending"}


def test_a_crashing_reviewer_is_local_only_and_deploy_goes_on(project_factory, tmp_path: Path) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    cfg = with_config(p, tmp_path, {"review": hook(tmp_path, "rev", "exit 3\n")})
    out = p.run(*cfg)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[local-only]" in (p.path / "refine-logs" / "EXPERIMENT_CODE_REVIEW.md").read_text()
    assert p.job_states() == {"main": "succeeded"}


def test_failing_sanity_calls_debug_then_rescue_then_stops_after_three(project_factory, tmp_path: Path) -> None:
    p = project_factory(SANITY, [("R001", "M0", "MUST"), ("R002", "M1", "MUST")],
                        milestones=[("M0", "Sanity"), ("M1", "Main")])
    cfg = with_config(p, tmp_path, {"debug": hook(tmp_path, "dbg", "test -f \"$EB_CONTEXT_DIR/checklist.md\"\n" + result()),
                                    "rescue": hook(tmp_path, "rsc", result())})
    out = p.run(*cfg)
    assert out.returncode == 1
    assert (p.path / "tries").read_text().split() == ["try"] * 3
    assert (calls(p, "debug"), calls(p, "rescue")) == (1, 1)
    assert p.launches("smoke") == 3
    assert "after 3 attempt(s)" in out.stderr
    assert p.status_cell("R001") == "FAILED" and "exit 1" in p.tracker.read_text()
    assert p.job_states()["main"] in ("pending", "blocked")


def test_sanity_failure_without_hooks_stops_at_attempt_one(project_factory) -> None:
    p = project_factory(SANITY, [("R001", "M0", "MUST"), ("R002", "M1", "MUST")],
                        milestones=[("M0", "Sanity"), ("M1", "Main")])
    out = p.run()
    assert out.returncode == 1
    assert (p.path / "tries").read_text().split() == ["try"]
    assert "sanity failed" in out.stderr


def test_auto_deploy_false_waits_at_the_checkpoint_until_approved(project_factory) -> None:
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    first = p.run("auto_deploy: false")
    assert first.returncode == 1
    assert "waiting for approval" in first.stderr
    assert "checkpoint: M1" in first.stdout
    assert "**expbridge**: AWAITING_APPROVAL" in p.tracker.read_text()
    assert p.job_states() == {"main": "pending"}
    assert p.cli("approve", str(p.path)).returncode == 0
    assert "**expbridge**: APPROVED" in p.tracker.read_text()
    second = p.run("auto_deploy: false")
    assert second.returncode == 0, second.stdout + second.stderr
    assert p.job_states() == {"main": "succeeded"}


GATED = """
    phases:
      - name: base
        milestone: M1
        jobs: [{id: base, run: R001, cmd: "echo acc=0.50 > base.log", expected_output: base.log}]
      - name: main
        milestone: M2
        gate: "acc +50% over R001"
        jobs: [{id: main, run: R002, cmd: "echo acc=0.60 > main.log", expected_output: main.log}]
      - name: ablate
        milestone: M3
        jobs: [{id: ablate, run: R003, cmd: "true"}]
"""


def test_a_failed_decision_gate_blocks_until_approved(project_factory) -> None:
    p = project_factory(GATED, [("R001", "M1", "MUST"), ("R002", "M2", "MUST"), ("R003", "M3", "MUST")])
    first = p.run()
    assert first.returncode == 1
    assert "decision gate M2" in first.stderr
    assert p.job_states() == {"base": "succeeded", "main": "succeeded", "ablate": "pending"}
    assert p.cli("approve", str(p.path)).returncode == 0
    second = p.run()
    assert second.returncode == 0, second.stdout + second.stderr
    assert p.job_states()["ablate"] == "succeeded"


def test_a_failed_milestone_gets_one_rescue_round(project_factory, tmp_path: Path) -> None:
    manifest = """
        jobs: [{id: flaky, run: R001, milestone: M1, cmd: "if [ -f fixed ]; then true; else exit 2; fi"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    cfg = with_config(p, tmp_path, {"rescue": hook(tmp_path, "rsc", 'touch "$EB_PROJECT/fixed"\n' + result())})
    out = p.run(*cfg)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls(p, "rescue") == 1 and p.launches("flaky") == 2


def test_rescue_on_failure_false_blocks_at_once(project_factory, tmp_path: Path) -> None:
    manifest = """
        jobs: [{id: flaky, run: R001, milestone: M1, cmd: "exit 2"}]
    """
    p = project_factory(manifest, [("R001", "M1", "MUST")])
    cfg = with_config(p, tmp_path, {"rescue": hook(tmp_path, "rsc", result())})
    out = p.run(*cfg, "rescue_on_failure: false")
    assert out.returncode == 1 and calls(p, "rescue") == 0
    assert "milestone M1 failed" in out.stderr


ABLATE = """
    phases:
      - name: base
        milestone: M1
        jobs: [{id: base, run: R001, cmd: "echo acc=0.50 > base.log", expected_output: base.log}]
      - name: main
        milestone: M2
        jobs: [{id: main, run: R002, cmd: "echo acc=0.90 > main.log", expected_output: main.log, success: "acc +10% over R001"}]
"""
PLANNER = """cat > "$EB_OUT/rows.json" <<'JSON'
[{"name": "ablation-no-crosses", "what": "drop the cross term", "priority": 1}]
JSON
"""


def test_positive_main_result_calls_the_ablation_planner(project_factory, tmp_path: Path) -> None:
    p = project_factory(ABLATE, [("R001", "M1", "MUST"), ("R002", "M2", "MUST")],
                        milestones=[("M1", "Baseline"), ("M2", "Main method")])
    cfg = with_config(p, tmp_path, {"ablation_planner": hook(tmp_path, "abl", PLANNER + result())})
    out = p.run(*cfg)
    assert calls(p, "ablation_planner") == 1, out.stdout + out.stderr
    assert "ablation planning added 1 run(s): R003" in out.stdout
    assert "| R003 |" in p.tracker.read_text()
    assert list(p.path.glob("refine-logs/EXPERIMENT_PLAN_20*.md"))  # versioned before the append


def test_negative_main_result_skips_the_planner_with_a_note(project_factory, tmp_path: Path) -> None:
    p = project_factory(ABLATE.replace("+10%", "+90%"), [("R001", "M1", "MUST"), ("R002", "M2", "MUST")],
                        milestones=[("M1", "Baseline"), ("M2", "Main method")])
    cfg = with_config(p, tmp_path, {"ablation_planner": hook(tmp_path, "abl", PLANNER + result())})
    out = p.run(*cfg)
    assert calls(p, "ablation_planner") == 0
    assert "ablation planning skipped: the main result (M2) is negative" in out.stdout


def test_base_repo_is_cloned_before_implementing(project_factory, tmp_path: Path) -> None:
    import subprocess
    origin = tmp_path / "origin.git"
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True)
    (work / "model.py").write_text("BASE = 1\n")
    git = ["git", "-C", str(work), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "HEAD"], check=True)
    p = project_factory(ONE_JOB, [("R001", "M1", "MUST")])
    body = 'test -f "$EB_PROJECT/base_repo/model.py"\n' + result()
    cfg = with_config(p, tmp_path, {"implement": hook(tmp_path, "impl", body)}, extra=f"  base_repo: {origin}\n")
    out = p.run(*cfg)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (p.path / "base_repo" / "model.py").read_text() == "BASE = 1\n"


PROSE_GATE = GATED.replace('gate: "acc +50% over R001"', 'gate: "the curves look clearly better than the baseline"')


@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_a_prose_gate_goes_to_the_judge_hook(project_factory, tmp_path: Path, verdict: str) -> None:
    p = project_factory(PROSE_GATE, [("R001", "M1", "MUST"), ("R002", "M2", "MUST"), ("R003", "M3", "MUST")])
    body = (f'cat > "$EB_OUT/result.json" <<\'JSON\'\n{{"status": "ok", "verdict": "{verdict}", '
            '"reason": "judged by a script", "findings": []}\nJSON\n')
    cfg = with_config(p, tmp_path, {"judge": hook(tmp_path, "judge", body)})
    out = p.run(*cfg)
    assert calls(p, "judge") == 1
    if verdict == "pass":
        assert out.returncode == 0, out.stdout + out.stderr
        assert p.job_states()["ablate"] == "succeeded"
    else:
        assert out.returncode == 1 and "decision gate M2: judge: judged by a script" in out.stderr
        assert p.job_states()["ablate"] == "pending"
