"""Configuration: the one schema with every default, the YAML loader, and how sources layer.

Sources, lowest first (DESIGN §4, ARIS F1–F5): built-in defaults < ARIS keys in the project's
CLAUDE.md/AGENTS.md < the config file's `defaults` < its matching `projects[]` entry <
EXPBRIDGE_* environment variables < command-line `key: value` overrides. A source takes part
only with the keys it sets (null counts as unset), so a config copied from config.example.yaml
never hides what a project's CLAUDE.md says.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic import model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from daemon.errors import ConfigError

ENV_PREFIX = "EXPBRIDGE_"
# EXPBRIDGE_* names that are not project settings (read by default_state_dir and the CLI).
RESERVED_ENV = frozenset({"STATE_DIR", "CONFIG", "LOG_LEVEL", "LOG_FORMAT"})
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# launch_verified / experiment_done are the ARIS (Feishu) names; experiment_done = plan done
NOTIFY_EVENTS = ("launch_verified", "run_done", "run_failed", "run_stuck", "blocked",
                 "awaiting_approval", "milestone_passed", "experiment_done", "pipeline_failed",
                 "budget_warning")
_HOSTISH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")  # names, IPv4, IPv6
_FALSE_WORDS = {"false", "no", "off", "none", "null", ""}

Command = Union[str, list[str], None]  # a shell string or an argv list


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, and a sub-section whose keys are all
    commented out (`ssh:` followed by comments loads as null) counts as not written."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_blank_sections(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items()
                    if v is not None or _model_in(_annotation(cls, k)) is None}
        return data


class RetryPolicy(Section):
    delay: float = Field(0, ge=0)
    max_attempts: int = Field(1, ge=1)  # launches, the first included


def _policy(delay: float, attempts: int) -> Any:
    return Field(default_factory=lambda: RetryPolicy(delay=delay, max_attempts=attempts))


class RetryConfig(Section):
    oom: RetryPolicy = _policy(120, 3)
    lost: RetryPolicy = _policy(10, 3)
    timeout: RetryPolicy = _policy(0, 1)
    failed: RetryPolicy = _policy(0, 1)


class HooksConfig(Section):
    implement: Command = None
    review: Command = None
    debug: Command = None
    rescue: Command = None
    judge: Command = None
    ablation_planner: Command = None
    training_check: Command = None
    audit: Command = None
    timeout_s: float = Field(3600, gt=0)
    heartbeat_s: float = Field(60, gt=0)


class SshHost(Section):
    alias: str
    hostname: str | None = None
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key_file: str | None = None
    proxy_jump: str | None = None
    gpus: list[int] | None = None
    code_dir: str | None = None

    @field_validator("alias", "hostname", "user")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        # These reach ssh argv and session names; refuse shell metacharacters up front.
        if value is not None and not _HOSTISH.match(value):
            raise ValueError("expected letters, digits, '.', '_', '-' or ':' only")
        return value


class SshConfig(Section):
    hosts: list[SshHost] = Field(default_factory=list)
    ssh_config: str | None = None
    session: Literal["screen", "tmux"] = "screen"
    remote_base: str = ".expbridge"
    connect_timeout_s: float = Field(10, gt=0)
    command_timeout_s: float = Field(30, gt=0)
    breaker_failures: int = Field(3, ge=1)
    code_sync: Literal["rsync", "git", "none"] = "rsync"
    launch_cooldown_s: float = Field(20, ge=0)

    @field_validator("hosts")
    @classmethod
    def _unique_aliases(cls, hosts: list[SshHost]) -> list[SshHost]:
        aliases = [h.alias for h in hosts]
        if dupes := sorted({a for a in aliases if aliases.count(a) > 1}):
            raise ValueError(f"host alias listed twice: {', '.join(dupes)}")
        return hosts


class SlurmConfig(Section):
    login_host: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    gres: str | None = None
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = None
    array_throttle: int | None = Field(None, ge=1)
    max_submitted: int = Field(8, ge=1)  # our jobs queued or running at once (virtual slots)

    @field_validator("gres", mode="before")
    @classmethod
    def _gres_text(cls, value: Any) -> Any:
        # `gres: 2` (a GPU count) is as natural as `gres: "gpu:a100:2"`.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class VastConfig(Section):
    api_key_env: str = "VAST_API_KEY"
    api_key_file: str | None = None
    server_url: str | None = None
    image: str | None = None
    max_dph: float | None = Field(None, gt=0)
    min_vram_gb: float | None = Field(None, gt=0)
    num_gpus: int = Field(1, ge=1)
    disk_gb: float = Field(50, gt=0)
    min_reliability: float = Field(0.95, ge=0, le=1)
    auto_destroy: bool = True
    min_cuda: float = Field(12.1, gt=0)
    est_hours: float = Field(1.0, gt=0)
    max_instances: int = Field(1, ge=1)
    ssh_key_file: str | None = None
    code_dir: str = "/workspace/project"
    onstart: str | None = None
    destroy_orphans: bool = False
    keep_warm_s: float = Field(0, ge=0)
    provision_timeout_s: float = Field(1800, gt=0)
    api_timeout_s: float = Field(30, gt=0)


class ModalConfig(Section):
    gpu: str | None = None
    gpu_fallbacks: list[str] = Field(default_factory=list)
    timeout_s: float = Field(21600, gt=0)
    volume: str | None = None
    app: str | None = None
    secrets: list[str] = Field(default_factory=list)
    image: str | None = None
    requirements: str | None = None
    mode: Literal["sandbox", "function"] = "sandbox"
    function: str | None = None
    code_dir: str = "/workspace/project"
    max_parallel: int = Field(4, ge=1)
    usd_per_hour: float | None = Field(None, gt=0)
    api_timeout_s: float = Field(30, gt=0)


class WandbConfig(Section):
    enabled: bool = False
    project: str | None = None
    entity: str | None = None


class BudgetConfig(Section):
    gpu_hours: float | None = Field(None, gt=0)
    warn_at: float = Field(0.8, gt=0, le=1)
    hard_stop: bool = False
    usd_max: float | None = Field(None, gt=0)
    usd_hard_cap: float | None = Field(None, gt=0)


class NotifyConfig(Section):
    webhook: str | None = None
    command: Command = None
    events: list[str] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    timeout_s: float = Field(10, gt=0)  # per delivery attempt
    max_attempts: int = Field(4, ge=1)  # deliveries tried per event and sink, the first included

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        if unknown := [e for e in events if e not in NOTIFY_EVENTS]:
            raise ValueError(f"unknown event {unknown[0]!r}; "
                             f"expected some of {', '.join(NOTIFY_EVENTS)}")
        return events


class ProjectSettings(Section):
    """The effective settings of one project, after every source is layered."""

    backend: Literal["local", "ssh", "slurm", "vast", "modal"] | None = None
    code_review: bool = True
    auto_deploy: bool = True
    sanity_first: bool = True
    max_parallel_runs: int = Field(4, ge=1)
    base_repo: str | bool = False
    compact: bool = False
    rescue_on_failure: bool = True
    language: Literal["en", "zh"] = "en"
    batch: Literal["auto", "queue"] = "auto"  # ARIS `batch: queue` forces queue routing (F4)
    gpus: list[int] | None = None
    gpu_free_threshold_mib: int = Field(500, ge=0)
    cpu_slots: int | None = Field(None, ge=1)
    launch_timeout_s: float = Field(30, gt=0)
    poll_interval_s: float = Field(5.0, gt=0)
    training_check_s: float = Field(600.0, gt=0)
    conda: str | None = None
    conda_hook: str | None = None
    code_dir: str | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    ssh: SshConfig = Field(default_factory=SshConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    vast: VastConfig = Field(default_factory=VastConfig)
    modal: ModalConfig = Field(default_factory=ModalConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_word(cls, value: Any) -> Any:
        if isinstance(value, str):  # ARIS says `remote` for the SSH backend
            return {"remote": "ssh", "vast.ai": "vast", "": None}.get(value.strip().lower(),
                                                                        value.strip().lower())
        return value

    @field_validator("language", mode="before")
    @classmethod
    def _language_word(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"cn": "zh", "chinese": "zh", "中文": "zh", "english": "en"}.get(
                value.strip().lower(), value.strip().lower())
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_list(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, str):
            return [g for g in re.split(r"[,\s]+", value.strip("[] ")) if g]
        return value

    @field_validator("base_repo", mode="before")
    @classmethod
    def _repo_or_false(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _FALSE_WORDS:
            return False
        if value is True:
            raise ValueError("expected a git URL to clone, or false")
        return value


class ProjectEntry(ProjectSettings):
    """A `projects[]` entry: a project folder plus the settings written for it alone."""

    path: str


class WatchConfig(Section):
    polling: bool = False  # PollingObserver, for NFS/CIFS where inotify sees nothing
    debounce_ms: int = Field(150, ge=0)


class Config(Section):
    state_dir: str | None = None
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    watch: WatchConfig = Field(default_factory=WatchConfig)
    defaults: ProjectSettings = Field(default_factory=ProjectSettings)
    projects: list[ProjectEntry] = Field(default_factory=list)
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in LOG_LEVELS:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from (relative paths in it are relative to it)."""
        return self._source

    def path_of(self, text: str) -> Path:
        path = Path(text).expanduser()
        base = self._source.parent if self._source else Path.cwd()
        return (path if path.is_absolute() else base / path).resolve()

    def project_dirs(self) -> list[Path]:
        return [self.path_of(p.path) for p in self.projects]

    def entry_for(self, project_dir: Path) -> ProjectEntry | None:
        target = Path(project_dir).expanduser().resolve()
        return next((p for p in self.projects if self.path_of(p.path) == target), None)


# ---- loading -----------------------------------------------------------------------------------

def load_config(path: Path | None) -> Config:
    """Read and check a YAML config file; None means no file (built-in defaults)."""
    if path is None:
        return Config()
    data = _read_yaml(path)
    if data is None:
        data = CommentedMap()
    if not isinstance(data, Mapping):
        raise ConfigError("expected a mapping of settings (`key: value`) at the top level",
                          file=str(path), line=1)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _located(exc, data, str(path)) from None
    config._source = Path(path).resolve()
    _check_unique_projects(config, data, str(path))
    return config


def find_config(environ: Mapping[str, str] = os.environ) -> Path | None:
    """$EXPBRIDGE_CONFIG, else the user's then the system's config.yaml, if one exists."""
    if environ.get(ENV_PREFIX + "CONFIG"):
        return Path(environ[ENV_PREFIX + "CONFIG"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    user_dir = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    for candidate in (user_dir / "expbridge" / "config.yaml", Path("/etc/expbridge/config.yaml")):
        if candidate.is_file():
            return candidate
    return None


def default_state_dir(config: Config | None = None,
                      environ: Mapping[str, str] = os.environ) -> Path:
    """config.state_dir, else $EXPBRIDGE_STATE_DIR, else systemd's $STATE_DIRECTORY, else
    $XDG_STATE_HOME/expbridge (~/.local/state/expbridge)."""
    if config is not None and config.state_dir:
        return config.path_of(config.state_dir)
    if environ.get(ENV_PREFIX + "STATE_DIR"):
        return Path(environ[ENV_PREFIX + "STATE_DIR"]).expanduser()
    if environ.get("STATE_DIRECTORY"):  # set by StateDirectory= in the system unit
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    home = Path(environ.get("HOME") or Path.home())
    return Path(environ.get("XDG_STATE_HOME") or home / ".local" / "state") / "expbridge"


def _read_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=str(path)) from None
    try:
        return YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}", file=str(path),
                          line=mark.line + 1 if mark else None) from None


def _check_unique_projects(config: Config, data: Any, file: str) -> None:
    seen: dict[Path, int] = {}
    for i, project_dir in enumerate(config.project_dirs()):
        if project_dir in seen:
            raise ConfigError(f"projects[{i}] names the same folder as projects[{seen[project_dir]}]"
                              f" ({project_dir})", file=file, line=_line_of(data, ("projects", i)))
        seen[project_dir] = i


# ---- error messages ----------------------------------------------------------------------------

def _annotation(model: type[BaseModel], key: object) -> Any:
    field = model.model_fields.get(key) if isinstance(key, str) else None
    return field.annotation if field else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, (_model_in(a) for a in get_args(annotation))), None)


def _is_tag(part: object) -> bool:
    """Pydantic puts union member names (`str`, `list[str]`) into error locations."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list", "dict"}
                                      or not part.isidentifier())


def _line_of(data: Any, loc: Iterable[object]) -> int:
    """The 1-based line of the deepest part of `loc` that exists in the ruamel document."""
    line, node = 1, data
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line, node = node.lc.key(part)[0] + 1, node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, node = node.lc.item(part)[0] + 1, node[part]
        else:
            break
    return line


def _explain(error: Mapping[str, Any], loc: tuple[object, ...], root: type[BaseModel]) -> str:
    where = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        model: type[BaseModel] | None = root
        for part in loc[:-1]:
            model = _model_in(_annotation(model, part)) if not isinstance(part, int) else model
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
        return f"unknown key {where!r}; {hint}"
    got = error.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) else ""
    return f"{where}: {error['msg']}{shown}"


def _errors(exc: ValidationError, root: type[BaseModel]) -> list[tuple[tuple[object, ...], str]]:
    seen: dict[tuple[object, ...], str] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if not _is_tag(p))
        seen.setdefault(loc, _explain(error, loc, root))
    return list(seen.items())


def _located(exc: ValidationError, data: Any, file: str) -> ConfigError:
    found = [(_line_of(data, loc), message) for loc, message in _errors(exc, Config)]
    more = "".join(f"\n  {file}:{line}: {message}" for line, message in found[1:])
    return ConfigError(found[0][1] + more, file=file, line=found[0][0])


# The layering of sources lives in daemon/settings.py; these names stay importable from here.
from daemon.settings import parse_override, resolve_settings  # noqa: E402,F401
