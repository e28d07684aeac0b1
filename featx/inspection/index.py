"""Each image's nearest neighbours from an approximate index: an inverted file in numpy, searched by workers."""

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
    rows whatever n is; each row is stored in its nearest cell and looks
    for its neighbours in its own ``INDEX_PROBES`` nearest cells (as faiss's
    IVF does). The work is done cell by cell: a cell's rows against every
    row that probes it, in one matrix product, each row keeping its best
    ``k + 1`` of each probed cell; the best of those are merged at the end.
    The search costs n x probes x cell rows, linear in n; assigning rows to
    cells costs n x cells, a matrix product too, a small part of it up to
    several million rows.

    Probes chosen per row, not per cell: when each cell searched the cells
    nearest to its own centre, a copy that fell across a cell boundary was
    missed where the probed cells were few of many (467 of 500 planted
    copies found at 1M rows, 1,953 cells).

    ``workers`` threads take cells from one queue, each running its own
    single-threaded BLAS calls: a descheduled worker holds up only its own
    cell, where the threads of one BLAS call wait for each other at every
    call (on 2 shared cores two BLAS threads made this search slower than one).

    Why not faiss: at 100k rows of 256 principal components, its IVF index
    (cells of 64 rows found through HNSW, 20 probed) took several times the
    CPU of this one and found the true nearest neighbour less often
    (docs/inspect.md).
    """
    n, workers = len(Z), max(1, workers)
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    nlist = max(1, n // limits.INDEX_CELL_ROWS)
    rng = np.random.default_rng(seed)
    probes = min(limits.INDEX_PROBES, nlist)
    kk = min(k + 1, n)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1 if workers > 1 else None), ThreadPoolExecutor(workers) as pool:
        sample = Z[np.sort(rng.choice(n, min(n, 30 * nlist), replace=False))]
        centers = _spherical_kmeans(sample, nlist, rng, pool)
        probed = _nearest_centers(Z, centers, probes, pool)  # (n, probes), nearest first: the row's own cell
        members = _lists(probed[:, 0], nlist)
        asking = _lists(probed.ravel(), nlist)  # cell -> positions (row * probes + rank) of the rows probing it
        ids = np.full((n, probes, kk), -1, np.int32 if n < 2 ** 31 else np.int64)
        sims = np.full((n, probes, kk), -np.inf, np.float32)
        # Largest cells first, so that no worker is left with a big one at the end.
        order = sorted(range(nlist), key=lambda c: -len(members[c]) * len(asking[c]))
        for _ in pool.map(lambda c: _search_cell(Z, members[c], asking[c], probes, ids, sims), order):
            pass
    nbrs = np.empty((n, kk), np.int64)
    best = np.empty((n, kk), np.float32)
    for start in range(0, n, 65_536):  # each row's best of its probed cells' best
        stop = min(n, start + 65_536)
        got = sims[start:stop].reshape(stop - start, probes * kk)
        top = top_columns(got, kk)
        nbrs[start:stop] = np.take_along_axis(ids[start:stop].reshape(stop - start, probes * kk), top, 1)
        best[start:stop] = np.take_along_axis(got, top, 1)
    how = (f"inverted file, {nlist} cells of about {n // nlist} rows, {probes} probed, "
           f"{workers} worker{'s' if workers > 1 else ''}")
    return _drop_self(nbrs, best, k), how


def _lists(cells: np.ndarray, nlist: int) -> list[np.ndarray]:
    """For each cell, the positions in ``cells`` that name it."""
    by_cell = np.argsort(cells, kind="stable")
    bounds = np.searchsorted(cells[by_cell], np.arange(nlist + 1))
    return [by_cell[bounds[c]:bounds[c + 1]] for c in range(nlist)]


def _search_cell(Z, cand, asking, probes, ids, sims, block_bytes: int = 1 << 25) -> None:
    """The best of the rows ``cand`` (one cell) for each row probing it, into that row's slot for this cell."""
    if not len(cand) or not len(asking):
        return
    q, rank = asking // probes, asking % probes
    kk = min(ids.shape[2], len(cand))
    Zc = Z[cand]
    step = max(1, block_bytes // (4 * len(cand)))  # similarities in slices of about 32 MB
    for start in range(0, len(q), step):
        qq, rr = q[start:start + step], rank[start:start + step]
        blk = Z[qq] @ Zc.T
        top = top_columns(blk, kk)
        ids[qq, rr, :kk] = cand[top]
        sims[qq, rr, :kk] = np.take_along_axis(blk, top, 1)


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
        near = _nearest_centers(sample, centers, 1, pool)[:, 0]
        order = np.argsort(near, kind="stable")
        used, starts = np.unique(near[order], return_index=True)
        centers[used] = np.add.reduceat(sample[order], starts, axis=0)  # empty cells keep their centre
        centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    return centers


def _nearest_centers(Z: np.ndarray, centers: np.ndarray, probes: int, pool, block: int = 8192) -> np.ndarray:
    """Each row's ``probes`` nearest centres, nearest first; blocks of rows spread over the pool's workers."""
    return np.concatenate(list(pool.map(lambda s: top_columns(Z[s:s + block] @ centers.T, probes),
                                        range(0, len(Z), block))))


def _drop_self(nbrs: np.ndarray, sims: np.ndarray, k: int):
    """The k best of k + 1 neighbours once the row itself is removed."""
    n = len(nbrs)
    bad = (nbrs == np.arange(n)[:, None]) | (nbrs < 0) | ~np.isfinite(sims)
    sims = np.where(bad, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    nbrs, sims = np.take_along_axis(nbrs, order, 1), np.take_along_axis(sims, order, 1)
    return np.where(np.isfinite(sims), nbrs, 0), np.where(np.isfinite(sims), sims, -1.0).astype(np.float32)
