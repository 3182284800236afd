"""Typed, line-aware reads from a ruamel round-trip tree, for the queue manifest.

Each read checks the value's type and, when it is wrong, records an error naming the line and
what was expected, then returns None so the caller carries on with a default.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ruamel.yaml import YAML

from handlers import manifest_expand as mx
from handlers.diagnostics import Diagnostic

CHECKABLE = ("checkpoint_exists", "file_exists", "path_exists", "dir_exists")
JOB_KEYS = frozenset({"id", "cmd", "args", "expected_output", "output_check", "run", "milestone",
                      "est_hours", "success", "cwd", "preconditions"})
_MAX_NODES = 200_000  # aliases can make a small file expand enormously ("billion laughs")


@dataclass(frozen=True)
class RawPre:
    type: str
    path: str  # may hold {var} placeholders, filled per job
    line: int


@dataclass
class Spec:
    """A job entry or a template: plain values, checked for type, not yet substituted."""

    where: str
    line: int
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    pres: list[RawPre] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def key_line(self, key: str) -> int:
        return self.lines.get(key, self.line)


class Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self._diags: list[Diagnostic] = []
        self._budget = _MAX_NODES

    # -- diagnostics
    def error(self, line: int, message: str) -> None:
        self._diags.append(Diagnostic(self.file, line, "error", message))

    def warn(self, line: int, message: str) -> None:
        self._diags.append(Diagnostic(self.file, line, "warning", message))

    def result(self) -> list[Diagnostic]:
        unique = dict.fromkeys(self._diags)  # grid jobs repeat the same warning
        return sorted(unique, key=lambda d: d.line)

    # -- shapes and lines
    @staticmethod
    def is_map(node: Any) -> bool:
        return isinstance(node, dict)

    @staticmethod
    def kind_name(node: Any) -> str:
        if node is None:
            return "nothing"
        if isinstance(node, dict):
            return "a mapping"
        if isinstance(node, list):
            return f"the list {_short(node)}"
        if isinstance(node, bool):
            return "true" if node else "false"
        return _short(node)

    @staticmethod
    def node_line(node: Any) -> int:
        lc = getattr(node, "lc", None)
        return lc.line + 1 if lc is not None and lc.line is not None else 0

    def key_line(self, node: Any, key: str) -> int:
        try:
            return node.lc.key(key)[0] + 1
        except Exception:  # plain dicts and synthetic nodes carry no positions
            return self.node_line(node)

    def item_line(self, seq: Any, index: int) -> int:
        try:
            return seq.lc.item(index)[0] + 1
        except Exception:
            return self.node_line(seq)

    def unknown_keys(self, node: Any, allowed: Iterable[str], where: str) -> None:
        known = sorted(k for k in allowed if not k.startswith("_"))
        for key in node:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.warn(self.key_line(node, key), f"{where}: unknown key {key!r} ignored; {hint}known "
                      f"keys are {', '.join(known)}")

    # -- typed reads
    def get_node(self, node: Any, key: str, kind: str) -> Any:
        """The raw ruamel node for a `map` or `list` key (so nested lines stay available)."""
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return None
        if kind == "map" and isinstance(value, dict) or kind == "list" and isinstance(value, list):
            return value
        self.error(self.key_line(node, key), f"`{key}` must be {'a mapping' if kind == 'map' else 'a list'}, "
                   f"got {self.kind_name(value)}")
        return None

    def get(self, node: Any, key: str, kind: str, where: str = "") -> Any:
        raw = node.get(key) if isinstance(node, dict) else None
        if raw is None:
            return None
        value = self.plain(raw)
        checked, expected = _check(kind, value)
        if expected:
            self.error(self.key_line(node, key), f"`{where}{key}` must be {expected}, got "
                       f"{self.kind_name(value)}")
            return None
        return checked

    def plain(self, node: Any) -> Any:
        """ruamel's CommentedMap/ScalarFloat/TaggedScalar... to dict/list/float/str."""
        self._budget -= 1
        if self._budget < 0:
            raise ValueError("the manifest expands to too many values (aliases?)")
        if isinstance(node, dict):
            return {mx.text_of(self.plain(k)): self.plain(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [self.plain(v) for v in node]
        if isinstance(node, bool) or type(node).__name__ == "ScalarBoolean":
            return bool(node)
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            return str(node)
        if hasattr(node, "value"):  # TaggedScalar: keep the text, drop the tag
            return self.plain(node.value)
        return None if node is None else str(node)

    def preconditions(self, node: Any) -> list[RawPre]:
        seq = self.get_node(node, "preconditions", "list")
        out = []
        for i, item in enumerate(seq or []):
            line = self.item_line(seq, i)
            if isinstance(item, str):  # a bare path: the only type ARIS shows
                out.append(RawPre("checkpoint_exists", item, line))
                continue
            if not isinstance(item, dict):
                self.error(line, f"preconditions[{i}]: expected {{type: checkpoint_exists, path: ...}}, "
                           f"got {self.kind_name(item)}")
                continue
            self.unknown_keys(item, ("type", "path"), f"preconditions[{i}]")
            ptype = self.get(item, "type", "str") or "checkpoint_exists"
            path = self.get(item, "path", "str")
            if not path:
                self.error(line, f"preconditions[{i}]: expected a `path` (a file or glob)")
                continue
            if ptype not in CHECKABLE:
                self.warn(self.key_line(item, "type"), f"precondition type {ptype!r} is not known; "
                          f"jobs stay blocked on it; expected one of {', '.join(CHECKABLE)}")
            out.append(RawPre(ptype, path, line))
        return out

    def grid(self, node: Any) -> dict[str, list[Any]] | None:
        gnode = self.get_node(node, "grid", "map")
        if gnode is None:
            return None
        grid: dict[str, list[Any]] = {}
        for key, raw in gnode.items():
            value = self.plain(raw)
            # ARIS iterates the value: a bare string would become one job per character.
            values = value if isinstance(value, list) else [value]
            if not values:
                self.warn(self.key_line(gnode, key), f"grid variable {key!r} has no values, so the "
                          "grid gives no jobs")
            grid[mx.text_of(self.plain(key))] = values
        return grid

    def job_spec(self, node: Any, line: int, where: str) -> Spec | None:
        if not isinstance(node, dict):
            self.error(line, f"{where}: expected a mapping with id and cmd (or args), got "
                       f"{self.kind_name(node)}")
            return None
        self.unknown_keys(node, JOB_KEYS, where)
        spec = Spec(where, line)
        for key, kind in (("id", "str"), ("cmd", "str"), ("args", "map"), ("run", "str"),
                          ("expected_output", "strlist"), ("output_check", "strlist"),
                          ("milestone", "str"), ("est_hours", "number_or_text"),
                          ("success", "gate"), ("cwd", "str")):
            value = self.get(node, key, kind, f"{where}.")
            if value is not None:
                spec.values[key] = value
                spec.lines[key] = self.key_line(node, key)
        spec.pres = self.preconditions(node)
        return spec


def load_tree(text: str, r: Reader) -> Any:
    """Parse YAML (JSON is read by the same parser, so lines are known for both)."""
    text = text.lstrip("\ufeff")
    if text.lstrip()[:1] in ("{", "["):
        text = text.replace("\t", " ")  # valid JSON has tabs only as whitespace
    try:
        root = _yaml().load(text)
    except Exception as first:
        lines = mx.find_flow_placeholders(text)
        try:
            root = _yaml().load(mx.quote_flow_placeholders(text)) if lines else None
        except Exception:
            lines = []
        if not lines:
            r.error(_error_line(first), f"not valid YAML or JSON: {_error_text(first)}")
            return None
        for n in lines:
            r.warn(n, "a bare ${var} inside [...] or {...} is not valid YAML; read it as a quoted "
                   'string (write "${var}" to silence this)')
    if root is None:
        r.error(1, "the manifest is empty; expected keys such as project, cwd and phases or jobs")
    return root


def _yaml() -> YAML:
    y = YAML(typ="rt")  # one instance per parse: YAML() is not thread-safe
    y.max_depth = 64
    return y


def _error_line(e: Exception) -> int:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return mark.line + 1 if mark is not None else 1


def _error_text(e: Exception) -> str:
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = "; ".join(str(p) for p in parts if p)
    lines = str(e).splitlines()
    return text or (lines[0] if lines else type(e).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(kind: str, v: Any) -> tuple[Any, str | None]:
    """(value, None) when v fits kind, else (None, what was expected)."""
    is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "str":
        return (mx.text_of(v), None) if isinstance(v, str) or is_num else (None, "text")
    if kind == "bool":
        return (v, None) if isinstance(v, bool) else (None, "true or false")
    if kind in ("posint", "natural"):
        low = 1 if kind == "posint" else 0
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
        return (v, None) if ok else (None, f"an integer >= {low}")
    if kind == "nonneg":
        ok = is_num and math.isfinite(v) and v >= 0
        return (float(v), None) if ok else (None, "a number >= 0")
    if kind == "number_or_text":  # checked again after ${var} substitution
        return (v, None) if is_num or isinstance(v, str) else (None, "a number")
    if kind == "strlist":
        items = v if isinstance(v, list) else [v]
        ok = all(isinstance(i, (str, int, float)) and not isinstance(i, bool) for i in items)
        return ([mx.text_of(i) for i in items], None) if ok else (None, "a path/glob or a list of them")
    if kind == "gate":
        return (v, None) if isinstance(v, (str, dict)) else (None, "text or a mapping")
    if kind == "map":
        return (v, None) if isinstance(v, dict) else (None, "a mapping")
    if kind == "gpus":
        return _check_gpus(v)
    raise ValueError(f"unknown kind {kind}")


def _check_gpus(v: Any) -> tuple[Any, str | None]:
    expected = "a list of GPU indices such as [0, 1, 2]"
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            return None, expected
        v = [int(p) for p in parts]
    items = v if isinstance(v, list) else [v]
    if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        return list(dict.fromkeys(items)), None
    return None, expected
