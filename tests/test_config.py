"""The config file (errors with file:line), the state directory, and the precedence of sources."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import (Config, ProjectEntry, ProjectSettings, default_state_dir, find_config,
                           load_config, parse_override, resolve_settings)
from daemon.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder


# ---- loading and its errors ---------------------------------------------------------------------

def test_load_reads_values_and_keeps_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", """
        log_level: DEBUG
        defaults:
          backend: remote
          ssh:
            session: tmux
            hosts: [{alias: gpu1, gpus: [0, 1]}]
          slurm: {gres: 2}
        projects:
          - path: proj
            auto_deploy: false
    """))
    assert cfg.log_level == "debug"
    assert cfg.defaults.backend == "ssh"  # ARIS calls the SSH backend `remote`
    assert cfg.defaults.ssh.session == "tmux" and cfg.defaults.ssh.hosts[0].gpus == [0, 1]
    assert cfg.defaults.ssh.code_sync == "rsync" and cfg.defaults.retry.oom.delay == 120
    assert cfg.defaults.slurm.gres == "2"
    assert cfg.project_dirs() == [(tmp_path / "proj").resolve()]  # relative to the file
    assert cfg.source == (tmp_path / "c.yaml").resolve()


def test_no_file_and_empty_file_give_defaults(tmp_path: Path) -> None:
    assert load_config(None) == Config()
    assert load_config(write(tmp_path / "empty.yaml", "# nothing yet\n")).model_dump() \
        == Config().model_dump()


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        log_level: info
        defaults:
          ssh:
            sesion: tmux
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path) and err.value.line == 4
    assert f"{path}:4:" in str(err.value)
    assert "defaults.ssh.sesion" in str(err.value) and "did you mean 'session'" in str(err.value)


def test_unknown_key_in_second_project_entry(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        projects:
          - path: a
          - path: b
            max_paralel_runs: 2
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.line == 4 and "projects.1.max_paralel_runs" in str(err.value)
    assert "max_parallel_runs" in str(err.value)


def test_bad_type_names_the_line_and_the_value(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        defaults:
          max_parallel_runs: 4
          retry:
            oom:
              max_attempts: lots
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.line == 5
    assert "defaults.retry.oom.max_attempts" in str(err.value) and "'lots'" in str(err.value)


def test_bad_literal_and_every_error_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        log_format: fancy
        defaults:
          ssh:
            session: byobu
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.line == 1 and "'auto', 'json' or 'console'" in str(err.value)
    assert f"{path}:4: defaults.ssh.session" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(tmp_path / "nope.yaml")
    assert err.value.file == str(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, line", [
    ("defaults:\n  backend: [ssh\n", 3),  # unclosed flow sequence: found at end of input
    ("log_level: info\nlog_level: debug\n", 2),  # duplicate key
    ("defaults:\n\tbackend: ssh\n", 2),  # tab indentation
])
def test_bad_yaml_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert err.value.line == line


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping") as err:
        load_config(write(tmp_path / "c.yaml", "- backend: ssh\n"))
    assert err.value.line == 1


def test_project_listed_twice_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", f"""
        projects:
          - path: proj
          - path: {tmp_path}/proj/
    """)
    with pytest.raises(ConfigError, match=r"projects\[1\] names the same folder") as err:
        load_config(path)
    assert err.value.line == 3


def test_unsafe_host_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", """
        defaults:
          ssh:
            hosts:
              - alias: "gpu1; rm -rf ~"
    """)
    with pytest.raises(ConfigError, match="alias") as err:
        load_config(path)
    assert err.value.line == 4


def test_unknown_notify_event_and_true_base_repo_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown event 'run_finished'"):
        load_config(write(tmp_path / "a.yaml", "defaults:\n  notify:\n    events: [run_finished]\n"))
    with pytest.raises(ConfigError, match="git URL"):
        load_config(write(tmp_path / "b.yaml", "defaults:\n  base_repo: true\n"))


# ---- where state goes -------------------------------------------------------------------------

def test_state_dir_precedence(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home")}
    assert default_state_dir(None, env) == tmp_path / "home/.local/state/expbridge"
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    assert default_state_dir(None, env) == tmp_path / "xdg/expbridge"
    env["STATE_DIRECTORY"] = "/var/lib/expbridge"
    assert default_state_dir(None, env) == Path("/var/lib/expbridge")
    env["EXPBRIDGE_STATE_DIR"] = str(tmp_path / "env")
    assert default_state_dir(Config(), env) == tmp_path / "env"
    cfg = load_config(write(tmp_path / "etc/c.yaml", "state_dir: state\n"))
    assert default_state_dir(cfg, env) == (tmp_path / "etc/state").resolve()


def test_find_config(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    found = find_config(env)
    assert found is None or found == Path("/etc/expbridge/config.yaml")
    user = write(tmp_path / "cfg/expbridge/config.yaml", "log_level: info\n")
    assert find_config(env) == user
    assert find_config({**env, "EXPBRIDGE_CONFIG": "/x/y.yaml"}) == Path("/x/y.yaml")


# ---- precedence: each layer beats the one below -------------------------------------------------

def test_builtin_defaults_are_the_aris_constants(project: Path) -> None:
    s = resolve_settings(None, project, environ={})
    assert (s.code_review, s.auto_deploy, s.sanity_first, s.max_parallel_runs) == (True, True, True, 4)
    assert (s.base_repo, s.compact, s.rescue_on_failure) == (False, False, True)
    assert s.backend is None  # no source names one: the core blocks with "needs input"


def test_claude_md_beats_builtin_defaults(project: Path) -> None:
    write(project / "CLAUDE.md", "- gpu: local\n- AUTO_DEPLOY = false\n- code_sync: git\n")
    s = resolve_settings(None, project, environ={})
    assert (s.backend, s.auto_deploy, s.ssh.code_sync) == ("local", False, "git")


def test_config_defaults_beat_claude_md(project: Path) -> None:
    write(project / "CLAUDE.md", "- gpu: local\n- code_sync: git\n- wandb: true\n")
    cfg = Config(defaults=ProjectSettings.model_validate({"backend": "slurm",
                                                          "ssh": {"code_sync": "none"}}))
    s = resolve_settings(cfg, project, environ={})
    assert (s.backend, s.ssh.code_sync) == ("slurm", "none")
    assert s.wandb.enabled is True  # a key the config does not set still comes from CLAUDE.md


def test_project_entry_beats_config_defaults(project: Path, tmp_path: Path) -> None:
    cfg = Config(defaults=ProjectSettings(max_parallel_runs=2, backend="local"),
                 projects=[ProjectEntry(path=str(project), max_parallel_runs=3)])
    s = resolve_settings(cfg, project, environ={})
    assert (s.max_parallel_runs, s.backend) == (3, "local")
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_settings(cfg, other, environ={}).max_parallel_runs == 2


def test_environment_beats_project_entry(project: Path) -> None:
    cfg = Config(projects=[ProjectEntry.model_validate(
        {"path": str(project), "backend": "ssh", "ssh": {"session": "screen", "code_sync": "git"}})])
    env = {"EXPBRIDGE_BACKEND": "local", "EXPBRIDGE_SSH__SESSION": "tmux",
           "EXPBRIDGE_STATE_DIR": "/not/a/setting", "PATH": "/bin"}
    s = resolve_settings(cfg, project, environ=env)
    assert (s.backend, s.ssh.session, s.ssh.code_sync) == ("local", "tmux", "git")


def test_overrides_beat_environment(project: Path) -> None:
    env = {"EXPBRIDGE_AUTO_DEPLOY": "false", "EXPBRIDGE_MAX_PARALLEL_RUNS": "2"}
    s = resolve_settings(None, project, {"Auto Deploy": "yes"}, environ=env)
    assert (s.auto_deploy, s.max_parallel_runs) == (True, 2)


def test_example_config_copied_as_is_does_not_hide_claude_md(project: Path) -> None:
    write(project / "CLAUDE.md", "- gpu: modal\n- CODE_REVIEW: false\n- wandb: true\n"
                                 "- code_sync: git\n- modal_timeout: 600\n")
    cfg = load_config(Path(__file__).resolve().parents[1] / "config.example.yaml")
    s = resolve_settings(cfg, project, environ={})
    assert (s.backend, s.code_review, s.wandb.enabled) == ("modal", False, True)
    assert (s.ssh.code_sync, s.modal.timeout_s) == ("git", 600)


def test_null_in_a_higher_layer_does_not_erase_a_lower_one(project: Path, tmp_path: Path) -> None:
    write(project / "CLAUDE.md", "- Conda: `conda activate research`\n")
    cfg = load_config(write(tmp_path / "c.yaml", "defaults:\n  conda: null\n  ssh:\n"))
    assert resolve_settings(cfg, project, environ={}).conda == "research"


# ---- environment variables ----------------------------------------------------------------------

def test_env_values_are_coerced_to_the_field_type(project: Path) -> None:
    env = {"EXPBRIDGE_GPUS": "0,2", "EXPBRIDGE_BASE_REPO": "no", "EXPBRIDGE_RETRY__OOM__DELAY": "30",
           "EXPBRIDGE_HOOKS__REVIEW": "reviewer --strict", "EXPBRIDGE_MODAL__SECRETS": "[a, b]",
           "EXPBRIDGE_CONDA": "null"}
    s = resolve_settings(None, project, environ=env)
    assert s.gpus == [0, 2] and s.base_repo is False and s.conda is None
    assert (s.retry.oom.delay, s.retry.oom.max_attempts) == (30, 3)  # the rest of the policy stays
    assert s.hooks.review == "reviewer --strict" and s.modal.secrets == ["a", "b"]


def test_unrelated_env_names_are_left_alone(project: Path) -> None:
    env = {"EXPBRIDGE_UPDATE_GOLDEN": "1", "EXPBRIDGE_CONFIG": "/etc/x.yaml",
           "EXPBRIDGE_LOG_LEVEL": "debug"}
    assert resolve_settings(None, project, environ=env) == ProjectSettings()


def test_env_aris_key_names_are_understood(project: Path) -> None:
    s = resolve_settings(None, project, environ={"EXPBRIDGE_GPU": "remote",
                                                 "EXPBRIDGE_MAX_BUDGET": "$12.5"})
    assert (s.backend, s.budget.usd_max) == ("ssh", 12.5)


@pytest.mark.parametrize("name, value, expected", [
    ("EXPBRIDGE_SSH__SESSION", "byobu", "EXPBRIDGE_SSH__SESSION: ssh.session"),
    ("EXPBRIDGE_MAX_PARALLEL_RUNS", "many", "EXPBRIDGE_MAX_PARALLEL_RUNS: max_parallel_runs"),
    ("EXPBRIDGE_AUTO_DEPLY", "false", "unknown key 'auto_deply'; did you mean 'auto_deploy'"),
    ("EXPBRIDGE_GPU", "tpu", "EXPBRIDGE_GPU: expected local, remote"),
])
def test_env_errors_name_the_variable(project: Path, name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_settings(None, project, environ={name: value})
    assert expected in str(err.value)


# ---- command-line overrides (F2) ----------------------------------------------------------------

@pytest.mark.parametrize("text, pair", [
    ("auto_deploy: false", ("auto_deploy", "false")),
    ("AUTO_DEPLOY: false", ("auto_deploy", "false")),
    ("base repo: https://github.com/org/project", ("base_repo", "https://github.com/org/project")),
    ("  Max-Parallel-Runs = 2 ", ("max_parallel_runs", "2")),
    ("ssh.session: 'tmux'", ("ssh.session", "tmux")),
])
def test_parse_override_normalises_key(text: str, pair: tuple[str, str]) -> None:
    assert parse_override(text) == pair


@pytest.mark.parametrize("text", ["auto_deploy", "auto_deploy:", ": true", "", "1abc: x"])
def test_parse_override_refuses_non_pairs(text: str) -> None:
    with pytest.raises(ConfigError, match="expected 'key: value'"):
        parse_override(text)


def test_overrides_in_every_accepted_form(project: Path) -> None:
    as_map = resolve_settings(None, project, {"base repo": "https://x/r", "COMPACT": "yes"}, {})
    as_list = resolve_settings(None, project, ["base repo: https://x/r", "COMPACT: yes"], {})
    as_aris = resolve_settings(None, project, "— compact: true, base repo: https://x/r", {})
    for s in (as_map, as_list, as_aris):
        assert (s.base_repo, s.compact) == ("https://x/r", True)


def test_overrides_use_aris_key_names(project: Path) -> None:
    s = resolve_settings(None, project, ["gpu: vast", "wandb: true", "batch: queue",
                                         "language: cn", "retry.lost.max_attempts: 5"], {})
    assert (s.backend, s.wandb.enabled, s.batch, s.language) == ("vast", True, "queue", "zh")
    assert (s.retry.lost.max_attempts, s.retry.lost.delay) == (5, 10)


@pytest.mark.parametrize("text, expected", [
    ("auto_deploy: maybe", "override 'auto_deploy: maybe': auto_deploy"),
    ("ssh.sesion: tmux", "did you mean 'session'"),
    ("max_parallel_runs: 0", "greater than or equal to 1"),
    ("retry: {oom: [1, 2", "not a valid YAML value"),
])
def test_override_errors_name_the_override(project: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_settings(None, project, [text], {})
    assert expected in str(err.value)


_YAML_BITS = st.sampled_from(["defaults:", "  ssh:", "    session: tmux", "projects:", "  - path: a",
                              "  - {path: b, gpus: [0, x]}", "log_level: 3", "watch: [1", "!!str",
                              "&a", "*a", "<<: *a", "? x", "- ", "\t", ":", "'", "\"", "#", "{}"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_YAML_BITS, st.text(max_size=20)), max_size=12))
def test_any_file_loads_or_gives_a_located_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                        lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as err:
        assert err.file == str(path)
