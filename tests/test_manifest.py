"""The queue manifest reader on the ARIS documentation examples and our extensions."""
from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from handlers.diagnostics import Diagnostic, has_errors
from handlers.manifest import (IMPLICIT_PHASE, Manifest, all_jobs, load_manifest, output_globs,
                               parse_manifest, unmet_preconditions)

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
PROJECT = Path("/srv/proj")


def load(name: str) -> tuple[Manifest, list[Diagnostic]]:
    m, diags = load_manifest(FIXTURES / name, PROJECT)
    assert m is not None, diags
    return m, diags


def parse(text: str, project: Path = PROJECT) -> tuple[Manifest | None, list[Diagnostic]]:
    return parse_manifest(text, "EXPERIMENT_QUEUE.yaml", project)


def errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.severity == "error"]


def test_skill_job_manifest_keeps_every_key() -> None:
    m, diags = load("skill_jobs.yaml")
    assert not has_errors(diags)
    assert (m.project, m.cwd, m.conda, m.ssh) == ("my_grid_experiment", "/home/user/your_project",
                                                 "my_env", "gpu-server")
    assert m.conda_hook == 'eval "$(/custom/path/to/conda shell.bash hook)"'
    assert m.gpus == tuple(range(8)) and m.max_parallel == 8 and m.gpu_free_threshold_mib == 500
    assert (m.oom_retry.delay, m.oom_retry.max_attempts) == (120, 3)
    assert m.analyze_on_complete is True
    assert m.default_cmd is not None and m.default_cmd.startswith("python run_distill.py")
    assert [(p.type, p.path) for p in m.preconditions] == [
        ("checkpoint_exists", "checkpoints/transformer/teacher_L96_K500_N{N}.pt")]


def test_skill_top_level_jobs_render_args_onto_default_cmd() -> None:
    m, _ = load("skill_jobs.yaml")
    jobs = all_jobs(m)
    assert [j.id for j in jobs] == ["s200_N64_n50K", "s200_N128_n50K"]
    assert [p.name for p in m.phases] == [IMPLICIT_PHASE]
    assert jobs[0].cmd == ("python run_distill.py --backbone softmax --lam 0.5 --K 500 --L 96 --W 16 "
                           "--n_steps 30000 --batch_size 128 --lr 1e-4 --seed 200 --n_hidden 64 "
                           "--n_train_subset 50000 --subset_seed 2024")
    assert jobs[1].line == 27 and jobs[0].cwd == "/home/user/your_project"


def test_skill_precondition_placeholder_without_value_is_a_wildcard_with_a_warning() -> None:
    m, diags = load("skill_jobs.yaml")
    pre = all_jobs(m)[0].preconditions
    assert [(p.path, p.line) for p in pre] == [("checkpoints/transformer/teacher_L96_K500_N*.pt", 13)]
    warns = [d for d in diags if d.severity == "warning" and "{N}" in d.message]
    assert len(warns) == 1 and warns[0].line == 13  # once, not once per job


def test_skill_grid_example_expands_36_jobs_despite_its_invalid_flow_yaml() -> None:
    m, diags = load("skill_grid.yaml")
    jobs = all_jobs(m)
    assert len(jobs) == 36 and len({j.id for j in jobs}) == 36
    # itertools.product in key order: the last key varies fastest
    assert [j.id for j in jobs[:4]] == ["s42_N64_n50000", "s200_N64_n50000", "s201_N64_n50000",
                                        "s42_N64_n150000"]
    assert jobs[0].cmd == ("python run_distill.py --backbone softmax --seed 42 --n_hidden 64 "
                           "--n_train_subset 50000")
    assert not has_errors(diags)
    assert [d.line for d in diags if "not valid YAML" in d.message] == [10]


def test_skill_wave_chaining_example() -> None:
    m, diags = load("skill_wave_chaining.yaml")
    assert diags == []
    teachers, students = m.phases
    assert [j.id for j in teachers.jobs] == ["train_teachers_N384", "train_teachers_N512"]
    assert students.depends_on == ("train_teachers",)
    assert len(students.jobs) == 6 and all(j.depends_on == ("train_teachers",) for j in students.jobs)
    assert students.jobs[0].id == "distill_students_N384_seed42"
    assert students.jobs[0].expected_output == ("figures/distill_sw_N384_*_seed42.json",)
    assert teachers.jobs[0].expected_output == ("checkpoints/transformer/teacher_L96_K500_N384.pt",)
    assert teachers.jobs[0].cmd.endswith("--n_hidden 384 --gpu ${GPU}")  # ${GPU} is filled at launch
    assert m.cwd == str(PROJECT)


def test_readme_phases_relative_cwd_and_template_without_grid() -> None:
    m, diags = load("readme_phases.yaml")
    assert diags == []
    assert m.cwd == "/srv/proj/work" and m.conda == "base"
    assert (m.oom_retry.delay, m.oom_retry.max_attempts) == (60, 2)
    baseline, sweep = m.phases
    assert [j.id for j in baseline.jobs] == ["baseline"]  # ARIS: the phase name when no grid
    assert [j.id for j in sweep.jobs] == ["lr0.001_s1", "lr0.001_s2", "lr0.0001_s1", "lr0.0001_s2"]
    assert output_globs(sweep.jobs[0]) == ["/srv/proj/work/results/lr0.001_s1.json"]


def test_build_manifest_json_is_read_with_lines() -> None:
    m, diags = load("build_manifest.json")
    assert diags == []
    jobs = all_jobs(m)
    assert [(j.id, j.phase, j.line) for j in jobs] == [
        ("t_N384", "teachers", 13), ("t_N512", "teachers", 14), ("s_N384", "students", 21)]
    assert jobs[1].expected_output == ()  # null means absent
    assert m.phases[1].depends_on == ("teachers",) and m.gpus == (0, 1, 2, 3)


def test_extensions_run_est_hours_gate_success_milestone() -> None:
    m, diags = load("extensions.yaml")
    assert diags == []
    sanity, main = all_jobs(m)[0], all_jobs(m)[1:]
    assert (sanity.run, sanity.est_hours, sanity.milestone) == ("R001", 0.1, "M0")
    assert sanity.expected_output == ("out/sanity.json", "out/sanity.log")
    assert [(j.id, j.run, j.milestone) for j in main] == [("main_s1", "R101", "M1"),
                                                          ("main_s2", "R102", "M1")]
    assert all(j.est_hours == 2.5 and j.success == "acc >= 0.7" for j in main)
    assert main[0].gate == {"metric": "acc", "file": "out/main_s1.json", "op": ">=", "value": 0.7}
    assert m.phases[1].gate == main[0].gate and m.phases[1].milestone == "M1"
    assert sanity.gate is None


def test_models_are_frozen() -> None:
    m, _ = load("readme_phases.yaml")
    with pytest.raises(pydantic.ValidationError):
        m.phases[0].jobs[0].cmd = "rm -rf /"  # type: ignore[misc]


def test_load_missing_file_is_a_diagnostic_not_an_exception(tmp_path: Path) -> None:
    m, diags = load_manifest(tmp_path / "nope.yaml", tmp_path)
    assert m is None and diags[0].severity == "error" and "cannot read" in diags[0].message


def test_job_cmd_gets_args_appended_booleans_and_lists() -> None:
    m, diags = parse("jobs:\n  - id: a\n    cmd: python t.py\n"
                     "    args: {fp16: true, resume: false, tags: [x, 'y z'], note: null, lr: 0.5}\n")
    assert not has_errors(diags)
    assert all_jobs(m)[0].cmd == "python t.py --fp16 --tags x 'y z' --lr 0.5"


def test_conda_hook_already_an_eval_is_kept() -> None:
    hook = 'eval "$(/opt/c/bin/conda shell.bash hook)"'
    m, _ = parse(f"conda_hook: '{hook}'\njobs: [{{id: a, cmd: x}}]\n")
    assert m is not None and m.conda_hook == hook and m.conda is None


def test_cwd_with_ssh_is_a_remote_path() -> None:
    m, diags = parse("ssh: gpu1\ncwd: ~/exp\njobs: [{id: a, cmd: x, cwd: sub}]\n")
    assert m is not None and m.cwd == "~/exp" and all_jobs(m)[0].cwd == "~/exp/sub" and diags == []
    m, diags = parse("ssh: gpu1\ncwd: exp\njobs: [{id: a, cmd: x}]\n")
    assert m is not None and m.cwd == "~/exp" and diags == []  # ARIS: relative to the remote home
    m, diags = parse("ssh: gpu1\njobs: [{id: a, cmd: x}]\n")
    assert m is not None and m.cwd == "~" and [(d.line, d.severity) for d in diags] == [(1, "warning")]


def test_cwd_home_is_expanded_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/kim")
    m, _ = parse("cwd: ~/exp\njobs: [{id: a, cmd: x, cwd: ../other}]\n")
    assert m is not None and m.cwd == "/home/kim/exp" and all_jobs(m)[0].cwd == "/home/kim/other"


def test_top_level_jobs_and_phases_together() -> None:
    m, diags = parse("jobs: [{id: a, cmd: x}]\nphases:\n  - name: later\n    depends_on: main\n"
                     "    jobs: [{id: b, cmd: y}]\n")
    assert diags == [] and m is not None
    assert [(p.name, p.depends_on) for p in m.phases] == [("main", ()), ("later", ("main",))]


def test_gpus_accepts_a_comma_string_and_json_tabs() -> None:
    m, diags = parse('{\n\t"gpus": "0, 2",\n\t"jobs": [{"id": "a", "cmd": "x"}]\n}\n')
    assert diags == [] and m is not None and m.gpus == (0, 2)


def test_job_level_preconditions_and_placeholders_from_grid(tmp_path: Path) -> None:
    text = ("cwd: .\npreconditions:\n  - type: checkpoint_exists\n    path: ckpt/teacher_N{N}.pt\n"
            "phases:\n  - name: s\n    grid: {N: [1, 2]}\n    template:\n      cmd: x\n"
            "      preconditions:\n        - type: dir_exists\n          path: data\n")
    m, diags = parse(text, tmp_path)
    assert diags == [] and m is not None
    one, two = all_jobs(m)
    assert unmet_preconditions(one) == [
        f"checkpoint_exists: nothing matches {tmp_path}/ckpt/teacher_N1.pt (manifest line 3)",
        f"dir_exists: nothing matches {tmp_path}/data (manifest line 11)"]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "teacher_N1.pt").write_bytes(b"")
    (tmp_path / "data").mkdir()
    assert unmet_preconditions(one) == []
    assert len(unmet_preconditions(two)) == 1


def test_precondition_glob_bare_string_and_unknown_type(tmp_path: Path) -> None:
    text = ("preconditions:\n  - ckpt/*.pt\n  - {type: gpu_is_cool, path: x}\n"
            "jobs: [{id: a, cmd: x}]\n")
    m, diags = parse(text, tmp_path)
    assert m is not None and [(d.line, d.severity) for d in diags] == [(3, "warning")]
    reasons = unmet_preconditions(all_jobs(m)[0])
    assert len(reasons) == 2 and "gpu_is_cool" in reasons[1] and "cannot be checked" in reasons[1]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "t.pt").write_bytes(b"")
    assert len(unmet_preconditions(all_jobs(m)[0])) == 1


def test_est_hours_from_a_grid_variable() -> None:
    m, diags = parse("grid: {h: [1.5]}\ntemplate: {id: 'j${h}', cmd: x, est_hours: '${h}'}\n")
    assert diags == [] and m is not None and all_jobs(m)[0].est_hours == 1.5
