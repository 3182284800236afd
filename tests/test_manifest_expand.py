"""Pure manifest helpers, plus fuzzing of the whole reader: no input may raise."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.base import SAFE_ID
from handlers import manifest_expand as mx
from handlers.manifest import Manifest, all_jobs, parse_manifest


def test_substitute_is_recursive_typed_and_keeps_unknown_placeholders() -> None:
    value = {"cmd": "run --n ${N} --gpu ${GPU}", "args": {"n": "${N}", "l": ["${N}", "x${N}"]}}
    assert mx.substitute(value, {"N": 64}) == {
        "cmd": "run --n 64 --gpu ${GPU}", "args": {"n": 64, "l": [64, "x64"]}}
    assert mx.substitute("${a}${b}", {"a": True, "b": [1]}) == "true[1]"
    assert mx.substitute(3, {"a": 1}) == 3


def test_fill_braces_accepts_both_styles_and_wildcards_the_unknown() -> None:
    assert mx.fill_braces("ck/N{N}_${seed}_{x}.pt", {"N": 8, "seed": "a*b"}) == ("ck/N8_a[*]b_*.pt", ["x"])


def test_grid_combos_follow_key_order_and_default_ids_are_safe() -> None:
    combos = mx.grid_combos({"b": [1, 2], "a": ["x"]})
    assert combos == [{"b": 1, "a": "x"}, {"b": 2, "a": "x"}]
    assert mx.grid_combos({}) == [{}]
    ident = mx.default_job_id("train teachers", {"lr": 1e-4, "opt": "adam/w"})  # spaces, slashes
    assert ident == "train-teachers_lr0.0001_optadam-w" and SAFE_ID.match(ident)
    assert mx.uniquify(["a", "a", "b"]) == ["a_1", "a_2", "b_3"] and mx.uniquify(["a", "b"]) == ["a", "b"]


def test_render_args_and_join_cmd() -> None:
    args = {"seed": 1, "fp16": True, "off": False, "none": None, "tags": ["a b", 2], "cfg": {"k": 1}}
    assert mx.render_args(args) == "--seed 1 --fp16 --tags 'a b' 2 --cfg '{\"k\":1}'"
    assert mx.join_cmd("python t.py\n--x 1\n", {"y": 2}) == "python t.py --x 1 --y 2"
    assert mx.join_cmd("python t.py", None) == "python t.py"


def test_wrap_conda_hook() -> None:
    assert mx.wrap_conda_hook("/opt/c/bin/conda") == 'eval "$(/opt/c/bin/conda shell.bash hook)"'
    assert mx.wrap_conda_hook("/my conda/bin/conda") == "eval \"$('/my conda/bin/conda' shell.bash hook)\""
    assert mx.wrap_conda_hook(' eval "$(x shell.bash hook)"') == 'eval "$(x shell.bash hook)"'
    assert mx.wrap_conda_hook("~/miniconda3/bin/conda") == 'eval "$(~/miniconda3/bin/conda shell.bash hook)"'
    assert mx.wrap_conda_hook("~/my env/conda") == "eval \"$(~/'my env/conda' shell.bash hook)\""


def test_wrapped_conda_hook_runs_in_bash(tmp_path: Path) -> None:
    conda = tmp_path / "bin dir" / "conda"  # a fake conda whose hook defines a shell function
    conda.parent.mkdir()
    conda.write_text("#!/bin/sh\necho 'conda() { echo activated \"$2\"; }'\n")
    conda.chmod(0o755)
    script = f"{mx.wrap_conda_hook(str(conda))} && conda activate my_env"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "activated my_env", out.stderr


def test_resolve_conda_hook_follows_the_aris_order() -> None:
    none: set[str] = set()
    assert mx.resolve_conda_hook("/m/conda", {"ARIS_CONDA_HOOK": "/e/conda"}, none.__contains__,
                                 lambda _: None) == 'eval "$(/m/conda shell.bash hook)"'
    assert mx.resolve_conda_hook(None, {"ARIS_CONDA_HOOK": "/e/conda"}, none.__contains__,
                                 lambda _: None) == 'eval "$(/e/conda shell.bash hook)"'
    found = {"/opt/miniforge3/bin/conda", "/usr/local/anaconda3/bin/conda"}
    assert mx.resolve_conda_hook(None, {}, found.__contains__, lambda _: "/usr/bin/conda") == \
        'eval "$(/opt/miniforge3/bin/conda shell.bash hook)"'
    assert mx.resolve_conda_hook("", {}, none.__contains__, lambda _: "/usr/bin/conda") == \
        'eval "$(/usr/bin/conda shell.bash hook)"'
    assert mx.resolve_conda_hook(None, {}, none.__contains__, lambda _: None) == \
        'eval "$(conda shell.bash hook)"'


@pytest.mark.parametrize("deps,cycle", [
    ({"a": [], "b": ["a"]}, None),
    ({"a": ["a"]}, ["a", "a"]),
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
    ({"x": ["missing"], "a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
    ({"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}, None),  # a diamond is not a cycle
])
def test_find_cycle(deps: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert mx.find_cycle(deps) == cycle


def test_quote_flow_placeholders_only_touches_bare_flow_values() -> None:
    text = "args: {seed: ${seed}, n: ${N}}\nl: [${a}, 2]\ncmd: run ${N}\nq: {s: \"${x}\"}\n"
    assert mx.quote_flow_placeholders(text) == (
        'args: {seed: "${seed}", n: "${N}"}\nl: ["${a}", 2]\ncmd: run ${N}\nq: {s: "${x}"}\n')
    assert mx.find_flow_placeholders(text) == [1, 2]


# ------------------------------------------------------------------ fuzz: the reader never raises

YAMLISH = st.lists(st.sampled_from(list("abN01 :-[]{},'\"#&*!|>?\n\t$%@`~.") + [
    "jobs:", "phases:", "grid:", "template:", "id: ", "cmd: ", "depends_on: ", "  - ", "${N}",
    "{N}", "args: ", "gpus: ", "oom_retry:", "preconditions:", "\n  ", "name: ", "- "]),
    max_size=80).map("".join)
KEYS = st.sampled_from(["project", "cwd", "conda", "conda_hook", "ssh", "default_cmd", "gpus",
                        "max_parallel", "gpu_free_threshold_mib", "oom_retry", "preconditions", "jobs",
                        "grid", "template", "phases", "analyze_on_complete", "name", "depends_on", "id",
                        "cmd", "args", "expected_output", "output_check", "run", "est_hours", "gate",
                        "success", "milestone", "delay", "max_attempts", "type", "path", "N", "zz"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                    st.sampled_from(["${N}", "a", "main", "x/{N}", "~/w", "../..", "", "${GPU}"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(KEYS, inner, max_size=5), max_leaves=25)


JOB = st.fixed_dictionaries({"id": st.one_of(SCALARS, st.sampled_from(["a", "b", "s${N}"]))}, optional={
    "cmd": SCALARS, "args": st.dictionaries(KEYS, VALUES, max_size=3), "expected_output": VALUES,
    "output_check": VALUES, "est_hours": SCALARS, "run": SCALARS, "preconditions": VALUES, "cwd": SCALARS})
PHASE = st.fixed_dictionaries({"name": st.one_of(SCALARS, st.sampled_from(["p", "q", "main"]))}, optional={
    "depends_on": st.one_of(SCALARS, st.lists(st.sampled_from(["p", "q", "main", "z"]))),
    "jobs": st.lists(JOB, max_size=3), "template": JOB, "gate": VALUES, "milestone": SCALARS,
    "grid": st.dictionaries(st.sampled_from(["N", "seed"]), VALUES, max_size=2)})
MANIFEST = st.fixed_dictionaries({}, optional={
    "phases": st.lists(PHASE, max_size=3), "jobs": st.lists(JOB, max_size=3), "default_cmd": SCALARS,
    "ssh": SCALARS, "cwd": SCALARS, "preconditions": VALUES, "grid": VALUES, "template": JOB})


def _check_result(m: Manifest | None, diags: list) -> None:
    assert all("internal error" not in d.message for d in diags), diags
    assert all(d.line >= 0 and d.severity in ("error", "warning") for d in diags)
    if m is not None:
        for job in all_jobs(m):
            assert isinstance(job.cmd, str) and job.cwd


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_fuzz_yamlish_text_never_raises(text: str) -> None:
    _check_result(*parse_manifest(text, "Q.yaml", Path("/p")))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_fuzz_structured_manifests_never_raise(data: dict) -> None:
    _check_result(*parse_manifest(json.dumps(data), "Q.json", Path("/p")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MANIFEST)
def test_fuzz_manifest_shaped_input_never_raises(data: dict) -> None:
    _check_result(*parse_manifest(json.dumps(data), "Q.json", Path("/p")))


def test_alias_bomb_is_refused_not_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    m, diags = parse_manifest("\n".join(lines + ["jobs: [{id: j, cmd: x, args: {b: *a6}}]"]) + "\n",
                              "Q.yaml", Path("/p"))
    assert m is None and diags and diags[0].severity == "error"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    m, diags = parse_manifest("a: " + "[" * 500 + "]" * 500 + "\n", "Q.yaml", Path("/p"))
    assert m is None and diags[0].severity == "error" and "not valid" in diags[0].message
