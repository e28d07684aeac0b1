"""The feature cache: content-addressed, crash-safe HDF5 shards on disk.

Layout under the cache root (``./cache`` by default, ``FEATX_CACHE_DIR``)::

    memo.sqlite                      (path, size, mtime) -> sha256; images known to be bad (featx.memo)
    extractions/<name>/meta.json     the settings that make up the key
    extractions/<name>/shards/*.h5   immutable feature shards (.quarantine-* ones are unreadable, set aside;
                                     .staged-* ones are written by Ray workers, published by their driver)
    extractions/<name>/.lock         held by the one process computing into it
    datasets/<id>.h5                 one dataset seen through one extraction
    latest.json                      the most recent dataset view

A feature row is keyed by the sha256 of the image bytes inside an
extraction whose name carries a hash of everything else that changes the
result (backbone, weights fingerprint, input size, preprocessing, pooling,
tap point, precision, format version). Shards are written under a temporary
name and renamed into place, so a reader never sees half a file and a killed
run loses only what it had not flushed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import socket
import sqlite3
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import BrokenExtraction, CacheError, ExtractionRemoved, FeatxError
from .memo import Memo, decoder_version  # noqa: F401  (decoder_version: part of this module's API before the memo moved)
from .spec import FORMAT_VERSION, ExtractionSpec

CACHE_ENV = "FEATX_CACHE_DIR"
DEFAULT_CACHE_DIR = "cache"
_STR = None  # h5py string dtype, made on first use so importing featx stays light


def _h5():
    import h5py

    global _STR
    if _STR is None:
        _STR = h5py.string_dtype("utf-8")
    return h5py


def default_cache_dir() -> Path:
    """``$FEATX_CACHE_DIR``, else ``./cache``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish_file(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


# --------------------------------------------------------------------------- extractions

# Merging (docs/cache.md, "Merging"). A shard's size class is its tier: tier 0
# holds shards of fewer than TIER0_ROWS rows, tier t >= 1 those of
# TIER0_ROWS * FANOUT**(t-1) to TIER0_ROWS * FANOUT**t rows. When a tier holds
# FANOUT shards they are merged into one, which lands in a higher tier: a row
# is rewritten at most once per tier, so adding k rows to N costs
# O(k log N) of writing, and an extraction holds at most FANOUT - 1 shards
# per tier (18 at 1M rows).
FANOUT = 4
TIER0_ROWS = 1024
# Memory a merge or a read may fill with rows at once (the rest streams).
WORK_BYTES = 64 * 2**20
STORES = ("float32", "float16")
SORTED_ATTR = "sha256_sorted"  # rows sorted by sha256, no duplicates: readers binary-search the column
REPLACES_ATTR = "replaces"  # JSON list: the shards a merged shard replaces (hidden once it is in place)
# Errors that say nothing about a shard's bytes: its rows are missing for now, the file stays.
_PASSING_ERRNOS = {errno.EACCES, errno.EPERM, errno.EAGAIN, errno.ENOLCK, errno.EMFILE, errno.ENFILE,
                   errno.ENOMEM, errno.EIO, errno.EINTR, errno.EBUSY, errno.ESTALE}


def tier(rows: int) -> int:
    """The size class of a shard of ``rows`` rows (see FANOUT)."""
    if rows < TIER0_ROWS:
        return 0
    return 1 + int(math.log(rows / TIER0_ROWS, FANOUT) + 1e-9)


class _Shard:
    """One shard opened for reading: its sha256 keys in sorted order, and its rows.

    Both columns are read through a memory map of the file, at the offsets
    HDF5 gives for contiguous datasets (or for each chunk of an unfiltered
    chunked one, as older featx wrote), so a lookup touches only the pages
    a binary search visits and a read only the rows asked for. A shard
    whose rows are not sorted (written by an older featx) is sorted in
    memory when opened; merging rewrites it sorted.
    """

    def __init__(self, path: Path):
        self.path = path
        st = os.stat(path)
        self.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with _h5().File(path, "r") as f:
            feats, keys = f["features"], f["sha256"]
            if feats.ndim != 2 or keys.shape != (feats.shape[0],) or keys.dtype != np.dtype("S64"):
                raise OSError(f"not a featx shard (features {feats.shape}, sha256 {keys.shape} {keys.dtype})")
            self.n, self.width = (int(x) for x in feats.shape)
            self.dtype = feats.dtype
            self.sorted = bool(f.attrs.get(SORTED_ATTR, False))
            self.replaces = tuple(json.loads(f.attrs.get(REPLACES_ATTR, "[]")))
            feat_at = _offsets(feats, st.st_size)
            key_at = _offsets(keys, st.st_size)
            loaded_keys = keys[...] if key_at is None else None
        self._fd = os.open(path, os.O_RDONLY)  # kept: a merge may unlink the file while it is read
        self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        if loaded_keys is None:
            loaded_keys = np.ndarray((self.n,), "S64", buffer=self._map, offset=key_at[1][0])
        if self.sorted:
            self.keys, self.perm = loaded_keys, None
        else:
            self.perm = np.argsort(loaded_keys, kind="stable")
            self.keys = loaded_keys[self.perm]
        self._feat_at = feat_at

    def find(self, queries: np.ndarray) -> np.ndarray:
        """File rows of the sorted S64 ``queries``; -1 where absent."""
        if self.n == 0 or len(queries) == 0:
            return np.full(len(queries), -1, np.int64)
        i = np.searchsorted(self.keys, queries)
        i[i == self.n] = self.n - 1
        hit = self.keys[i] == queries
        rows = i if self.perm is None else self.perm[i]
        return np.where(hit, rows, -1).astype(np.int64)

    def __contains__(self, key: bytes) -> bool:
        """Whether the sha256 ``key`` (64 hex digits, as bytes) is in this shard: one binary search."""
        i = int(self.keys.searchsorted(key))
        return i < self.n and self.keys[i] == key

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The feature rows ``rows`` (file order), as float32."""
        out = np.empty((len(rows), self.width), np.float32)
        self.read_into(rows, out, np.arange(len(rows)))
        return out

    def read_into(self, rows: np.ndarray, out: np.ndarray, pos: np.ndarray) -> None:
        """``out[pos] = `` the feature rows ``rows`` (file order), widened to float32.

        Read with ``pread`` into a buffer, one call per run of adjacent rows,
        then copied to their places once. A memory map would count every
        page the kernel maps around a row (64 KB) in this process's memory.
        """
        rows = np.asarray(rows, np.int64)
        if self._feat_at is None:  # filtered (compressed) data: only HDF5 can read it
            uniq, inv = np.unique(rows, return_inverse=True)
            with _h5().File(self.path, "r") as f:
                out[pos] = f["features"][uniq].astype(np.float32)[inv]
            return
        kind, offsets, chunk = self._feat_at
        size = self.width * self.dtype.itemsize
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]
        if kind == "contiguous":
            at = offsets[0] + ranked * size
        else:
            at = np.asarray(offsets, np.int64)[ranked // chunk] + (ranked % chunk) * size
        cuts = (np.flatnonzero(np.diff(at) != size) + 1).tolist()
        runs = zip([0, *cuts], [*cuts, len(rows)])
        if self.dtype == out.dtype and out.flags.c_contiguous:  # straight into place: one pass over memory
            dest = memoryview(out).cast("B")
            places = (np.asarray(pos)[order] * size).tolist()
            for a, b in runs:
                for lo in range(a, b, 1024):  # IOV_MAX
                    hi = min(b, lo + 1024)
                    _pread_into(self._fd, [dest[x : x + size] for x in places[lo:hi]], int(at[lo]))
            return
        buf = np.empty((len(rows), self.width), self.dtype)
        view = memoryview(buf).cast("B")
        for a, b in runs:
            _pread_into(self._fd, [view[a * size : b * size]], int(at[a]))
        out[np.asarray(pos)[order]] = buf

    def __del__(self):
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)

    def release(self) -> None:
        """Unmap the key pages read so far: they stay in the page cache, not in this process's memory."""
        with contextlib.suppress(ValueError, OSError, AttributeError):
            self._map.madvise(mmap.MADV_DONTNEED)


def _pread_into(fd: int, views: list, offset: int) -> None:
    """Fill ``views`` (byte memoryviews) from the file's bytes at ``offset`` onwards, in order."""
    while views:
        got = os.preadv(fd, views, offset)
        if got <= 0:
            raise OSError(errno.EIO, "truncated shard (read past its end)")
        offset += got
        while views and got >= len(views[0]):  # a short read: go on where it stopped
            got -= len(views[0])
            views = views[1:]
        if got:
            views = [views[0][got:], *views[1:]]


def _offsets(ds, file_size: int):
    """Where a dataset's bytes lie in the file: ("contiguous", [offset], n) or ("chunked", [offsets], rows
    per chunk) for an unfiltered dataset; None where HDF5 must read it. Raises OSError where the bytes
    would lie past the end of the file (a truncated shard)."""
    n = ds.shape[0]
    row = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    plist = ds.id.get_create_plist()
    if plist.get_nfilters():
        return None
    if ds.chunks is None:
        offset = ds.id.get_offset()
        if offset is None:
            if n == 0:
                return ("contiguous", [0], n)
            raise OSError("its data was never written")
        if offset + n * row > file_size:
            raise OSError("truncated file (data past its end)")
        return ("contiguous", [offset], n)
    if ds.ndim != 2 and ds.ndim != 1 or ds.chunks[1:] != ds.shape[1:]:
        return None
    chunk = ds.chunks[0]
    count = ds.id.get_num_chunks()
    if count != -(-n // chunk):
        raise OSError("chunks missing")
    offsets = [0] * count
    for i in range(count):
        info = ds.id.get_chunk_info(i)
        c = info.chunk_offset[0] // chunk
        if info.byte_offset is None or info.byte_offset + chunk * row > file_size:
            raise OSError("truncated file (chunk past its end)")
        offsets[c] = info.byte_offset
    return ("chunked", offsets, chunk)


def _errno(exc: BaseException) -> int | None:
    """An error's errno, also where h5py only wrote it in its message ("errno = 28")."""
    code = getattr(exc, "errno", None)
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    return code


def _problem(exc: BaseException) -> str:
    """"passing" for an error that says nothing about a file's bytes (permissions, a lock on a network
    file system, too many open files), else "corrupt"."""
    if _errno(exc) in _PASSING_ERRNOS or "unable to lock file" in str(exc).lower():
        return "passing"
    return "corrupt"


class KnownRows:
    """The sha256 keys of an extraction, for ``in`` tests while a run adds rows.

    A lookup binary-searches each shard (O(log N), not a set of every key
    built first); keys added by the run are kept in a set. After many
    lookups (more than an eighth of the rows) it loads every key once,
    which is cheaper from then on.
    """

    def __init__(self, extraction: "Extraction"):
        self._extraction = extraction
        self._added: set[str] = set()
        self._all: set[str] | None = None
        self._lookups = 0
        self.refresh()

    def refresh(self) -> None:
        """Search the shards live now (called after a merge replaced some)."""
        self._shards = tuple(s for _, s in self._extraction._live() if s is not None)
        self._rows = sum(s.n for s in self._shards)

    def __contains__(self, sha) -> bool:
        if sha in self._added:
            return True
        if self._all is not None:
            return sha in self._all
        self._lookups += 1
        if self._lookups > max(4096, self._rows // 8):
            self._all = set(iter(self))
            return sha in self._all
        if not isinstance(sha, str) or len(sha) != 64:
            return False
        key = sha.encode()
        return any(key in s for s in self._shards)

    def add(self, sha: str) -> None:
        self._added.add(sha)

    def update(self, shas: Iterable[str]) -> None:
        self._added.update(shas)

    def __iter__(self) -> Iterator[str]:
        seen = set(self._added)
        yield from self._added
        for s in self._shards:
            for k in s.keys:
                sha = k.decode()
                if sha not in seen:
                    seen.add(sha)
                    yield sha

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class Extraction:
    """One extraction directory: the shards of one set of settings.

    ``error`` is set (and ``meta`` empty) for a broken extraction, one whose
    meta.json cannot be read; such an entry can only be listed and removed.
    An extraction made by ``Cache.extraction(create=True)`` has its
    meta.json written with its first shard (or view), so a run that fails
    before computing anything leaves no empty entry behind.
    """

    root: Path
    meta: dict
    error: str | None = None
    unsaved: bool = field(default=False, repr=False, compare=False)
    _locked: bool = field(default=False, init=False, repr=False, compare=False)
    _unreadable: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _opened: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _failed: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _knowns: weakref.WeakSet = field(default_factory=weakref.WeakSet, init=False, repr=False, compare=False)
    _own: set = field(default_factory=set, init=False, repr=False, compare=False)  # shards holding only this lock's rows

    def __repr__(self) -> str:
        return f"Extraction({str(self.root)!r}" + (f", error={self.error!r})" if self.error else ")")

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def spec(self) -> ExtractionSpec:
        """The extraction's :class:`~featx.spec.ExtractionSpec`, read from its ``meta.json``."""
        return ExtractionSpec.from_record(self.meta, where=f"Extraction {self.name}")

    settings = spec  # the fields used to be called settings

    @property
    def store(self) -> str:
        """The dtype rows are stored in (``float32``, or ``float16`` where asked for)."""
        return (self.meta.get("settings") or {}).get("store") or "float32"

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.shard_dir.iterdir() if p.suffix == ".h5" and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def shards(self) -> list[Path]:
        """The shards readers use: every ``shards/*.h5`` but those a merged shard replaces."""
        return [p for p, _ in self._live(keep_unreadable=True)]

    def _live(self, keep_unreadable: bool = False) -> list[tuple[Path, "_Shard | None"]]:
        """(path, opened shard) of the shards in use, in name order; a shard named in a merged
        shard's ``replaces`` is hidden (a merge killed before it removed its parts). Unreadable
        shards come with None when ``keep_unreadable``, else are left out."""
        files = self._files()
        opened = [(p, self._open(p)) for p in files]
        hidden = {name for _, s in opened if s is not None for name in s.replaces}
        names = {p.name for p in files}
        for p in list(self._opened):  # forget files gone: their maps would keep the disk space
            if p.name not in names:
                del self._opened[p]
        return [(p, s) for p, s in opened if p.name not in hidden and (s is not None or keep_unreadable)]

    def _open(self, path: Path) -> "_Shard | None":
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
            if failed[1] == "corrupt" and self._locked:
                self._unreadable.setdefault(path, failed[2])
            return None
        try:
            shard = _Shard(path)
        except FileNotFoundError:
            return None  # merged away between the listing and the opening
        except (OSError, KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, OSError) and not path.exists():
                return None  # the same, named an OSError by h5py (unlinked mid-open by another process)
            reason = " ".join(str(exc).split())[:160]
            self._failed[path] = (stamp, _problem(exc), reason)
            if _problem(exc) == "passing":
                warnings.warn(f"featx: cannot open cache shard {path} now ({reason}); left in place, "
                              "its rows count as missing for this run")
            else:
                warnings.warn(f"featx: ignoring unreadable cache shard {path}: {reason}")
                self._note_unreadable(path, exc)
            return None
        self._opened[path] = shard
        return shard

    def quarantined(self) -> list[Path]:
        try:
            return sorted(self.shard_dir.glob(".quarantine-*"))
        except FileNotFoundError:
            return []

    def save_meta(self) -> None:
        """Write meta.json if this extraction has none yet (first shard or view)."""
        meta_path = self.root / "meta.json"
        if not self.unsaved or meta_path.exists():
            self.unsaved = False
            return
        _writable_or_raise(self.root.parent, f"write extraction {self.name}")
        self.root.mkdir(parents=True, exist_ok=True)
        with _write_errors(self.root):
            atomic_write_json(meta_path, self.meta)
        self.unsaved = False

    @contextlib.contextmanager
    def lock(self, on_wait=None) -> Iterator[None]:
        """Exclusive right to add, merge or remove shards; released by the kernel if we die.

        Shards found unreadable while the lock is held are moved aside
        (``shards/.quarantine-*``) when the holder finishes without error:
        by then a run has recomputed the rows its data needed. Taking the
        lock also tidies what killed runs left: half-written ``.tmp-*``
        files, a removal's ``.trash-*`` folder, and the parts of a merge
        that was killed before it removed them.
        """
        _writable_or_raise(self.root if self.root.exists() else self.root.parent, f"write to extraction {self.name}")
        if self.unsaved:
            self.root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                with _write_errors(self.root):
                    fh = open(self.root / ".lock", "a+")
            except FileNotFoundError:
                raise ExtractionRemoved(f"Extraction {self.name} was removed (`featx cache rm`).") from None
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
            if self._same_file(fh):
                break
            # The folder was removed while we waited: our lock guards nothing.
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            if not self.unsaved:
                raise ExtractionRemoved(f"Extraction {self.name} was removed (`featx cache rm`) while this run waited for it.")
            self.root.mkdir(parents=True, exist_ok=True)
        self._locked = True
        try:
            # Holding the lock, no one else is writing shards: temporary files
            # there belong to a writer (or a merge) that was killed.
            for tmp in self.shard_dir.glob(".tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            _remove_leftovers(self.root.parent.parent, [self.root, self.root.parent, self.root.parent.parent / "datasets"])
            if not self.error:
                self._drop_replaced()
                # Staged shards are complete: a distributed run's driver died
                # before publishing them. Adopting them saves their rows.
                self.publish(self.staged())
                self._own.clear()  # adopted rows are not this run's to merge at its end
            yield
            self._quarantine_unreadable()
        finally:
            self._locked = False
            self._unreadable.clear()
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def _same_file(self, fh) -> bool:
        try:
            st = os.stat(self.root / ".lock")
        except FileNotFoundError:
            return False
        mine = os.fstat(fh.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _quarantine_unreadable(self) -> None:
        for shard, reason in list(self._unreadable.items()):
            if not shard.exists() or _problem_of(shard) != "corrupt":
                continue  # gone, or readable after all (a passing error such as too many open files)
            aside = shard.with_name(f".quarantine-{shard.name}")
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

    def _note_unreadable(self, shard: Path, exc: Exception) -> None:
        if self._locked and _problem(exc) == "corrupt":
            self._unreadable[shard] = " ".join(str(exc).split())[:160]

    def index(self) -> dict[str, tuple[Path, int]]:
        """sha256 -> (shard, row) over all readable shards; the first copy wins.

        Builds a dict of every row: for tools and tests. Runs use
        :meth:`known` and :meth:`read`, which binary-search each shard.
        """
        out: dict[str, tuple[Path, int]] = {}
        for path, shard in self._live():
            rows = np.arange(shard.n) if shard.perm is None else shard.perm
            for row, key in zip(rows.tolist(), shard.keys.tolist()):
                out.setdefault(key.decode(), (path, row))
        return out

    def known(self) -> KnownRows:
        """The extraction's keys as a set-like object for ``sha in known`` (and ``known.add``)."""
        k = KnownRows(self)
        self._knowns.add(k)
        return k

    def rows(self) -> int:
        """Rows in the live shards (a row copied into two shards, which only old caches hold, counts twice)."""
        return sum(s.n for _, s in self._live())

    def size_bytes(self) -> int:
        return sum(_file_size(p) for p in self.shards())

    def write_shard(self, features: np.ndarray, shas: Sequence[str], paths: Sequence[str], labels: Sequence[str]) -> Path:
        """Write one immutable shard atomically and return its path.

        Refuses (:class:`ExtractionRemoved`) when the extraction's meta.json
        is gone: a run must not resurrect an extraction removed under it.
        While the lock is held, shards of one size class are then merged
        (:meth:`merge_tiers`).
        """
        if self.meta.get("feature_width") is None:  # known once the model has run
            self.meta["feature_width"] = int(np.shape(features)[1])
        self.save_meta()
        if not (self.root / "meta.json").exists():
            raise ExtractionRemoved(
                f"Extraction {self.name} was removed (`featx cache rm`) while this run was writing to it; "
                "nothing more was written. Run the command again."
            )
        _writable_or_raise(self.root, f"write to extraction {self.name}")
        with _write_errors(self.root):
            self.shard_dir.mkdir(exist_ok=True)
        final = self.shard_dir / _shard_name()
        tmp = _tmp_name(final)
        try:
            with _write_errors(self.root):
                _write_shard_file(tmp, self.name, features, shas, paths, labels, store=self.store)
            _publish_file(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if self._locked:
            self._own.add(final.name)
            self.merge_tiers()
        return final

    def staged(self) -> list[Path]:
        """Complete shards that distributed workers wrote but no driver has published yet."""
        try:
            return sorted(self.shard_dir.glob(f"{STAGED_PREFIX}*.h5"))
        except FileNotFoundError:
            return []

    def publish(self, staged: Iterable[Path]) -> list[Path]:
        """Rename staged shards (``shards/.staged-*``, see :func:`write_staged_shard`) into place.

        Call while holding :meth:`lock`. The first shard also writes
        meta.json, with the feature width read from it. A staged shard that
        is not readable is deleted: its rows are computed again when needed.
        Shards of one size class are then merged (:meth:`merge_tiers`).
        """
        out = []
        for shard in staged:
            if self.meta.get("feature_width") is None:
                try:
                    with _h5().File(shard, "r") as f:
                        self.meta["feature_width"] = int(f["features"].shape[1])
                except (OSError, KeyError):
                    with contextlib.suppress(FileNotFoundError):
                        shard.unlink()
                    continue
            self.save_meta()
            if not (self.root / "meta.json").exists():
                raise ExtractionRemoved(f"Extraction {self.name} was removed (`featx cache rm`) while this run was writing to it.")
            final = shard.with_name(shard.name.removeprefix(STAGED_PREFIX))
            try:
                _publish_file(shard, final)
            except FileNotFoundError:  # reported twice (a retried task): published already
                if not final.exists():
                    continue
            out.append(final)
            self._own.add(final.name)
        if out and self._locked:
            self.merge_tiers()
        return out

    def read(self, shas: Sequence[str], index: dict | None = None) -> np.ndarray:
        """Feature rows for ``shas`` in that order, as float32; raises if any is missing.

        Each shard is binary-searched for the keys not found yet, in name
        order (the first copy wins), so reading k rows costs about
        O(k log N), whatever the size of the extraction. A merge may
        replace shards between the listing and the read (it puts the merged
        shard in place first): rows missing from a listing that changed
        make the read start over, a few times, before anything is reported
        missing. ``index`` is accepted for older callers and ignored.
        """
        width = int(self.meta["feature_width"])
        queries = np.array(list(shas), dtype="S64")
        order = np.argsort(queries, kind="stable")
        sorted_q = queries[order]
        for attempt in range(4):
            listing = self._files()
            out = np.empty((len(queries), width), dtype=np.float32)
            todo = np.arange(len(queries))  # positions in sorted_q still to find
            for _, shard in self._live():
                if not len(todo):
                    break
                rows = shard.find(sorted_q[todo])
                hit = rows >= 0
                if hit.any():
                    self._gather(shard, rows[hit], out, order[todo[hit]])
                todo = todo[~hit]
            if not len(todo):
                return out
            if attempt < 3 and self._files() != listing:
                continue
            first = sorted_q[todo[0]].decode()
            raise CacheError(
                f"{len(todo)} images are not in extraction {self.name} (first: {first[:12]}). "
                "Run `featx extract` again to compute them."
            )
        raise AssertionError("unreachable")

    @staticmethod
    def _gather(shard: "_Shard", rows: np.ndarray, out: np.ndarray, pos: np.ndarray) -> None:
        """out[pos] = the shard's rows, WORK_BYTES of them at a time, in file order."""
        step = max(1, WORK_BYTES // max(1, shard.width * shard.dtype.itemsize))
        by_row = np.argsort(rows, kind="stable")  # file order: the disk reads forward
        for lo in range(0, len(rows), step):
            sel = by_row[lo : lo + step]
            shard.read_into(rows[sel], out, pos[sel])
        shard.release()

    # -- merging
    def settle(self) -> int:
        """At the end of a run (holding :meth:`lock`): merge the shards that hold only this run's rows
        into one, then apply the size-class rule (:meth:`merge_tiers`). Returns the shards merged."""
        own = [p for p, _ in self._live() if p.name in self._own]
        merged = self.compact(only=own) if len(own) > 1 else 0
        return merged + self.merge_tiers()

    def merge_tiers(self) -> int:
        """Merge the shards of any size class that holds FANOUT of them (call while holding :meth:`lock`).

        Returns the number of shards merged. See FANOUT for the rule and
        docs/cache.md for why.
        """
        merged = 0
        while True:
            tiers: dict[int, list[Path]] = {}
            for path, shard in self._live():
                tiers.setdefault(tier(shard.n), []).append(path)
            full = [t for t in sorted(tiers) if len(tiers[t]) >= FANOUT]
            if not full:
                return merged
            got = self.compact(only=tiers[full[0]])
            if not got:
                return merged
            merged += got

    def compact(self, min_shards: int = 2, only: Sequence[Path] | None = None) -> int:
        """Merge shards (all, or ``only``) into one, streamed; returns the shards merged.

        Call while holding :meth:`lock`. Rows are merged in sha256 order,
        a few thousand at a time, into a new shard (duplicates dropped: the
        first copy in name order wins), so memory does not grow with the
        extraction. The merged shard is written under a temporary name,
        fsynced and renamed into place before the parts are removed; it
        names its parts (``replaces``), so a reader that lists both, or a
        merge killed before it removed them, never shows a row twice.
        Unreadable shards are left out (moved aside when the lock is
        released). A full disk is a :class:`CacheError`; the parts stay.
        """
        live = dict(self._live())
        wanted = [Path(p) for p in only] if only is not None else list(live)
        parts = [p for p in wanted if live.get(p) is not None]
        older = only is None and any(not live[p].sorted for p in parts)  # rewritten sorted, even alone
        if len(parts) < min_shards and not (older and parts):
            return 0
        shards = [live[p] for p in parts]
        final = self.shard_dir / _shard_name()
        tmp = _tmp_name(final)
        try:
            _merge_shards(tmp, self.name, shards, self.store, replaces=[p.name for p in parts])
            _publish_file(tmp, final)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if _errno(exc) in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"No space left on device while merging {len(parts)} shards of {self.name} "
                    f"({exc.strerror or exc}); the shards are kept as they were. Free some space and try again."
                ) from None
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if all(p.name in self._own for p in parts):
            self._own.add(final.name)
        self._drop_replaced()
        for k in list(self._knowns):
            k.refresh()
        return len(parts)

    def _drop_replaced(self) -> None:
        """Delete the shards that a merged shard in place replaces (its parts)."""
        files = self._files()
        opened = [self._open(p) for p in files]
        hidden = {name for s in opened if s is not None for name in s.replaces}
        gone = False
        for p in files:
            if p.name in hidden:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    gone = True
        if gone:
            _fsync_dir(self.shard_dir)


def _problem_of(shard: Path) -> str:
    """"ok", "passing" or "corrupt": whether a shard opens now."""
    try:
        _Shard(shard)
        return "ok"
    except FileNotFoundError:
        return "ok"
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return _problem(exc)


def _merge_shards(path: Path, extraction: str, shards: list[_Shard], store: str, replaces: list[str]) -> None:
    """Write the sorted, duplicate-free union of ``shards`` to ``path`` in bounded steps, and fsync it.

    A k-way merge over the shards' sorted keys: each round takes up to
    ``step`` keys from each shard, emits every key up to the smallest last
    key taken from a shard that has more, and copies those rows. A first
    pass over the keys alone counts the rows, so the datasets are created
    at their final size.
    """
    h5py = _h5()
    width = shards[0].width
    if any(s.width != width for s in shards):
        raise CacheError(f"Shards of {extraction} differ in width: {sorted({s.width for s in shards})}.")
    step = max(16, WORK_BYTES // (width * 4) // len(shards))
    total = sum(len(keys) for keys, _, _ in _merge_rounds(shards, step))
    files = [h5py.File(s.path, "r") for s in shards]
    strings = [dict() for _ in shards]  # unsorted (older) shards: their string columns, read once
    try:
        with h5py.File(path, "w") as f:
            feats = f.create_dataset("features", shape=(total, width), dtype=np.dtype(store))
            keys_out = f.create_dataset("sha256", shape=(total,), dtype="S64")
            paths_out = f.create_dataset("path", shape=(total,), dtype=_STR)
            labels_out = f.create_dataset("label", shape=(total,), dtype=_STR)
            at = 0
            for keys, src, rows in _merge_rounds(shards, step):
                n = len(keys)
                block = np.empty((n, width), np.float32)
                cols = {"path": np.empty(n, object), "label": np.empty(n, object)}
                for i in np.unique(src):
                    sel = np.flatnonzero(src == i)
                    block[sel] = shards[i].rows(rows[sel])
                    for name, col in cols.items():
                        col[sel] = _strings(files[i], shards[i], strings[i], name, rows[sel])
                feats[at : at + n] = block.astype(store, copy=False)
                keys_out[at : at + n] = keys
                paths_out[at : at + n] = cols["path"]
                labels_out[at : at + n] = cols["label"]
                at += n
                for s in shards:
                    s.release()
            f.attrs["extraction"] = extraction
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs[SORTED_ATTR] = True
            f.attrs[REPLACES_ATTR] = json.dumps(replaces)
    finally:
        for fh in files:
            fh.close()
    _fsync(path)


def _strings(f, shard: _Shard, cache: dict, name: str, rows: np.ndarray) -> np.ndarray:
    """A shard's string column at ``rows``: a slice for sorted shards (rows run forward), the whole
    column once for older, unsorted ones."""
    if not shard.sorted:
        if name not in cache:
            cache[name] = np.array(f[name].asstr()[...], dtype=object)
        return cache[name][rows]
    lo, hi = int(rows.min()), int(rows.max()) + 1
    return np.array(f[name].asstr()[lo:hi], dtype=object)[rows - lo]


def _merge_rounds(shards: list[_Shard], step: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(keys, shard index, file row) of the merged shards in key order, a round at a time; the
    first copy of a key (lowest shard index) wins."""
    cursor = [0] * len(shards)
    last = None
    while True:
        live = [i for i, s in enumerate(shards) if cursor[i] < s.n]
        if not live:
            return
        taken = {i: shards[i].keys[cursor[i] : cursor[i] + step] for i in live}
        more = [taken[i][-1] for i in live if cursor[i] + len(taken[i]) < shards[i].n]
        cutoff = min(more) if more else None
        keys, src, pos = [], [], []
        for i in live:
            k = taken[i]
            c = len(k) if cutoff is None else int(np.searchsorted(k, cutoff, side="right"))
            keys.append(np.array(k[:c]))
            src.append(np.full(c, i, np.int64))
            pos.append(np.arange(cursor[i], cursor[i] + c))
            cursor[i] += c
        keys, src, pos = np.concatenate(keys), np.concatenate(src), np.concatenate(pos)
        order = np.lexsort((src, keys))
        keys, src, pos = keys[order], src[order], pos[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        if last is not None and len(keys):
            first &= keys != last
        keys, src, pos = keys[first], src[first], pos[first]
        for s in shards:
            s.release()
        if len(keys):
            last = keys[-1]
            rows = pos.copy()
            for i in np.unique(src):
                if shards[i].perm is not None:  # an older shard: sorted in memory, rows in file order
                    sel = src == i
                    rows[sel] = shards[i].perm[pos[sel]]
            yield keys, src, rows


def _broken_message(e: Extraction) -> str:
    return f"Extraction {e.name} is broken: {e.error}. Remove it with `featx cache rm {e.name}`."


def _writable_or_raise(folder: Path, action: str) -> None:
    """A one-line :class:`CacheError` instead of a PermissionError deep inside h5py or sqlite."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CacheError(f"Cannot {action}: the cache folder {probe} is read-only (no write permission).")


@contextlib.contextmanager
def _write_errors(folder: Path):
    try:
        yield
    except PermissionError:
        raise CacheError(f"Cannot write to the cache folder {folder}: permission denied.") from None
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        raise CacheError(f"Cannot write to the cache folder {folder}: read-only file system.") from None


def _shard_name() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"


def _write_shard_file(path: Path, extraction: str, features, shas, paths, labels, store: str = "float32") -> None:
    """The shard schema (docs/cache.md): rows sorted by sha256 without duplicates, contiguous
    datasets; written and fsynced at ``path``."""
    h5py = _h5()
    keys = np.array(list(shas), dtype="S64")
    order = np.argsort(keys, kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    order = order[first]
    features = np.asarray(features)[order].astype(store)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("sha256", data=keys[order])
        f.create_dataset("path", data=[paths[i] for i in order], dtype=_STR)
        f.create_dataset("label", data=[labels[i] or "" for i in order], dtype=_STR)
        f.attrs["extraction"] = extraction
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs[SORTED_ATTR] = True
    _fsync(path)


STAGED_PREFIX = ".staged-"


def write_staged_shard(shard_dir: str | os.PathLike, extraction: str, features, shas, paths, labels,
                       store: str = "float32") -> str:
    """Write a shard for a driver to publish; used by distributed workers, which hold no lock.

    The name is a hash of the shard's sorted sha256 list, so a retried task
    that embeds the same rows rewrites the same file instead of adding a
    second copy. Written under ``.tmp-*``, then renamed to
    ``.staged-ray-<hash>.h5``: hidden from readers until
    :meth:`Extraction.publish` (or the next holder of the lock) renames it
    to ``ray-<hash>.h5``. Returns that staged name.
    """
    digest = hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()[:32]
    name = f"{STAGED_PREFIX}ray-{digest}.h5"
    final = Path(shard_dir) / name
    tmp = _tmp_name(final)
    _write_shard_file(tmp, extraction, features, shas, paths, labels, store=store)
    _publish_file(tmp, final)
    return name


def _publish_file(tmp: Path, final: Path) -> None:
    """Rename a complete, fsynced file into place and make the rename itself durable."""
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
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


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------- leftovers of killed runs

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_LEFTOVER = re.compile(r"^\.(?:tmp|trash)-(\d+)\.([0-9a-f]{6})-")
LEFTOVER_AGE = 3600.0  # seconds after which a leftover of another host (or an older featx) is stale


def _tmp_name(final: Path) -> Path:
    """``.tmp-<pid>.<host>-<random>-<name>`` beside ``final``: whose it is, so the next lock holder
    can tell a killed writer's file from one still being written."""
    return final.with_name(f".tmp-{os.getpid()}.{_HOST}-{uuid.uuid4().hex[:8]}-{final.name}")


def _trash_name(folder: Path) -> Path:
    return folder.with_name(f".trash-{os.getpid()}.{_HOST}-{uuid.uuid4().hex[:8]}-{folder.name}")


def _stale(path: Path, now: float) -> bool:
    """Whether a ``.tmp-*``/``.trash-*`` entry is a killed run's: its process (on this host) is gone,
    or it is older than LEFTOVER_AGE (another host's, or a name without its owner)."""
    found = _LEFTOVER.match(path.name)
    if found and found.group(2) == _HOST:
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


def _remove_leftovers(root: Path, folders: Iterable[Path]) -> None:
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


# --------------------------------------------------------------------------- dataset views


@dataclass
class DatasetView:
    """One dataset (its images, labels and splits) seen through one extraction."""

    path: Path
    source: str
    layout: str
    extraction: str
    class_names: list[str]
    created: float
    rows: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.path.stem

    def __repr__(self) -> str:
        from .reprs import ends

        return (f"DatasetView({self.source!r}, {self.layout}, {self.rows} rows, extraction {self.extraction}, "
                f"classes {ends(self.class_names, 5)}, {len(self.skipped)} skipped)")


# --------------------------------------------------------------------------- the cache


class Cache:
    """A featx cache root. Cheap to create; nothing is read until asked."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # -- layout
    def ensure(self) -> "Cache":
        """Create the layout; a read-only cache that already has it is left as it is."""
        with _write_errors(self.root):
            for sub in ("extractions", "datasets"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            gitignore = self.root / ".gitignore"
            if not gitignore.exists():
                atomic_write_bytes(gitignore, b"# featx cache: generated data, never committed\n*\n!README.md\n!.gitignore\n")
        return self

    def writable(self) -> bool:
        """Whether this process may write here (False for a read-only cache).

        A read-only cache still serves everything already extracted.
        """
        folders = [self.root / "extractions", self.root / "datasets"]
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return all(os.access(p, os.W_OK | os.X_OK) for p in [probe, *(f for f in folders if f.exists())])

    def memo(self) -> Memo:
        """The memo; read-only (lookups only) where this process may not write it."""
        path = self.root / "memo.sqlite"
        if not self.writable() or (path.exists() and not os.access(path, os.W_OK)):
            return Memo(path, readonly=True)
        self.ensure()
        try:
            return Memo(path)
        except sqlite3.OperationalError as exc:
            # Locked past the busy timeout, disk full, an I/O error, a file system without
            # working locks: the file may be fine. Never moved aside; this run reads what it can.
            warnings.warn(f"featx: the memo {path} cannot be written ({exc}); going on with it read-only "
                          "(see docs/filesystems.md)")
            return Memo(path, readonly=True)
        except sqlite3.DatabaseError as exc:  # not a database any more: it only saved work
            aside = path.with_name(f"memo.sqlite.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            warnings.warn(f"featx: the memo {path} was unreadable ({exc}); moved it aside to {aside.name} and started a new one")
            return Memo(path)

    # -- extractions
    def extraction(self, spec: ExtractionSpec, feature_width: int | None = None, create: bool = False) -> Extraction | None:
        """The extraction of ``spec``: None if absent, unless ``create``.

        A created extraction writes its meta.json with its first shard or
        dataset view: a run that fails before (bad weights, a crash while
        building the model) leaves no empty entry in ``featx cache list``.
        """
        root = self.root / "extractions" / spec.dirname
        found = self._load(root)
        if found is not None:
            if found.error:
                raise BrokenExtraction(_broken_message(found))
            return found
        if not create:
            return None
        meta = {
            **spec.record(),
            "key": spec.key,
            "feature_width": None if feature_width is None else int(feature_width),
            "created": time.time(),
        }
        return Extraction(root, meta, unsaved=True)

    @staticmethod
    def _load(root: Path) -> Extraction | None:
        """The extraction in ``root``; broken (``error`` set) if its meta.json is unreadable.

        A folder with neither meta.json nor shards is a run that never
        wrote anything (or is about to): not an extraction.
        """
        meta_path = root / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
                raise ValueError("no settings in it")
            ExtractionSpec.from_record(meta)
            return Extraction(root, meta)
        except FileNotFoundError:
            if not Extraction(root, {})._files():
                return None
            return Extraction(root, {}, error="meta.json is missing")
        except (OSError, ValueError, TypeError, FeatxError) as exc:
            reason = " ".join(str(exc).split())[:120]
            return Extraction(root, {}, error=f"meta.json is unreadable ({type(exc).__name__}: {reason})")

    def extractions(self, broken: bool = False) -> list[Extraction]:
        """The cached extractions; with ``broken=True`` also those whose meta.json is unreadable."""
        out = []
        base = self.root / "extractions"
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            e = self._load(d)
            if e is not None and (broken or not e.error):
                out.append(e)
        return out

    def get_extraction(self, name: str, broken: bool = False) -> Extraction:
        """An extraction by directory name or unique prefix of it or of its key.

        A broken extraction is an error that says how to remove it, unless
        ``broken=True`` (what removal needs).
        """
        every = self.extractions(broken=True)
        exact = [e for e in every if e.name == name]
        matches = exact or [e for e in every if e.name.startswith(name) or e.meta.get("key", "").startswith(name)]
        if len(matches) == 1:
            if matches[0].error and not broken:
                raise BrokenExtraction(_broken_message(matches[0]))
            return matches[0]
        if not matches:
            raise CacheError(f"No extraction {name!r} in {self.root}. `featx cache list` shows what is cached.")
        raise CacheError(f"{name!r} matches {len(matches)} extractions: {', '.join(e.name for e in matches)}.")

    def remove_extraction(self, extraction: Extraction, on_wait=None) -> list[DatasetView]:
        """Delete an extraction and the dataset views that read it.

        Waits for the extraction's lock, so a running extraction finishes
        first; a run that waited for it afterwards refuses to write
        (:class:`ExtractionRemoved`) instead of recreating the folder.
        """
        _writable_or_raise(self.root / "extractions", f"remove {extraction.name}")
        _writable_or_raise(self.root / "datasets", f"remove the dataset views of {extraction.name}")
        with extraction.lock(on_wait=on_wait):
            views = [v for v in self.views() if v.extraction == extraction.name]
            for v in views:
                with contextlib.suppress(FileNotFoundError):
                    v.path.unlink()
            latest = self.latest_view_id()
            if latest and any(v.id == latest for v in views):
                with contextlib.suppress(FileNotFoundError):
                    (self.root / "latest.json").unlink()
            trash = _trash_name(extraction.root)
            os.replace(extraction.root, trash)  # one rename: readers see all or nothing
            _fsync_dir(trash.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return views

    # -- dataset views
    def write_view(
        self,
        extraction: Extraction,
        source: str,
        layout: str,
        class_names: Sequence[str],
        paths: Sequence[str],
        shas: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        skipped: Sequence[tuple[str, str]] = (),
        set_latest: bool = True,
    ) -> DatasetView:
        """Record a dataset's rows (path, sha256, label, split) for an extraction.

        Only ``featx extract`` writes views: they are what ``fit-head`` and
        ``load_features`` read, so predicting never changes them. A dataset
        none of whose images could be read records its view (with the
        skipped files) but creates no extraction. In a read-only cache, an
        identical view already there is returned as it is; anything else is
        a :class:`CacheError`.
        """
        h5py = _h5()
        vid = hashlib.sha256(f"{source}\0{extraction.name}".encode()).hexdigest()[:16]
        final = self.root / "datasets" / f"{vid}.h5"
        if not self.writable():
            return self._unchanged_view(final, extraction, paths, shas, labels, splits, skipped)
        self.ensure()
        if extraction.meta.get("feature_width") is not None:
            extraction.save_meta()
        tmp = _tmp_name(final)
        created = time.time()
        with h5py.File(tmp, "w") as f:
            f.create_dataset("path", data=list(paths), dtype=_STR)
            f.create_dataset("sha256", data=np.array(shas, dtype="S64"))
            f.create_dataset("label", data=np.asarray(labels, dtype=np.int32))
            f.create_dataset("split", data=list(splits), dtype=_STR)
            f.create_dataset("skipped_path", data=[p for p, _ in skipped], dtype=_STR)
            f.create_dataset("skipped_reason", data=[r for _, r in skipped], dtype=_STR)
            f.attrs["source"] = source
            f.attrs["layout"] = layout
            f.attrs["extraction"] = extraction.name
            f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["created"] = created
            f.attrs["format_version"] = FORMAT_VERSION
        _fsync(tmp)
        _publish_file(tmp, final)
        if set_latest:
            atomic_write_json(self.root / "latest.json", {"view": vid, "extraction": extraction.name, "source": source})
        return self._view_info(final)

    def _unchanged_view(self, final: Path, extraction, paths, shas, labels, splits, skipped) -> DatasetView:
        try:
            if extraction.unsaved:
                raise KeyError("no extraction")
            view = self._view_info(final)
            cols = self.read_view(view)
            same = (
                list(cols["path"]) == list(paths)
                and list(cols["sha256"]) == list(shas)
                and np.array_equal(cols["label"], np.asarray(labels, dtype=np.int32))
                and list(cols["split"]) == list(splits)
                and view.skipped == [tuple(x) for x in skipped]
            )
        except (OSError, KeyError, ValueError):
            same = False
        if not same:
            raise CacheError(
                f"Cannot record this dataset: the cache folder {self.root} is read-only and does not hold "
                "these features yet. Extract into a writable --cache-dir."
            )
        return view

    def _view_info(self, path: Path) -> DatasetView:
        with _h5().File(path, "r") as f:
            skipped = list(zip(f["skipped_path"].asstr()[...], f["skipped_reason"].asstr()[...]))
            return DatasetView(
                path=path,
                source=str(f.attrs["source"]),
                layout=str(f.attrs["layout"]),
                extraction=str(f.attrs["extraction"]),
                class_names=json.loads(f.attrs["class_names"]),
                created=float(f.attrs["created"]),
                rows=int(f["path"].shape[0]),
                skipped=skipped,
            )

    def views(self) -> list[DatasetView]:
        out = []
        base = self.root / "datasets"
        if not base.is_dir():
            return out
        for p in base.glob("*.h5"):
            if p.name.startswith("."):
                continue
            try:
                out.append(self._view_info(p))
            except (OSError, KeyError, ValueError) as exc:
                warnings.warn(f"featx: ignoring unreadable dataset view {p}: {exc}")
        return sorted(out, key=lambda v: v.created)

    def latest_view_id(self) -> str | None:
        try:
            return json.loads((self.root / "latest.json").read_text())["view"]
        except (OSError, ValueError, KeyError):
            return None

    def read_view(self, view: DatasetView) -> dict:
        with _h5().File(view.path, "r") as f:
            return {
                "path": np.array(f["path"].asstr()[...], dtype=object),
                "sha256": np.array([x.decode() for x in f["sha256"][...]], dtype=object),
                "label": f["label"][...],
                "split": np.array(f["split"].asstr()[...], dtype=object),
            }
