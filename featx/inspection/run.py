"""The entry point: ``featx.inspect`` checks its arguments, then runs each section under a timer."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InspectError
from ..features import Features
from . import limits
from .budget import label_budget
from .calibrate import check_calibration
from .duplicates import find_duplicates
from .embedding import embed
from .files import write_files
from .labels import find_label_issues
from .limits import BRUTE_FORCE_LIMIT, DEFAULT_INSPECT_DIR, MIN_PER_CLASS, NEAR_THRESHOLD
from .near_rule import NearRule
from .report import InspectReport
from .rows import Reduced, Rows, open_features


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
        approximate index (an inverted file) over principal components
        instead of the exact search.
    n_jobs : int, optional
        Threads. By default the near-duplicate search runs one worker per
        core this process may use (each takes whole cells of the index, so
        a descheduled worker stalls no other), and every BLAS call one
        thread: threads of a BLAS call wait for each other, and where other
        processes share the cores a descheduled one stalls the rest (on 2
        shared cores the PCA of 10k x 2,048 features took 5 s on one thread
        and 44 s on two). An integer sets both.
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
    feats = data if isinstance(data, Features) else open_features(data, backbone, cache_dir, extraction,
                                                                     limits.IN_MEMORY_ROWS)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n_jobs or 1):
        return _inspect(feats, out, head, rule, folds, seeds, embedding, seed, brute_force_limit, home,
                        log or (lambda msg: None), n_jobs or usable_cores())


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _inspect(feats, out, head, rule, folds, seeds, embedding, seed, brute_force_limit, home, log, workers):
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
        reduced = Reduced.fit(Rows.of(feats), seed)
        Z = reduced.Z
        if reduced.fitted_on < len(feats):
            notes.append(f"principal components fitted on {reduced.fitted_on} of {len(feats)} images, drawn at "
                         f"random; every image projected ({len(feats)} rows read in blocks of {limits.BLOCK_ROWS})")
    with timer("duplicates"):
        report.duplicates = find_duplicates(feats, rule, brute_force_limit=brute_force_limit, notes=notes,
                                            reduced=reduced, seed=seed, workers=workers)
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
        coords, chosen, method = embed(Z, embedding, seed, notes)
        report.embedding = {"method": method, "points": int(len(chosen))}

    if directory is not None:
        with timer("files"):
            report.files = write_files(report, feats, directory, coords, chosen, cal_plot)
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
    from ..outputs import home_dir

    root, stamp = home_dir(home) / DEFAULT_INSPECT_DIR, time.strftime("%Y%m%d-%H%M%S")
    d, i = root / f"{backbone}-{stamp}", 1
    while d.exists():
        i += 1
        d = root / f"{backbone}-{stamp}-{i}"
    return d
