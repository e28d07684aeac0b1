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
    """Each row's k nearest others by inner product from a faiss IVF index (exact under ``IVF_MIN_ROWS``)."""
    with _faiss_threads() as faiss:
        return _faiss_search(faiss, Z, k, seed)


def _faiss_search(faiss, Z: np.ndarray, k: int, seed: int):
    n, d = Z.shape
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    if n < limits.IVF_MIN_ROWS:
        index = faiss.IndexFlatIP(d)
        probe = "exact"
    else:
        # About 2 sqrt(n) cells (2,000 at 1M), k-means on 30 rows per cell
        # for 8 rounds: training and search cost about the same.
        nlist = int(min(max(64, 2 * np.sqrt(n)), n // 40))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 8
        rng = np.random.default_rng(seed)
        train = Z[np.sort(rng.choice(n, min(n, 30 * nlist), replace=False))]
        index.train(train)
        index.nprobe = limits.IVF_PROBES
        probe = f"IVF {nlist} cells, {limits.IVF_PROBES} probed"
    index.add(Z)
    sims, nbrs = [], []
    for start in range(0, n, 65536):
        s, i = index.search(Z[start:start + 65536], k + 1)
        sims.append(s)
        nbrs.append(i)
    return _drop_self(np.concatenate(nbrs), np.concatenate(sims), k), f"faiss {probe}"


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
    """The fallback without faiss: an inverted file in numpy (k-means cells, the nearest cells probed)."""
    n = len(Z)
    nlist = int(min(max(16, 2 * np.sqrt(n)), n // 40 or 1))
    rng = np.random.default_rng(seed)
    sample = Z[np.sort(rng.choice(n, min(n, 30 * nlist), replace=False))]
    centers = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(8):  # spherical k-means: rows are unit vectors, cells by inner product
        near = np.argmax(sample @ centers.T, axis=1)
        for c in range(nlist):
            members = sample[near == c]
            if len(members):
                centers[c] = members.sum(axis=0)
        centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    cell = np.empty(n, np.int64)
    for start in range(0, n, 65536):
        cell[start:start + 65536] = np.argmax(Z[start:start + 65536] @ centers.T, axis=1)
    probes = min(limits.IVF_PROBES, nlist)
    near_cells = np.argsort(-(centers @ centers.T), axis=1)[:, :probes]
    members = [np.flatnonzero(cell == c) for c in range(nlist)]
    nbrs = np.zeros((n, k + 1), np.int64)
    sims = np.full((n, k + 1), -np.inf, np.float32)
    for c in range(nlist):
        q = members[c]
        if not len(q):
            continue
        cand = np.concatenate([members[o] for o in near_cells[c]])
        for start in range(0, len(q), 4096):
            qq = q[start:start + 4096]
            blk = Z[qq] @ Z[cand].T
            kk = min(k + 1, len(cand))
            top = np.argpartition(-blk, kk - 1, axis=1)[:, :kk]
            ts = np.take_along_axis(blk, top, 1)
            order = np.argsort(-ts, axis=1, kind="stable")
            nbrs[qq, :kk] = cand[np.take_along_axis(top, order, 1)]
            sims[qq, :kk] = np.take_along_axis(ts, order, 1)
    return _drop_self(nbrs, sims, k), f"numpy inverted file, {nlist} cells, {probes} probed"


def _drop_self(nbrs: np.ndarray, sims: np.ndarray, k: int):
    """The k best of k + 1 neighbours once the row itself (and faiss's -1 fillers) are removed."""
    n = len(nbrs)
    bad = (nbrs == np.arange(n)[:, None]) | (nbrs < 0) | ~np.isfinite(sims)
    sims = np.where(bad, -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    nbrs, sims = np.take_along_axis(nbrs, order, 1), np.take_along_axis(sims, order, 1)
    return np.where(np.isfinite(sims), nbrs, 0), np.where(np.isfinite(sims), sims, -1.0).astype(np.float32)
