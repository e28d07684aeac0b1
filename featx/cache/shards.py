"""The shard format: one immutable HDF5 file of feature rows, sorted by sha256.

A shard holds ``features`` (rows x width, float32 or float16), ``sha256``
(S64, sorted, no duplicates), ``path`` and ``label`` (strings), and the
attributes ``extraction``, ``format_version``, ``sha256_sorted`` and, for a
merged shard, ``replaces`` (docs/cache.md, "Shard format"). Readers
binary-search the key column and ``preadv`` the rows they need.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import re
from pathlib import Path

import numpy as np

from ..spec import FORMAT_VERSION
from .atomic import fsync

STORES = ("float32", "float16")
SORTED_ATTR = "sha256_sorted"  # rows sorted by sha256, no duplicates: readers binary-search the column
REPLACES_ATTR = "replaces"  # JSON list: the shards a merged shard replaces (hidden once it is in place)
# Memory a merge or a read may fill with rows at once (the rest streams).
WORK_BYTES = 64 * 2**20
# Errors that say nothing about a shard's bytes: its rows are missing for now, the file stays.
_PASSING_ERRNOS = {errno.EACCES, errno.EPERM, errno.EAGAIN, errno.ENOLCK, errno.EMFILE, errno.ENFILE,
                   errno.ENOMEM, errno.EIO, errno.EINTR, errno.EBUSY, errno.ESTALE}


def h5():
    """h5py, imported on first use so that importing featx stays light."""
    import h5py

    return h5py


def string_dtype():
    return h5().string_dtype("utf-8")


class Shard:
    """One shard opened for reading: its sha256 keys in sorted order, and its rows.

    Both columns are read through a memory map of the file, at the offsets
    HDF5 gives for contiguous datasets (or for each chunk of an unfiltered
    chunked one, as older featx wrote), so a lookup touches only the pages
    a binary search visits and a read only the rows asked for. A shard
    whose rows are not sorted (written by an older featx) is sorted in
    memory when opened; merging rewrites it sorted.
    """

    def __init__(self, path: Path, record: dict | None = None):
        """Open the shard at ``path``; with ``record`` (from :meth:`record`, kept in the shard index) when
        it describes this very file (same inode, size and mtime), without opening HDF5 at all."""
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)  # kept: a merge may unlink the file while it is read
        try:
            st = os.fstat(self._fd)
            self.stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if record is None or tuple(record["stamp"]) != self.stamp:
                record = self._header(st.st_size)
            self.n, self.width, self.dtype = int(record["n"]), int(record["width"]), np.dtype(record["dtype"])
            self.sorted, self.replaces = bool(record["sorted"]), tuple(record["replaces"])
            self._feat_at, key_at = record["feat_at"], record["key_at"]
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if st.st_size else None
            if key_at is None:
                with h5().File(path, "r") as f:
                    loaded_keys = f["sha256"][...]
            else:
                loaded_keys = np.ndarray((self.n,), "S64", buffer=self._map, offset=key_at[1][0]) if self.n else \
                    np.empty(0, "S64")
        except BaseException:
            os.close(self._fd)
            self._fd = -1  # closed: __del__ must not close a number the process may reuse
            raise
        if self.sorted:
            self.keys, self.perm = loaded_keys, None
        else:
            self.perm = np.argsort(loaded_keys, kind="stable")
            self.keys = loaded_keys[self.perm]
        self._record = {"stamp": list(self.stamp), **{k: v for k, v in record.items() if k != "stamp"}}

    def _header(self, file_size: int) -> dict:
        """What :meth:`__init__` needs from the HDF5 metadata, checked (shapes, types, data inside the file)."""
        with h5().File(self.path, "r") as f:
            feats, keys = f["features"], f["sha256"]
            if feats.ndim != 2 or keys.shape != (feats.shape[0],) or keys.dtype != np.dtype("S64"):
                raise OSError(f"not a featx shard (features {feats.shape}, sha256 {keys.shape} {keys.dtype})")
            header = {"n": int(feats.shape[0]), "width": int(feats.shape[1]), "dtype": feats.dtype.str,
                    "sorted": bool(f.attrs.get(SORTED_ATTR, False)),
                    "replaces": list(json.loads(f.attrs.get(REPLACES_ATTR, "[]"))),
                    "feat_at": _offsets(feats, file_size), "key_at": _offsets(keys, file_size)}
        return json.loads(json.dumps(header))  # as the index holds it (lists, not tuples): comparable

    def record(self) -> dict | None:
        """This shard's header as plain JSON data (for the shard index), or None where HDF5 must read its keys."""
        return None if self._record["key_at"] is None else self._record

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
            with h5().File(self.path, "r") as f:
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

    def gather(self, rows: np.ndarray, out: np.ndarray, pos: np.ndarray) -> None:
        """``out[pos] = `` the rows ``rows``, WORK_BYTES of them at a time, in file order."""
        step = max(1, WORK_BYTES // max(1, self.width * self.dtype.itemsize))
        by_row = np.argsort(rows, kind="stable")  # file order: the disk reads forward
        for lo in range(0, len(rows), step):
            sel = by_row[lo : lo + step]
            self.read_into(rows[sel], out, pos[sel])
        self.release()

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


# --------------------------------------------------------------------------- why a shard does not open


def errno_of(exc: BaseException) -> int | None:
    """An error's errno, also where h5py only wrote it in its message ("errno = 28")."""
    code = getattr(exc, "errno", None)
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    return code


def problem(exc: BaseException) -> str:
    """"passing" for an error that says nothing about a file's bytes (permissions, a lock on a network
    file system, too many open files), else "corrupt"."""
    if errno_of(exc) in _PASSING_ERRNOS or "unable to lock file" in str(exc).lower():
        return "passing"
    return "corrupt"


def problem_of(shard: Path) -> str:
    """"ok", "passing" or "corrupt": whether a shard opens now."""
    try:
        Shard(shard)
        return "ok"
    except FileNotFoundError:
        return "ok"
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return problem(exc)


# --------------------------------------------------------------------------- writing


def write_shard_file(path: Path, extraction: str, features, shas, paths, labels, store: str = "float32") -> None:
    """The shard schema (docs/cache.md): rows sorted by sha256 without duplicates, contiguous
    datasets; written and fsynced at ``path``."""
    keys = np.array(list(shas), dtype="S64")
    order = np.argsort(keys, kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    order = order[first]
    features = np.asarray(features)[order].astype(store)
    with h5().File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("sha256", data=keys[order])
        f.create_dataset("path", data=[paths[i] for i in order], dtype=string_dtype())
        f.create_dataset("label", data=[labels[i] or "" for i in order], dtype=string_dtype())
        f.attrs["extraction"] = extraction
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs[SORTED_ATTR] = True
    fsync(path)
