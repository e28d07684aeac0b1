"""Each image's nearest neighbours from an approximate index (faiss, or an inverted file in numpy)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from . import limits


def knn(Z: np.ndarray, k: int, seed: int = 0, notes: list | None = None):
    """Each unit row's ``k`` nearest others by inner product: ``((nbrs, sims), how)``, most similar first.

    faiss when installed; otherwise an inverted file in numpy, with a note.
    """
    try:
        return _knn_faiss(Z, k, seed)
    except ImportError:
        if notes is not None:
            notes.append("near duplicates: faiss is not installed (pip install 'featx[inspect]'); "
                         "used a slower inverted file in numpy")
        return _knn_numpy(Z, k, seed)


def _knn_faiss(Z: np.ndarray, k: int, seed: int = 0):
    """Each row's k nearest others by inner product from a faiss index (exact under ``IVF_MIN_ROWS`` rows)."""
    with _faiss_threads() as faiss:
        return _faiss_search(faiss, Z, k, seed)


def _faiss_search(faiss, Z: np.ndarray, k: int, seed: int):
    n, d = Z.shape
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    if n < limits.IVF_MIN_ROWS:
        index = faiss.IndexFlatIP(d)
        probe = "exact"
    else:
        index, probe = _faiss_ivf(faiss, Z, seed)
    index.add(Z)
    sims, nbrs = [], []
    for start in range(0, n, 65536):
        s, i = index.search(Z[start:start + 65536], k + 1)
        sims.append(s)
        nbrs.append(i)
    return _drop_self(np.concatenate(nbrs), np.concatenate(sims), k), f"faiss {probe}"


def _faiss_ivf(faiss, Z: np.ndarray, seed: int):
    """A trained IVF-Flat index (rows not added yet) whose cells hold about ``IVF_CELL_ROWS`` rows, found through HNSW.

    Why this shape: a query costs the search for its nearest cells plus a
    scan of the rows in ``IVF_PROBES`` of them. With a flat list of cells
    the first part grows with the number of cells, and the best number of
    cells then grows as sqrt(n), so the whole search grows as n^1.5 (7.4
    times the time for 3 times the rows, measured at 100k and 300k). Cells
    of a constant size, found through an HNSW graph over their centres
    (log cost), make each query cost about the same at any n. Small cells
    and more of them probed also find the true neighbours more often for
    the same rows scanned (docs/inspect.md).
    """
    n, d = Z.shape
    nlist = max(16, n // limits.IVF_CELL_ROWS)
    probes = min(limits.IVF_PROBES, nlist)
    quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    quantizer.hnsw.efSearch = max(64, 2 * probes)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # k-means on 10 rows per cell for 8 rounds, the assignment through the HNSW graph too.
    index.cp.niter = 8
    index.cp.min_points_per_centroid = 5  # (10 per cell is enough here; no warning)
    rng = np.random.default_rng(seed)
    index.train(Z[np.sort(rng.choice(n, min(n, 10 * nlist), replace=False))])
    index.nprobe = probes
    return index, f"IVF {nlist} cells of about {n // nlist} rows, {probes} probed through HNSW"


@contextlib.contextmanager
def _faiss_threads() -> Iterator:
    """faiss with as many OpenMP threads as BLAS may use here (``n_jobs``; faiss loads its OpenMP after
    ``threadpool_limits`` was entered, so that does not reach it), restored after."""
    import faiss
    from threadpoolctl import threadpool_info

    threads = min((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, threads))
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(before)


def _knn_numpy(Z: np.ndarray, k: int, seed: int = 0):
    """The fallback without faiss: an inverted file in numpy (k-means cells, each cell's nearest cells probed).

    Cells hold about ``NUMPY_CELL_ROWS`` rows whatever n is, so the search
    (each cell's rows against the rows of its ``NUMPY_PROBES`` nearest cells,
    one matrix product) costs n x probes x cell rows: linear in n. Assigning
    rows to cells costs n x cells, a matrix product too, a small part of it
    up to several million rows.
    """
    n = len(Z)
    nlist = max(1, n // limits.NUMPY_CELL_ROWS)
    rng = np.random.default_rng(seed)
    centers = _spherical_kmeans(Z[np.sort(rng.choice(n, min(n, 30 * nlist), replace=False))], nlist, rng)
    cell = np.empty(n, np.int64)
    for start in range(0, n, 65536):
        cell[start:start + 65536] = np.argmax(Z[start:start + 65536] @ centers.T, axis=1)
    probes = min(limits.NUMPY_PROBES, nlist)
    near_cells = _nearest_cells(centers, probes)
    by_cell = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[by_cell], np.arange(nlist + 1))
    members = [by_cell[bounds[c]:bounds[c + 1]] for c in range(nlist)]
    nbrs = np.zeros((n, k + 1), np.int64)
    sims = np.full((n, k + 1), -np.inf, np.float32)
    for c in range(nlist):
        q = members[c]
        if not len(q):
            continue
        cand = np.concatenate([members[o] for o in near_cells[c]])
        Zc = Z[cand]
        for start in range(0, len(q), 4096):
            qq = q[start:start + 4096]
            blk = Z[qq] @ Zc.T
            kk = min(k + 1, len(cand))
            top = np.argpartition(-blk, kk - 1, axis=1)[:, :kk]
            ts = np.take_along_axis(blk, top, 1)
            order = np.argsort(-ts, axis=1, kind="stable")
            nbrs[qq, :kk] = cand[np.take_along_axis(top, order, 1)]
            sims[qq, :kk] = np.take_along_axis(ts, order, 1)
    return _drop_self(nbrs, sims, k), f"numpy inverted file, {nlist} cells of about {n // nlist} rows, {probes} probed"


def _spherical_kmeans(sample: np.ndarray, nlist: int, rng, rounds: int = 8) -> np.ndarray:
    """``nlist`` unit centres of unit rows, by inner product."""
    centers = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(rounds):
        near = np.argmax(sample @ centers.T, axis=1)
        order = np.argsort(near, kind="stable")
        used, starts = np.unique(near[order], return_index=True)
        centers[used] = np.add.reduceat(sample[order], starts, axis=0)  # empty cells keep their centre
        centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    return centers


def _nearest_cells(centers: np.ndarray, probes: int) -> np.ndarray:
    """Each cell's ``probes`` nearest cells (itself first), ``len(centers)`` x ``probes``, a block at a time."""
    out = np.empty((len(centers), probes), np.int64)
    for start in range(0, len(centers), 4096):
        s = centers[start:start + 4096] @ centers.T
        s[np.arange(len(s)), np.arange(start, start + len(s))] = np.inf
        top = np.argpartition(-s, probes - 1, axis=1)[:, :probes]
        out[start:start + len(s)] = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
    return out


def _drop_self(nbrs: np.ndarray, sims: np.ndarray, k: int):
    """The k best of k + 1 neighbours once the row itself (and faiss's -1 fillers) are removed."""
    n = len(nbrs)
    bad = (nbrs == np.arange(n)[:, None]) | (nbrs < 0) | ~np.isfinite(sims)
    sims = np.where(bad, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    nbrs, sims = np.take_along_axis(nbrs, order, 1), np.take_along_axis(sims, order, 1)
    return np.where(np.isfinite(sims), nbrs, 0), np.where(np.isfinite(sims), sims, -1.0).astype(np.float32)
