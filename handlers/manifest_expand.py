"""Pure helpers for the queue manifest: `${var}` substitution, grid expansion, args rendering,
conda hook wrapping and phase-graph checks. No YAML, no I/O (except resolve_conda_hook's
injected probes), so every rule here is testable on plain values.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
from typing import Any, Callable, Mapping, Sequence

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Precondition paths use `{N}` (ARIS SKILL) as well as `${N}`; both name a job variable.
BRACE_VAR = re.compile(r"\$?\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ARIS SKILL's grid example writes `{seed: ${seed}}`, which is not valid YAML (a `{` inside a flow
# collection). These find such bare placeholders so the reader can quote them and carry on.
FLOW_PLACEHOLDER = re.compile(r"(?<=[\[{,:])(\s*)(\$\{[A-Za-z_][A-Za-z0-9_]*\})(?=\s*[,}\]])")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

# ARIS §3.11, in its order; `~` is left for the caller's probe to expand (it may be a remote home).
CONDA_PATHS = (
    "~/anaconda3/bin/conda",
    "~/miniconda3/bin/conda",
    "~/miniforge3/bin/conda",
    "/opt/anaconda3/bin/conda",
    "/opt/miniconda3/bin/conda",
    "/opt/miniforge3/bin/conda",
    "/usr/local/anaconda3/bin/conda",
    "/opt/homebrew/anaconda3/bin/conda",
)


def substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    """Replace `${var}` in strings, recursively through dicts and lists.

    Unknown placeholders (`${GPU}`, filled in at launch) are left alone. A string that is exactly
    one placeholder takes the variable's own value, so `seed: ${seed}` stays an int.
    """
    if isinstance(value, str):
        whole = VAR.fullmatch(value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return VAR.sub(lambda m: text_of(variables.get(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    return value


def fill_braces(pattern: str, variables: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Fill `{var}`/`${var}` in a precondition path; an unknown one becomes the glob `*`.

    Returns the filled pattern and the names that had no value (the caller warns about them).
    """
    missing: list[str] = []

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in variables:
            return glob_escape(text_of(variables[name]))
        missing.append(name)
        return "*"

    return BRACE_VAR.sub(one, pattern), missing


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def grid_combos(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product in key order, as ARIS build_manifest expands it."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def default_job_id(phase: str, combo: Mapping[str, Any]) -> str:
    """An id for a grid job whose template has none: `<phase>_<var><value>_...`, safe charset."""
    parts = [safe_id_part(phase)] + [safe_id_part(f"{k}{text_of(v)}") for k, v in combo.items()]
    return "_".join(p for p in parts if p) or "job"


def safe_id_part(text: str) -> str:
    return _UNSAFE_ID_CHARS.sub("-", text).strip("-.")


def uniquify(ids: list[str]) -> list[str]:
    """Default ids can collide after sanitising (`a/b` and `a.b`); number the repeats."""
    if len(set(ids)) == len(ids):
        return ids
    return [f"{i}_{n}" for n, i in enumerate(ids, 1)]


def render_args(args: Mapping[str, Any]) -> str:
    """`{seed: 1, fp16: true, tags: [a, b]}` -> `--seed 1 --fp16 --tags a b` (shell-quoted)."""
    words: list[str] = []
    for key, value in args.items():
        flag = f"--{key}"
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words.append(flag)
            words.extend(shlex.quote(text_of(v)) for v in value)
        else:
            words.extend([flag, shlex.quote(text_of(value))])
    return " ".join(words)


def join_cmd(base: str, args: Mapping[str, Any] | None) -> str:
    rendered = render_args(args or {})
    base = " ".join(base.split("\n")).strip()  # a folded `>` block keeps a trailing newline
    return f"{base} {rendered}".strip() if rendered else base


def wrap_conda_hook(hook: str) -> str:
    """ARIS wrap(): a bare conda path P becomes `eval "$(P shell.bash hook)"`."""
    hook = hook.strip()
    if hook.startswith("eval"):
        return hook
    # Quote the path, but leave a leading `~/` bare so the shell still expands it.
    home, rest = ("~/", hook[2:]) if hook.startswith("~/") else ("", hook)
    return f'eval "$({home}{shlex.quote(rest)} shell.bash hook)"'


def resolve_conda_hook(configured: str | None, environ: Mapping[str, str],
                       exists: Callable[[str], bool], which: Callable[[str], str | None]) -> str:
    """ARIS §3.11 order: manifest, $ARIS_CONDA_HOOK, the well-known paths, `command -v`, bare.

    `exists`/`which` probe the host the job runs on (local or remote), so this stays pure.
    """
    for candidate in (configured, environ.get("ARIS_CONDA_HOOK")):
        if candidate and candidate.strip():
            return wrap_conda_hook(candidate)
    for path in CONDA_PATHS:
        if exists(path):
            return wrap_conda_hook(path)
    found = which("conda")
    return wrap_conda_hook(found) if found else 'eval "$(conda shell.bash hook)"'


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle as a path `[a, b, a]`, or None. Unknown names are ignored here."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for start in deps:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            children = [c for c in deps.get(node, ()) if c in deps]
            if i < len(children):
                stack.append((node, i + 1))
                child = children[i]
                if state.get(child) == 1:
                    return path[path.index(child):] + [child]
                if not state.get(child):
                    stack.append((child, 0))
            else:
                state[node] = 2
                path.pop()
    return None


def find_flow_placeholders(text: str) -> list[int]:
    """1-based lines where a bare `${var}` sits inside a flow collection."""
    return [n for n, line in enumerate(text.splitlines(), 1) if FLOW_PLACEHOLDER.search(line)]


def quote_flow_placeholders(text: str) -> str:
    return FLOW_PLACEHOLDER.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', text)


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
