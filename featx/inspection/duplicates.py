"""Exact duplicates (same sha256) and near ones (:class:`NearRule`): the exact search and the approximate path."""

from __future__ import annotations

import numpy as np

from ..features import Features
from .index import knn
from .limits import BRUTE_FORCE_LIMIT, LEAKY, MAX_NEAR_PAIRS, NEAR_THRESHOLD, NEIGHBOURS, RESCORE_MARGIN, SPLIT_ORDER
from .near_rule import NearRule, neighbourhood_pairs
from .report import label_of, rel_path
from .rows import Reduced, Rows


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Features centred and scaled per dimension (z-scores), then rows scaled to unit length (float32).

    Centring matters: pooled activations are all positive, so raw cosine
    similarities crowd near 1. Scaling matters too: in some backbones a few
    directions carry most of the variance (two components hold 90% of it
    with the VGG16 HED weights), and centred cosines of distinct photos then
    reach 0.99. On z-scores, copies keep 0.99 and distinct photos stay below
    0.9 (docs/benchmarks.md, "Data checks"). Dimensions that never vary are dropped.
    """
    X = np.asarray(X, dtype=np.float32)
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = X.std(axis=0, dtype=np.float64).astype(np.float32)
    live = std > 1e-6 * max(float(std.max(initial=0.0)), 1e-30)
    Z = (X - mean) / np.where(live, std, np.inf)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(norms > 0, norms, 1.0)


def near_pairs(Z: np.ndarray, threshold: float, max_pairs: int = MAX_NEAR_PAIRS,
               block_bytes: int = 1 << 27) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact search: every pair ``i < j`` with ``Z[i] . Z[j] >= threshold``, by row blocks.

    Each block multiplies a slab of rows with the rows after it, so the
    upper triangle is computed once and memory stays near ``block_bytes``.
    Keeps the ``max_pairs`` most similar pairs.
    """
    i, j, s, _, _ = _exact_search(Z, threshold, 0, max_pairs, block_bytes)
    return i, j, s


def _exact_search(Z: np.ndarray, threshold: float, k: int, max_pairs: int = MAX_NEAR_PAIRS,
                  block_bytes: int = 1 << 27):
    """Pairs at or above ``threshold`` (i < j, most similar first) and, with ``k``, each row's k nearest others.

    Returns ``(I, J, S, nbrs, sims)``; ``nbrs``/``sims`` are (n, k), most
    similar first (None without ``k``). Without ``k`` only the upper
    triangle is multiplied.
    """
    n = len(Z)
    k = min(k, n - 1)
    block = max(64, min(n, block_bytes // (4 * max(n, 1))))
    I, J, S = [], [], []
    nbrs = np.zeros((n, max(k, 0)), np.int64)
    sims = np.zeros((n, max(k, 0)), np.float32)
    kept = 0
    for start in range(0, n, block):
        stop = min(n, start + block)
        first = 0 if k > 0 else start
        blk = Z[start:stop] @ Z[first:].T
        bi, bj = np.nonzero(blk >= threshold)
        bj = bj + first
        upper = bj > bi + start
        bi, bj = bi[upper], bj[upper]
        I.append(bi + start)
        J.append(bj)
        S.append(blk[bi, bj - first])
        kept += len(bi)
        if kept > 2 * max_pairs:
            I, J, S = _top_pairs(np.concatenate(I), np.concatenate(J), np.concatenate(S), max_pairs)
            I, J, S, kept = [I], [J], [S], len(I)
        if k > 0:
            rows = np.arange(stop - start)
            blk[rows, rows + start] = -np.inf  # not its own neighbour
            top = np.argpartition(-blk, k - 1, axis=1)[:, :k]
            ts = np.take_along_axis(blk, top, 1)
            order = np.argsort(-ts, axis=1, kind="stable")
            nbrs[start:stop] = np.take_along_axis(top, order, 1)
            sims[start:stop] = np.take_along_axis(ts, order, 1)
    if not I:
        I, J, S = [np.zeros(0, int)], [np.zeros(0, int)], [np.zeros(0, np.float32)]
    i, j, s = _top_pairs(np.concatenate(I), np.concatenate(J), np.concatenate(S), max_pairs)
    return i, j, s, (nbrs if k > 0 else None), (sims if k > 0 else None)


def _top_pairs(i, j, s, k):
    order = np.argsort(-s, kind="stable")[:k]
    return i[order], j[order], s[order]


def _pair_record(f: Features, i: int, j: int, kind: str, sim: float, rule: str = "", ratio: float | None = None) -> dict:
    if (SPLIT_ORDER.get(f.split[j], 4), f.paths[j]) < (SPLIT_ORDER.get(f.split[i], 4), f.paths[i]):
        i, j = j, i
    sa, sb = str(f.split[i]), str(f.split[j])
    la, lb = label_of(f, i), label_of(f, j)
    return {
        "kind": kind, "similarity": round(float(sim), 5), "rule": rule or ("sha256" if kind == "exact" else "cosine"),
        "ratio": None if ratio is None else round(float(ratio), 4),
        "path_a": str(f.paths[i]), "split_a": sa, "label_a": la, "rel_a": rel_path(f, str(f.paths[i])),
        "path_b": str(f.paths[j]), "split_b": sb, "label_b": lb, "rel_b": rel_path(f, str(f.paths[j])),
        "cross_split": f"{sa}-{sb}" if sa != sb and sa and sb else "",
        "label_conflict": bool(la and lb and la != lb), "row_a": int(i), "row_b": int(j),
    }


def find_duplicates(f: Features, rule: NearRule | float = NEAR_THRESHOLD, *,
                    brute_force_limit: int = BRUTE_FORCE_LIMIT, max_pairs: int = MAX_NEAR_PAIRS,
                    notes: list | None = None, reduced: Reduced | None = None, seed: int = 0,
                    workers: int = 1) -> dict:
    """Exact (same sha256) and near (see :class:`NearRule`) duplicate pairs, with cross-split counts.

    Up to ``brute_force_limit`` distinct images the search is exact, on all
    feature dimensions. Past it, each image's nearest neighbours come from an
    approximate index (:func:`featx.inspection.index.knn`) over the images'
    first principal components (``reduced``, computed here if not given), and
    the pairs found are scored again on all dimensions; ``workers`` threads
    search it.
    """
    rule = rule if isinstance(rule, NearRule) else NearRule(threshold=float(rule))
    notes = notes if notes is not None else []
    exact, dup_groups, firsts = _exact_duplicates(f)
    # Near duplicates among distinct images only: one row per sha256.
    if len(firsts) <= brute_force_limit:
        found, stats, method = _near_exact(f, firsts, rule, max_pairs)
    else:
        reduced = reduced if reduced is not None else Reduced.fit(Rows.of(f), seed)
        found, stats, method = _near_approximate(f, firsts, rule, max_pairs, reduced, seed, workers)
    found.sort(key=lambda t: -t[2])
    if len(found) > max_pairs:
        found = found[:max_pairs]
        notes.append(f"kept the {max_pairs} most similar near-duplicate pairs; raise the threshold to see fewer")
    near = [_pair_record(f, int(firsts[i]), int(firsts[j]), "near", s, how, r) for i, j, s, how, r in found]

    cross: dict[str, dict] = {}
    for p in exact + near:
        if p["cross_split"]:
            c = cross.setdefault(p["cross_split"], {"exact": 0, "near": 0, "conflicting_labels": 0})
            c[p["kind"]] += 1
            c["conflicting_labels"] += p["label_conflict"]
    return {
        "threshold": rule.threshold, "adaptive": rule.adaptive, "rule": rule.describe(), "rule_stats": stats,
        "method": method, "exact_groups": len(dup_groups), "exact_images": sum(len(g) for g in dup_groups),
        "exact_pairs": exact, "near_pairs": near, "cross_split": cross,
        "by_rule": {r: sum(p["rule"] == r for p in near) for r in ("cosine", "neighbourhood")},
        "leaking_pairs": sum(c["exact"] + c["near"] for k, c in cross.items() if k in LEAKY),
    }


def _exact_duplicates(f: Features) -> tuple[list[dict], list[list[int]], np.ndarray]:
    """Pairs of rows with the same sha256, the groups of them, and the first row of each distinct sha256."""
    groups: dict[str, list[int]] = {}
    for i, sha in enumerate(f.sha256.tolist()):
        groups.setdefault(sha, []).append(i)
    exact = []
    dup_groups = [g for g in groups.values() if len(g) > 1]
    for g in dup_groups:
        # Every pair of a small group; a large group (one placeholder image
        # copied everywhere) is summarised by its first member.
        pairs = [(a, b) for k, a in enumerate(g) for b in g[k + 1:]] if len(g) <= 10 else [(g[0], b) for b in g[1:]]
        exact += [_pair_record(f, a, b, "exact", 1.0) for a, b in pairs]
    return exact, dup_groups, np.array([g[0] for g in groups.values()], dtype=np.int64)


def _near_exact(f: Features, firsts: np.ndarray, rule: NearRule, max_pairs: int):
    """Near pairs ``(i, j, cosine, rule, ratio)`` (positions in ``firsts``) by the exact search on all dimensions."""
    k = NEIGHBOURS if rule.adaptive else 0
    stats: dict = {}
    I, J, S, nbrs, sims = _exact_search(unit_rows(f.X[firsts]), rule.threshold, k, max_pairs)
    found = [(int(i), int(j), float(s), "cosine", None) for i, j, s in zip(I, J, S)]
    if k:
        adaptive, stats = neighbourhood_pairs(nbrs, sims, rule)
        found += [(i, j, float(sims[i][nbrs[i] == j][0]), "neighbourhood", r) for i, j, r in adaptive]
    return found, stats, "exact search"


def _near_approximate(f: Features, firsts: np.ndarray, rule: NearRule, max_pairs: int, reduced: Reduced,
                      seed: int, workers: int):
    """Near pairs from each image's nearest neighbours on principal components, scored again on all dimensions."""
    n = len(firsts)
    k = NEIGHBOURS if rule.adaptive else 0
    stats: dict = {}
    U = reduced.Z[firsts]
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    (nbrs, sims), how = knn(U, max(k, NEIGHBOURS), seed, workers)
    del U
    method = (f"approximate: {NEIGHBOURS} nearest neighbours of each of {n} distinct images on "
              f"{reduced.Z.shape[1]} principal components ({how}), pairs scored again on all dimensions")
    # Candidates for rule 1: principal components drop the small directions
    # that tell photos apart, so their cosines run higher; keep a margin.
    # A pair may be listed from one side only (the index is approximate): take both, once.
    rows, cols = np.repeat(np.arange(n), nbrs.shape[1]), nbrs.ravel()
    cand = (cols != rows) & (sims.ravel() >= rule.threshold - RESCORE_MARGIN)
    lo, hi, s = np.minimum(rows, cols)[cand], np.maximum(rows, cols)[cand], sims.ravel()[cand]
    _, once = np.unique(lo * n + hi, return_index=True)
    ci, cj, _ = _top_pairs(lo[once], hi[once], s[once], 2 * max_pairs)
    pairs = {(int(i), int(j)): ("cosine", None) for i, j in zip(ci, cj)}
    if k:
        adaptive, stats = neighbourhood_pairs(nbrs, sims, rule)
        pairs.update({(i, j): ("neighbourhood", r) for i, j, r in adaptive})
    keys = list(pairs)
    cos = _rescore(Rows.of(f), firsts, keys, reduced)
    found = [(i, j, c, "cosine", None) if c >= rule.threshold else (i, j, c, *pairs[(i, j)])
             for (i, j), c in zip(keys, cos) if c >= rule.threshold or pairs[(i, j)][0] == "neighbourhood"]
    return found, stats, method


def _rescore(rows: Rows, firsts: np.ndarray, pairs: list[tuple[int, int]], reduced: Reduced) -> list[float]:
    """Cosines of standardised, L2-normalised full rows for pairs of ``firsts`` positions."""
    if not pairs:
        return []
    need = np.unique(np.array(pairs).ravel())
    X = rows.take(firsts[need])
    Z = (X - reduced.mean) / reduced.unit_scale
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    at = {int(r): k for k, r in enumerate(need)}
    return [float(Z[at[i]] @ Z[at[j]]) for i, j in pairs]
