"""The hook runner against real processes: small scripts in tests/hooks/ stand in for the hooks."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.procs import proc_state
from handlers.hooks import HookResult, blocking_findings, parse_result, prepare_context, run_hook
from tests.plugins.common import wait_for

HOOKS = Path(__file__).resolve().parent / "hooks"


def dead(pid: int) -> bool:
    return proc_state(pid) in (None, "Z")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Path]]:
    project = tmp_path / "proj"
    (project / "refine-logs").mkdir(parents=True)
    paths = {"project": project, "context_dir": tmp_path / "ctx", "out_dir": tmp_path / "out",
             "log_path": tmp_path / "logs" / "hook.log"}
    yield paths
    for pidfile in paths["out_dir"].glob("*.pid"):  # never leave a hook's processes behind
        pid = int(pidfile.read_text())
        if not dead(pid):
            os.kill(pid, signal.SIGKILL)


def run(env: dict[str, Path], command: str | list[str] | None, *, timeout_s: float = 30,
        heartbeat_s: float = 5, extra_env: dict[str, str] | None = None, **kw: object) -> HookResult:
    return run_hook(command, project=env["project"], phase="review", milestone="M1",
                    context_dir=env["context_dir"], out_dir=env["out_dir"], log_path=env["log_path"],
                    timeout_s=timeout_s, heartbeat_s=heartbeat_s, extra_env=extra_env or {}, **kw)


def reviewer(findings: list[dict] | None = None, status: str = "ok") -> tuple[list[str], dict[str, str]]:
    return [sys.executable, str(HOOKS / "review.py")], {"HOOK_FINDINGS": json.dumps(findings or []),
                                                         "HOOK_STATUS": status}


# -- the contract: environment, context, result.json -----------------------------------------

def test_environment_context_and_result(env: dict[str, Path]) -> None:
    prepare_context(env["context_dir"], env["project"], "review", plan_excerpt="## M1\nrun R001\n")
    argv, extra = reviewer()
    result = run(env, argv, extra_env=extra)
    assert (result.status, result.reason) == ("ok", "")
    assert result.data["env"] == {
        "EB_PROJECT": str(env["project"].resolve()), "EB_PHASE": "review", "EB_MILESTONE": "M1",
        "EB_CONTEXT_DIR": str(env["context_dir"].resolve()), "EB_OUT": str(env["out_dir"].resolve()),
    }
    assert result.data["cwd"] == str(env["project"].resolve())
    assert result.data["stdin_empty"] is True
    assert {"checklist.md", "plan_excerpt.md", "code_paths.txt", "index.json"} <= set(result.data["context"])
    assert "reviewing review" in env["log_path"].read_text()
    assert result.out_dir == env["out_dir"] and result.log_path == env["log_path"]


def test_findings_are_parsed_and_blocking_ones_picked(env: dict[str, Path]) -> None:
    findings = [
        {"severity": "blocking", "file": "train.py", "line": 12, "issue": "no seed", "fix": "add --seed"},
        {"severity": "CRITICAL", "file": "eval.py", "line": "40", "issue": "compares to teacher", "fix": "labels"},
        {"severity": "MINOR", "file": "train.py", "line": None, "issue": "naming", "fix": "rename"},
    ]
    argv, extra = reviewer(findings)
    result = run(env, argv, extra_env=extra)
    assert result.status == "ok"
    assert [(f["file"], f["line"]) for f in result.findings] == [("train.py", 12), ("eval.py", 40), ("train.py", None)]
    assert [f["issue"] for f in blocking_findings(result)] == ["no seed", "compares to teacher"]


def test_hook_reported_failure(env: dict[str, Path]) -> None:
    argv, extra = reviewer(status="FAILED")
    result = run(env, argv, extra_env=extra)
    assert result.status == "failed" and "FAILED" in result.reason


def test_a_string_command_runs_through_the_shell(env: dict[str, Path]) -> None:
    script = HOOKS / "review.py"
    result = run(env, f'"{sys.executable}" "{script}" && echo shell-ran', extra_env=reviewer()[1])
    assert result.status == "ok"
    assert "shell-ran" in env["log_path"].read_text()


def test_stale_result_is_not_taken_for_this_run(env: dict[str, Path]) -> None:
    env["out_dir"].mkdir(parents=True)
    (env["out_dir"] / "result.json").write_text('{"status": "ok"}')
    result = run(env, ["sh", str(HOOKS / "bad_output.sh"), "none"])
    assert result.status == "bad_output"


# -- failures ----------------------------------------------------------------------------------

def test_missing_hook(env: dict[str, Path]) -> None:
    assert run(env, None).status == "missing"
    assert run(env, []).status == "missing"
    result = run(env, [str(env["project"] / "no-such-hook")])
    assert result.status == "missing" and "no-such-hook" in result.reason


def test_crashing_hook(env: dict[str, Path]) -> None:
    result = run(env, ["sh", str(HOOKS / "crash.sh")])
    assert result.status == "crashed"
    assert "exited with code 3" in result.reason and "reviewer exploded" in result.reason


@pytest.mark.parametrize(("mode", "says"), [
    ("none", "wrote no"),
    ("garbage", "not valid JSON (line 1"),
    ("list", "expected a JSON object"),
    ("no-status", "no 'status'"),
    ("findings-not-list", "'findings' must be a list"),
    ("no-severity", "findings[0] has no 'severity'"),
])
def test_bad_output(env: dict[str, Path], mode: str, says: str) -> None:
    result = run(env, ["sh", str(HOOKS / "bad_output.sh"), mode])
    assert result.status == "bad_output"
    assert says in result.reason and '"status"' in result.reason  # says what was expected
    assert result.data == {} and result.findings == []


@pytest.mark.slow
@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "needs-sigkill"])
def test_timeout_kills_the_whole_process_group(env: dict[str, Path], ignore_term: bool) -> None:
    extra = {"HOOK_IGNORE_TERM": "1" if ignore_term else "0"}
    result = run(env, ["sh", str(HOOKS / "hang.sh")], timeout_s=1.5, heartbeat_s=0.2,
                 extra_env=extra, kill_grace_s=0.5)
    assert result.status == "timeout"
    assert "timed out after 1.5s" in result.reason
    hook = int((env["out_dir"] / "hook.pid").read_text())
    grandchild = int((env["out_dir"] / "grandchild.pid").read_text())
    wait_for(lambda: dead(hook) and dead(grandchild), 5, what="the hook's group to be gone")
    assert "timed out" in env["log_path"].read_text()


@pytest.mark.slow
def test_heartbeat_lines_appear(env: dict[str, Path]) -> None:
    result = run(env, ["sh", str(HOOKS / "slow.sh")], heartbeat_s=0.2,
                 extra_env={"HOOK_LOG": str(env["log_path"])})
    assert result.status == "ok", result.reason
    beats = [line for line in env["log_path"].read_text().splitlines() if "heartbeat" in line]
    assert len(beats) >= 2 and all("review hook still running" in b for b in beats)


@pytest.mark.slow
def test_leftover_processes_are_killed(env: dict[str, Path]) -> None:
    result = run(env, ["sh", str(HOOKS / "leftover.sh")], kill_grace_s=0.5)
    assert result.status == "ok"
    leftover = int((env["out_dir"] / "leftover.pid").read_text())
    wait_for(lambda: dead(leftover), 5, what="the leftover sleep to be killed")


@pytest.mark.slow
def test_stop_event_kills_the_hook(env: dict[str, Path]) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    try:
        result = run(env, ["sh", str(HOOKS / "hang.sh")], stop=stop, kill_grace_s=0.5)
    finally:
        timer.cancel()
    assert result.status == "crashed" and "shutting down" in result.reason
    hook = int((env["out_dir"] / "hook.pid").read_text())
    wait_for(lambda: dead(hook), 5, what="the stopped hook to be gone")


# -- pure parsing --------------------------------------------------------------------------------

def test_parse_result_keeps_extra_keys_and_tolerates_odd_lines() -> None:
    status, data, findings = parse_result(json.dumps({
        "status": "ok", "rows": [{"run": "R009"}],
        "findings": [{"severity": "Major", "file": "a.py", "line": "12-14", "issue": "i", "fix": "f", "tag": 1}],
    }))
    assert status == "ok" and data["rows"] == [{"run": "R009"}]
    assert findings == [{"severity": "Major", "file": "a.py", "line": None, "issue": "i", "fix": "f", "tag": 1}]


def test_blocking_findings_ignores_other_severities(tmp_path: Path) -> None:
    result = HookResult("ok", {}, [{"severity": " critical "}, {"severity": "major"}, {"severity": "Blocking"}],
                        tmp_path, tmp_path / "log", "", 0.0)
    assert blocking_findings(result) == [{"severity": " critical "}, {"severity": "Blocking"}]
