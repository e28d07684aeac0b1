"""The workflows behind the CLI: fit a head, predict, compare backbones and heads.

Everything here works on the cache that ``featx.extract`` fills; the CLI
only parses options and prints what these functions return. Each function
builds its command's options object (:mod:`featx.options`), which checks
every value once, and hands it to the module that does the work:
:mod:`featx.fitting`, :mod:`featx.predicting` and :mod:`featx.comparing`.
"""

from __future__ import annotations

import os
from typing import Sequence

from .comparing import Leaderboard, compare_with
from .features import make_splits
from .fitting import BOARD_COLUMNS, FitResult, dataset_parts, fit_with, load_parts
from .heads import HEADS
from .options import CompareOptions, FitHeadOptions, PredictOptions
from .outputs import Predictions, latest_head
from .predicting import predict_imagenet, predict_with


def fit_head(
    head: str = "dense",
    *,
    data: str | os.PathLike | None = None,
    backbone: str | Sequence[str] | None = None,
    extraction: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    selection: str = "auto",
    folds: int = 5,
    val_split: float = 0.2,
    refit_all: bool = False,
    class_weight: str | None = None,
    top_k: int = 5,
    time_budget: float | None = None,
    auto_heads: Sequence[str] = ("logreg", "lightgbm", "dense"),
    log=None,
    home: str | os.PathLike | None = None,
    calibrate: bool = False,
    **params,
) -> FitResult:
    """Fit a head on cached features, choosing its hyper-parameters, and save it with its metrics.

    Parameters
    ----------
    head : {"dense", "logreg", "lightgbm", "auto"}
        ``auto`` searches head kind x extraction (each extraction of the
        dataset, and their fusions) x normalisation and keeps the best.
    data, backbone, extraction : optional
        Which cached extraction to use; the most recent one by default.
        Several (a list, or comma-separated) are fused: joined by image and
        concatenated in the order given.
    cache_dir : path, optional
    out : path, optional
        Output directory; ``heads/<backbone>-<head>-<time>/`` by default.
    seed : int
        Seeds the folds (or the validation split) and the head.
    selection : {"auto", "cv", "val"}
        How hyper-parameters are chosen (see :mod:`featx.selection`): ``cv``
        by stratified ``folds``-fold cross-validation on train, then a refit
        on all of train; ``val`` on the validation split (the data's own, or
        ``val_split`` of train). ``auto``: ``val`` when the data has a val
        split, else ``cv``.
    folds : int
        K of the cross-validation (lowered when a class has fewer images).
    val_split : float
        Fraction of train held out for validation (``selection="val"`` on data without a val split).
    refit_all : bool
        With ``val``: refit the chosen configuration (C, best epoch, number of trees) on train + val.
    class_weight : None or "balanced"
    top_k : int
        k of the top-k accuracy.
    time_budget : float, optional
        Seconds the search may take. ``head="auto"``: 90 by default (its
        first stage, the logistic screen, always completes; later trials
        stop at the budget). ``head="dense"``: 20 by default
        (``selection.DENSE_BUDGET_S``); configurations past it are skipped,
        and with ``selection="auto"`` on data without a val split, when the
        first fold shows that K folds and the refit would take more than 2
        budgets (40 s by default), the head is chosen on that fold instead (its held-out rows become the
        validation split; ``selection="cv"`` always runs every fold).
    auto_heads : sequence of str
        The head kinds ``head="auto"`` tries.
    log : callable, optional
        Receives progress lines.
    home : path, optional
        The featx home (``$FEATX_HOME`` or the current directory): where
        ``heads/`` and its ``latest`` pointers live.
    calibrate : bool
        Fit a temperature on the validation split (temperature scaling),
        store it in the manifest for ``predict``, and report the validation
        ECE before and after in metrics.json. Needs a validation split (the
        data's, or ``selection="val"``); with ``refit_all`` the temperature
        is the one of the model validated before the refit.
    **params
        The head's own parameters (``hidden``, ``dropout``, ``lr``, ``C``,
        ``normalise``...); given ones are fixed, the others searched.

    Returns
    -------
    FitResult

    Notes
    -----
    From ``selection.SCALE_ROWS`` (50,000) training rows of one extraction
    the rows stay on disk (``load_features(lazy=True)``): the selection (or
    the auto search) runs on a stratified subsample of ``SELECT_ROWS``
    (20,000) of them and the chosen configuration is refitted on every
    row; the report says so. See docs/scale.md.
    Every value is checked once, before the cache is read, by the
    :class:`~featx.options.FitHeadOptions` this builds (a bad one is a ``HeadError``).
    """
    opts = FitHeadOptions(head=head, data=data, backbone=backbone, extraction=extraction, cache_dir=cache_dir,
                          out=out, seed=seed, selection=selection, folds=folds, val_split=val_split, refit_all=refit_all,
                          class_weight=class_weight, top_k=top_k, time_budget=time_budget, auto_heads=auto_heads,
                          home=home, calibrate=calibrate, params=params)
    return fit_with(opts, log=log)


def predict(
    data: str | os.PathLike | Sequence,
    *,
    head: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    progress: bool = True,
    weights: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
    split: str | None = None,
    scale: str | float = "auto",
) -> Predictions:
    """Apply a saved head to images, extracting (through the cache) what is missing.

    The images go through exactly the extraction(s) the head was trained on
    (their recorded :class:`~featx.spec.ExtractionSpec`; a fused head's taps
    of one backbone in one pass); features already cached are reused and
    need no weights at all. ``weights`` names the new place of a moved
    weights file (checked against the recorded hash). No dataset view is
    written, so predicting never changes what ``fit-head`` uses next. A
    calibrated head's temperature is applied.

    ``head`` is a head folder, a file in one, a pointer (``heads/latest``),
    ``"latest"`` or ``"latest-<kind>"``; None means the latest head under
    ``home`` (see :func:`featx.outputs.resolve_result`).

    ``data`` may also be images that are not files (:mod:`featx.arrays`):
    an array, ``(x, y)``, a dict of splits, an ``.npz`` file, ``keras:NAME``
    or a stream of batches. ``split`` picks one split of such data. Each
    prediction's ``path`` is then the row's index in its array (``"12"``),
    or ``"test#12"`` for data with several splits and no ``split``.
    """
    return predict_with(PredictOptions(data=data, head=head, cache_dir=cache_dir, batch_size=batch_size,
                                       progress=progress, weights=weights, home=home, split=split, scale=scale))


def compare(
    data: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    heads: Sequence[str] = ("dense", "logreg", "lightgbm"),
    out: str | os.PathLike | None = None,
    seed: int = 0,
    selection: str = "auto",
    folds: int = 5,
    val_split: float = 0.2,
    log=None,
    home: str | os.PathLike | None = None,
) -> Leaderboard:
    """Every head kind x every cached extraction of a dataset (and their fusions) x normalisation, ranked.

    The same search and protocol as ``fit_head("auto")`` (see
    :func:`featx.selection.search`), except that every head kind is scored on
    every feature set and nothing is saved. With the ``val`` protocol each
    row also gets its test accuracy (when the data has a test split), for
    information only: nothing is chosen on it. The dataset is ``data`` or
    the one extracted most recently.
    """
    opts = CompareOptions(data=data, cache_dir=cache_dir, heads=heads, out=out, seed=seed, selection=selection,
                          folds=folds, val_split=val_split, home=home)
    return compare_with(opts, log=log)


__all__ = ["fit_head", "predict", "predict_imagenet", "compare", "latest_head", "make_splits", "HEADS",
           "FitResult", "Leaderboard", "Predictions", "load_parts", "dataset_parts", "BOARD_COLUMNS"]
