"""How a project's effective settings are layered from every source (DESIGN §4, F1–F5).

Lowest first: built-in defaults < ARIS keys in the project's CLAUDE.md/AGENTS.md < the config
file's `defaults` < its matching `projects[]` entry < EXPBRIDGE_* environment variables <
command-line `key: value` overrides. A source takes part only with the keys it sets.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
import types
from pathlib import Path
from typing import Any, Iterable, Mapping, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from daemon import aris_keys
from daemon.config import (ENV_PREFIX, RESERVED_ENV, Config, ProjectSettings,
                           _annotation, _errors, _model_in)
from daemon.errors import ConfigError

# ---- layering ----------------------------------------------------------------------------------

def resolve_settings(config: Config | None, project_dir: Path,
                     overrides: Mapping[str, str] | Iterable[str] = (),
                     environ: Mapping[str, str] = os.environ) -> ProjectSettings:
    """The effective settings of one project (precedence in the module docstring).
    `settings.backend is None` means no source named one: the project needs input (F5)."""
    upper = _config_layers(config, Path(project_dir))
    upper += [_env_layer(environ), _override_layer(overrides)]
    backend = next((layer["backend"] for layer in reversed(upper) if "backend" in layer), None)
    merged = ProjectSettings().model_dump()
    for layer in [_aris_layer(aris_keys.scan_project(Path(project_dir)), backend), *upper]:
        _deep_merge(merged, layer)
    return ProjectSettings.model_validate(merged)


def parse_override(text: str) -> tuple[str, str]:
    """`AUTO_DEPLOY: false` -> ("auto_deploy", "false"), ARIS F2 (see daemon.aris_keys)."""
    return aris_keys.parse_override(text)


def _set_keys(model: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    return model.model_dump(exclude_unset=True, exclude_none=True, exclude=exclude)


def _config_layers(config: Config | None, project_dir: Path) -> list[dict[str, Any]]:
    if config is None:
        return []
    entry = config.entry_for(project_dir)
    return [_set_keys(config.defaults)] + ([_set_keys(entry, {"path"})] if entry else [])


def _aris_layer(items: list[aris_keys.Item], backend: str | None) -> dict[str, Any]:
    named = aris_keys.backend_of(items) if backend is None else None
    chosen = aris_keys.select(items, backend or (str(named.value) if named else None))
    chosen += [named] if named else []
    layer: dict[str, Any] = {}
    for item in chosen:
        _deep_merge(layer, _validated(item.path, item.value, "", item.file, item.line))
    return layer


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX)):
        key = ".".join(name[len(ENV_PREFIX):].split("__"))
        if name[len(ENV_PREFIX):] not in RESERVED_ENV and _env_is_setting(key):
            _deep_merge(layer, _text_setting(key, environ[name], f"environment variable {name}"))
    return layer


def _env_is_setting(key: str) -> bool:
    """Other EXPBRIDGE_* variables (a test switch, say) are not ours to refuse, but one that is
    a near miss of a setting (EXPBRIDGE_AUTO_DEPLY) is a typo and gets an error."""
    head = aris_keys.normalise_key(key.split(".")[0])
    known = set(ProjectSettings.model_fields) | aris_keys.ARIS_KEYS
    return head in known or bool(difflib.get_close_matches(head, known, n=1, cutoff=0.85))


def _override_layer(overrides: Mapping[str, str] | Iterable[str]) -> dict[str, Any]:
    if isinstance(overrides, str):
        pairs = aris_keys.parse_overrides(overrides)
    elif isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = [aris_keys.parse_override(text) for text in overrides]
    layer: dict[str, Any] = {}
    for key, value in pairs:
        _deep_merge(layer, _text_setting(key, value, f"override '{key}: {value}'"))
    return layer


def _text_setting(key: str, text: str, where: str) -> dict[str, Any]:
    """One `key: value` from the environment or the command line, validated on its own so an
    error names exactly that source."""
    path = tuple(aris_keys.normalise_key(p) for p in key.split("."))
    annotation = _annotation_at(path)
    aris_meaning = len(path) == 1 and path[0] in aris_keys.ARIS_KEYS and (
        annotation is None or (_model_in(annotation) and not text.lstrip().startswith("{")))
    if aris_meaning:  # `gpu: remote`, `wandb: true`, `max_budget: 5`: the ARIS key names
        try:
            pairs = aris_keys.parse_key(path[0], text) or []
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        layer: dict[str, Any] = {}
        for sub_path, value in pairs:
            _deep_merge(layer, _validated(sub_path, value, where))
        return layer
    return _validated(path, _coerce(annotation, text, where), where)


def _validated(path: tuple[str, ...], value: Any, where: str, file: str | None = None,
               line: int | None = None) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    try:
        return _set_keys(ProjectSettings.model_validate(nested))
    except ValidationError as exc:
        message = "; ".join(m for _, m in _errors(exc, ProjectSettings))
        raise ConfigError(f"{where}: {message}" if where else message, file=file,
                          line=line) from None


def _annotation_at(path: tuple[str, ...]) -> Any:
    model: type[BaseModel] | None = ProjectSettings
    annotation: Any = None
    for part in path:
        annotation = _annotation(model, part) if model else None
        model = _model_in(annotation)
    return annotation


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _coerce(annotation: Any, text: str, where: str) -> Any:
    """Text to the shape a field wants: `true`/`no` for booleans, `0,1` or `[0, 1]` for lists,
    a YAML flow mapping for a section; numbers are left to pydantic."""
    value, low = text.strip(), text.strip().lower()
    union = get_origin(annotation) in (Union, types.UnionType)
    members = get_args(annotation) if union else (annotation,)
    if low in ("null", "none", "~") and type(None) in members:
        return None
    if bool in members and low in _BOOL_WORDS:
        return _BOOL_WORDS[low]
    wants_list = any(get_origin(m) is list for m in members) and str not in members
    if wants_list or any(_model_in(m) for m in members):
        if value[:1] in "[{":
            try:
                return YAML(typ="safe", pure=True).load(value)
            except YAMLError as exc:
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ConfigError(f"{where}: not a valid YAML value ({problem})") from None
        if wants_list:
            return [v for v in re.split(r"[,\s]+", value) if v]
    return value


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `top` into `base`: sections key by key, anything else (lists too) replaced."""
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
