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
"""Cosine similarity of standardised, L2-normalised features at or above which two images are surely near duplicates.

Measured with the VGG16 HED weights at 128 px on hymenoptera: half-size and
quality-60 copies score 0.99 to 1.0, distinct photos up to 0.96. Copies that
the features move more (mirror images, crops, colour jitter) are found by the
neighbourhood rule of :class:`NearRule` instead (docs/inspect.md)."""

BRUTE_FORCE_LIMIT = 20_000
"""Distinct images up to which near duplicates are searched exactly, on all dimensions (n^2 x width
multiply-adds: 8e11 at 20,000 x 2,048). Past it, an approximate index over principal components."""
IVF_MIN_ROWS = 50_000
IVF_PROBES = 8
RESCORE_MARGIN = 0.05
BLOCK_ROWS = 16_384
"""Rows read from the cache at a time past ``IN_MEMORY_ROWS`` (128 MB at 2,048 wide)."""
IN_MEMORY_ROWS = 50_000
"""Views up to this many rows are loaded whole; larger ones are read in blocks of ``BLOCK_ROWS``."""
PCA_FIT_ROWS = 20_000
"""Rows the shared projection is fitted on; larger data is projected in blocks."""
LABEL_FIT_ROWS = 50_000
"""Rows each K-fold model of the label checks is trained on, at most (every labelled row is still scored)."""
BUDGET_FIT_ROWS = 20_000
BUDGET_EVAL_ROWS = 20_000
"""The budget curve trains on at most ``BUDGET_FIT_ROWS`` rows (all classes) and scores on at most
``BUDGET_EVAL_ROWS``; the head's calibration is scored on at most ``BUDGET_EVAL_ROWS`` held-out rows."""
MAX_NEAR_PAIRS = 10_000
MIN_PER_CLASS = 3
MAP_MAX_POINTS = 20_000
PCA_DIMS = 256
BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
LEAKY = ("train-val", "train-test")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "": 3}
DEFAULT_INSPECT_DIR = "inspect"
DUPLICATE_COLUMNS = ("kind", "rule", "similarity", "ratio", "cross_split", "label_conflict", "path_a", "split_a",
                     "label_a", "path_b", "split_b", "label_b")


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
        if d["adaptive"]:
            near = (f"{len(d['near_pairs'])} near pairs ({d['by_rule']['cosine']} at cosine >= {d['threshold']:g}, "
                    f"{d['by_rule']['neighbourhood']} mutual nearest neighbours far nearer than the next; "
                    f"{d['method']})")
        else:
            near = f"{len(d['near_pairs'])} near pairs at cosine >= {d['threshold']:g} ({d['method']})"
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
    near_rule: str = "adaptive",
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
        Cosine similarity at or above which two images are near duplicates
        (see :data:`NEAR_THRESHOLD`).
    near_rule : {"adaptive", "fixed"}
        "adaptive" also reports mutual nearest neighbours that stand out
        from their neighbourhood (see :class:`NearRule`); "fixed" only the
        cosine threshold.
    folds : int
        K of the stratified K-fold behind the out-of-fold probabilities.
    seeds : int
        Random draws per point of the label-budget curve.
    embedding : {"pca", "umap"}
        The map; UMAP needs ``umap-learn`` (PCA with a note otherwise).
    brute_force_limit : int
        Above this many distinct images, near duplicates come from an
        approximate index (faiss, or an inverted file in numpy) over
        principal components instead of the exact search.
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
    if near_rule not in ("adaptive", "fixed"):
        raise InspectError(f"near_rule must be 'adaptive' or 'fixed'. Received: near_rule={near_rule!r}")
    rule = NearRule(threshold=near_threshold, adaptive=near_rule == "adaptive")
    if folds < 2 or seeds < 1:
        raise InspectError(f"folds must be >= 2 and seeds >= 1. Received: folds={folds!r}, seeds={seeds!r}")
    if embedding not in ("pca", "umap"):
        raise InspectError(f"embedding must be 'pca' or 'umap'. Received: embedding={embedding!r}")
    feats = data if isinstance(data, Features) else _open_features(data, backbone, cache_dir, extraction,
                                                                      IN_MEMORY_ROWS)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n_jobs or 1):
        return _inspect(feats, out, head, rule, folds, seeds, embedding, seed, brute_force_limit, home,
                        log or (lambda msg: None))


def _inspect(feats, out, head, rule, folds, seeds, embedding, seed, brute_force_limit, home, log):
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

    with timer("reduce"):
        reduced = Reduced.fit(_Rows.of(feats), seed)
        Z = reduced.Z
        if reduced.fitted_on < len(feats):
            notes.append(f"principal components fitted on {reduced.fitted_on} of {len(feats)} images, drawn at "
                         f"random; every image projected ({len(feats)} rows read in blocks of {BLOCK_ROWS})")
    with timer("duplicates"):
        report.duplicates = find_duplicates(feats, rule, brute_force_limit=brute_force_limit, notes=notes,
                                            reduced=reduced, seed=seed)
    cal_plot = None
    if labeled.any():
        with timer("label issues"):
            report.label_issues, oof, ranking = find_label_issues(feats, Z, folds=folds, seed=seed, notes=notes)
            report.suspect_ranking = ranking
        with timer("budget"):
            report.budget = label_budget(feats, Z, seeds=seeds, seed=seed, notes=notes)
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


# --------------------------------------------------------------------------- the near-duplicate rule


@dataclass(frozen=True)
class NearRule:
    """When two distinct images are near duplicates.

    A pair is near when either holds:

    1. **cosine**: their cosine similarity (standardised, L2-normalised
       features) is at or above ``threshold``; sure, whatever the data;
    2. **neighbourhood** (``adaptive``): they are each other's nearest
       neighbour, at least as similar as the median image is to its own
       nearest neighbour, and much nearer to each other than to anything
       else. "Much nearer" is Lowe's ratio test on distances, d1 / d2, the
       distance to the partner over the distance to the next neighbour
       (copies of the same photo, or images already found by rule 1, are
       skipped as the next neighbour), and it adapts to the embedding: the
       ratio must be at most ``max_ratio`` and an outlier among all images'
       ratios, ``z`` robust standard deviations (1.4826 MAD of the log
       ratio) below their median.

    A fixed cosine misses copies that a backbone's features move more (a
    mirror image, a crop, colour jitter): on hymenoptera with the VGG16 HED
    weights at 128 px, 90% crops score 0.63 to 0.96 and distinct photos up
    to 0.92. Such copies are still their original's mutual nearest
    neighbour with a ratio of at most 0.72, where mutually nearest distinct
    photos have 0.79 or more (docs/inspect.md).

    Parameters
    ----------
    threshold : float
        Cosine at or above which a pair is near (rule 1).
    adaptive : bool
        Also apply rule 2.
    max_ratio : float
        Largest distance ratio d1 / d2 of rule 2. Lowe's 0.8 let one pair of
        distinct photos through on hymenoptera (an ant and a bee, cosine
        0.70, ratio 0.79); 0.75 none, with the same recall of planted copies.
    z : float
        How many robust standard deviations below the median log ratio.
    """

    threshold: float = 0.95
    adaptive: bool = True
    max_ratio: float = 0.75
    z: float = 4.0

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise InspectError(f"near_threshold must be in (0, 1]. Received: near_threshold={self.threshold!r}")
        if not 0 < self.max_ratio < 1 or self.z < 0:
            raise InspectError(f"NearRule needs 0 < max_ratio < 1 and z >= 0. "
                               f"Received: max_ratio={self.max_ratio!r}, z={self.z!r}")

    def describe(self) -> str:
        if not self.adaptive:
            return f"cosine >= {self.threshold:g}"
        return (f"cosine >= {self.threshold:g}, or mutual nearest neighbours with distance ratio "
                f"<= min({self.max_ratio:g}, {self.z:g} robust SD under the median)")


NEIGHBOURS = 10
"""Neighbours kept per image for the neighbourhood rule (and per query of the approximate index)."""


def neighbourhood_pairs(nbrs: np.ndarray, sims: np.ndarray, rule: NearRule) -> tuple[list, dict]:
    """Rule 2 of :class:`NearRule` on each row's nearest neighbours (most similar first).

    Returns ``([(i, j, ratio), ...], stats)`` with ``i < j``; ``stats`` holds
    the medians and the ratio cut the data gave.
    """
    n = len(nbrs)
    stats = {"nn_similarity_median": None, "log_ratio_median": None, "log_ratio_mad": None, "ratio_cut": None}
    if n < 3 or nbrs.shape[1] < 2:
        return [], stats
    # Partners at or above the cosine threshold are already near: the
    # neighbourhood starts after them (a photo and its copy share neighbours).
    below = sims < rule.threshold
    first = np.argmax(below, axis=1)
    has1 = below.any(axis=1)
    rest = below.copy()
    rest[np.arange(n), first] = False
    second = np.argmax(rest, axis=1)
    has2 = has1 & rest.any(axis=1)
    r = np.arange(n)
    nn = np.where(has1, nbrs[r, first], -1)
    s1 = np.where(has1, sims[r, first], np.nan)
    s2 = np.where(has2, sims[r, second], np.nan)
    ok = has2 & (s1 < 1)
    if ok.sum() < 3:
        return [], stats
    log_ratio = 0.5 * (np.log1p(-np.minimum(s1[ok], 1 - 1e-7)) - np.log1p(-np.minimum(s2[ok], 1 - 1e-7)))
    med = float(np.median(log_ratio))
    mad = 1.4826 * float(np.median(np.abs(log_ratio - med)))
    floor = float(np.median(s1[has1]))
    cut = float(min(rule.max_ratio, np.exp(med - rule.z * mad)))
    stats = {"nn_similarity_median": round(floor, 5), "log_ratio_median": round(med, 5),
             "log_ratio_mad": round(mad, 5), "ratio_cut": round(cut, 5)}
    out = []
    for i in np.flatnonzero(has2 & (s1 >= floor)):
        j = nn[i]
        if j <= i and nn[j] == i and has2[j]:
            continue  # each mutual pair once, from its smaller row
        if nn[j] != i or not has2[j]:
            continue
        ratio = float(np.sqrt((1 - s1[i]) / max(1 - max(s2[i], s2[j]), 1e-12)))
        if ratio <= cut:
            out.append((int(min(i, j)), int(max(i, j)), ratio))
    return out, stats


def _near_knn_faiss(Z: np.ndarray, k: int, seed: int = 0):
    """Each row's k nearest others by inner product from a faiss IVF index (exact under ``IVF_MIN_ROWS``)."""
    with _faiss_threads() as faiss:
        return _faiss_search(faiss, Z, k, seed)


def _faiss_search(faiss, Z: np.ndarray, k: int, seed: int):
    n, d = Z.shape
    Z = np.ascontiguousarray(Z, dtype=np.float32)
    if n < IVF_MIN_ROWS:
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
        index.nprobe = IVF_PROBES
        probe = f"IVF {nlist} cells, {IVF_PROBES} probed"
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


def _near_knn_numpy(Z: np.ndarray, k: int, seed: int = 0):
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
    probes = min(IVF_PROBES, nlist)
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


def _pair_record(f: Features, i: int, j: int, kind: str, sim: float, rule: str = "", ratio: float | None = None) -> dict:
    if (_SPLIT_ORDER.get(f.split[j], 4), f.paths[j]) < (_SPLIT_ORDER.get(f.split[i], 4), f.paths[i]):
        i, j = j, i
    sa, sb = str(f.split[i]), str(f.split[j])
    la, lb = _label(f, i), _label(f, j)
    return {
        "kind": kind, "similarity": round(float(sim), 5), "rule": rule or ("sha256" if kind == "exact" else "cosine"),
        "ratio": None if ratio is None else round(float(ratio), 4),
        "path_a": str(f.paths[i]), "split_a": sa, "label_a": la, "rel_a": _rel(f, str(f.paths[i])),
        "path_b": str(f.paths[j]), "split_b": sb, "label_b": lb, "rel_b": _rel(f, str(f.paths[j])),
        "cross_split": f"{sa}-{sb}" if sa != sb and sa and sb else "",
        "label_conflict": bool(la and lb and la != lb), "row_a": int(i), "row_b": int(j),
    }


def find_duplicates(f: Features, rule: NearRule | float = NEAR_THRESHOLD, *,
                    brute_force_limit: int = BRUTE_FORCE_LIMIT, max_pairs: int = MAX_NEAR_PAIRS,
                    notes: list | None = None, reduced: "Reduced | None" = None, seed: int = 0) -> dict:
    """Exact (same sha256) and near (see :class:`NearRule`) duplicate pairs, with cross-split counts.

    Up to ``brute_force_limit`` distinct images the search is exact, on all
    feature dimensions. Past it, each image's nearest neighbours come from an
    approximate index (faiss IVF; an inverted file in numpy without faiss)
    over the images' first principal components (``reduced``, computed here
    if not given), and the pairs found are scored again on all dimensions.
    """
    rule = rule if isinstance(rule, NearRule) else NearRule(threshold=float(rule))
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
    firsts = np.array([g[0] for g in groups.values()], dtype=np.int64)
    n = len(firsts)
    k = NEIGHBOURS if rule.adaptive else 0
    stats: dict = {}
    found: list[tuple[int, int, float, str, float | None]] = []  # (i, j, cosine, rule, ratio), rows of firsts
    if n <= brute_force_limit:
        method = "exact search"
        I, J, S, nbrs, sims = _exact_search(unit_rows(f.X[firsts]), rule.threshold, k, max_pairs)
        found = [(int(i), int(j), float(s), "cosine", None) for i, j, s in zip(I, J, S)]
        if k:
            adaptive, stats = neighbourhood_pairs(nbrs, sims, rule)
            found += [(i, j, float(sims[i][nbrs[i] == j][0]), "neighbourhood", r) for i, j, r in adaptive]
    else:
        reduced = reduced if reduced is not None else Reduced.fit(_Rows.of(f), seed)
        U = reduced.Z[firsts]
        U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
        try:
            (nbrs, sims), how = _near_knn_faiss(U, max(k, NEIGHBOURS), seed)
        except ImportError:
            (nbrs, sims), how = _near_knn_numpy(U, max(k, NEIGHBOURS), seed)
            notes.append("near duplicates: faiss is not installed (pip install 'featx[inspect]'); "
                         "used a slower inverted file in numpy")
        del U
        method = (f"approximate: {NEIGHBOURS} nearest neighbours of each of {n} distinct images on "
                  f"{reduced.Z.shape[1]} principal components ({how}), pairs scored again on all dimensions")
        # Candidates for rule 1: principal components drop the small directions
        # that tell photos apart, so their cosines run higher; keep a margin.
        rows = np.repeat(np.arange(n), nbrs.shape[1])
        cand = (nbrs.ravel() > rows) & (sims.ravel() >= rule.threshold - RESCORE_MARGIN)
        ci, cj, cs = _top_pairs(rows[cand], nbrs.ravel()[cand], sims.ravel()[cand], 2 * max_pairs)
        pairs = {(int(i), int(j)): ("cosine", None) for i, j in zip(ci, cj)}
        if k:
            adaptive, stats = neighbourhood_pairs(nbrs, sims, rule)
            pairs.update({(i, j): ("neighbourhood", r) for i, j, r in adaptive})
        keys = list(pairs)
        cos = _rescore(_Rows.of(f), firsts, keys, reduced)
        found = [(i, j, c, "cosine", None) if c >= rule.threshold else (i, j, c, *pairs[(i, j)])
                 for (i, j), c in zip(keys, cos) if c >= rule.threshold or pairs[(i, j)][0] == "neighbourhood"]
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


def _rescore(rows: "_Rows", firsts: np.ndarray, pairs: list[tuple[int, int]], reduced: "Reduced") -> list[float]:
    """Cosines of standardised, L2-normalised full rows for pairs of ``firsts`` positions."""
    if not pairs:
        return []
    need = np.unique(np.array(pairs).ravel())
    X = rows.take(firsts[need])
    Z = (X - reduced.mean) / reduced.unit_scale
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    at = {int(r): k for k, r in enumerate(need)}
    return [float(Z[at[i]] @ Z[at[j]]) for i, j in pairs]


# --------------------------------------------------------------------------- rows and the shared projection


class _Rows:
    """Feature rows of a :class:`Features`, in memory or read from its cache in blocks.

    ``blocks()`` yields ``(positions, X)`` covering every row once, in the
    order the cache stores them, so that reading is sequential; ``take``
    reads chosen rows. Nothing holds more than ``BLOCK_ROWS`` rows at a time.
    """

    def __init__(self, f: Features):
        self.f = f
        self.n = len(f)
        self.lazy = isinstance(f.X, _CachedX)

    @classmethod
    def of(cls, f: Features) -> "_Rows":
        return cls(f)

    def blocks(self, size: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        size = size or BLOCK_ROWS
        if not self.lazy:
            for start in range(0, self.n, size):
                yield np.arange(start, min(self.n, start + size)), np.asarray(self.f.X[start:start + size], np.float32)
            return
        order = self.f.X.storage_order()
        for start in range(0, self.n, size):
            pos = order[start:start + size]
            yield pos, self.f.X.read(pos)

    def take(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if not self.lazy:
            return np.asarray(self.f.X[positions], dtype=np.float32)
        return self.f.X.read(positions)


class _CachedX:
    """``Features.X`` left in the cache: rows are read when indexed (``featx.inspect`` on large views).

    Indexing with positions reads those rows; the few NumPy calls made on
    it (``shape``, ``len``) answer without reading.
    """

    def __init__(self, extraction, shas: np.ndarray):
        self.extraction = extraction
        self.shas = shas
        self.shape = (len(shas), int(extraction.meta["feature_width"]))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def storage_order(self) -> np.ndarray:
        """Positions sorted by (shard, row), so that blocks read shards front to back."""
        shard, row = self.extraction.locate(self.shas.tolist())
        shard[shard < 0] = np.iinfo(np.int64).max
        return np.lexsort((row, shard))

    def read(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        return self.extraction.read(list(self.shas[positions]))

    def __getitem__(self, key) -> np.ndarray:
        positions = np.arange(self.shape[0])[key]
        return self.read(np.atleast_1d(positions)) if np.ndim(positions) else self.read(positions[None])[0]

    def __array__(self, dtype=None, copy=None):
        X = self.read(np.arange(len(self)))
        return X if dtype is None else X.astype(dtype)


def _open_features(data, backbone, cache_dir, extraction, in_memory_rows: int) -> Features:
    """``load_features``, leaving the rows in the cache (a :class:`_CachedX`) past ``in_memory_rows``."""
    from .cache import Cache
    from .features import find_view

    cache = Cache(cache_dir)
    view = find_view(cache, data, backbone, extraction)
    cols = cache.read_view(view)
    if len(cols["sha256"]) <= in_memory_rows:
        return load_features(data, backbone, cache_dir=cache_dir, extraction=extraction)
    ext = cache.get_extraction(view.extraction)
    return Features(_CachedX(ext, cols["sha256"]), cols["label"].astype(np.int64), cols["path"], cols["sha256"],
                    cols["split"], view.class_names, ext, view)


@dataclass
class Reduced:
    """Every row standardised and projected on its first principal components, computed in blocks.

    Attributes
    ----------
    Z : ndarray, shape (n, dims), float32
        The projections, scaled so that the first component has unit
        variance; what the label checks, the budget curve, the map and the
        approximate neighbour search use.
    mean, scale : ndarray, shape (width,)
        Per-dimension mean and standard deviation of all rows.
    unit_scale : ndarray
        ``scale``, with dimensions that never vary set to infinity (as in
        :func:`unit_rows`).
    fitted_on : int
        Rows the projection was fitted on (all of them up to ``PCA_FIT_ROWS``).
    """

    Z: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    unit_scale: np.ndarray
    fitted_on: int

    @classmethod
    def fit(cls, rows: _Rows, seed: int = 0, dims: int = PCA_DIMS, fit_rows: int = 0) -> "Reduced":
        fit_rows = fit_rows or PCA_FIT_ROWS
        n = rows.n
        if not rows.lazy and n <= fit_rows:
            return cls._in_memory(np.asarray(rows.f.X, dtype=np.float32), seed, dims)
        rng = np.random.default_rng(seed)
        chosen = np.zeros(n, bool)
        chosen[rng.choice(n, min(n, fit_rows), replace=False)] = True
        total = sq = None
        sample, width = [], None
        for pos, X in rows.blocks():
            X64 = X.astype(np.float64)
            total = X64.sum(axis=0) if total is None else total + X64.sum(axis=0)
            sq = (X64 ** 2).sum(axis=0) if sq is None else sq + (X64 ** 2).sum(axis=0)
            sample.append(X[chosen[pos]])
            width = X.shape[1]
        mean = (total / n).astype(np.float32)
        scale = np.sqrt(np.maximum(sq / n - (total / n) ** 2, 0)).astype(np.float32)
        safe = np.where(scale > 1e-12, scale, 1.0)
        S = (np.concatenate(sample) - mean) / safe
        k = min(dims, len(S) - 1)
        if width <= dims or k < 2:
            Z = np.empty((n, width), np.float32)
            for pos, X in rows.blocks():
                Z[pos] = (X - mean) / safe
            return cls(Z, mean, scale, _unit_scale(scale), len(S))
        from sklearn.decomposition import PCA

        pca = PCA(k, svd_solver="randomized", iterated_power=2, random_state=seed).fit(S)
        first = max(float(np.sqrt(pca.explained_variance_[0])), 1e-12)
        Z = np.empty((n, k), np.float32)
        for pos, X in rows.blocks():
            Z[pos] = pca.transform((X - mean) / safe) / first
        return cls(Z, mean, scale, _unit_scale(scale), len(S))

    @classmethod
    def _in_memory(cls, X: np.ndarray, seed: int, dims: int) -> "Reduced":
        mean = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        scale = X.std(axis=0, dtype=np.float64).astype(np.float32)
        return cls(_reduce(X, seed, dims), mean, scale, _unit_scale(scale), len(X))


def _unit_scale(scale: np.ndarray) -> np.ndarray:
    live = scale > 1e-6 * max(float(scale.max(initial=0.0)), 1e-30)
    return np.where(live, scale, np.inf).astype(np.float32)


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


def out_of_fold_proba(Z: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0,
                      max_fit: int | None = None) -> np.ndarray:
    """Probabilities for each row from a logistic regression that never saw it (stratified K-fold).

    With ``max_fit``, each fold's model is trained on at most that many of
    the other folds' rows (a stratified random draw); every row is still scored.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    proba = np.zeros((len(y), n_classes))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        if max_fit and len(tr) > max_fit:
            tr = _stratified_draw(tr, y[tr], max_fit, seed)
        m = _logreg(seed).fit(Z[tr], y[tr])
        proba[np.ix_(te, m.classes_)] = m.predict_proba(Z[te])
    return proba


def _stratified_draw(rows: np.ndarray, y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` of ``rows``, drawn at random in proportion to their classes (each class kept)."""
    from sklearn.model_selection import train_test_split

    if size >= len(rows):
        return rows
    try:
        take, _ = train_test_split(rows, train_size=size, random_state=seed, stratify=y)
    except ValueError:  # a class too small to stratify
        take = np.random.default_rng(seed).choice(rows, size, replace=False)
    return np.sort(take)


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


def find_label_issues(f: Features, Z: np.ndarray, *, folds: int = 5, seed: int = 0, notes: list | None = None,
                      max_fit: int | None = None):
    """Likely label errors among the labelled rows; returns (section, OOF probabilities, ranking)."""
    rows = np.flatnonzero(f.y >= 0)
    y = f.y[rows]
    max_fit = LABEL_FIT_ROWS if max_fit is None else max_fit
    proba = out_of_fold_proba(Z[rows], y, len(f.class_names), folds, seed, max_fit=max_fit)
    used = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    notes = notes if notes is not None else []
    if used < folds:
        notes.append(f"label checks used {used} folds: the smallest class has only {used} labelled images")
    fitted = int(len(rows) * (used - 1) / used)
    if max_fit and fitted > max_fit:
        notes.append(f"label checks: each of the {used} fold models trained on {max_fit} of the {fitted} rows "
                     f"of the other folds (a stratified random draw); all {len(rows)} labelled images scored")
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
        "fit_rows_per_fold": min(fitted, max_fit) if max_fit else fitted,
        "oof_accuracy": float((suggested == y).mean()), "suspects": suspects, "top": suspects[:20],
    }
    oof = np.full((len(f), len(f.class_names)), np.nan)
    oof[rows] = proba
    return section, oof, rows[order]


# --------------------------------------------------------------------------- 3. label budget


def label_budget(f: Features, Z: np.ndarray, *, seeds: int = 3, seed: int = 0,
                 budgets: Sequence[int] = BUDGETS, notes: list | None = None,
                 max_fit: int | None = None, max_eval: int | None = None) -> dict:
    """Accuracy against labelled images per class, over ``seeds`` random draws per budget.

    Trained on train and scored on val + test; without those, on a stratified
    quarter held out of the labelled images. Past ``max_fit`` training rows
    (all classes together) the curve stops at the largest budget that fits,
    drawn from all of train; past ``max_eval`` it is scored on a stratified
    draw of the held-out rows. ``notes`` says when either happened.
    """
    max_fit = BUDGET_FIT_ROWS if max_fit is None else max_fit
    max_eval = BUDGET_EVAL_ROWS if max_eval is None else max_eval
    notes = notes if notes is not None else []
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
    n_held = len(held)
    if max_eval and len(held) > max_eval:
        held = _stratified_draw(held, f.y[held], max_eval, seed)
    y_pool = f.y[pool]
    by_class = [pool[y_pool == c] for c in np.unique(y_pool)]
    largest = max(len(r) for r in by_class)
    cap = largest
    while max_fit and cap > 1 and sum(min(len(r), cap) for r in by_class) > max_fit:
        cap = max([b for b in budgets if b < cap] or [1])
    steps = [b for b in budgets if b < cap] + [cap]
    if cap < largest or len(held) < n_held:
        notes.append(
            "label budget: " + (f"curve stops at {cap} images per class (at most {max_fit} training rows; the "
                                 f"largest class has {largest}), so its last point is not all of train; "
                                 if cap < largest else "") +
            (f"scored on {len(held)} of {n_held} held-out images (a stratified random draw)"
             if len(held) < n_held else "").rstrip("; "))
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
    return {"evaluated_on": where, "n_eval": int(len(held)), "n_held_out": int(n_held), "points": points, "runs": raw,
            "verdict": _budget_verdict(points)}


def _budget_verdict(points: list[dict]) -> str:
    last = points[-1]
    if len(points) < 2:
        return f"accuracy {last['mean']:.3f} with all {last['per_class']} images per class"
    prev = points[-2]
    gain = 100 * (last["mean"] - prev["mean"])
    head = (f"accuracy {prev['mean']:.3f} at {prev['per_class']} -> {last['mean']:.3f} at {last['per_class']} "
            f"images per class{' (all)' if last['all'] else ''}, {gain:+.1f} points")
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
    if len(rows) > BUDGET_EVAL_ROWS:
        notes.append(f"calibration: head {head.name} scored on {BUDGET_EVAL_ROWS} of {len(rows)} {where} images, "
                     "drawn at random")
        rows = np.sort(np.random.default_rng(0).choice(rows, BUDGET_EVAL_ROWS, replace=False))
    est = load_head(head)
    proba = align_proba(est, est.predict_proba(np.asarray(f.X[rows], dtype=np.float32)), f.class_names)
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
        {k: p[k] for k in DUPLICATE_COLUMNS} for p in pairs
    ], list(DUPLICATE_COLUMNS)))
    # Leaks first, then the most similar.
    shown = sorted(pairs, key=lambda p: (p["cross_split"] not in LEAKY, not p["cross_split"], -p["similarity"]))[:16]
    files.append(P.pair_sheet(shown, d / "duplicates.png", f"duplicates ({P._plural(len(pairs), 'pair')}"
                              f"{', 16 shown' if len(pairs) > 16 else ''})",
                              empty_note=f"{report.n_images} images compared: same bytes, cosine >= {dup['threshold']:g}"
                                         + (", or nearest neighbours" if dup["adaptive"] else "")))
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
