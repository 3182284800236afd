"""ARIS keys in a project's CLAUDE.md / AGENTS.md (ARIS_SPEC §2.12, F3, F5)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aris_keys import parse_ssh_command, scan_text
from daemon.config import Config, ProjectSettings, resolve_settings
from daemon.errors import ConfigError

# The shape the ARIS run-experiment skill tells users to paste, one backend chosen.
REMOTE = """\
# My project

Some prose about the research. Note: nothing here is a setting.

## Remote Server
- gpu: remote               # use pre-configured SSH server
- SSH: `ssh my-gpu-server`
- GPU: 4x A100 (80GB each)
- Conda: `eval "$(/opt/conda/bin/conda shell.bash hook)" && conda activate research`
- Code dir: `/home/user/experiments/`
- code_sync: git            # default. Or set to "git" for git push/pull workflow
- wandb: true               # set to "true" to auto-add W&B logging
- wandb_project: my-project # W&B project name (required if wandb: true)
- wandb_entity: my-team     # W&B team/user (optional, uses default if omitted)
- vast_api_key: sk-should-never-be-read
- WANDB_API_KEY = abcdef123456

## Pipeline Status
- language: zh
"""


def settings_for(folder: Path, text: str, name: str = "CLAUDE.md", **kw: object) -> ProjectSettings:
    (folder / name).write_text(text, encoding="utf-8")
    return resolve_settings(kw.pop("config", None), folder, environ={}, **kw)  # type: ignore[arg-type]


def test_aris_remote_template(tmp_path: Path) -> None:
    s = settings_for(tmp_path, REMOTE)
    assert s.backend == "ssh"
    assert [h.model_dump(exclude_none=True) for h in s.ssh.hosts] == [{"alias": "my-gpu-server"}]
    assert s.conda == "research"
    assert s.conda_hook == 'eval "$(/opt/conda/bin/conda shell.bash hook)"'
    assert s.code_dir == "/home/user/experiments/" and s.ssh.code_sync == "git"
    assert (s.wandb.enabled, s.wandb.project, s.wandb.entity) == (True, "my-project", "my-team")
    assert s.language == "zh"


def test_secrets_never_come_from_project_files(tmp_path: Path) -> None:
    dumped = settings_for(tmp_path, REMOTE).model_dump_json()
    assert "sk-should-never-be-read" not in dumped and "abcdef123456" not in dumped


def test_agents_md_alone_is_read(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "## Modal\n- gpu: modal\n- modal_gpu: H100, A100-80GB\n"
                               "- modal_timeout: 2h\n- modal_volume: results\n- modal_app: exp\n"
                               "- modal_secrets: wandb-secret, hf\n- image: my/image:1\n",
                     name="AGENTS.md")
    assert s.backend == "modal"
    assert (s.modal.gpu, s.modal.gpu_fallbacks, s.modal.timeout_s) == ("H100", ["A100-80GB"], 7200)
    assert (s.modal.volume, s.modal.app, s.modal.secrets) == ("results", "exp", ["wandb-secret", "hf"])
    assert s.modal.image == "my/image:1" and s.vast.image is None


def test_claude_md_wins_over_agents_md(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("- gpu: vast\n- auto_destroy: false\n- code_sync: git\n")
    s = settings_for(tmp_path, "- gpu: local\n- code_sync: rsync\n")
    assert (s.backend, s.ssh.code_sync) == ("local", "rsync")
    assert s.vast.auto_destroy is False  # a key only AGENTS.md sets still counts


def test_vast_keys_and_budget(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "## Vast.ai\n- gpu: vast\n- auto_destroy: false\n"
                               "- max_budget: $5.00\n- image: pytorch/pytorch:2.4\n")
    assert (s.backend, s.vast.auto_destroy, s.budget.usd_max) == ("vast", False, 5.0)
    assert s.vast.image == "pytorch/pytorch:2.4"


@pytest.mark.parametrize("heading, backend", [("## Vast.ai", "vast"), ("## Modal", "modal")])
def test_a_vast_or_modal_section_alone_names_the_backend(tmp_path: Path, heading: str,
                                                         backend: str) -> None:
    assert settings_for(tmp_path, f"{heading}\n- max_budget: 3\n").backend == backend


def test_bridge_constants_in_many_spellings(tmp_path: Path) -> None:
    s = settings_for(tmp_path, """\
## Bridge
- **AUTO_DEPLOY**: false
* `CODE_REVIEW` = false
- SANITY_FIRST: **false**
1. Max parallel runs: 2
> COMPACT = true
- **language:** en
- BASE_REPO: https://github.com/org/base
| Key | Value |
|-----|-------|
| RESCUE_ON_FAILURE | false |
""")
    assert (s.auto_deploy, s.code_review, s.sanity_first) == (False, False, False)
    assert (s.max_parallel_runs, s.compact, s.rescue_on_failure) == (2, True, False)
    assert s.base_repo == "https://github.com/org/base" and s.language == "en"


def test_code_fences_and_html_comments_are_not_settings(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "Example:\n```markdown\n- gpu: vast\n- AUTO_DEPLOY: false\n```\n"
                               "<!-- gpu: modal\n- COMPACT: true -->\n- gpu: local <!-- not modal -->\n")
    assert (s.backend, s.auto_deploy, s.compact) == ("local", True, False)


def test_gpu_hardware_description_is_not_a_backend(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "## Remote Server\n- GPU: 8x RTX 4090 (24GB)\n- GPUs: 4x A100\n")
    assert s.backend is None


def test_bad_value_for_an_aris_key_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, "# P\n\n- gpu: tpu\n")
    assert err.value.file == str(tmp_path / "CLAUDE.md") and err.value.line == 3
    assert "expected local, remote" in str(err.value)
    with pytest.raises(ConfigError, match=r"CLAUDE.md:2: wandb: expected true or false"):
        settings_for(tmp_path, "- gpu: local\n- wandb: sometimes\n")
    with pytest.raises(ConfigError, match=r"CLAUDE.md:1: .*ssh.code_sync"):
        settings_for(tmp_path, "- code_sync: ftp\n")


def test_several_backends_is_an_error_unless_a_higher_layer_decides(tmp_path: Path) -> None:
    text = "## Remote Server\n- gpu: remote\n- Conda: `conda activate a`\n\n" \
           "## Local Environment\n- gpu: local\n- Conda env: `b` (Python 3.10)\n"
    with pytest.raises(ConfigError, match=r"CLAUDE.md:2: .*ssh \(line 2\), local \(line 6\)"):
        settings_for(tmp_path, text)
    remote = settings_for(tmp_path, text, overrides={"backend": "ssh"})
    local = settings_for(tmp_path, text, config=Config(defaults=ProjectSettings(backend="local")))
    # The other keys follow the section of the backend in use.
    assert (remote.backend, remote.conda) == ("ssh", "a")
    assert (local.backend, local.conda) == ("local", "b")


def test_keys_follow_the_section_of_the_backend_the_file_names(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "## Local Environment\n- Conda env: `b`\n\n"
                               "## Remote Server\n- gpu: remote\n- Conda: `conda activate a`\n")
    assert (s.backend, s.conda) == ("ssh", "a")


def test_ssh_command_lines() -> None:
    assert parse_ssh_command("my-gpu-server") == {"alias": "my-gpu-server"}
    assert parse_ssh_command("ssh -A -p 2222 -i ~/.ssh/k alice@10.0.0.5") == {
        "alias": "10.0.0.5", "hostname": "10.0.0.5", "user": "alice", "port": 2222,
        "key_file": "~/.ssh/k"}
    assert parse_ssh_command("ssh://root@ssh4.vast.ai:31234")["port"] == 31234
    for bad in ("ssh", "key-based auth only", "ssh 'a;b'", "ssh -p"):
        with pytest.raises(ValueError):
            parse_ssh_command(bad)


def test_descriptive_lines_that_do_not_parse_are_skipped(tmp_path: Path) -> None:
    s = settings_for(tmp_path, "- gpu: remote\n- SSH: key-based auth only\n"
                               "- Conda: Python 3.10 + PyTorch\n- SSH: `ssh user@host`\n")
    assert [h.alias for h in s.ssh.hosts] == ["host"] and s.conda is None


def test_other_real_world_spellings() -> None:
    items = scan_text("## GPU Configuration\n- gpu: remote\n- ssh_alias: your-server\n"
                      "- conda_env: research\n- code_dir: ~/your-project\n"
                      "- Activate: `source /opt/miniconda3/bin/activate ml`\n", "CLAUDE.md")
    found = {i.path: i.value for i in items}
    assert found[("backend",)] == "ssh" and found[("code_dir",)] == "~/your-project"
    assert found[("ssh", "hosts")] == [{"alias": "your-server"}]
    assert [i.value for i in items if i.path == ("conda",)] == ["research", "ml"]
    assert found[("conda_hook",)] == "source /opt/miniconda3/bin/activate"
    assert [i.line for i in items] == [2, 3, 4, 5, 6, 6]


def test_no_project_files_and_no_backend(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("- gpu: local\n")  # only CLAUDE.md/AGENTS.md count
    assert resolve_settings(None, tmp_path, environ={}).backend is None


_LINES = st.sampled_from([
    "## Remote Server", "## Modal", "```", "<!--", "-->", "- gpu: local", "- gpu: ???",
    "- SSH: `ssh -p`", "- Conda: `&&`", "| gpu | |", "- modal_gpu: ,", "- max_budget: $",
    "**AUTO_DEPLOY**:", "- image:", "- modal_timeout: 1e9h", "- ssh: 'unclosed",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_LINES, st.text(st.characters(blacklist_characters="\r\n"), max_size=40)),
                max_size=30))
def test_any_text_gives_items_or_a_located_config_error(lines: list[str]) -> None:
    try:
        items = scan_text("\n".join(lines), "CLAUDE.md")
    except ConfigError as err:
        assert err.file == "CLAUDE.md" and err.line is not None and 1 <= err.line <= len(lines)
    else:
        assert all(1 <= i.line <= max(len(lines), 1) for i in items)
