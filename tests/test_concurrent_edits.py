"""Concurrent edits (DESIGN §9): a person's editor saves the tracker in a tight loop (Purpose, a
cell the daemon never writes, and the person's part of Notes, the cell the daemon shares) while
`expbridge run` writes statuses into the same file. No person's edit may be lost, and no reader
may ever see a torn file."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugins.projects import Proj, make_project

pytestmark = pytest.mark.slow
N_RUNS = 10

# The editor reads the file, appends one token to one cell of one row, and saves with a temp
# file + rename (as editors do). It builds on what it read, so a token the daemon clobbered is
# gone for good: every token it logged must be in the final file.
EDITOR = r'''
import os, random, re, sys, time
path, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random(int(sys.argv[4]))
k = 0
with open(log, "w") as out:
    while not os.path.exists(stop):
        k += 1
        text = open(path, encoding="utf-8").read()
        lines = text.split("\n")
        rows = [i for i, l in enumerate(lines) if re.match(r"\| R\d{3} \|", l)]
        i = rng.choice(rows)
        cells = lines[i].split("|")
        col = rng.choice(["purpose", "notes"])
        token = f"t{k}"
        if col == "purpose":
            cells[3] = f" {cells[3].strip()} {token} "
        else:  # the person's part of Notes is what precedes the daemon's `eb:` tail
            mine, sep, eb = cells[6].partition("eb:")
            head = mine.strip().rstrip(";").strip()
            cells[6] = f" {head} {token}" + (f"; eb:{eb}" if sep else " ")
        lines[i] = "|".join(cells)
        tmp = f"{path}.edit{os.getpid()}.swp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
        os.replace(tmp, path)
        out.write(f"{lines[i].split('|')[1].strip()} {col} {token}\n")
        out.flush()
        time.sleep(rng.uniform(0.0, 0.03))
'''


@dataclass
class Outcome:
    proj: Proj
    result: subprocess.CompletedProcess[str]
    edits: list[list[str]]
    torn_reads: list[str]
    reads: int
    final: str

    @property
    def lost(self) -> list[list[str]]:
        return [e for e in self.edits if not _has_token(self.final, *e)]


def make(root: Path) -> Proj:
    jobs = "\n".join(f"  - {{id: j{i:02d}, run: R{i % N_RUNS:03d}, milestone: M1, cmd: 'sleep 0.{1 + i % 4}'}}"
                     for i in range(3 * N_RUNS))
    p = make_project(root, f"cwd: .\nmax_parallel: 4\njobs:\n{jobs}\n",
                     [(f"R{i:03d}", "M1", "MUST") for i in range(N_RUNS)])
    p.tracker.write_text(p.tracker.read_text().replace("| TODO | |", "| TODO | mine |"))
    return p


def torn(text: str) -> str | None:
    rows = re.findall(r"^\| (R\d{3}) \|.*\|$", text, re.M)
    if not text.startswith("# Experiment Tracker") or sorted(rows) != [f"R{i:03d}" for i in range(N_RUNS)]:
        return text
    return None


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """One run of the daemon against the editor; the tests below judge it."""
    tmp = tmp_path_factory.mktemp("edits")
    p = make(tmp)
    log, stop = tmp / "edits.log", tmp / "stop"
    (tmp / "editor.py").write_text(EDITOR)
    editor = subprocess.Popen([sys.executable, str(tmp / "editor.py"), str(p.tracker), str(log), str(stop), "7"])
    bad: list[str] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            problem = torn(p.tracker.read_text(encoding="utf-8"))
            reads += 1
            if problem is not None:
                bad.append(problem)

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        result = p.run("cpu_slots: 4", timeout=120)
        time.sleep(0.5)  # the editor keeps going across the daemon's final writes
    finally:
        stop.touch()
        editor.wait(timeout=20)
        done.set()
        watcher.join(timeout=20)
    out = Outcome(p, result, [line.split() for line in log.read_text().splitlines()], bad, reads,
                  p.tracker.read_text(encoding="utf-8"))
    print(f"\nconcurrent edits: {len(out.edits)} person saves, {reads} reads of the file, {len(bad)} torn reads, "
          f"{len(out.lost)} person edits lost; run exit {result.returncode}")
    return out


def test_the_file_is_never_torn_and_the_daemon_finishes(outcome: Outcome) -> None:
    assert len(outcome.edits) >= 30, "the editor barely ran: the test proved nothing"
    assert outcome.reads >= 100
    assert not outcome.torn_reads, f"torn read:\n{outcome.torn_reads[0]}"
    assert outcome.result.returncode == 0, outcome.result.stdout[-2000:] + outcome.result.stderr[-2000:]
    assert outcome.proj.job_states() == {f"j{i:02d}": "succeeded" for i in range(3 * N_RUNS)}


@pytest.mark.xfail(strict=False, reason=(
    "racy by nature under `expbridge run`: an editor save that lands after the controller's last "
    "write and reverts a Status cell is re-asserted only by a later write (the daemon re-asserts "
    "stale copies of its own statuses on its next write; `run` has exited by then)."))
def test_the_daemons_statuses_survive_a_stale_save(outcome: Outcome) -> None:
    for i in range(N_RUNS):
        assert outcome.proj.status_cell(f"R{i:03d}") == "DONE", outcome.final


@pytest.mark.xfail(strict=True, reason=(
    "reported: person saves are lost (15-32 of ~300 here, before and after the move to swap_in). "
    "With swap_in, update_tracker publishes its first attempt (built on the text it read) and only "
    "then learns a save landed; until its second exchange the file lacks that save, and an editor "
    "that reloads on change (this one, VS Code, vim autoread) builds its next save on it. Check "
    "(st_ino, st_mtime_ns, st_size) just before exchanging, and exchange back at once when the "
    "replaced text is not what was read. Remove this marker when fixed."))
def test_no_person_edit_is_lost(outcome: Outcome) -> None:
    assert not outcome.lost, f"{len(outcome.lost)} person edits lost: {outcome.lost[:10]}\nfinal file:\n{outcome.final}"


def _has_token(text: str, run_id: str, col: str, token: str) -> bool:
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) > 6 and cells[1].strip() == run_id:
            cell = cells[3] if col == "purpose" else cells[6].partition("eb:")[0]
            return token in cell.split()
    return False
