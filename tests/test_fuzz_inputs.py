"""Fuzzing the three readers people feed (DESIGN §9), seeded with every real plan and tracker in
../shared/corpus plus the repo's manifest fixtures: mutated, truncated, spliced and byte-flipped
input never lets an exception escape, and every diagnostic names its file and a line inside it.

atheris is not used: it did not install here (no wheel reachable); hypothesis drives the
mutations instead."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.diagnostics import Diagnostic
from handlers.manifest import parse_manifest
from handlers.plan import parse_plan
from handlers.tracker import parse_tracker
from tests.plugins.common import REPO, corpus_dir

pytestmark = pytest.mark.slow
FIXTURES = REPO / "tests" / "fixtures"
EXAMPLES = REPO / "examples"
NAME = "refine-logs/FUZZ_INPUT"  # a file name the diagnostics must repeat


def _read(paths: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(paths)]


def _seeds(kind: str) -> list[str]:
    corpus = corpus_dir()
    if kind == "plan":
        return _read([*corpus.glob("*/refine-logs/EXPERIMENT_PLAN*.md"), *FIXTURES.glob("plans/*.md"),
                      *EXAMPLES.glob("*/refine-logs/EXPERIMENT_PLAN.md")])
    if kind == "tracker":
        return _read([*corpus.glob("*/refine-logs/EXPERIMENT_TRACKER*.md"), *FIXTURES.glob("tracker/*.md"),
                      *EXAMPLES.glob("*/refine-logs/EXPERIMENT_TRACKER.md")])
    return _read([*FIXTURES.glob("manifests/*.yaml"), *EXAMPLES.glob("*/refine-logs/EXPERIMENT_QUEUE.yaml")])


# Pieces a person (or a bad merge) puts into these files, spliced in at random lines.
SPLICES = ["|", "||", "| R001 |", "|---|", "```", "```yaml", "---", ":", "- ", "  - id: [", "{", "}",
           "jobs:", "phases:", "  depends_on: nowhere", "cmd: \"unterminated", "\t", "\ufeff", "\r", "\x00",
           "## Run Order and Milestones", "| Milestone | Goal | Runs |", "**expbridge**: PAUSED", "&a", "*a",
           "!!python/object:os.system", "<<: *a", "%YAML 1.1", "? complex", "运行", "é" * 3, "\\", "$(touch x)"]


def mutate(seed: str, ops: list[tuple[int, int, int]]) -> str:
    """Apply (op, position, argument) edits: truncate, delete lines, duplicate lines, splice a
    fragment, or flip a character."""
    text = seed
    for op, pos, arg in ops:
        lines = text.split("\n")
        at = pos % (len(lines) + 1)
        if op == 0:
            text = text[: pos % (len(text) + 1)]
        elif op == 1:
            text = "\n".join(lines[:at] + lines[at + 1 + arg % 5:])
        elif op == 2:
            text = "\n".join(lines[:at] + lines[at:at + 1 + arg % 5] * 2 + lines[at + 1 + arg % 5:])
        elif op == 3:
            text = "\n".join(lines[:at] + [SPLICES[arg % len(SPLICES)]] + lines[at:])
        elif text:
            i = pos % len(text)
            text = text[:i] + chr((ord(text[i]) + 1 + arg % 300) % 0x2FFF or 1) + text[i + 1:]
    return text


OPS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10**6), st.integers(0, 10**4)), max_size=8)
FUZZ = settings(max_examples=int(os.environ.get("EB_FUZZ_EXAMPLES", "150")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_diagnostics(diags: list[Diagnostic], text: str) -> None:
    last = text.count("\n") + 1
    for d in diags:
        assert d.file == NAME, f"diagnostic names {d.file!r}, not the file read: {d}"
        assert 0 <= d.line <= last + 1, f"line {d.line} outside a {last}-line file: {d}"
        assert d.severity in ("error", "warning")
        assert d.message.strip(), f"empty message: {d}"
        assert "internal error" not in d.message, f"a reader bug surfaced as a diagnostic: {d}"


def run_plan(text: str) -> None:
    _plan, diags = parse_plan(text, NAME)
    check_diagnostics(diags, text)


def run_tracker(text: str) -> None:
    tracker = parse_tracker(text, NAME)
    check_diagnostics(tracker.diagnostics, text)
    assert tracker.file == NAME


def run_manifest(text: str, tmp: Path) -> None:
    _manifest, diags = parse_manifest(text, NAME, tmp)
    check_diagnostics(diags, text)
    errors = [d for d in diags if d.severity == "error"]
    # a manifest error must point at a line a person can open, unless the whole file is at fault
    assert all(d.line >= 1 or "empty" in d.message or "no jobs" in d.message or "top level" in d.message
               for d in errors), errors


def test_seeds_are_present() -> None:
    assert len(_seeds("plan")) >= 15 and len(_seeds("tracker")) >= 15 and len(_seeds("manifest")) >= 5
    for seed in _seeds("plan"):
        run_plan(seed)
    for seed in _seeds("tracker"):
        run_tracker(seed)


@FUZZ
@given(data=st.data(), ops=OPS)
def test_plan_parser_survives_mutations(data, ops) -> None:
    seed = data.draw(st.sampled_from(_seeds("plan")))
    run_plan(mutate(seed, ops))


@FUZZ
@given(data=st.data(), ops=OPS)
def test_tracker_parser_survives_mutations(data, ops) -> None:
    seed = data.draw(st.sampled_from(_seeds("tracker")))
    run_tracker(mutate(seed, ops))


@FUZZ
@given(data=st.data(), ops=OPS)
def test_manifest_parser_survives_mutations(data, ops, tmp_path_factory) -> None:
    seed = data.draw(st.sampled_from(_seeds("manifest")))
    run_manifest(mutate(seed, ops), tmp_path_factory.getbasetemp())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(text=st.text(max_size=300), kind=st.sampled_from(["plan", "tracker", "manifest"]))
def test_random_text_in_any_reader(text, kind, tmp_path_factory) -> None:
    if kind == "plan":
        run_plan(text)
    elif kind == "tracker":
        run_tracker(text)
    else:
        run_manifest(text, tmp_path_factory.getbasetemp())
