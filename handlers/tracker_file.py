"""Atomic writes of people's files: temp file in the same directory, fsync, rename, fsync dir.

The temp name starts with `.expbridge-tmp-`, which the watcher ignores; the returned sha256 lets
it recognise our own write. Bytes round-trip exactly (surrogateescape), mode and owner are kept.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import tempfile
from pathlib import Path

TMP_PREFIX = ".expbridge-tmp-"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two names atomically. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err), b)


def identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def swap_in(path: Path, text: str, base: str | None = None,
            seen: tuple[int, int, int] | None = None) -> tuple[str, str | None]:
    """Put `text` at `path` and hand back exactly what it replaced, with no gap between the
    two: a save a person made a moment before our write comes back to us instead of being lost.
    With `base` (the text ours was built on), a replaced text that differs is swapped straight
    back, so our stale version is never left for an editor to reload. Returns (sha256 of our
    text, the replaced text; None where exchange is unsupported, after a plain atomic write)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    data = text.encode("utf-8", "surrogateescape")
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            _keep_owner(f.fileno(), st)
            os.fsync(f.fileno())
        if seen is not None and identity(path) != seen:  # saved since we read it: rebuild first
            return "", read_text(path)
        if not _exchange(tmp, str(path)):
            os.replace(tmp, path)
            fsync_dir(path.parent)
            return hashlib.sha256(data).hexdigest(), None
        replaced = Path(tmp).read_bytes().decode("utf-8", "surrogateescape")
        if base is not None and replaced != base:
            _exchange(tmp, str(path))  # theirs back in place at once; the caller rebuilds on it
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest(), replaced


def write_atomic(path: Path, text: str) -> str:
    """Temp file in the same directory, fsync, rename over, fsync the directory. Keeps the mode
    and, when we may, the owner (a root daemon must not take a person's file away from them)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # replace the file the link points to, keep the person's link
    data = text.encode("utf-8", "surrogateescape")
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777 if st is not None else 0o644)
            if st is not None:
                _keep_owner(f.fileno(), st)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()


def _keep_owner(fd: int, st: os.stat_result) -> None:
    if hasattr(os, "fchown") and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except PermissionError:
            pass  # not root: the file stays ours, as it would after any editor's save


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_text(path: Path) -> str:
    """The file as text, every byte kept (CRLF, odd bytes): what the writers edit."""
    return path.read_bytes().decode("utf-8", "surrogateescape")
