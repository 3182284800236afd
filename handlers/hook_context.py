"""What a hook gets to read: the EB_CONTEXT_DIR folder (DESIGN §5).

Layout written here (only what is present; checklist.md always):

    plan_excerpt.md         the part of the plan this hook works on
    FINAL_PROPOSAL.md       the method description (refine-logs/, else the project root)
    IDEA_CANDIDATES.md      idea-stage/ first, else the project root (ARIS_SPEC §1.2)
    IDEA_REPORT.md          idea-stage/ first, else the project root
    code_paths.txt          one absolute path per line: where the code lives
    failure_logs/NN-<name>  the tails of failed runs' logs, in the order given (debug, rescue)
    checklist.md            the review checklist and the ground-truth rule (written last, so
                            extra_files cannot replace it)
    index.json              {project, phase, files}: what this folder holds

Give every hook invocation its own context_dir: files from an earlier call are overwritten
where names repeat but never deleted here.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from backends.procs import read_tail

FAILURE_LOG_BYTES = 200_000  # a hook needs the end of a log, not a multi-GB training log

CHECKLIST = """\
# Review checklist

Every item applies to the code that is about to run on GPUs. Report each problem as a finding
with a severity (BLOCKING, CRITICAL, MAJOR, MINOR, INFO), the file, the line, the issue and the fix.
BLOCKING and CRITICAL findings stop deployment until they are fixed.

1. **Method match.** The code implements the method in FINAL_PROPOSAL.md and the plan excerpt:
   the same model, loss, data, baselines and ablations, with nothing silently simplified.
2. **Every hyperparameter exposed.** Learning rate, batch size, epochs/steps, model size, seeds,
   dataset paths and every value the plan varies are command-line arguments or config keys,
   not constants buried in the code.
3. **Controllable seeds.** One seed argument sets every random source (python, numpy, torch,
   CUDA, data loader workers), and two runs with the same seed give the same result.
4. **Parseable outputs.** Each run writes its metrics to a machine-readable file (JSON or CSV)
   at the path the plan or manifest declares, with the metric names the plan uses.
5. **Logic bugs.** Train/eval mode switches, data leakage between splits, off-by-one in
   epochs or windows, wrong reduction or normalisation, metrics averaged the wrong way,
   results overwritten by parallel runs.

## The ground-truth rule

Evaluation compares predictions against the **dataset's labels**, never against another
model's output. A metric computed against a teacher, a baseline or an LLM's answers is not an
accuracy and is a BLOCKING finding, unless the plan explicitly defines it as an agreement
measure and names it that way.
"""


def _stage_or_root(project: Path, stage: str, name: str) -> Path | None:
    """ARIS reads from the stage folder first and falls back to the project root."""
    for candidate in (project / stage / name, project / name):
        if candidate.is_file():
            return candidate
    return None


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts:
        raise ValueError(f"context file name must be a relative path inside the folder: {name!r}")
    return rel


def _write(context_dir: Path, rel: str | PurePosixPath, text: str) -> str:
    target = context_dir / _safe_relative(str(rel))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return str(rel)


def _copy_failure_logs(context_dir: Path, logs: Sequence[Path]) -> list[str]:
    written: list[str] = []
    for i, log in enumerate(logs, start=1):
        text = read_tail(log, FAILURE_LOG_BYTES) if log.is_file() else f"(log not found: {log})\n"
        # numbered, so two attempts' logs with the same name both survive, in order
        written.append(_write(context_dir, PurePosixPath("failure_logs") / f"{i:02d}-{log.name}", text))
    return written


def _code_paths(project: Path, code_paths: Sequence[Path]) -> str:
    paths = list(code_paths) or [project, *([project / "base_repo"] if (project / "base_repo").is_dir() else [])]
    return "".join(f"{p.resolve()}\n" for p in paths)


def prepare_context(context_dir: Path, project: Path, phase: str, *, plan_excerpt: str | None = None,
                    extra_files: Mapping[str, str] = {}, failure_logs: Sequence[Path] = (),
                    code_paths: Sequence[Path] = ()) -> Path:
    """Fill context_dir for one hook call and return it. code_paths defaults to the project
    (and base_repo/ when it was cloned)."""
    context_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if plan_excerpt is not None:
        files.append(_write(context_dir, "plan_excerpt.md", plan_excerpt))
    for stage, name in (("refine-logs", "FINAL_PROPOSAL.md"), ("idea-stage", "IDEA_CANDIDATES.md"),
                        ("idea-stage", "IDEA_REPORT.md")):
        source = _stage_or_root(project, stage, name)
        if source is not None:
            shutil.copyfile(source, context_dir / name)
            files.append(name)
    files.append(_write(context_dir, "code_paths.txt", _code_paths(project, code_paths)))
    files.extend(_copy_failure_logs(context_dir, failure_logs))
    files.extend(_write(context_dir, name, text) for name, text in extra_files.items())
    files.append(_write(context_dir, "checklist.md", CHECKLIST))
    index = {"project": str(project.resolve()), "phase": phase, "files": list(dict.fromkeys(files))}
    _write(context_dir, "index.json", json.dumps(index, indent=2) + "\n")
    return context_dir
