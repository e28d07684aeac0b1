"""The near-duplicate index of `featx inspect` alone: CPU seconds and recall of each index at n rows.

Builds the rows that ``featx inspect`` would search past ``BRUTE_FORCE_LIMIT``:
the synthetic extraction of ``benchmarks/scale_inspect.py`` (10 classes of
post-ReLU Gaussian rows at width 2,048, a near copy planted per 2,000 rows),
standardised and projected on 256 principal components by the real
``featx.inspection.rows.Reduced`` (fitted on 20,000 rows, every row projected
in blocks; the n x 2,048 matrix is never held), then L2-normalised. The
projection is kept in ``--scratch`` as .npy, so that later runs at the same n
skip it.

Then, for each ``--workers``, it runs ``featx.inspection.index.knn``
(10 neighbours per row, BLAS on one thread) and prints CPU
seconds (user + system of this process, all threads), wall seconds, and:

- **nn1**: how often the true nearest neighbour (exact search on the same
  projection, ``--queries`` random rows) is among the 10 returned;
- **recall@10**: the share of the true 10 nearest that are returned;
- **planted**: the planted near copies whose partner is among the 10.

Usage::

    python benchmarks/inspect_index.py --rows 100000 --workers 1 2
    python benchmarks/inspect_index.py --rows 1000000 --workers 2 --dims 128 --set INDEX_PROBES=6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class SyntheticRows:
    """The rows of ``scale_inspect.build`` regenerated block by block (deterministic), as ``Reduced.fit`` reads them."""

    lazy = True

    def __init__(self, n: int, width: int = 2048, classes: int = 10, seed: int = 0, near_every: int = 2_000):
        self.n, self.width, self.seed, self.near_every = n, width, seed, near_every
        self.centers = np.random.default_rng(seed).normal(0, 1, (classes, width)).astype(np.float32)

    def blocks(self, size: int = 0):
        size = size or 16_384
        for start in range(0, self.n, size):
            m = min(size, self.n - start)
            rng = np.random.default_rng([self.seed, start])
            y = rng.integers(0, len(self.centers), m)
            X = np.maximum(0.6 * self.centers[y] + rng.standard_normal((m, self.width), dtype=np.float32), 0)
            for a in range(0, m - 1, self.near_every):
                X[a + 1] = X[a] + 0.05 * rng.standard_normal(self.width, dtype=np.float32)
            yield np.arange(start, start + m), X

    def planted(self, size: int = 16_384) -> np.ndarray:
        pairs = [(s + a, s + a + 1) for s in range(0, self.n, size)
                 for a in range(0, min(size, self.n - s) - 1, self.near_every)]
        return np.array(pairs, np.int64)


def projection(n: int, scratch: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows of the 256-component projection, and the planted pairs (cached in ``scratch``)."""
    from featx.inspection.rows import Reduced

    rows = SyntheticRows(n, seed=seed)
    path = scratch / f"projection-{n}-{seed}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r"), rows.planted()
    t, c = time.perf_counter(), time.process_time()
    Z = Reduced.fit(rows, seed).Z
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    print(f"projection of {n} x 2048 rows: {time.perf_counter() - t:.0f} s wall, {time.process_time() - c:.0f} CPU s",
          flush=True)
    scratch.mkdir(parents=True, exist_ok=True)
    np.save(path, Z)
    return Z, rows.planted()


def add_copies(Z: np.ndarray, planted: np.ndarray, count: int, seed: int = 2):
    """``Z`` with ``count`` near copies of random rows appended (cosine about 0.998), and the pairs planted."""
    rng = np.random.default_rng(seed)
    of = rng.choice(len(Z), count, replace=False)
    noise = rng.normal(size=(count, Z.shape[1])).astype(np.float32)
    noise *= 0.063 / np.linalg.norm(noise, axis=1, keepdims=True)  # 1 / sqrt(1 + 0.063^2) = 0.998
    C = Z[of] + noise
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    pairs = np.stack([of, len(Z) + np.arange(count)], axis=1)
    return np.concatenate([Z, C]), np.concatenate([planted, pairs])


def exact_neighbours(Z: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The true k nearest others of each query by inner product, most similar first."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 32):  # 32 x n similarities at a time (128 MB at 1M rows)
        q = queries[start:start + 32]
        s = np.asarray(Z[q]) @ np.asarray(Z).T
        s[np.arange(len(q)), q] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        out[start:start + len(q)] = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
    return out


def measure(Z, planted, truth, queries, workers: int, k: int = 10) -> dict:
    from threadpoolctl import threadpool_limits

    from featx.inspection.index import knn

    Z = np.ascontiguousarray(Z, dtype=np.float32)
    t, c = time.perf_counter(), time.process_time()
    with threadpool_limits(1):  # as featx inspect runs it
        (nbrs, _), how = knn(Z, k, seed=0, workers=workers)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    got = nbrs[queries]
    nn1 = float(np.mean([truth[i, 0] in got[i] for i in range(len(queries))]))
    rec = float(np.mean([len(set(truth[i]) & set(got[i])) / k for i in range(len(queries))]))
    found = sum((b in nbrs[a]) or (a in nbrs[b]) for a, b in planted)
    one_side = sum(max(a, b) in nbrs[min(a, b)] for a, b in planted)
    return {"index": how, "wall": wall, "cpu": cpu, "nn1": nn1, "recall": rec,
            "planted": f"{found}/{len(planted)} ({one_side} from the first row's side)"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dims", type=int, default=0, help="Search only the first DIMS components (0: all 256).")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=0,
                    help="Add this many near copies (cosine about 0.998 on the projection, as the planted ones).")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="Override featx.inspection.limits, e.g. INDEX_PROBES=6.")
    ap.add_argument("--scratch", type=Path, default=Path("/work/scratch/inspect-index"))
    args = ap.parse_args()
    from featx.inspection import limits

    for item in args.set:
        name, value = item.split("=")
        setattr(limits, name, type(getattr(limits, name))(value))
    Z, planted = projection(args.rows, args.scratch)
    if args.dims:
        Z = np.array(Z[:, :args.dims])
        Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    if args.copies:
        Z, planted = add_copies(np.asarray(Z), planted, args.copies)
    queries = np.sort(np.random.default_rng(1).choice(len(Z), args.queries, replace=False))
    truth = exact_neighbours(Z, queries, 10)
    print(f"{len(Z)} rows x {Z.shape[1]} dims, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"limits {' '.join(args.set) or 'as shipped'}\n")
    print("| index | CPU s | wall s | nn1 | recall@10 | planted found |\n|---|---|---|---|---|---|")
    for workers in args.workers:
        r = measure(Z, planted, truth, queries, workers)
        print(f"| {r['index']} | {r['cpu']:.1f} | {r['wall']:.1f} | {r['nn1']:.3f} | {r['recall']:.3f} | "
              f"{r['planted']} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
