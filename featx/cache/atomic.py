"""Files that are whole or absent: atomic writes, durable renames, and tidying what killed runs left.

Write to a temporary name in the same folder (:func:`~featx.cache.layout.tmp_name`),
fsync, then ``os.replace`` and fsync the folder: a reader sees the old or
the new file, never half of one, and the rename survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Iterable

from ..errors import CacheError
from .layout import HOST, tmp_name

_LEFTOVER = re.compile(r"^\.(?:tmp|trash)-(\d+)\.([0-9a-f]{6})-")
LEFTOVER_AGE = 3600.0  # seconds after which a leftover of another host (or an older featx) is stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish_file(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def publish_file(tmp: Path, final: Path) -> None:
    """Rename a complete, fsynced file into place and make the rename itself durable."""
    os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """fsync a directory, so that a rename in it survives a power loss (where the file system allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def writable_or_raise(folder: Path, action: str) -> None:
    """A one-line :class:`CacheError` instead of a PermissionError deep inside h5py or sqlite."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CacheError(f"Cannot {action}: the cache folder {probe} is read-only (no write permission).")


@contextlib.contextmanager
def write_errors(folder: Path):
    """Turn permission and read-only-file-system errors into one-line :class:`CacheError`\\ s."""
    try:
        yield
    except PermissionError:
        raise CacheError(f"Cannot write to the cache folder {folder}: permission denied.") from None
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        raise CacheError(f"Cannot write to the cache folder {folder}: read-only file system.") from None


# --------------------------------------------------------------------------- leftovers of killed runs


def _stale(path: Path, now: float) -> bool:
    """Whether a ``.tmp-*``/``.trash-*`` entry is a killed run's: its process (on this host) is gone,
    or it is older than LEFTOVER_AGE (another host's, or a name without its owner)."""
    found = _LEFTOVER.match(path.name)
    if found and found.group(2) == HOST:
        return not _alive(int(found.group(1)))
    try:
        return now - path.lstat().st_mtime > LEFTOVER_AGE
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_leftovers(root: Path, folders: Iterable[Path]) -> None:
    """Delete the ``.tmp-*`` files and ``.trash-*`` folders that killed runs left in ``folders``
    (and the cache root): only those whose owner is gone (see :func:`_stale`)."""
    now = time.time()
    for folder in [root, *folders]:
        try:
            entries = [p for p in folder.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
        except OSError:
            continue
        for p in entries:
            if not _stale(p, now):
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                warnings.warn(f"featx: could not remove {p}, left by a killed run: {exc}")
