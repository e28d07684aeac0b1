"""Data checks on cached features: leakage, label errors, label budget, calibration, a map.

``featx inspect`` answers, from the feature cache alone and in seconds:

- **duplicates**: exact copies (same sha256) and near copies (cosine
  similarity of standardised, L2-normalised features at or above a threshold),
  within a split and across splits; a pair across train and val/test is leakage;
- **label issues**: images whose out-of-fold predicted probabilities
  (stratified K-fold logistic regression) disagree confidently with their
  label, ranked by self-confidence (confident learning; cleanlab when installed);
- **label budget**: accuracy against labelled images per class, several seeds;
- **calibration**: expected calibration error and a reliability diagram, with
  the temperature that would fix it;
- **map**: a 2-D embedding (PCA, or UMAP when asked and installed) by class and split.

No image is decoded except the thumbnails of the contact sheets, and no
Keras model is built: nothing here imports Keras or TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import HeadError, InspectError
from .features import Features, load_features

NEAR_THRESHOLD = 0.95
"""Cosine similarity of standardised, L2-normalised features at or above which two images are near duplicates.

Measured with the VGG16 HED weights at 128 px on hymenoptera: half-size and
quality-30 copies score 0.994 to 1.0, the most similar two distinct photos
0.884 (docs/benchmarks.md, "Data checks"). Mirror images are near only for backbones
whose features are flip-invariant. Raise it for fewer, surer pairs."""

BRUTE_FORCE_LIMIT = 200_000
MAX_NEAR_PAIRS = 10_000
MIN_PER_CLASS = 3
MAP_MAX_POINTS = 20_000
PCA_DIMS = 256
BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
LEAKY = ("train-val", "train-test")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "": 3}
DEFAULT_INSPECT_DIR = "inspect"


# --------------------------------------------------------------------------- the report


@dataclass
class InspectReport:
    """What ``featx.inspect`` found; ``to_dict()`` is what ``report.json`` holds.

    Attributes
    ----------
    directory : Path or None
        Where the files were written (None with ``out=False``).
    features : str
        The features inspected, in words.
    duplicates : dict
        ``exact_pairs`` and ``near_pairs`` (records with paths, splits, labels,
        similarity), ``cross_split`` counts, ``threshold``, ``method``.
    label_issues, budget, calibration : dict or None
        None when the data is unlabeled (see ``notes``).
    embedding : dict
    notes : list of str
    timings, cpu_seconds : dict
        Wall and CPU seconds of this process per section (on shared cores
        the CPU seconds are what the section would take on an idle machine).
    files : list of Path
    """

    directory: Path | None
    features: str
    n_images: int
    class_names: list[str]
    splits: dict[str, int]
    duplicates: dict
    label_issues: dict | None = None
    budget: dict | None = None
    calibration: dict | None = None
    embedding: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    suspect_ranking: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return _jsonable({
            "features": self.features, "n_images": self.n_images, "class_names": self.class_names,
            "splits": self.splits, "duplicates": self.duplicates, "label_issues": self.label_issues,
            "budget": self.budget, "calibration": self.calibration, "embedding": self.embedding,
            "notes": self.notes, "timings": self.timings, "cpu_seconds": self.cpu_seconds, "files": [p.name for p in self.files],
        })

    def summary(self, shown: int = 5) -> str:
        """The text ``featx inspect`` prints."""
        d = self.duplicates
        lines = [f"features: {self.features}"]
        near = (f"{len(d['near_pairs'])} near pairs at cosine >= {d['threshold']:g} ({d['method']})"
                if d["method"] != "skipped" else "near duplicates not searched")
        lines.append(f"duplicates: {d['exact_groups']} exact groups ({d['exact_images']} images), {near}")
        for kind in LEAKY + ("val-test",):
            c = d["cross_split"].get(kind)
            if c and (c["exact"] or c["near"]):
                tag = "LEAKAGE " if kind in LEAKY else ""
                lines.append(f"  {tag}{kind}: {c['exact']} exact, {c['near']} near, "
                             f"{c['conflicting_labels']} with conflicting labels")
        pairs = d["exact_pairs"] + d["near_pairs"]
        for p in sorted(pairs, key=lambda p: (p["cross_split"] not in LEAKY, -p["similarity"]))[:shown]:
            same = "==" if p["kind"] == "exact" else f"~{p['similarity']:.3f}"
            lines.append(f"    {p['kind']:<5}  {p['rel_a']} [{p['label_a']}] {same} {p['rel_b']} [{p['label_b']}]")
        li = self.label_issues
        if li:
            lines.append(
                f"label issues: {li['n_flagged']} likely label errors of {li['n_labeled']} labelled images "
                f"(out-of-fold logistic regression, {li['folds']} folds, accuracy {li['oof_accuracy']:.3f}; {li['method']})"
            )
            for s in li["top"][:shown]:
                lines.append(f"    {s['rel']} [{s['split']}]: {s['given']} -> {s['suggested']} (score {s['score']:.3f})")
        b = self.budget
        if b:
            lines.append(f"label budget ({b['evaluated_on']}): {b['verdict']}")
            pts = "  ".join(f"{r['per_class']}{'*' if r['all'] else ''}:{r['mean']:.3f}" for r in b["points"])
            lines.append(f"    per class: accuracy  {pts}   (* = all)")
        c = self.calibration
        if c:
            lines.append(
                f"calibration ({c['source']}, {c['evaluated_on']}, n={c['n']}): ECE {c['ece']:.4f}; "
                f"temperature {c['temperature']:.3g} would give ECE {c['ece_after']:.4f}"
            )
        if self.embedding:
            e = self.embedding
            lines.append(f"map: {e['method']} of {e['points']} images")
        for note in self.notes:
            lines.append(f"note: {note}")
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- entry point


def inspect(
    data: Features | str | os.PathLike | None = None,
    *,
    backbone: str | None = None,
    extraction: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | bool | None = None,
    head: str | os.PathLike | bool | None = None,
    near_threshold: float = NEAR_THRESHOLD,
    folds: int = 5,
    seeds: int = 3,
    embedding: str = "pca",
    seed: int = 0,
    brute_force_limit: int = BRUTE_FORCE_LIMIT,
    n_jobs: int | None = None,
    home: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> InspectReport:
    """Check a cached dataset for leakage, label errors, label budget and calibration.

    Parameters
    ----------
    data : Features, path or None
        A :class:`~featx.features.Features` object, or the dataset given to
        ``extract`` (the latest extraction when None, narrowed by ``backbone``
        or ``extraction``).
    out : path, False or None
        Output folder; ``<featx home>/inspect/<backbone>-<time>/`` by
        default (the home is ``$FEATX_HOME`` or the current directory);
        False writes nothing.
    head : path, optional
        A head folder to check the calibration of; the latest head
        (``heads/latest``) by default, used only if it was fitted on the
        same extraction and is not a Keras (dense) head. False: use the
        out-of-fold probabilities.
    near_threshold : float
        Cosine similarity for near duplicates (see :data:`NEAR_THRESHOLD`).
    folds : int
        K of the stratified K-fold behind the out-of-fold probabilities.
    seeds : int
        Random draws per point of the label-budget curve.
    embedding : {"pca", "umap"}
        The map; UMAP needs ``umap-learn`` (PCA with a note otherwise).
    brute_force_limit : int
        Above this many rows, near duplicates come from an approximate index
        (faiss) instead of the exact blockwise search.
    n_jobs : int, optional
        BLAS threads; one by default. Threads of a BLAS call wait for each
        other, and where other processes share the cores a descheduled one
        stalls the rest: on 2 shared cores the PCA of 10k x 2,048 features
        took 5 s on one thread and 44 s on two.
    home : path, optional
        The featx home (``$FEATX_HOME`` or the current directory): where
        ``inspect/`` goes and the latest head is looked up.

    Returns
    -------
    InspectReport

    Examples
    --------
    >>> report = featx.inspect("data/")                  # doctest: +SKIP
    >>> report.duplicates["cross_split"]["train-test"]    # doctest: +SKIP
    {'exact': 1, 'near': 0, 'conflicting_labels': 1}
    """
    if not 0 < near_threshold <= 1:
        raise InspectError(f"near_threshold must be in (0, 1]. Received: near_threshold={near_threshold!r}")
    if folds < 2 or seeds < 1:
        raise InspectError(f"folds must be >= 2 and seeds >= 1. Received: folds={folds!r}, seeds={seeds!r}")
    if embedding not in ("pca", "umap"):
        raise InspectError(f"embedding must be 'pca' or 'umap'. Received: embedding={embedding!r}")
    feats = data if isinstance(data, Features) else load_features(
        data, backbone, cache_dir=cache_dir, extraction=extraction)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n_jobs or 1):
        return _inspect(feats, out, head, near_threshold, folds, seeds, embedding, seed, brute_force_limit, home,
                        log or (lambda msg: None))


def _inspect(feats, out, head, near_threshold, folds, seeds, embedding, seed, brute_force_limit, home, log):
    labeled = feats.y >= 0
    notes: list[str] = []
    if labeled.any():
        _check_labels(feats, labeled)
    else:
        notes.append("unlabeled images: only the duplicate and map sections apply")

    directory = None
    if out is not False:
        directory = Path(out) if out else _default_dir(feats.settings.backbone, home)
        directory.mkdir(parents=True, exist_ok=True)
    report = InspectReport(
        directory, feats.describe(), len(feats), list(feats.class_names),
        {s or "unlabeled": int((feats.split == s).sum()) for s in feats.splits}, {}, notes=notes,
    )
    timer = functools.partial(_timed, report=report, log=log)

    with timer("duplicates"):
        report.duplicates = find_duplicates(feats, near_threshold, brute_force_limit=brute_force_limit, notes=notes)
    with timer("reduce"):
        Z = _reduce(feats.X, seed)
    cal_plot = None
    if labeled.any():
        with timer("label issues"):
            report.label_issues, oof, ranking = find_label_issues(feats, Z, folds=folds, seed=seed, notes=notes)
            report.suspect_ranking = ranking
        with timer("budget"):
            report.budget = label_budget(feats, Z, seeds=seeds, seed=seed)
        with timer("calibration"):
            report.calibration, cal_plot = check_calibration(feats, oof, head, notes, home)
    with timer("map"):
        coords, chosen, method = _embed(Z, embedding, seed, notes)
        report.embedding = {"method": method, "points": int(len(chosen))}

    if directory is not None:
        with timer("files"):
            report.files = _write_files(report, feats, directory, coords, chosen, cal_plot)
        report.files.append(directory / "report.json")
        (directory / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def _check_labels(f: Features, labeled: np.ndarray) -> None:
    counts = np.bincount(f.y[labeled], minlength=len(f.class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = f.class_names[present[0]] if len(present) else "none"
        raise InspectError(
            f"{f.view.source} has {len(present)} labelled class ({only}); the label checks need at least 2 classes."
        )
    few = [f"{f.class_names[i]} ({counts[i]})" for i in present if counts[i] < MIN_PER_CLASS]
    if few:
        raise InspectError(
            f"Too few images for K-fold label checks: each class needs at least {MIN_PER_CLASS} labelled images; "
            f"{', '.join(few[:5])}{' ...' if len(few) > 5 else ''} {'has' if len(few) == 1 else 'have'} fewer."
        )


@contextlib.contextmanager
def _timed(name: str, report: InspectReport, log) -> Iterator[None]:
    log(f"inspect: {name}...")
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        report.timings[name] = round(time.perf_counter() - t, 3)
        report.cpu_seconds[name] = round(time.process_time() - c, 3)


def _default_dir(backbone: str, home=None) -> Path:
    """``<featx home>/inspect/<backbone>-<time>``, beside heads/ and models/."""
    from .outputs import home_dir

    root, stamp = home_dir(home) / DEFAULT_INSPECT_DIR, time.strftime("%Y%m%d-%H%M%S")
    d, i = root / f"{backbone}-{stamp}", 1
    while d.exists():
        i += 1
        d = root / f"{backbone}-{stamp}-{i}"
    return d


def _rel(f: Features, path: str) -> str:
    src = f.view.source
    return os.path.relpath(path, src) if os.path.isdir(src) and path.startswith(src + os.sep) else path


def _label(f: Features, i: int) -> str:
    return f.class_names[f.y[i]] if f.y[i] >= 0 else ""


# --------------------------------------------------------------------------- 1. duplicates


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
    n = len(Z)
    block = max(64, min(n, block_bytes // (4 * max(n, 1))))
    I, J, S = [], [], []
    kept = 0
    for start in range(0, n, block):
        sims = Z[start:start + block] @ Z[start:].T
        bi, bj = np.nonzero(sims >= threshold)
        upper = bj > bi
        bi, bj = bi[upper], bj[upper]
        I.append(bi + start)
        J.append(bj + start)
        S.append(sims[bi, bj])
        kept += len(bi)
        if kept > 2 * max_pairs:
            I, J, S = _top_pairs(np.concatenate(I), np.concatenate(J), np.concatenate(S), max_pairs)
            I, J, S, kept = [I], [J], [S], len(I)
    if not I:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return _top_pairs(np.concatenate(I), np.concatenate(J), np.concatenate(S), max_pairs)


def _top_pairs(i, j, s, k):
    order = np.argsort(-s, kind="stable")[:k]
    return i[order], j[order], s[order]


def _near_pairs_faiss(Z: np.ndarray, threshold: float, max_pairs: int, k: int = 10):
    import faiss

    index = faiss.IndexHNSWFlat(Z.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(Z))
    sims, nbrs = index.search(np.ascontiguousarray(Z), k)
    rows = np.repeat(np.arange(len(Z)), k)
    sims, nbrs = sims.ravel(), nbrs.ravel()
    keep = (nbrs > rows) & (sims >= threshold)
    return _top_pairs(rows[keep], nbrs[keep].astype(int), sims[keep], max_pairs)


def _pair_record(f: Features, i: int, j: int, kind: str, sim: float) -> dict:
    if (_SPLIT_ORDER.get(f.split[j], 4), f.paths[j]) < (_SPLIT_ORDER.get(f.split[i], 4), f.paths[i]):
        i, j = j, i
    sa, sb = str(f.split[i]), str(f.split[j])
    la, lb = _label(f, i), _label(f, j)
    return {
        "kind": kind, "similarity": round(float(sim), 5),
        "path_a": str(f.paths[i]), "split_a": sa, "label_a": la, "rel_a": _rel(f, str(f.paths[i])),
        "path_b": str(f.paths[j]), "split_b": sb, "label_b": lb, "rel_b": _rel(f, str(f.paths[j])),
        "cross_split": f"{sa}-{sb}" if sa != sb and sa and sb else "",
        "label_conflict": bool(la and lb and la != lb), "row_a": int(i), "row_b": int(j),
    }


def find_duplicates(f: Features, threshold: float = NEAR_THRESHOLD, *, brute_force_limit: int = BRUTE_FORCE_LIMIT,
                    max_pairs: int = MAX_NEAR_PAIRS, notes: list | None = None) -> dict:
    """Exact (same sha256) and near (cosine >= ``threshold``) duplicate pairs, with cross-split counts."""
    notes = notes if notes is not None else []
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

    # Near duplicates among distinct images only: one row per sha256.
    firsts = np.array([g[0] for g in groups.values()])
    Z = unit_rows(f.X[firsts])
    n = len(firsts)
    if n <= brute_force_limit:
        method = "exact blockwise search"
        I, J, S = near_pairs(Z, threshold, max_pairs)
    else:
        try:
            I, J, S = _near_pairs_faiss(Z, threshold, max_pairs)
            method = "approximate (faiss HNSW, 10 neighbours)"
        except ImportError:
            method = "skipped"
            I = J = S = np.zeros(0)
            notes.append(
                f"near duplicates not searched: {n} distinct images exceed the exact-search limit of "
                f"{brute_force_limit}; install faiss-cpu (pip install 'featx[inspect]') for the approximate index"
            )
    near = [_pair_record(f, int(firsts[i]), int(firsts[j]), "near", s) for i, j, s in zip(I, J, S)]
    if len(near) >= max_pairs:
        notes.append(f"kept the {max_pairs} most similar near-duplicate pairs; raise the threshold to see fewer")

    cross: dict[str, dict] = {}
    for p in exact + near:
        if p["cross_split"]:
            c = cross.setdefault(p["cross_split"], {"exact": 0, "near": 0, "conflicting_labels": 0})
            c[p["kind"]] += 1
            c["conflicting_labels"] += p["label_conflict"]
    return {
        "threshold": threshold, "method": method,
        "exact_groups": len(dup_groups), "exact_images": sum(len(g) for g in dup_groups),
        "exact_pairs": exact, "near_pairs": near, "cross_split": cross,
        "leaking_pairs": sum(c["exact"] + c["near"] for k, c in cross.items() if k in LEAKY),
    }


# --------------------------------------------------------------------------- shared projection


def _reduce(X: np.ndarray, seed: int, dims: int = PCA_DIMS) -> np.ndarray:
    """Standardised features, projected on their first ``dims`` principal components when wider.

    The projection is fitted on every row (it sees no labels); it keeps the
    K-fold fits and the budget curve fast on 2,048-wide features.
    """
    X = np.asarray(X, dtype=np.float32)
    mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    scale = X.std(axis=0, dtype=np.float64).astype(np.float32)
    Xs = (X - mean) / np.where(scale > 1e-12, scale, 1.0)
    k = min(dims, len(X) - 1)
    if X.shape[1] <= dims or k < 2:
        return Xs
    from sklearn.decomposition import PCA

    # Two power iterations find the leading subspace well enough here, at
    # two thirds of the cost of the default four.
    Z = PCA(k, svd_solver="randomized", iterated_power=2, random_state=seed).fit_transform(Xs)
    # One scale for all components, the first at unit variance: lbfgs then
    # converges in tens of iterations instead of hundreds (1,500 x 256: 0.1 s
    # instead of 0.6 s) with the same accuracy.
    return (Z / max(float(Z[:, 0].std()), 1e-12)).astype(np.float32)


def _logreg(seed: int):
    from sklearn.linear_model import LogisticRegression

    # C is modest on purpose: a few hundred standardised components and
    # labels that may be wrong; strong fits would memorise the errors.
    return LogisticRegression(C=0.2, max_iter=300, random_state=seed)


# --------------------------------------------------------------------------- 2. label issues


def out_of_fold_proba(Z: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Probabilities for each row from a logistic regression that never saw it (stratified K-fold)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    proba = np.zeros((len(y), n_classes))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(Z, y):
        m = _logreg(seed).fit(Z[tr], y[tr])
        proba[np.ix_(te, m.classes_)] = m.predict_proba(Z[te])
    return proba


def _cleanlab():
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        return None
    return cleanlab


def label_issue_scores(labels: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Confident learning: (flagged mask, label quality score, method) for each row.

    The score is the self-confidence, the out-of-fold probability of the
    given label (low = suspect). A row is flagged when some other class
    clears that class's threshold (the mean probability its own images give
    it) and beats the given one: cleanlab's ``filter_by="confident_learning"``,
    which is used when installed.
    """
    cl = _cleanlab()
    if cl is not None:
        flagged = cl.filter.find_label_issues(labels, proba, filter_by="confident_learning", n_jobs=1)
        score = cl.rank.get_label_quality_scores(labels, proba, method="self_confidence")
        return np.asarray(flagged, bool), np.asarray(score, float), "cleanlab confident learning"
    k = proba.shape[1]
    score = proba[np.arange(len(labels)), labels]
    thresholds = np.array([proba[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = proba >= thresholds - 1e-6
    confident = np.where(above, proba, -1.0).argmax(axis=1)
    flagged = above.any(axis=1) & (confident != labels)
    return flagged, score, "confident learning (self-confidence)"


def find_label_issues(f: Features, Z: np.ndarray, *, folds: int = 5, seed: int = 0, notes: list | None = None):
    """Likely label errors among the labelled rows; returns (section, OOF probabilities, ranking)."""
    rows = np.flatnonzero(f.y >= 0)
    y = f.y[rows]
    proba = out_of_fold_proba(Z[rows], y, len(f.class_names), folds, seed)
    used = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    if used < folds and notes is not None:
        notes.append(f"label checks used {used} folds: the smallest class has only {used} labelled images")
    flagged, score, method = label_issue_scores(y, proba)
    suggested = proba.argmax(axis=1)
    order = np.lexsort((np.arange(len(y)), score))  # most suspect first
    suspects = [
        {"path": str(f.paths[rows[i]]), "rel": _rel(f, str(f.paths[rows[i]])), "split": str(f.split[rows[i]]),
         "given": f.class_names[y[i]], "suggested": f.class_names[suggested[i]], "score": round(float(score[i]), 5),
         "row": int(rows[i])}
        for i in order if flagged[i]
    ]
    section = {
        "method": method, "folds": used, "n_labeled": int(len(rows)), "n_flagged": len(suspects),
        "oof_accuracy": float((suggested == y).mean()), "suspects": suspects, "top": suspects[:20],
    }
    oof = np.full((len(f), len(f.class_names)), np.nan)
    oof[rows] = proba
    return section, oof, rows[order]


# --------------------------------------------------------------------------- 3. label budget


def label_budget(f: Features, Z: np.ndarray, *, seeds: int = 3, seed: int = 0,
                 budgets: Sequence[int] = BUDGETS) -> dict:
    """Accuracy against labelled images per class, over ``seeds`` random draws per budget.

    Trained on train and scored on val + test; without those, on a stratified
    quarter held out of the labelled images.
    """
    labeled = f.y >= 0
    pool = np.flatnonzero(labeled & (f.split == "train"))
    held = np.flatnonzero(labeled & (f.split != "train"))
    where = "+".join(s for s in ("val", "test") if ((f.split == s) & labeled).any())
    if len(pool) == 0 or len(held) == 0 or len(np.unique(f.y[pool])) < 2:
        from sklearn.model_selection import train_test_split

        rows = np.flatnonzero(labeled)
        n_classes = len(np.unique(f.y[rows]))
        n_held = max(int(0.25 * len(rows)), n_classes)
        pool, held = train_test_split(rows, test_size=n_held, random_state=seed, stratify=f.y[rows])
        where = "a stratified 25% held out of the labelled images"
    y_pool = f.y[pool]
    by_class = [pool[y_pool == c] for c in np.unique(y_pool)]
    largest = max(len(r) for r in by_class)
    steps = [b for b in budgets if b < largest] + [largest]
    points, raw = [], []
    for b in steps:
        is_all = b == largest
        accs = []
        for s in range(1 if is_all else seeds):
            rng = np.random.default_rng(seed + 1000 * s + b)
            take = np.concatenate([r if len(r) <= b else rng.choice(r, b, replace=False) for r in by_class])
            m = _logreg(seed).fit(Z[take], f.y[take])
            acc = float((m.predict(Z[held]) == f.y[held]).mean())
            accs.append(acc)
            raw.append({"per_class": b, "seed": s, "n_train": int(len(take)), "accuracy": round(acc, 5)})
        points.append({"per_class": b, "all": is_all, "n_train": int(sum(min(len(r), b) for r in by_class)),
                       "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                       "min": float(np.min(accs)), "max": float(np.max(accs))})
    return {"evaluated_on": where, "n_eval": int(len(held)), "points": points, "runs": raw,
            "verdict": _budget_verdict(points)}


def _budget_verdict(points: list[dict]) -> str:
    last = points[-1]
    if len(points) < 2:
        return f"accuracy {last['mean']:.3f} with all {last['per_class']} images per class"
    prev = points[-2]
    gain = 100 * (last["mean"] - prev["mean"])
    head = (f"accuracy {prev['mean']:.3f} at {prev['per_class']} -> {last['mean']:.3f} at {last['per_class']} "
            f"images per class (all), {gain:+.1f} points")
    if gain >= 1.0:
        return head + ": still rising, more labels would probably help"
    return head + ": flat, more labels of the same kind are unlikely to help much"


# --------------------------------------------------------------------------- 4. calibration


def _eval_rows(f: Features, prefer_test: bool = True) -> tuple[np.ndarray, str]:
    for s in (("test", "val") if prefer_test else ("val", "test")):
        rows = np.flatnonzero((f.split == s) & (f.y >= 0))
        if len(rows):
            return rows, s
    return np.zeros(0, int), ""


def _head_proba(f: Features, head, notes: list, home=None) -> tuple[np.ndarray, np.ndarray, str, str, float | None] | None:
    """The head's probabilities on test (or a real val split), if a usable head is there."""
    from .heads import align_proba, load_head, read_manifest
    from .outputs import latest_head

    if head is False:
        return None
    if head is None:
        try:
            head = latest_head(home)
        except HeadError:
            return None
    head = Path(head)
    man = read_manifest(head)
    if man.get("extraction") != f.extraction.name:
        notes.append(f"calibration: head {head} was fitted on {man.get('extraction')}, not {f.extraction.name}; "
                     "using out-of-fold probabilities")
        return None
    if man.get("kind") == "dense":
        notes.append(f"calibration: {head} is a dense (Keras) head and inspect builds no Keras model; "
                     "using out-of-fold probabilities")
        return None
    rows, where = _eval_rows(f)
    if where == "val" and man.get("val_from") != "val split":
        rows, where = np.zeros(0, int), ""
    if not len(rows):
        notes.append(f"calibration: no held-out split to score head {head} on; using out-of-fold probabilities")
        return None
    est = load_head(head)
    proba = align_proba(est, est.predict_proba(f.X[rows]), f.class_names)
    return rows, proba, f"head {head.name}", where, man.get("temperature")


def check_calibration(f: Features, oof: np.ndarray, head=None, notes: list | None = None, home=None):
    """ECE of a head on held-out rows (or of the out-of-fold probabilities), and the temperature that fixes it."""
    from .calibration import apply_temperature, expected_calibration_error, fit_temperature

    notes = notes if notes is not None else []
    got = _head_proba(f, head, notes, home)
    stored_t = None
    if got is None:
        rows = np.flatnonzero(f.y >= 0)
        proba, source, where = oof[rows], "out-of-fold logistic regression", "all labelled images"
    else:
        rows, proba, source, where, stored_t = got
        if stored_t:
            proba = apply_temperature(proba, stored_t)
            source += f" (its temperature {stored_t:.3g} applied)"
    y = f.y[rows]
    T = fit_temperature(proba, y)
    after = apply_temperature(proba, T)
    section = {
        "source": source, "evaluated_on": where, "n": int(len(rows)), "bins": 15,
        "ece": expected_calibration_error(proba, y), "temperature": T,
        "ece_after": expected_calibration_error(after, y), "head_temperature": stored_t,
        "accuracy": float((proba.argmax(axis=1) == y).mean()),
        "note": "the temperature is fitted on the same rows it is scored on; `featx fit-head --calibrate` fits it on val",
    }
    return section, (proba, after, y)


# --------------------------------------------------------------------------- 5. map


def _import_umap():
    """umap-learn without its ParametricUMAP, whose import would load TensorFlow."""
    import sys

    blocked = "umap" not in sys.modules and "umap.parametric_umap" not in sys.modules
    if blocked:
        sys.modules["umap.parametric_umap"] = None  # umap's __init__ catches the ImportError
    try:
        import umap
    finally:
        if blocked and sys.modules.get("umap.parametric_umap", False) is None:
            del sys.modules["umap.parametric_umap"]
    return umap


def _embed(Z: np.ndarray, method: str, seed: int, notes: list):
    rng = np.random.default_rng(seed)
    chosen = np.arange(len(Z)) if len(Z) <= MAP_MAX_POINTS else np.sort(rng.choice(len(Z), MAP_MAX_POINTS, replace=False))
    if len(Z) > MAP_MAX_POINTS:
        notes.append(f"map: {MAP_MAX_POINTS} of {len(Z)} images, drawn at random")
    sub = Z[chosen]
    if method == "umap":
        try:
            umap = _import_umap()
            coords = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(sub)
            return coords, chosen, "umap"
        except ImportError:
            notes.append("map: umap-learn is not installed (pip install 'featx[inspect]'); showing PCA")
    if sub.shape[1] <= 2 or len(sub) < 3:
        coords = np.zeros((len(sub), 2))
        coords[:, :min(2, sub.shape[1])] = sub[:, :2]
        return coords, chosen, "pca"
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(sub), chosen, "pca"


# --------------------------------------------------------------------------- files


def _write_files(report: InspectReport, f: Features, d: Path, coords, chosen, cal) -> list[Path]:
    from . import inspect_plots as P

    files = []
    dup = report.duplicates
    pairs = dup["exact_pairs"] + dup["near_pairs"]
    files.append(_write_csv(d / "duplicates.csv", [
        {k: p[k] for k in ("kind", "similarity", "cross_split", "label_conflict", "path_a", "split_a", "label_a",
                           "path_b", "split_b", "label_b")} for p in pairs
    ], ["kind", "similarity", "cross_split", "label_conflict", "path_a", "split_a", "label_a", "path_b", "split_b",
        "label_b"]))
    # Leaks first, then the most similar.
    shown = sorted(pairs, key=lambda p: (p["cross_split"] not in LEAKY, not p["cross_split"], -p["similarity"]))[:16]
    files.append(P.pair_sheet(shown, d / "duplicates.png", f"duplicates ({len(pairs)} pairs)"))
    flagged = {p["row_a"] for p in pairs} | {p["row_b"] for p in pairs}
    li = report.label_issues
    if li is not None:
        cols = ["path", "split", "given", "suggested", "score"]
        files.append(_write_csv(d / "label_issues.csv", [{k: s[k] for k in cols} for s in li["suspects"]], cols))
        files.append(P.suspect_sheet(li["suspects"][:24], d / "label_issues.png",
                                     f"likely label errors ({li['n_flagged']}; lowest self-confidence first)"))
        flagged |= {s["row"] for s in li["suspects"]}
    b = report.budget
    if b is not None:
        files.append(_write_csv(d / "label_budget.csv", b["runs"], ["per_class", "seed", "n_train", "accuracy"]))
        files.append(P.budget_plot(b, d / "label_budget.png"))
    if cal is not None:
        files.append(P.reliability_plot(*cal, report.calibration, d / "reliability.png"))
    files.append(P.map_plot(coords, f, chosen, np.array(sorted(flagged), int), report.embedding["method"],
                            d / "embedding.png"))
    return files


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


__all__ = ["inspect", "InspectReport", "find_duplicates", "near_pairs", "unit_rows", "out_of_fold_proba",
           "label_issue_scores", "label_budget", "check_calibration", "NEAR_THRESHOLD"]
