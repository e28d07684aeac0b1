"""Merging shards: streamed k-way merges, the size-class (tier) rule, and a run's settle.

A shard's size class is its tier: tier 0 holds shards of fewer than
TIER0_ROWS rows, tier t >= 1 those of TIER0_ROWS * FANOUT**(t-1) to
TIER0_ROWS * FANOUT**t rows. When a tier holds FANOUT shards they are
merged into one, which lands in a higher tier: a row is rewritten at most
once per tier, so adding k rows to N costs O(k log N) of writing, and an
extraction holds at most FANOUT - 1 shards per tier (18 at 1M rows).
See docs/cache.md, "Merging".

Every function taking an extraction must be called while holding its lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..errors import CacheError
from ..spec import FORMAT_VERSION
from . import shards as fmt
from .atomic import fsync, publish_file
from .layout import shard_name, tmp_name

if TYPE_CHECKING:
    from .extraction import Extraction

FANOUT = 4
TIER0_ROWS = 1024


def tier(rows: int) -> int:
    """The size class of a shard of ``rows`` rows (see FANOUT)."""
    if rows < TIER0_ROWS:
        return 0
    return 1 + int(math.log(rows / TIER0_ROWS, FANOUT) + 1e-9)


def settle(ext: "Extraction") -> int:
    """At the end of a run: merge the shards that hold only this run's rows into one, then apply
    the size-class rule (:func:`merge_tiers`). Returns the shards merged."""
    own = [p for p, _ in ext._live() if p.name in ext._own]
    merged = compact(ext, only=own) if len(own) > 1 else 0
    return merged + merge_tiers(ext)


def merge_tiers(ext: "Extraction") -> int:
    """Merge the shards of any size class that holds FANOUT of them; returns the shards merged."""
    merged = 0
    while True:
        tiers: dict[int, list[Path]] = {}
        for path, shard in ext._live():
            tiers.setdefault(tier(shard.n), []).append(path)
        full = [t for t in sorted(tiers) if len(tiers[t]) >= FANOUT]
        if not full:
            return merged
        got = compact(ext, only=tiers[full[0]])
        if not got:
            return merged
        merged += got


def compact(ext: "Extraction", min_shards: int = 2, only: Sequence[Path] | None = None) -> int:
    """Merge shards (all, or ``only``) into one, streamed; returns the shards merged.

    Rows are merged in sha256 order, a few thousand at a time, into a new
    shard (duplicates dropped: the first copy in name order wins), so
    memory does not grow with the extraction. The merged shard is written
    under a temporary name, fsynced and renamed into place before the parts
    are removed; it names its parts (``replaces``), so a reader that lists
    both, or a merge killed before it removed them, never shows a row
    twice. Unreadable shards are left out (moved aside when the lock is
    released). A full disk is a :class:`CacheError`; the parts stay.
    """
    live = dict(ext._live())
    wanted = [Path(p) for p in only] if only is not None else list(live)
    parts = [p for p in wanted if live.get(p) is not None]
    older = only is None and any(not live[p].sorted for p in parts)  # rewritten sorted, even alone
    if len(parts) < min_shards and not (older and parts):
        return 0
    final = ext.shard_dir / shard_name()
    tmp = tmp_name(final)
    try:
        merge_shards(tmp, ext.name, [live[p] for p in parts], ext.store, replaces=[p.name for p in parts])
        publish_file(tmp, final)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if fmt.errno_of(exc) in (errno.ENOSPC, errno.EDQUOT):
            raise CacheError(
                f"No space left on device while merging {len(parts)} shards of {ext.name} "
                f"({exc.strerror or exc}); the shards are kept as they were. Free some space and try again."
            ) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if all(p.name in ext._own for p in parts):
        ext._own.add(final.name)
    ext._drop_replaced()
    ext._refresh_knowns()
    return len(parts)


def merge_shards(path: Path, extraction: str, shards: list[fmt.Shard], store: str, replaces: list[str]) -> None:
    """Write the sorted, duplicate-free union of ``shards`` to ``path`` in bounded steps, and fsync it.

    A k-way merge over the shards' sorted keys (:func:`merge_rounds`). A
    first pass over the keys alone counts the rows, so the datasets are
    created at their final size.
    """
    h5py = fmt.h5()
    width = shards[0].width
    if any(s.width != width for s in shards):
        raise CacheError(f"Shards of {extraction} differ in width: {sorted({s.width for s in shards})}.")
    step = max(16, fmt.WORK_BYTES // (width * 4) // len(shards))
    total = sum(len(keys) for keys, _, _ in merge_rounds(shards, step))
    files = [h5py.File(s.path, "r") for s in shards]
    strings = [dict() for _ in shards]  # unsorted (older) shards: their string columns, read once
    try:
        with h5py.File(path, "w") as f:
            out = {
                "features": f.create_dataset("features", shape=(total, width), dtype=np.dtype(store)),
                "sha256": f.create_dataset("sha256", shape=(total,), dtype="S64"),
                "path": f.create_dataset("path", shape=(total,), dtype=fmt.string_dtype()),
                "label": f.create_dataset("label", shape=(total,), dtype=fmt.string_dtype()),
            }
            at = 0
            for keys, src, rows in merge_rounds(shards, step):
                _copy_round(out, at, keys, src, rows, shards, files, strings, store)
                at += len(keys)
            f.attrs["extraction"] = extraction
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs[fmt.SORTED_ATTR] = True
            f.attrs[fmt.REPLACES_ATTR] = json.dumps(replaces)
    finally:
        for fh in files:
            fh.close()
    fsync(path)


def _copy_round(out: dict, at: int, keys, src, rows, shards, files, strings, store: str) -> None:
    """Write one merge round's rows (``keys`` from shard ``src`` at file row ``rows``) at ``out[at:]``."""
    n = len(keys)
    block = np.empty((n, shards[0].width), np.float32)
    cols = {"path": np.empty(n, object), "label": np.empty(n, object)}
    for i in np.unique(src):
        sel = np.flatnonzero(src == i)
        block[sel] = shards[i].rows(rows[sel])
        for name, col in cols.items():
            col[sel] = _strings(files[i], shards[i], strings[i], name, rows[sel])
    out["features"][at : at + n] = block.astype(store, copy=False)
    out["sha256"][at : at + n] = keys
    out["path"][at : at + n] = cols["path"]
    out["label"][at : at + n] = cols["label"]
    for s in shards:
        s.release()


def _strings(f, shard: fmt.Shard, cache: dict, name: str, rows: np.ndarray) -> np.ndarray:
    """A shard's string column at ``rows``: a slice for sorted shards (rows run forward), the whole
    column once for older, unsorted ones."""
    if not shard.sorted:
        if name not in cache:
            cache[name] = np.array(f[name].asstr()[...], dtype=object)
        return cache[name][rows]
    lo, hi = int(rows.min()), int(rows.max()) + 1
    return np.array(f[name].asstr()[lo:hi], dtype=object)[rows - lo]


def merge_rounds(shards: list[fmt.Shard], step: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(keys, shard index, file row) of the merged shards in key order, a round at a time; the
    first copy of a key (lowest shard index) wins.

    Each round takes up to ``step`` keys from each shard and emits every
    key up to the smallest last key taken from a shard that has more.
    """
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
