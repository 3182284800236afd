"""The README's two commands, verbatim: the quickstart runs to DONE in a fresh virtual
environment, and CI calls the README's test command."""
from __future__ import annotations

import os
import re
import sys
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.plugins.common import REPO

pytestmark = pytest.mark.slow


def readme_commands() -> tuple[str, str]:
    lines = [ln.strip() for ln in (REPO / "README.md").read_text().splitlines()]
    run = next(ln for ln in lines if ln.endswith("expbridge run examples/quickstart"))
    test = next(ln for ln in lines if ln.startswith("bash tools/test.sh"))
    return run, test


def copy_checkout(dest: Path) -> None:
    """The files a clone would have (tracked and new-but-not-ignored), nothing else."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_ci_runs_the_readme_test_command() -> None:
    _, test = readme_commands()
    assert test in (REPO / ".ci" / "run").read_text()


def test_quickstart_command_runs_verbatim_in_a_fresh_venv(tmp_path: Path) -> None:
    run, _ = readme_commands()
    checkout = tmp_path / "clone"
    copy_checkout(checkout)
    venv_bin = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p != venv_bin)
    env = {"PATH": path, "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = subprocess.run(["bash", "-c", run], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every must-run run DONE" in out.stdout
    tracker = (checkout / "examples/quickstart/refine-logs/EXPERIMENT_TRACKER.md").read_text()
    rows = [ln for ln in tracker.splitlines() if re.match(r"\| R\d{3} ", ln)]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        if cells[7] == "MUST":
            assert cells[8] == "DONE" and re.search(r"eb: acc=0\.\d+", cells[9]), row
    assert (checkout / "examples/quickstart/refine-logs/EXPERIMENT_RESULTS.md").exists()
