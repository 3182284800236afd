"""config.example.yaml documents every key with its default, so it cannot drift from the code."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from daemon.config import Config, ProjectEntry, SshHost, _model_in, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"
# `  # key: value  # comment` is a documented default that is commented out on purpose (keys under
# `defaults` would otherwise beat CLAUDE.md); prose comments never start with `word:`.
COMMENTED_KEY = re.compile(r"(?m)^(\s*)# ([a-z_]+:(?:\s.*)?)$")


def uncommented(tmp_path: Path) -> Path:
    path = tmp_path / "uncommented.yaml"
    path.write_text(COMMENTED_KEY.sub(r"\1\2", EXAMPLE.read_text(encoding="utf-8")))
    return path


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        yield prefix + name, info.annotation
        sub = _model_in(info.annotation)
        if sub is not None and sub not in (SshHost, ProjectEntry):  # list items: see below
            yield from fields(sub, f"{prefix}{name}.")


def lookup(data: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def test_example_loads_and_equals_the_defaults() -> None:
    assert load_config(EXAMPLE).model_dump() == Config().model_dump()


def test_documented_defaults_equal_the_code_defaults(tmp_path: Path) -> None:
    loaded = load_config(uncommented(tmp_path))
    assert loaded.model_dump() == Config().model_dump()
    # Every project setting was really written out, not filled in by the loader.
    assert loaded.defaults.model_fields_set == set(type(loaded.defaults).model_fields)


def test_every_field_is_in_the_example(tmp_path: Path) -> None:
    from ruamel.yaml import YAML
    data = YAML(typ="safe").load(uncommented(tmp_path).read_text())
    missing = [name for name, _ in fields(Config) if not lookup(data, name)]
    assert missing == []
    text = EXAMPLE.read_text(encoding="utf-8")
    for model in (SshHost, ProjectEntry):  # list items appear in the commented examples
        own = set(model.model_fields) - (set(Config.model_fields["defaults"].annotation.model_fields)
                                         if model is ProjectEntry else set())
        assert [f for f in own if not re.search(rf"(?m)^\s*#.*\b{f}:", text)] == []


def test_every_key_line_has_a_comment() -> None:
    for n, line in enumerate(EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        bare = line.lstrip("# ").strip()
        if re.match(r"^[a-z_]+:\s*\S", bare) and not line.lstrip().startswith("#   "):
            assert " # " in bare or bare.startswith("events:"), f"line {n} has no comment: {line}"
