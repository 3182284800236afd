"""ARIS keys: settings written the ARIS way, in a project's CLAUDE.md/AGENTS.md and in overrides.

ARIS keeps a project's backend and environment as prose bullets that an agent reads (ARIS_SPEC
§2.12, F3), and takes per-run overrides as `key: value` pairs in any case, spaces for underscores
(F2). This module turns both into (settings path, value) pairs; daemon.config validates and
layers them. Only the keys in `_KEYS` are read, so an API key or token written in CLAUDE.md is
never picked up.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from daemon.errors import ConfigError

# Read in this order, later wins per key: the mainline CLAUDE.md over the Codex AGENTS.md.
PROJECT_FILES = ("AGENTS.md", "CLAUDE.md")

Path_ = tuple[str, ...]
Pairs = list[tuple[Path_, object]]


@dataclass(frozen=True)
class Item:
    """One setting found in a project file: where it goes, its value, and where it was written."""

    path: Path_
    value: object
    file: str
    line: int
    sections: tuple[str, ...] = ()  # the headings above the line, outermost first
    implied: bool = False  # a backend implied by a `## Vast.ai` / `## Modal` heading (ARIS §4.1)


# ---- keys and values ---------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1", "enabled"}
_FALSE = {"false", "no", "off", "0", "disabled"}
_BACKENDS = {"local": "local", "remote": "ssh", "ssh": "ssh", "server": "ssh", "slurm": "slurm",
             "vast": "vast", "vast.ai": "vast", "vastai": "vast", "modal": "modal"}
_LANGUAGES = {"en": "en", "english": "en", "zh": "zh", "cn": "zh", "zh-cn": "zh", "chinese": "zh",
              "中文": "zh"}


def normalise_key(key: str) -> str:
    """`Base Repo` -> `base_repo`, `AUTO-DEPLOY` -> `auto_deploy`, `**Code dir**` -> `code_dir`."""
    return re.sub(r"[\s\-]+", "_", key.strip().strip("*`").strip().lower())


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _bool(path: Path_) -> Callable[[str, tuple[str, ...]], Pairs]:
    def parse(value: str, _sections: tuple[str, ...]) -> Pairs:
        low = value.lower()
        if low not in _TRUE | _FALSE:
            raise ValueError("expected true or false")
        return [(path, low in _TRUE)]
    return parse


def _text(path: Path_) -> Callable[[str, tuple[str, ...]], Pairs]:
    return lambda value, _sections: [(path, value)]


def _number(path: Path_, units: dict[str, float]) -> Callable[[str, tuple[str, ...]], Pairs]:
    def parse(value: str, _sections: tuple[str, ...]) -> Pairs:
        m = re.fullmatch(r"\$?\s*(\d+(?:\.\d*)?)\s*([a-z]*)", value.lower().replace(",", ""))
        if not m or m.group(2) not in units:
            raise ValueError("expected a number" + (f" (unit {'/'.join(u for u in units if u)})"
                                                    if len(units) > 1 else ""))
        return [(path, float(m.group(1)) * units[m.group(2)])]
    return parse


def _words(value: str) -> list[str]:
    parts = re.split(r"[,\s]+", value.strip().strip("[]"))
    return [w.strip("'\"") for w in parts if w.strip("'\"")]


def _backend(value: str, _sections: tuple[str, ...]) -> Pairs:
    word = value.split()[0].lower().rstrip(",.;") if value.split() else ""
    if word not in _BACKENDS:
        raise ValueError("expected local, remote, vast, modal or slurm")
    return [(("backend",), _BACKENDS[word])]


def _language(value: str, _sections: tuple[str, ...]) -> Pairs:
    if value.lower() not in _LANGUAGES:
        raise ValueError("expected en or zh")
    return [(("language",), _LANGUAGES[value.lower()])]


def _base_repo(value: str, _sections: tuple[str, ...]) -> Pairs:
    return [(("base_repo",), False if value.lower() in _FALSE | {"none"} else value)]


def _image(value: str, sections: tuple[str, ...]) -> Pairs:
    # ARIS documents `image:` for Vast; under a `## Modal` heading it can only mean Modal's.
    return [(("modal" if _section_backend(sections) == "modal" else "vast", "image"), value)]


def _modal_gpu(value: str, _sections: tuple[str, ...]) -> Pairs:
    gpus = _words(value)
    return [(("modal", "gpu"), gpus[0]), (("modal", "gpu_fallbacks"), gpus[1:])] if gpus else []


def _modal_secrets(value: str, _sections: tuple[str, ...]) -> Pairs:
    return [(("modal", "secrets"), _words(value))]


_SSH_VALUE_OPTS = {"-p": "port", "-i": "key_file", "-J": "proxy_jump", "-l": "user",
                   "-F": None, "-o": None, "-b": None, "-c": None, "-D": None, "-E": None,
                   "-L": None, "-m": None, "-R": None, "-S": None, "-W": None, "-w": None}
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_ssh_command(value: str) -> dict[str, object]:
    """`ssh -p 2222 alice@gpu1` or a bare alias -> SshHost fields; ValueError when it is not one."""
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"not an ssh command line ({exc})") from None
    if argv[:1] == ["ssh"]:
        argv = argv[1:]
    host: dict[str, object] = {}
    dest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _SSH_VALUE_OPTS:
            field, val = _SSH_VALUE_OPTS[arg], next(it, None)
            if val is None:
                raise ValueError(f"{arg} needs a value")
            if field:
                host[field] = int(val) if field == "port" and val.isdigit() else val
        elif arg.startswith("-"):
            continue  # flags such as -A, -t, -X do not change where we connect
        else:
            dest.append(arg)
    if len(dest) != 1:
        raise ValueError("expected an SSH alias or `ssh [options] [user@]host`")
    target = dest[0].removeprefix("ssh://")
    if "@" in target:
        host["user"], target = target.rsplit("@", 1)
    if re.fullmatch(r".+:\d+", target) and dest[0].startswith("ssh://"):
        target, port = target.rsplit(":", 1)
        host["port"] = int(port)
    if not _HOST.match(target):
        raise ValueError(f"{target!r} is not a host name or SSH alias")
    if host:  # anything beyond a bare alias: the name is a real host, not a ~/.ssh/config entry
        host["hostname"] = target
    return {"alias": target, **host}


def _ssh(value: str, _sections: tuple[str, ...]) -> Pairs:
    return [(("ssh", "hosts"), [parse_ssh_command(value)])]


def _conda(value: str, _sections: tuple[str, ...]) -> Pairs:
    """`eval "$(… shell.bash hook)" && conda activate env`, `source …/activate env`, or `env`."""
    env, hook = None, []
    for part in (p.strip() for p in re.split(r"&&|;", value) if p.strip()):
        m = re.search(r"\b(?:conda|mamba|micromamba)\s+activate\s+([\w.\-/~]+)\s*$", part)
        src = re.fullmatch(r"(?:source|\.)\s+(\S*activate)\s+([\w.\-/~]+)", part)
        if m:
            env = m.group(1)
        elif src:
            hook.append(f"source {src.group(1)}")
            env = src.group(2)
        else:
            hook.append(part)
    if env is None and re.fullmatch(r"[\w.\-]+", value):
        return [(("conda",), value)]
    if env is None:
        raise ValueError("expected a conda env name or a `conda activate ENV` line")
    return [(("conda",), env)] + ([(("conda_hook",), " && ".join(hook))] if hook else [])


Parser = Callable[[str, tuple[str, ...]], Pairs]
# key -> (parser, strict). Strict keys are the machine keys ARIS documents: a bad value is an
# error. Descriptive keys (`SSH:`, `Conda:`) are read when they parse and skipped otherwise.
_KEYS: dict[str, tuple[Parser, bool]] = {
    "gpu": (_backend, True), "backend": (_backend, True),
    **{k: (_ssh, False) for k in ("ssh", "ssh_alias", "ssh_host", "ssh_server", "ssh_command")},
    **{k: (_conda, False) for k in ("conda", "conda_env", "conda_environment", "activate",
                                     "conda_activate", "conda_activation")},
    **{k: (_text(("code_dir",)), False) for k in ("code_dir", "code_directory", "workdir",
                                                   "work_dir", "remote_dir")},
    "code_sync": (_text(("ssh", "code_sync")), True),
    "wandb": (_bool(("wandb", "enabled")), True),
    "wandb_project": (_text(("wandb", "project")), True),
    "wandb_entity": (_text(("wandb", "entity")), True),
    "auto_destroy": (_bool(("vast", "auto_destroy")), True),
    "max_budget": (_number(("budget", "usd_max"), {"": 1.0, "usd": 1.0}), True),
    "image": (_image, True),
    "modal_gpu": (_modal_gpu, True),
    "modal_timeout": (_number(("modal", "timeout_s"), {"": 1, "s": 1, "m": 60, "min": 60,
                                                      "h": 3600}), True),
    "modal_volume": (_text(("modal", "volume")), True),
    "modal_app": (_text(("modal", "app")), True),
    "modal_secrets": (_modal_secrets, True),
    "language": (_language, True),
    **{k: (_bool((k,)), True) for k in ("code_review", "auto_deploy", "sanity_first", "compact",
                                         "rescue_on_failure")},
    "max_parallel_runs": (_number(("max_parallel_runs",), {"": 1}), True),
    "base_repo": (_base_repo, True),
}
ARIS_KEYS = frozenset(_KEYS)


def parse_key(key: str, value: str, sections: tuple[str, ...] = ()) -> Pairs | None:
    """The settings an ARIS key sets (None when `key` is not one); ValueError on a bad value."""
    spec = _KEYS.get(normalise_key(key))
    return None if spec is None else spec[0](value, sections)


# ---- overrides (F2) ----------------------------------------------------------------------------

_PAIR = re.compile(r"^\s*([A-Za-z_][\w .\-]*?)\s*[:=]\s*(.*?)\s*$", re.S)
_NEXT_PAIR = re.compile(r",\s*(?=[A-Za-z_][\w .\-]{0,40}?\s*[:=])")


def parse_override(text: str) -> tuple[str, str]:
    """`AUTO_DEPLOY: false` -> ("auto_deploy", "false"); `base repo = URL` -> ("base_repo", URL)."""
    m = _PAIR.match(text)
    if not m or not m.group(2):
        raise ConfigError(f"override {text!r}: expected 'key: value', e.g. 'auto_deploy: false'")
    return normalise_key(m.group(1)), _unquote(m.group(2))


def parse_overrides(text: str) -> list[tuple[str, str]]:
    """The ARIS inline form `— compact: true, base repo: https://…` (a comma-separated list)."""
    body = text.strip().lstrip("—–-").strip()
    return [parse_override(part) for part in _NEXT_PAIR.split(body) if part.strip()]


# ---- project files (F3) ------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)[\s#]*$")
_LINE = re.compile(r"""^\s*(?:>\s*)*(?:[-*+]|\d+[.)])?\s*(?:\[[ xX]\]\s*)?
    (?P<key>[*_`]{0,2}[A-Za-z][\w .\-]{0,40}?[*_`]{0,2})\s*(?:\*\*|__)?\s*[:=：]
    (?!//)\s*(?P<value>.*)$""", re.X)
_TABLE_ROW = re.compile(r"^\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|\s*$")
_IMPLYING = {"vast.ai": "vast", "vast": "vast", "modal": "modal"}


def clean_value(raw: str) -> str:
    """The value a person meant: backtick contents, or the text before a `# comment`/(remark)."""
    v = re.sub(r"^(\*\*|__)\s*|\s*(\*\*|__)$", "", raw.strip())  # bold: `**gpu:** x`, `**x**`
    m = re.match(r"^(`+)(.+?)\1", v)
    if m:
        return m.group(2).strip()
    v = re.split(r"\s+#|\s+\(|\s+—\s|\s+--\s", v, maxsplit=1)[0]
    return _unquote(v.strip().rstrip(",;"))


def _section_backend(sections: tuple[str, ...]) -> str | None:
    for heading in reversed(sections):
        for word, backend in (("remote", "ssh"), ("vast", "vast"), ("modal", "modal"),
                              ("slurm", "slurm"), ("local", "local")):
            if word in heading:
                return backend
    return None


def _split_line(line: str) -> tuple[str, str] | None:
    row = _TABLE_ROW.match(line)
    if row and not set(row.group(2)) <= set("-: "):
        return row.group(1), row.group(2)
    m = _LINE.match(line)
    return (m.group("key"), m.group("value")) if m else None


def _read_pair(raw_key: str, raw_value: str, file: str, line: int,
               sections: tuple[str, ...]) -> list[Item]:
    key = normalise_key(raw_key)
    spec, value = _KEYS.get(key), clean_value(raw_value)
    if spec is None or not value:
        return []
    try:
        pairs = spec[0](value, sections)
    except ValueError as exc:
        # `GPU: 4x A100` describes hardware; only the lower-case ARIS key `gpu:` picks a backend.
        strict = spec[1] and (key not in ("gpu", "backend") or raw_key.strip("*`_ ") == key)
        if strict:
            raise ConfigError(f"{raw_key.strip('*`_ ')}: {exc} (got {value!r})", file=file,
                              line=line) from None
        return []
    return [Item(path, v, file, line, sections) for path, v in pairs]


def scan_text(text: str, file: str) -> list[Item]:
    """Every ARIS key in a CLAUDE.md/AGENTS.md text, in order; lines inside code fences and HTML
    comments are documentation, not settings, and are skipped."""
    items: list[Item] = []
    stack: list[tuple[int, str]] = []
    fence, in_comment = "", False
    # split("\n"), not splitlines(): the line numbers must be the ones an editor shows.
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if fence:
            fence = "" if line.strip().startswith(fence) else fence
            continue
        if in_comment:
            if "-->" not in line:
                continue
            in_comment, line = False, line.split("-->", 1)[1]
        line = re.sub(r"<!--.*?-->", "", line)
        if "<!--" in line:
            in_comment, line = True, line.split("<!--", 1)[0]
        if m := _FENCE.match(line):
            fence = m.group(1)
            continue
        if h := _HEADING.match(line):
            level, title = len(h.group(1)), h.group(2).strip("*_ :").lower()
            stack = [s for s in stack if s[0] < level] + [(level, title)]
            if title in _IMPLYING:
                items.append(Item(("backend",), _IMPLYING[title], file, n, (title,), implied=True))
            continue
        if pair := _split_line(line):
            items.extend(_read_pair(*pair, file, n, tuple(s[1] for s in stack)))
    return items


def scan_project(project_dir: Path) -> list[Item]:
    """The ARIS keys of a project's AGENTS.md then CLAUDE.md (absent files are fine)."""
    items: list[Item] = []
    for name in PROJECT_FILES:
        path = project_dir / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
        items.extend(scan_text(text, str(path)))
    return items


def _latest_file(items: Iterable[Item]) -> list[Item]:
    items = list(items)
    return [i for i in items if i.file == items[-1].file] if items else []


def select(items: list[Item], backend: str | None) -> list[Item]:
    """One item per settings path (the backend aside): CLAUDE.md over AGENTS.md, then a line
    under the heading of the backend in use (`## Remote Server` for ssh), then the first."""
    by_path: dict[Path_, list[Item]] = {}
    for item in items:
        if item.path != ("backend",):
            by_path.setdefault(item.path, []).append(item)
    chosen = []
    for group in by_path.values():
        group = _latest_file(group)
        preferred = [i for i in group if backend and _section_backend(i.sections) == backend]
        chosen.append((preferred or group)[0])
    return chosen


def backend_of(items: list[Item]) -> Item | None:
    """The backend the project files name: a `gpu:` line, else a `## Vast.ai`/`## Modal` heading.
    Several different answers are an error: ARIS asks rather than guesses (F5)."""
    found = [i for i in items if i.path == ("backend",)]
    found = _latest_file([i for i in found if not i.implied] or found)
    if len({i.value for i in found}) > 1:
        kind = "headings" if found[0].implied else "`gpu:` lines"
        listed = ", ".join(f"{i.value} (line {i.line})" for i in found)
        raise ConfigError(f"{kind} name different backends: {listed}; keep one, or set `backend:` "
                          f"in the config file", file=found[0].file, line=found[0].line)
    return found[0] if found else None
