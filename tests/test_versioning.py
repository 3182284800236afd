"""Versioned copies, atomic writes and MANIFEST.md rows (ARIS_SPEC §2.7)."""
from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

from handlers.versioning import (
    MANIFEST_HEADER, TMP_PREFIX, append_manifest_rows, append_text, atomic_write, is_versioned,
    manifest_row, version_file, versioned_name, write_output,
)

NOW = datetime(2026, 11, 26, 5, 40, 7)
STAMP = "20261126_054007"


def manifest_rows(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| Timestamp"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_versioned_name_and_collisions(tmp_path: Path) -> None:
    path = tmp_path / "EXPERIMENT_RESULTS.md"
    first = versioned_name(path, NOW)
    assert first.name == f"EXPERIMENT_RESULTS_{STAMP}.md"
    first.write_text("a")
    second = versioned_name(path, NOW)
    assert second.name == f"EXPERIMENT_RESULTS_{STAMP}_2.md"
    second.write_text("b")
    assert versioned_name(path, NOW).name == f"EXPERIMENT_RESULTS_{STAMP}_3.md"
    assert all(is_versioned(p) for p in (first, second))
    assert not is_versioned(path)


def test_version_file_copies_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "EXPERIMENT_PLAN.md"
    assert version_file(path, NOW) is None
    path.write_text("v1")
    copies = []
    for text in ("v1", "v2", "v3"):
        path.write_text(text)
        copies.append(version_file(path, NOW))
    assert [c.name for c in copies] == [f"EXPERIMENT_PLAN_{STAMP}.md", f"EXPERIMENT_PLAN_{STAMP}_2.md",
                                        f"EXPERIMENT_PLAN_{STAMP}_3.md"]
    assert [c.read_text() for c in copies] == ["v1", "v2", "v3"]
    assert path.read_text() == "v3"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_concurrent_versioning_in_one_second_keeps_every_copy(tmp_path: Path) -> None:
    path = tmp_path / "EXPERIMENT_TRACKER.md"
    path.write_text("tracker")
    barrier = threading.Barrier(4)
    results: list[Path | None] = []

    def worker() -> None:
        barrier.wait(timeout=10)
        results.append(version_file(path, NOW))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len({p.name for p in results if p}) == 4
    assert all(p.read_text() == "tracker" for p in results if p)


def test_manifest_row_format() -> None:
    row = manifest_row(datetime(2025, 6, 15, 14, 30, 59), "refine-logs/EXPERIMENT_RESULTS.md", "latest copy")
    assert row == ("| 2025-06-15 14:30 | /experiment-bridge | refine-logs/EXPERIMENT_RESULTS.md "
                   "| implementation | latest copy |")
    assert manifest_row(NOW, "a|b.md", "x|y").count("\\|") == 2


def test_manifest_header_created_once_and_append_only(tmp_path: Path) -> None:
    manifest = tmp_path / "MANIFEST.md"
    append_manifest_rows(manifest, [manifest_row(NOW, "a.md", "one")])
    append_manifest_rows(manifest, [manifest_row(NOW, "b.md", "two"), manifest_row(NOW, "c.md", "three")])
    text = manifest.read_text()
    assert text.startswith(MANIFEST_HEADER)
    assert text.count("| Timestamp | Skill | File | Stage | Description |") == 1
    assert [r[2] for r in manifest_rows(manifest)] == ["a.md", "b.md", "c.md"]


def test_existing_manifest_bytes_are_kept(tmp_path: Path) -> None:
    manifest = tmp_path / "MANIFEST.md"
    user = "# My notes\n\nsome text without a table"
    manifest.write_text(user)
    append_manifest_rows(manifest, [manifest_row(NOW, "a.md", "one")])
    text = manifest.read_text()
    assert text.startswith(user)
    assert "| Timestamp | Skill | File | Stage | Description |" in text
    assert manifest_rows(manifest)[-1][2] == "a.md"


def test_write_output_versions_and_records_one_row_per_file(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    out = project / "refine-logs" / "EXPERIMENT_RESULTS.md"
    manifest = project / "MANIFEST.md"
    assert write_output(out, "v1\n", NOW, manifest) == [out]
    second = write_output(out, "v2\n", NOW, manifest)
    third = write_output(out, "v3\n", NOW, manifest)
    assert [p.name for p in second] == [f"EXPERIMENT_RESULTS_{STAMP}.md", "EXPERIMENT_RESULTS.md"]
    assert [p.name for p in third] == [f"EXPERIMENT_RESULTS_{STAMP}_2.md", "EXPERIMENT_RESULTS.md"]
    assert out.read_text() == "v3\n"
    assert second[0].read_text() == "v1\n" and third[0].read_text() == "v2\n"
    rows = manifest_rows(manifest)
    files = [r[2] for r in rows]
    versioned = sorted(p.name for p in out.parent.iterdir() if is_versioned(p))
    assert len(versioned) == 2
    for name in versioned:  # one row per versioned file
        assert files.count(f"refine-logs/{name}") == 1
    assert files.count("refine-logs/EXPERIMENT_RESULTS.md") == 3  # one per write of the latest copy
    assert all(r[0] == "2026-11-26 05:40" and r[1] == "/experiment-bridge" and r[3] == "implementation"
               for r in rows)
    assert [r[4] for r in rows if r[2].endswith("RESULTS.md")] == ["latest copy"] * 3


def test_unchanged_output_is_not_rewritten(tmp_path: Path) -> None:
    out, manifest = tmp_path / "EXPERIMENT_RESULTS.md", tmp_path / "MANIFEST.md"
    write_output(out, "same\n", NOW, manifest)
    before = manifest.read_text()
    assert write_output(out, "same\n", NOW, manifest) == []
    assert manifest.read_text() == before
    assert not any(is_versioned(p) for p in tmp_path.iterdir())


def test_write_output_without_versioning_or_manifest(tmp_path: Path) -> None:
    out = tmp_path / "EXPERIMENT_TRACKER.md"
    out.write_text("old")
    assert write_output(out, "new", NOW, None, version=False) == [out]
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["EXPERIMENT_TRACKER.md"]


def test_atomic_write_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.md"
    path.write_text("x")
    os.chmod(path, 0o600)
    atomic_write(path, "y")
    assert path.read_text() == "y" and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.md"]


def test_append_text_guard(tmp_path: Path) -> None:
    log = tmp_path / "refine-logs" / "EXPERIMENT_LOG.md"
    log.parent.mkdir()
    log.write_text("# Log\nno trailing newline")
    assert append_text(log, "## R001 — t\nbody\n", unless_contains="## R001 — t")
    assert not append_text(log, "## R001 — t\nbody\n", unless_contains="## R001 — t")
    assert log.read_text() == "# Log\nno trailing newline\n## R001 — t\nbody\n"
