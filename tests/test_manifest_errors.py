"""One test per ARIS reference bug the reader fixes (§3.13 items 4, 8, 9; F36-F39), and the
errors a person gets for a wrong manifest: file, line and what was expected."""
from __future__ import annotations

from pathlib import Path

import pytest

from handlers.diagnostics import Diagnostic, has_errors
from handlers.manifest import Manifest, all_jobs, parse_manifest

FILE = "refine-logs/EXPERIMENT_QUEUE.yaml"


def parse(text: str) -> tuple[Manifest | None, list[Diagnostic]]:
    return parse_manifest(text, FILE, Path("/srv/proj"))


def where(diags: list[Diagnostic], severity: str = "error") -> list[int]:
    return [d.line for d in diags if d.severity == severity]


# ------------------------------------------------------------------ reference bugs

def test_bug_template_id_missing_with_grid_gets_unique_default_ids() -> None:
    # build_manifest.py: KeyError 'id' on the SKILL's own Wave Chaining example
    m, diags = parse("phases:\n  - name: t\n    grid: {N: [1, 2], opt: [a/b, a.b]}\n"
                     "    template:\n      cmd: run ${N} ${opt}\n")
    assert not has_errors(diags), diags
    ids = [j.id for j in all_jobs(m)]
    assert len(ids) == 4 and len(set(ids)) == 4  # `a/b` and `a.b` sanitise alike; still unique


def test_bug_bare_string_depends_on_is_one_phase_name() -> None:
    # queue_manager.py iterated "teacher" character by character: never ready
    m, diags = parse("phases:\n  - name: teacher\n    jobs: [{id: t, cmd: x}]\n"
                     "  - name: student\n    depends_on: teacher\n    jobs: [{id: s, cmd: y}]\n")
    assert diags == [] and m is not None
    assert m.phases[1].depends_on == ("teacher",) and all_jobs(m)[1].depends_on == ("teacher",)


def test_bug_top_level_jobs_are_not_ignored() -> None:
    # queue_manager.py loaded 0 jobs and printed "All jobs done"
    m, diags = parse("default_cmd: python r.py\njobs:\n  - id: a\n    args: {seed: 1}\n")
    assert diags == [] and m is not None
    assert [(j.id, j.cmd) for j in all_jobs(m)] == [("a", "python r.py --seed 1")]


def test_bug_output_check_is_not_dropped() -> None:
    m, diags = parse("grid: {N: [8]}\ntemplate: {id: 'n${N}', cmd: x, output_check: 'o/N${N}.pt'}\n")
    assert diags == [] and all_jobs(m)[0].expected_output == ("o/N8.pt",)


def test_bug_output_check_and_expected_output_together_are_merged() -> None:
    m, _ = parse("jobs: [{id: a, cmd: x, expected_output: [p, q], output_check: q}]\n")
    assert all_jobs(m)[0].expected_output == ("p", "q")


def test_bug_conda_hook_threshold_ssh_preconditions_are_not_dropped() -> None:
    m, diags = parse("conda_hook: /opt/c/bin/conda\ngpu_free_threshold_mib: 2000\nssh: box\ncwd: /w\n"
                     "preconditions: [{type: checkpoint_exists, path: /ck/t.pt}]\n"
                     "jobs: [{id: a, cmd: x}]\n")
    assert diags == [] and m is not None
    assert m.conda_hook == 'eval "$(/opt/c/bin/conda shell.bash hook)"'
    assert (m.gpu_free_threshold_mib, m.ssh) == (2000, "box")
    assert [p.path for p in all_jobs(m)[0].preconditions] == ["/ck/t.pt"]


def test_bug_args_are_rendered_not_ignored() -> None:
    m, _ = parse("default_cmd: python r.py\ngrid: {s: [1]}\n"
                 "template: {id: 'j${s}', args: {seed: '${s}', fast: true}}\n")
    assert all_jobs(m)[0].cmd == "python r.py --seed 1 --fast"


# ------------------------------------------------------------------ graph and ids

def test_unknown_depends_on_phase_is_an_error_with_line() -> None:
    _, diags = parse("phases:\n  - name: a\n    jobs: [{id: j, cmd: x}]\n"
                     "  - name: b\n    depends_on: [a, teachers]\n    jobs: [{id: k, cmd: x}]\n")
    (err,) = [d for d in diags if d.severity == "error"]
    assert err.line == 4 and "'teachers'" in err.message and err.file == FILE


@pytest.mark.parametrize("deps", [("b", "a"), ("a", "zz_unused")])
def test_dependency_cycle_is_an_error(deps: tuple[str, str]) -> None:
    text = (f"phases:\n  - name: a\n    depends_on: {deps[0]}\n    jobs: [{{id: j, cmd: x}}]\n"
            f"  - name: b\n    depends_on: {deps[1]}\n    jobs: [{{id: k, cmd: x}}]\n")
    _, diags = parse(text)
    cycles = [d for d in diags if "cycle" in d.message]
    assert len(cycles) == 1 and cycles[0].line == 2 and cycles[0].severity == "error"
    assert ("a -> b -> a" in cycles[0].message) if deps[0] == "b" else ("a -> a" in cycles[0].message)


def test_duplicate_ids_across_phases_are_an_error_with_both_lines() -> None:
    _, diags = parse("phases:\n  - name: a\n    jobs: [{id: j, cmd: x}]\n"
                     "  - name: b\n    jobs:\n      - id: j\n        cmd: y\n")
    (err,) = diags
    assert (err.line, err.severity) == (6, "error") and "line 3" in err.message


def test_template_id_missing_a_grid_variable_is_an_error() -> None:
    _, diags = parse("grid: {a: [1, 2], b: [3]}\ntemplate:\n  id: 'j${b}'\n  cmd: x\n")
    assert where(diags) == [2] and "every grid variable" in diags[0].message


def test_duplicate_phase_names_are_an_error() -> None:
    _, diags = parse("jobs: [{id: a, cmd: x}]\nphases:\n  - name: main\n    jobs: [{id: b, cmd: x}]\n")
    assert where(diags) == [3] and "implicit phase" in diags[0].message


@pytest.mark.parametrize("job_id", ["a b", "x;rm -rf ~", "../up", ".hidden", "-flag", "a" * 129,
                                    "s${unknown}"])
def test_unsafe_job_id_is_an_error_with_line(job_id: str) -> None:
    _, diags = parse(f"project: p\njobs:\n  - id: '{job_id}'\n    cmd: x\n")
    assert where(diags) == [3] and "not usable" in diags[0].message


# ------------------------------------------------------------------ type errors and warnings

@pytest.mark.parametrize("text,line,fragment", [
    ("max_parallel: four\n", 1, "`max_parallel` must be an integer >= 1, got 'four'"),
    ("max_parallel: 0\n", 1, "integer >= 1"),
    ("gpus: [0, a]\n", 1, "a list of GPU indices"),
    ("gpus: [-1]\n", 1, "a list of GPU indices"),
    ("gpu_free_threshold_mib: lots\n", 1, "integer >= 0"),
    ("oom_retry: 3\n", 1, "`oom_retry` must be a mapping"),
    ("oom_retry:\n  delay: soon\n", 2, "`oom_retry.delay` must be a number >= 0"),
    ("oom_retry:\n  max_attempts: 1.5\n", 2, "`oom_retry.max_attempts`"),
    ("analyze_on_complete: sometimes\n", 1, "true or false"),
    ("conda: [a]\n", 1, "`conda` must be text"),
    ("phases: {a: 1}\n", 1, "`phases` must be a list"),
    ("phases:\n  - just a name\n", 2, "expected a mapping with name"),
    ("phases:\n  - jobs: [{id: q, cmd: x}]\n", 2, "has no `name`"),
    ("phases:\n  - name: p\n    grid: {a: [1]}\n", 3, "has a `grid` but no `template`"),
    ("jobs:\n  - id: a\n    cmd: x\n    est_hours: lots\n", 4, "est_hours must be a number"),
    ("jobs:\n  - id: a\n    cmd: x\n    est_hours: -2\n", 4, "est_hours must be a number"),
    ("jobs:\n  - id: a\n    cmd: x\n    args: [1]\n", 4, "`main.jobs[0].args` must be a mapping"),
    ("jobs:\n  - id: a\n    cmd: x\n    expected_output: {a: 1}\n", 4, "a path/glob or a list"),
    ("jobs:\n  - id: a\n", 2, "no `cmd` and the manifest has no `default_cmd`"),
    ("jobs:\n  - cmd: x\n", 2, "needs an `id`"),
    ("jobs:\n  - id: a\n    cmd: x\n  - 7\n", 4, "expected a mapping with id and cmd"),
    ("preconditions:\n  - {type: checkpoint_exists}\n", 2, "expected a `path`"),
    ("preconditions:\n  - 3\n", 2, "expected {type: checkpoint_exists"),
])
def test_type_errors_name_the_line_and_what_was_expected(text: str, line: int, fragment: str) -> None:
    if "jobs" not in text:
        text += "\njobs: [{id: filler, cmd: x}]\n"
    m, diags = parse(text)
    errs = [d for d in diags if d.severity == "error"]
    assert any(d.line == line and fragment in d.message for d in errs), errs
    assert all(str(d).startswith(f"{FILE}:{d.line}: error: ") for d in errs)


def test_unknown_keys_are_warnings_with_lines_not_errors() -> None:
    m, diags = parse("project: p\nnotes: remember to check W&B\nphases:\n  - name: a\n    owner: kim\n"
                     "    jobs:\n      - id: j\n        cmd: x\n        comment: fast one\n"
                     "oom_retry: {delay: 5, backoff: exp}\n")
    assert m is not None and len(all_jobs(m)) == 1
    assert [(d.line, d.severity) for d in diags] == [(2, "warning"), (5, "warning"), (9, "warning"),
                                                     (10, "warning")]
    assert "'comment'" in diags[2].message and "known keys are" in diags[2].message


def test_misspelt_key_gets_a_suggestion() -> None:
    _, diags = parse("phases:\n  - name: b\n    depend_on: a\n    jobs: [{id: j, cmd: x}]\n")
    assert [(d.line, d.severity) for d in diags] == [(3, "warning")]
    assert "did you mean 'depends_on'?" in diags[0].message


def test_yaml_syntax_error_has_the_line() -> None:
    m, diags = parse("project: p\njobs: [\n  {id: a, cmd: x},\n  - id: b\n")
    assert m is None and where(diags) == [4] and "not valid YAML" in diags[0].message


def test_duplicate_yaml_keys_are_an_error() -> None:
    m, diags = parse("project: p\nmax_parallel: 2\nmax_parallel: 4\njobs: [{id: a, cmd: x}]\n")
    assert m is None and where(diags) == [3] and "duplicate" in diags[0].message


@pytest.mark.parametrize("text,message", [("", "empty"), ("# only a comment\n", "empty"),
                                          ("- a\n- b\n", "expected a mapping"),
                                          ("just text\n", "expected a mapping")])
def test_nothing_usable_gives_none(text: str, message: str) -> None:
    m, diags = parse(text)
    assert m is None and len(diags) == 1 and message in diags[0].message and diags[0].line == 1


def test_a_manifest_without_jobs_is_an_error() -> None:
    m, diags = parse("project: p\ngpus: [0]\n")
    assert m is not None and m.gpus == (0,) and where(diags) == [1] and "no jobs" in diags[0].message


def test_empty_grid_variable_warns() -> None:
    _, diags = parse("grid:\n  seed: []\ntemplate: {cmd: x}\n")
    assert where(diags, "warning") == [1, 2] and where(diags) == [1]  # the phase, the var; no jobs


def test_a_phase_without_jobs_warns_and_null_top_level_jobs_add_no_phase() -> None:
    m, diags = parse("jobs: null\nphases:\n  - name: a\n    jobs: [{id: j, cmd: x}]\n  - name: b\n")
    assert m is not None and [p.name for p in m.phases] == ["a", "b"]
    assert [(d.line, d.severity) for d in diags] == [(5, "warning")] and "no jobs" in diags[0].message
