"""The extraction lock: one process at a time adds, merges or removes an extraction's shards.

An ``flock`` on ``extractions/<name>/.lock``, released by the kernel if the
holder dies. Taking it also tidies what killed runs left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING, Iterator

from ..errors import ExtractionRemoved
from .atomic import remove_leftovers, writable_or_raise, write_errors

if TYPE_CHECKING:
    from .extraction import Extraction


@contextlib.contextmanager
def hold(ext: "Extraction", on_wait=None) -> Iterator[None]:
    """Hold ``ext``'s lock for the body (see :meth:`Extraction.lock`)."""
    writable_or_raise(ext.root if ext.root.exists() else ext.root.parent, f"write to extraction {ext.name}")
    if ext.unsaved:
        ext.root.mkdir(parents=True, exist_ok=True)
    fh = _acquire(ext, on_wait)
    ext._shardset.locked = True
    try:
        _tidy(ext)
        yield
        ext._shardset.quarantine_unreadable()
    finally:
        ext._shardset.locked = False
        ext._shardset.forget_unreadable()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _acquire(ext: "Extraction", on_wait):
    """The locked ``.lock`` file, waiting for another holder (``on_wait`` is called first)."""
    while True:
        try:
            with write_errors(ext.root):
                fh = open(ext.root / ".lock", "a+")
        except FileNotFoundError:
            raise ExtractionRemoved(f"Extraction {ext.name} was removed (`featx cache rm`).") from None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(fh, fcntl.LOCK_EX)
        except BaseException:
            fh.close()
            raise
        if _same_file(ext, fh):
            return fh
        # The folder was removed while we waited: our lock guards nothing.
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
        if not ext.unsaved:
            raise ExtractionRemoved(f"Extraction {ext.name} was removed (`featx cache rm`) while this run waited for it.")
        ext.root.mkdir(parents=True, exist_ok=True)


def _same_file(ext: "Extraction", fh) -> bool:
    try:
        st = os.stat(ext.root / ".lock")
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _tidy(ext: "Extraction") -> None:
    """What killed runs left: half-written ``.tmp-*`` files, a removal's ``.trash-*`` folder, the
    parts of a merge killed before it removed them, and staged shards no driver published."""
    # Holding the lock, no one else is writing shards: temporary files
    # there belong to a writer (or a merge) that was killed.
    for tmp in ext.shard_dir.glob(".tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    remove_leftovers(ext.root.parent.parent, [ext.root, ext.root.parent, ext.root.parent.parent / "datasets"])
    if ext.error:
        return
    ext._drop_replaced()
    # Staged shards are complete: a distributed run's driver died before
    # publishing them. Adopting them saves their rows.
    ext.publish(ext.staged())
    ext._own.clear()  # adopted rows are not this run's to merge at its end
