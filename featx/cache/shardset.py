"""The shards folder of one extraction: which shards are live, each opened once, unreadable ones set aside.

A shard named in a merged shard's ``replaces`` is hidden (a merge killed
before it removed its parts). A shard that does not open is either
"passing" (permissions, too many open files: its rows count as missing for
now, the file stays) or "corrupt": while the extraction's lock is held,
corrupt shards are noted and moved aside (``.quarantine-*``) when the
holder finishes without error, by which time the run has recomputed the
rows its data needed.

Opening a shard through HDF5 costs about 1.7 ms of CPU (0.25 s for 147
shards). The header facts a reader needs (row count, width, where the key
and feature bytes lie, ``replaces``) are therefore kept in one small index,
``shards/.index.json``, written atomically by whoever opened a shard that the
index did not describe (the writer, when it lists the shards after a commit
or a merge), and read once per listing. An entry serves only the very file
it was made from (same inode, size and mtime, checked on the open file), so
a missing, stale, damaged or unwritable index only makes opening slower:
each shard is then opened through HDF5, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from .atomic import atomic_write_bytes, fsync_dir
from .layout import QUARANTINE_PREFIX
from .shards import Shard, problem, problem_of

INDEX_NAME = ".index.json"  # the shards' headers (see above); not a *.h5 file, so never taken for a shard
INDEX_VERSION = 1


class ShardSet:
    """The ``shards/`` folder of the extraction ``name``, with its opened shards kept between calls."""

    def __init__(self, folder: Path, name: str):
        self.folder = folder
        self.name = name
        self.locked = False  # set by the extraction's lock: only its holder quarantines
        self._opened: dict[Path, Shard] = {}
        self._failed: dict[Path, tuple] = {}  # path -> (stamp, "passing"/"corrupt", reason): warned once
        self._unreadable: dict[Path, str] = {}  # corrupt shards found while locked -> reason
        self._index: dict[str, dict] = {}  # shard name -> header record, as last read or written
        self._index_stamp: tuple | None = None
        self._index_writable = True

    def files(self) -> list[Path]:
        """Every ``*.h5`` shard file in the folder (hidden ones left out), in name order."""
        try:
            return sorted(p for p in self.folder.iterdir() if p.suffix == ".h5" and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def live(self, keep_unreadable: bool = False) -> list[tuple[Path, Shard | None]]:
        """(path, opened shard) of the shards in use, in name order; a shard named in a merged
        shard's ``replaces`` is hidden (a merge killed before it removed its parts). Unreadable
        shards come with None when ``keep_unreadable``, else are left out."""
        files = self.files()
        self._read_index()
        opened = [(p, self.open(p)) for p in files]
        hidden = {name for _, s in opened if s is not None for name in s.replaces}
        names = {p.name for p in files}
        for p in list(self._opened):  # forget files gone: their maps would keep the disk space
            if p.name not in names:
                del self._opened[p]
        self._write_index(opened)
        return [(p, s) for p, s in opened if p.name not in hidden and (s is not None or keep_unreadable)]

    def open(self, path: Path) -> Shard | None:
        """The shard at ``path``, opened once per version of the file; None if gone or unreadable."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._opened.get(path)
        if known is not None and known.stamp == stamp:
            return known
        failed = self._failed.get(path)
        if failed is not None and failed[0] == stamp:  # said once already
            if failed[1] == "corrupt" and self.locked:
                self._unreadable.setdefault(path, failed[2])
            return None
        try:
            shard = Shard(path, self._index.get(path.name))
        except FileNotFoundError:
            return None  # merged away between the listing and the opening
        except (OSError, KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, OSError) and not path.exists():
                return None  # the same, named an OSError by h5py (unlinked mid-open by another process)
            self._failed_to_open(path, stamp, exc)
            return None
        self._opened[path] = shard
        return shard

    def _read_index(self) -> None:
        """Load ``.index.json`` when it changed since last read; anything wrong with it means no index."""
        path = self.folder / INDEX_NAME
        try:
            st = os.stat(path)
        except OSError:
            self._index_stamp = None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._index_stamp:
            return
        self._index_stamp = stamp
        try:
            data = json.loads(path.read_bytes())
            if data.get("version") == INDEX_VERSION and isinstance(data.get("shards"), dict):
                self._index = data["shards"]
        except (OSError, ValueError, AttributeError):
            pass

    def _write_index(self, opened: list[tuple[Path, Shard | None]]) -> None:
        """Rewrite ``.index.json`` when the shards opened differ from it (one small atomic write)."""
        records = {p.name: r for p, s in opened if s is not None and (r := s.record()) is not None}
        if records == self._index or not records or not self._index_writable:
            return
        try:
            atomic_write_bytes(self.folder / INDEX_NAME,
                               json.dumps({"version": INDEX_VERSION, "shards": records}).encode())
        except OSError:  # a read-only cache, a full disk: the index is only a shortcut
            self._index_writable = False
            return
        self._index = records
        with contextlib.suppress(OSError):
            st = os.stat(self.folder / INDEX_NAME)
            self._index_stamp = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _failed_to_open(self, path: Path, stamp: tuple, exc: Exception) -> None:
        reason = " ".join(str(exc).split())[:160]
        self._failed[path] = (stamp, problem(exc), reason)
        if problem(exc) == "passing":
            warnings.warn(f"featx: cannot open cache shard {path} now ({reason}); left in place, "
                          "its rows count as missing for this run")
            return
        warnings.warn(f"featx: ignoring unreadable cache shard {path}: {reason}")
        if self.locked:
            self._unreadable[path] = reason

    def quarantined(self) -> list[Path]:
        try:
            return sorted(self.folder.glob(f"{QUARANTINE_PREFIX}*"))
        except FileNotFoundError:
            return []

    def quarantine_unreadable(self) -> None:
        """Move the corrupt shards noted while the lock was held aside (``.quarantine-*``)."""
        for shard, reason in list(self._unreadable.items()):
            if not shard.exists() or problem_of(shard) != "corrupt":
                continue  # gone, or readable after all (a passing error such as too many open files)
            aside = shard.with_name(f"{QUARANTINE_PREFIX}{shard.name}")
            try:
                os.replace(shard, aside)
            except OSError as exc:
                warnings.warn(f"featx: could not move unreadable shard {shard} aside: {exc}")
                continue
            self._failed.pop(shard, None)
            warnings.warn(
                f"featx: moved unreadable shard {shard.name} of {self.name} aside to shards/{aside.name} "
                f"({reason}); its rows are recomputed when needed"
            )

    def forget_unreadable(self) -> None:
        self._unreadable.clear()

    def drop_replaced(self) -> None:
        """Delete the shards that a merged shard in place replaces (its parts)."""
        files = self.files()
        opened = [self.open(p) for p in files]
        hidden = {name for s in opened if s is not None for name in s.replaces}
        gone = False
        for p in files:
            if p.name in hidden:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    gone = True
        if gone:
            fsync_dir(self.folder)
