"""Output protocol (ARIS_SPEC §2.7): versioned copies, atomic writes and MANIFEST.md rows.

Before an output is overwritten its current content is kept as `NAME_YYYYMMDD_HHmmss.md` next
to it (`_2`, `_3` on a same-second collision); timestamped copies are never deleted or
overwritten. Every file written gets one MANIFEST.md row; the manifest itself is append-only.
"""
from __future__ import annotations

import os
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Sequence

from handlers.tracker_file import fsync_dir, write_atomic

TMP_PREFIX = ".expbridge-tmp-"  # the watcher ignores these names
VERSIONED_RE = re.compile(r".*_\d{8}_\d{6}(?:_\d+)?\.[^.]+$")
MANIFEST_HEADER = (
    "# Research Output Manifest\n"
    "\n"
    "> Auto-maintained by ARIS skills (and expbridge). One row per file written; "
    "timestamped copies and the latest copy each get a row.\n"
    "\n"
    "| Timestamp | Skill | File | Stage | Description |\n"
    "|-----------|-------|------|-------|-------------|\n"
)
_TABLE_HEADER_RE = re.compile(r"^\|\s*Timestamp\s*\|\s*Skill\s*\|", re.MULTILINE)


def is_versioned(path: Path) -> bool:
    return bool(VERSIONED_RE.fullmatch(path.name))


def versioned_name(path: Path, now: datetime) -> Path:
    """The first free `NAME_YYYYMMDD_HHmmss[_N].ext` beside `path`."""
    base = f"{path.stem}_{now:%Y%m%d_%H%M%S}"
    candidate = path.with_name(base + path.suffix)
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{base}_{n}{path.suffix}")
    return candidate


def version_file(path: Path, now: datetime) -> Path | None:
    """Copy the current content to a new versioned name; None if there is nothing to keep."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    while True:
        target = versioned_name(path, now)
        tmp = _write_temp(path.parent, target.name, data, _mode_of(path))
        try:
            _place_exclusive(tmp, target)
        except FileExistsError:
            continue  # another writer took the name between the check and the link
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return target


def _place_exclusive(tmp: Path, target: Path) -> None:
    """Give `tmp`'s content the name `target` without ever replacing an existing file."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        # filesystems without hard links: a plain check-then-rename is the best there is
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(tmp, target)


def _mode_of(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None


def _write_temp(directory: Path, name: str, data: bytes, mode: int | None) -> Path:
    tmp = directory / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def append_text(path: Path, text: str, unless_contains: str | None = None) -> bool:
    """Append to an append-only file (EXPERIMENT_LOG.md); skip if `unless_contains` is present.

    The guard makes a replay after a crash harmless. Returns True when text was appended.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    if unless_contains and unless_contains in existing:
        return False
    sep = "\n" if existing and not existing.endswith("\n") else ""
    with path.open("a", encoding="utf-8") as fh:
        fh.write(sep + text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def manifest_row(now: datetime, file: str, description: str,
                 skill: str = "/experiment-bridge", stage: str = "implementation") -> str:
    """`| 2025-06-15 14:30 | /experiment-bridge | refine-logs/X.md | implementation | latest copy |`"""
    return f"| {now:%Y-%m-%d %H:%M} | {_cell(skill)} | {_cell(file)} | {_cell(stage)} | {_cell(description)} |"


def append_manifest_rows(manifest_path: Path, rows: Sequence[str]) -> None:
    """Append rows; write the ARIS header first when the file (or its table) does not exist yet."""
    if not rows:
        return
    existing = manifest_path.read_text(encoding="utf-8", errors="replace") if manifest_path.exists() else ""
    prefix = ""
    if not existing:
        prefix = MANIFEST_HEADER
    elif not _TABLE_HEADER_RE.search(existing):
        prefix = ("\n" if existing.endswith("\n") else "\n\n") + MANIFEST_HEADER.split("\n\n", 2)[2]
    elif not existing.endswith("\n"):
        prefix = "\n"
    append_text(manifest_path, prefix + "".join(r.rstrip("\n") + "\n" for r in rows))


def manifest_file_name(path: Path, manifest_path: Path) -> str:
    """The File column: relative to the manifest's directory (the project root) when inside it."""
    try:
        return path.resolve().relative_to(manifest_path.resolve().parent).as_posix()
    except ValueError:
        return str(path)


def write_output(path: Path, text: str, now: datetime, manifest_path: Path | None,
                 *, version: bool = True, description: str = "",
                 skill: str = "/experiment-bridge", stage: str = "implementation") -> list[Path]:
    """Keep the old copy (when `version`), write the new one atomically, record both in MANIFEST.

    Unchanged content is not rewritten (no copy, no row): regenerating identical results is a
    no-op. Returns the files written, the versioned copy first.
    """
    try:
        if path.read_text(encoding="utf-8") == text:
            return []
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    written: list[Path] = []
    if version and (old := version_file(path, now)) is not None:
        written.append(old)
    atomic_write(path, text)
    written.append(path)
    if manifest_path is not None:
        rows = [manifest_row(now, manifest_file_name(p, manifest_path), _row_description(p, path, description),
                             skill, stage) for p in written]
        append_manifest_rows(manifest_path, rows)
    return written


def _row_description(written: Path, latest: Path, description: str) -> str:
    base = "latest copy" if written == latest else f"timestamped copy of the previous {latest.name}"
    return f"{base}: {description}" if description else base
