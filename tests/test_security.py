"""Security (DESIGN §9): run ids, job ids, args, paths, host names and tracker cells carrying shell
metacharacters never execute anything (a canary file must never appear), and secrets never reach
the logs, the state database or the exported JSON.

Every injected payload runs `touch "$EB_CANARY"`; the variable holds an absolute path in the
test's temp dir, so a payload executed from any directory by any shell creates that one file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.common import REPO
from tests.plugins.projects import Proj, cli_env, make_project

pytestmark = pytest.mark.slow
PAYLOADS = ['$(touch "$EB_CANARY")', '`touch "$EB_CANARY"`', '; touch "$EB_CANARY";', "' ; touch \"$EB_CANARY\" ; '",
            '" ; touch "$EB_CANARY" ; "', '| touch "$EB_CANARY"', '&& touch "$EB_CANARY"', '\n touch "$EB_CANARY"']
SECRETS = {"VAST_API_KEY": "vk-SECRET-7f3a9c1e55", "WANDB_API_KEY": "wb-SECRET-0c4d2b8e91",
           "EXPBRIDGE_API_TOKEN": "eb-SECRET-93ab17d2c4", "HF_TOKEN": "hf_SECRET4e1d9a7b3c"}


def env_for(state: Path, canary: Path, **extra: str) -> dict[str, str]:
    return {**cli_env(state), "EB_CANARY": str(canary), **extra}


def run(p: Proj, env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "run", str(p.path), "--state-dir", str(p.state), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def test_args_and_outputs_are_data_not_code(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    args = ", ".join(f"a{i}: {yaml_str(v)}" for i, v in enumerate(PAYLOADS))
    manifest = (f"cwd: .\njobs:\n  - id: argjob\n    run: R001\n    cmd: \"printf '%s\\\\n' > got.txt\"\n"
                f"    args: {{{args}}}\n    expected_output: {yaml_str('got.txt')}\n"
                f"  - id: outjob\n    run: R001\n    cmd: 'true'\n    expected_output: {yaml_str(PAYLOADS[0])}\n")
    p = make_project(tmp_path, manifest, [("R001", "M1", "MUST")])
    result = run(p, env_for(p.state, canary))
    got = (p.path / "got.txt").read_text()
    print(f"\nargs: {len(PAYLOADS)} payloads passed as args arrived literally: "
          f"{all(v.strip() in got for v in PAYLOADS)}; canary {canary.exists()}")
    assert not canary.exists(), "an argument was executed"
    for payload in PAYLOADS:
        assert payload.strip() in got, f"argument altered: {payload!r} not in {got!r}"
    assert p.job_states()["outjob"] == "failed", result.stdout + result.stderr  # no such output, so not DONE


@pytest.mark.parametrize("payload", PAYLOADS[:4])
def test_job_and_run_ids_with_metacharacters_are_refused(tmp_path: Path, payload: str) -> None:
    canary = tmp_path / "canary"
    manifest = (f"cwd: .\njobs:\n  - {{id: {yaml_str('j' + payload)}, run: R001, cmd: 'true'}}\n"
                f"  - {{id: ok, run: {yaml_str('R' + payload)}, cmd: 'true'}}\n")
    p = make_project(tmp_path, manifest, [("R001", "M1", "MUST")])
    tracker = p.tracker.read_text() + f"| R{payload.replace('|', '&#124;').replace(chr(10), ' ')} | M1 | x | MUST | TODO | |\n"
    p.tracker.write_text(tracker)
    result = run(p, env_for(p.state, canary), timeout=60)
    print(f"\nid payload {payload!r}: exit {result.returncode}; canary {canary.exists()}")
    assert not canary.exists(), "an id was executed"
    assert result.returncode != 0, "an unsafe job id was accepted"
    assert "EXPERIMENT_QUEUE.yaml:" in result.stdout + result.stderr + _status(p), "the error names the file and line"


def test_project_path_and_tracker_cells_with_metacharacters(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    root = tmp_path / "x $(touch \"$EB_CANARY\") `touch \"$EB_CANARY\"` ; ' \" & |"
    manifest = "cwd: .\njobs:\n  - {id: j1, run: R001, cmd: 'pwd > where.txt'}\n  - {id: j2, run: R002, cmd: 'true'}\n"
    p = make_project(root, manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    text = p.tracker.read_text()
    text = text.replace("| R001 | M1 | test | MUST | TODO | |", "| R001 | M1 | $(touch \"$EB_CANARY\") | MUST | TODO | `touch \"$EB_CANARY\"` |")
    text = text.replace("| R002 | M1 | test | MUST | TODO | |", "| R002 | M1 | ; touch \"$EB_CANARY\"; | MUST | TODO | ' ; touch \"$EB_CANARY\" |")
    p.tracker.write_text(text)
    result = run(p, env_for(p.state, canary))
    print(f"\npath and cells with metacharacters: exit {result.returncode}; canary {canary.exists()}")
    assert not canary.exists(), "a path or a cell was executed"
    assert result.returncode == 0, result.stdout + result.stderr
    assert (p.path / "where.txt").read_text().strip() == str(p.path.resolve())
    assert '$(touch "$EB_CANARY")' in p.tracker.read_text(), "the person's cell text was kept"
    assert p.status_cell("R001") == "DONE" and p.status_cell("R002") == "DONE"


@pytest.mark.parametrize("host", ['h$(touch "$EB_CANARY")', 'h;touch "$EB_CANARY"', '-oProxyCommand=touch "$EB_CANARY"',
                                  'h`touch "$EB_CANARY"`'])
def test_host_names_with_metacharacters_never_execute(tmp_path: Path, host: str) -> None:
    canary = tmp_path / "canary"
    p = make_project(tmp_path, "cwd: .\njobs:\n  - {id: j1, run: R001, cmd: 'true'}\n", [("R001", "M1", "MUST")])
    result = run(p, env_for(p.state, canary), "--backend", "ssh", "--hosts", host, timeout=60)
    print(f"\nhost {host!r}: exit {result.returncode}; canary {canary.exists()}")
    assert not canary.exists(), "a host name was executed"
    assert result.returncode != 0


def test_a_bad_host_alias_is_a_clear_error(tmp_path: Path) -> None:
    p = make_project(tmp_path, "cwd: .\njobs:\n  - {id: j1, run: R001, cmd: 'true'}\n", [("R001", "M1", "MUST")])
    result = run(p, env_for(p.state, tmp_path / "canary"), "--backend", "ssh", "--hosts", "h;x", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--hosts" in result.stderr


def _status(p: Proj) -> str:
    out = p.cli("status", "--state-dir", str(p.state), "--json")
    return out.stdout + out.stderr


def test_secrets_never_reach_logs_state_or_exported_json(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    # j1 prints secret-named key=values and JSON metrics, as a careless training script might:
    # metric collection must not carry them into the tracker, results or queue_state.json
    talk = ('echo "acc=0.91 hf_token=$HF_TOKEN api_key: $VAST_API_KEY"; '
            'printf \'{"acc": 0.9, "api_key": "%s"}\\n\' "$WANDB_API_KEY" > metrics.json')
    manifest = (f"cwd: .\njobs:\n  - {{id: j1, run: R001, cmd: {yaml_str(talk)}}}\n"
                "  - {id: j2, run: R002, cmd: 'echo \"auth failed: $EXPBRIDGE_API_TOKEN\" >&2; exit 3'}\n")
    p = make_project(tmp_path, manifest, [("R001", "M1", "MUST"), ("R002", "M1", "MUST")])
    webhook_pw = "whk-SECRET-5d1c7e"
    config = tmp_path / "config.yaml"
    config.write_text(f"log_level: debug\ndefaults:\n  backend: local\n  notify:\n    webhook: https://bot:{webhook_pw}@127.0.0.1:9/hook\n"
                      f"projects:\n  - path: {p.path}\n")
    env = env_for(p.state, canary, **SECRETS)
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "run", str(p.path), "--state-dir", str(p.state),
                             "--config", str(config)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=90)
    exported = {"status --json": _status(p), "run stdout/stderr": result.stdout + result.stderr}
    files = [p.state / "state.db", p.state / "state.db-wal", *p.path.glob("experiment_queue/*/*"),
             *p.path.glob("refine-logs/*"), *p.path.glob("*.md")]
    for f in files:
        if f.is_file() and f.name != "metrics.json":  # the job's own file: its author's business
            exported[str(f.relative_to(tmp_path))] = f.read_bytes().decode("utf-8", "replace")
    leaks = [(where, name) for where, text in exported.items()
             for name, value in [*SECRETS.items(), ("webhook password", webhook_pw)] if value in text]
    print(f"\nsecrets: checked {len(exported)} outputs ({', '.join(sorted(exported))[:300]}...) for "
          f"{len(SECRETS) + 1} secret values: {len(leaks)} leaks; {exported['run stdout/stderr'].count('[redacted]')} redactions in the log")
    assert p.job_states() == {"j1": "succeeded", "j2": "failed"}, result.stdout + result.stderr
    assert any(k.endswith("queue_state.json") for k in exported), "queue_state.json was not written"
    assert not leaks, f"secrets leaked: {leaks}"
