"""Each image's nearest neighbours from an approximate index: an inverted file in numpy, searched by a pool of workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import limits

_GROUP = 8
"""Columns per group in :func:`top_columns` (8 was the fastest of 8 to 64 for 512 x 4,096)."""


def knn(Z: np.ndarray, k: int, seed: int = 0, workers: int = 1):
    """Each unit row's ``k`` nearest others by inner product: ``((nbrs, sims), how)``, most similar first.

    An inverted file: spherical k-means cells of about ``INDEX_CELL_ROWS``
    rows whatever n is, each cell's rows compared with the rows of its
    ``INDEX_PROBES`` nearest cells (itself included) in one matrix product.
    The search then costs n x probes x cell rows, linear in n; assigning
    rows to cells costs n x cells, a matrix product too, a small part of it
    up to several million rows.

    ``workers`` threads take cells from one queue, each running its own
    single-threaded BLAS calls: a descheduled worker holds up only its own
    cell, where the threads of one BLAS call wait for each other at every
    call (on 2 shared cores two BLAS threads made this search slower than one).

    Why not faiss: at 100k rows of 256 principal components, its IVF index
    (cells of 64 rows found through HNSW, 20 probed) took 4.8 times the CPU
    of this one and found the true nearest neighbour less often (0.857
    against 0.946 of 1,000 queries; docs/inspect.md).
    """
    n, workers = len(Z), max(1, workers)
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    nlist = max(1, n // limits.INDEX_CELL_ROWS)
    rng = np.random.default_rng(seed)
    probes = min(limits.INDEX_PROBES, nlist)
    nbrs = np.zeros((n, k + 1), np.int64)
    sims = np.full((n, k + 1), -np.inf, np.float32)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1 if workers > 1 else None), ThreadPoolExecutor(workers) as pool:
        sample = Z[np.sort(rng.choice(n, min(n, 30 * nlist), replace=False))]
        centers = _spherical_kmeans(sample, nlist, rng, pool)
        cell = _nearest_center(Z, centers, pool)
        near_cells = _nearest_cells(centers, probes)
        by_cell = np.argsort(cell, kind="stable")
        bounds = np.searchsorted(cell[by_cell], np.arange(nlist + 1))
        members = [by_cell[bounds[c]:bounds[c + 1]] for c in range(nlist)]
        # Largest cells first, so that no worker is left with a big one at the end.
        order = sorted(range(nlist), key=lambda c: -len(members[c]))
        for _ in pool.map(lambda c: _search_cell(Z, members, near_cells[c], members[c], k + 1, nbrs, sims), order):
            pass
    how = (f"inverted file, {nlist} cells of about {n // nlist} rows, {probes} probed, "
           f"{workers} worker{'s' if workers > 1 else ''}")
    return _drop_self(nbrs, sims, k), how


def _search_cell(Z, members, probed, q, kk, nbrs, sims, block_bytes: int = 1 << 25) -> None:
    """The ``kk`` nearest of the rows ``q`` among the rows of the cells ``probed``, written into ``nbrs``/``sims``."""
    if not len(q):
        return
    cand = np.concatenate([members[o] for o in probed])
    kk = min(kk, len(cand))
    Zc = Z[cand]
    step = max(1, block_bytes // (4 * len(cand)))  # a big cell's similarities in slices of about 32 MB
    for start in range(0, len(q), step):
        qq = q[start:start + step]
        blk = Z[qq] @ Zc.T
        top = top_columns(blk, kk)
        nbrs[qq, :kk] = cand[top]
        sims[qq, :kk] = np.take_along_axis(blk, top, 1)


def top_columns(S: np.ndarray, k: int) -> np.ndarray:
    """Column positions of each row's ``k`` largest values, largest first (ties in any order).

    ``np.argpartition`` over all columns cost as much as the matrix product
    that made ``S`` (12 ms for 512 x 4,096). This takes half of that: the
    columns fall in groups of ``_GROUP`` (every ``groups``-th column, so
    that the maxima are elementwise maxima of contiguous slices), the ``k``
    groups with the largest maxima are kept, and ``argpartition`` runs over
    their ``k x _GROUP`` columns only. The ``k`` largest values lie in those
    groups: the k-th largest value is at least the k-th largest group
    maximum, and only those ``k`` groups hold values above it.
    """
    n, m = S.shape
    groups = m // _GROUP
    if groups <= 4 * k:
        top = np.argpartition(S, m - k, axis=1)[:, m - k:]
    else:
        S = np.ascontiguousarray(S)
        step = S.strides[1]
        best = as_strided(S, (n, _GROUP, groups), (S.strides[0], groups * step, step), writeable=False).max(axis=1)
        cols = (np.argpartition(best, groups - k, axis=1)[:, groups - k:, None] + groups * np.arange(_GROUP))
        cols = cols.reshape(n, k * _GROUP)
        if groups * _GROUP < m:  # the columns left over from whole groups
            cols = np.concatenate([cols, np.broadcast_to(np.arange(groups * _GROUP, m), (n, m - groups * _GROUP))], 1)
        pick = np.argpartition(np.take_along_axis(S, cols, 1), cols.shape[1] - k, axis=1)[:, cols.shape[1] - k:]
        top = np.take_along_axis(cols, pick, 1)
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(S, top, 1), axis=1, kind="stable"), 1)


def _spherical_kmeans(sample: np.ndarray, nlist: int, rng, pool, rounds: int = 8) -> np.ndarray:
    """``nlist`` unit centres of unit rows, by inner product."""
    centers = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(rounds):
        near = _nearest_center(sample, centers, pool)
        order = np.argsort(near, kind="stable")
        used, starts = np.unique(near[order], return_index=True)
        centers[used] = np.add.reduceat(sample[order], starts, axis=0)  # empty cells keep their centre
        centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    return centers


def _nearest_center(Z: np.ndarray, centers: np.ndarray, pool, block: int = 8192) -> np.ndarray:
    """The index of each row's nearest centre, blocks of rows spread over the pool's workers."""
    return np.concatenate(list(pool.map(lambda s: np.argmax(Z[s:s + block] @ centers.T, axis=1),
                                        range(0, len(Z), block))))


def _nearest_cells(centers: np.ndarray, probes: int) -> np.ndarray:
    """Each cell's ``probes`` nearest cells (itself first), ``len(centers)`` x ``probes``, a block at a time."""
    out = np.empty((len(centers), probes), np.int64)
    for start in range(0, len(centers), 4096):
        s = centers[start:start + 4096] @ centers.T
        s[np.arange(len(s)), np.arange(start, start + len(s))] = np.inf
        out[start:start + len(s)] = top_columns(s, probes)
    return out


def _drop_self(nbrs: np.ndarray, sims: np.ndarray, k: int):
    """The k best of k + 1 neighbours once the row itself is removed."""
    n = len(nbrs)
    bad = (nbrs == np.arange(n)[:, None]) | ~np.isfinite(sims)
    sims = np.where(bad, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    nbrs, sims = np.take_along_axis(nbrs, order, 1), np.take_along_axis(sims, order, 1)
    return np.where(np.isfinite(sims), nbrs, 0), np.where(np.isfinite(sims), sims, -1.0).astype(np.float32)
