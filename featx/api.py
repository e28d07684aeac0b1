"""The workflows behind the CLI: fit a head, predict, compare backbones and heads.

Everything here works on the cache that ``featx.extract`` fills; the CLI
only parses options and prints what these functions return.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .cache import Cache
from .errors import FeatxError, HeadError, WeightsError
from .features import Features, find_view, load_features, make_splits
from .heads import HEADS, align_proba, head_class, load_head, make_head, read_manifest
from .outputs import Predictions, default_dir, latest_head, resolve_result, results_dir, set_latest
from .spec import one_pass_groups, specs_of_manifest
from .metrics import classification_metrics, format_report, plot_confusion, plot_curves



# --------------------------------------------------------------------------- fit-head


@dataclass
class FitResult:
    """What ``fit_head`` did: the saved head, its metrics and timing."""

    directory: Path
    head: object
    metrics: dict
    fit_seconds: float
    features: str
    report: str = ""
    leaderboard: str = ""


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def load_parts(cache: Cache, data=None, backbone=None, extraction=None, lazy: bool = False) -> list[Features]:
    """The extractions named (several for fusion), or the latest one.

    ``extraction`` and ``backbone`` may each be a list (or a comma-separated
    string): one extraction per item, in order, all of the same dataset.
    ``lazy`` leaves the rows on disk (see :func:`featx.load_features`).
    """
    extractions, backbones = _as_list(extraction), _as_list(backbone)
    load = functools.partial(load_features, lazy=lazy)
    if not extractions and len(backbones) <= 1:
        return [load(data, backbone, cache_dir=cache.root)]
    if extractions and backbones:
        raise HeadError("Name the extractions to fuse either by --extraction or by --backbone, not both.")
    if extractions:
        parts = [load(data, cache_dir=cache.root, extraction=e) for e in extractions]
    else:
        if data is None:
            data = find_view(cache).source
        parts = [load(data, b, cache_dir=cache.root) for b in backbones]
    names = [p.extraction.name for p in parts]
    if len(set(names)) < len(names):
        raise HeadError(f"The same extraction is named twice: {', '.join(names)}.")
    return parts


def dataset_parts(cache: Cache, source: str, lazy: bool = False) -> list[Features]:
    """Every extraction of one dataset, oldest first (the pool ``--head auto`` searches)."""
    seen, parts = set(), []
    for view in cache.views():
        if view.source == source and view.extraction not in seen:
            seen.add(view.extraction)
            parts.append(load_features(source, cache_dir=cache.root, extraction=view.extraction, lazy=lazy))
    return parts


def _joined(parts: list[Features], log=None) -> tuple[Features, list[int]]:
    if len(parts) == 1:
        return parts[0], [parts[0].X.shape[1]]
    from .fusion import fuse

    feats, left_out, widths = fuse(parts)
    if left_out and log:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        log(f"left out {len(left_out)} image(s) missing from at least one extraction: {shown}")
    return feats, widths


def _extraction_record(f: Features) -> dict:
    """One extraction of a head: its name and its spec record (see :mod:`featx.spec`)."""
    return {"name": f.extraction.name, **f.spec.record()}


def _check_labeled(f: Features) -> None:
    if (f.y < 0).all():
        raise HeadError(f"fit-head needs labeled data; {f.view.source} was extracted as unlabeled images.")
    if len(f.class_names) < 2:
        raise HeadError(f"{f.view.source} has {len(f.class_names)} class; a classifier needs at least 2.")
    if not len(f.only("train")):
        raise HeadError(f"The train split of {f.view.source} is empty (splits present: {', '.join(f.splits)}).")


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
    """
    from .selection import (EARLY_STOPPING_KINDS, SCALE_ROWS, SELECT_ROWS, cv_protocol, feature_set_names, fit_for_scoring,
                            heads_split_record, leaderboard_table, search, select, stratified_subsample, val_protocol)

    auto = head == "auto"
    for kind in auto_heads if auto else [head]:
        head_class(kind)
    if selection not in ("auto", "cv", "val"):
        raise HeadError(f"selection must be 'auto', 'cv' or 'val'. Received: selection={selection!r}")
    cache = Cache(cache_dir)
    parts = load_parts(cache, data, backbone, extraction, lazy=True)
    if auto and len(parts) == 1 and extraction is None and (backbone is None or len(_as_list(backbone)) <= 1):
        parts = dataset_parts(cache, parts[0].view.source, lazy=True) or parts
    # From SCALE_ROWS training rows (one extraction) the rows stay on disk: selection runs on
    # a stratified subsample and the chosen head is refitted on every row.
    scale = len(parts) == 1 and int((parts[0].split == "train").sum()) >= SCALE_ROWS
    if not scale:
        parts = [_in_memory(p) for p in parts]
    feats, widths = _joined(parts, log)
    _check_labeled(feats)
    names = feats.class_names
    protocol_kind = selection if selection != "auto" else ("val" if "val" in feats.splits else "cv")
    subsample_note = ""
    if protocol_kind == "val":
        sp = make_splits(feats, val_split, seed)
        train, val, test = sp.train, sp.val, sp.test
        made_val = sp.made_val
        sel_train, sel_val = train, val
        if scale:
            sel_train = train.subset(stratified_subsample(train.y, SELECT_ROWS, seed))
            sel_val = val.subset(stratified_subsample(val.y, SELECT_ROWS // 4, seed))
        X = np.concatenate([np.asarray(sel_train.X), np.asarray(sel_val.X)])
        y = np.concatenate([_names(sel_train, names), _names(sel_val, names)])
        protocol = val_protocol(len(sel_train), len(sel_val), seed)
    else:
        train = feats.only("train")
        val = feats.only("val") if "val" in feats.splits else None
        test = feats.only("test") if "test" in feats.splits else None
        made_val = False
        sel_train = train.subset(stratified_subsample(train.y, SELECT_ROWS, seed)) if scale else train
        X, y = np.asarray(sel_train.X), _names(sel_train, names)
        protocol = cv_protocol(sel_train.y, names, folds, seed)
    if scale:
        subsample_note = (f"selected on a stratified subsample of {len(sel_train):,} of {len(train):,} train rows"
                          + (f" and {len(sel_val):,} of {len(val):,} val rows" if protocol_kind == "val" else "")
                          + f", then refitted on all {len(train):,} train rows")
        if log:
            log(f"{len(train):,} train rows: {subsample_note}")
    base = {"seed": seed, "class_weight": class_weight}
    t0 = time.perf_counter()
    labels_ = _part_labels(parts)
    if auto:
        offsets = np.cumsum([0] + widths)
        sets = {"+".join(labels_[i] for i in combo):
                [j for i in combo for j in range(offsets[i], offsets[i + 1])]
                for combo in ([tuple(labels_.index(n) for n in s) for s in feature_set_names(labels_)])}
        trials = search({k: X[:, cols] for k, cols in sets.items()}, y, protocol, kinds=list(auto_heads), base=base,
                        budget_s=90.0 if time_budget is None else time_budget, log=log)
        best = trials[0]
        kind = best.kind
        chosen_cols = sets[best.features]
        used = [labels_.index(n) for n in best.features.split("+")]
        parts = [parts[i] for i in used]
        widths = [widths[i] for i in used]
        if len(chosen_cols) < X.shape[1]:  # a single extraction at scale keeps all its columns, on disk
            X = X[:, chosen_cols]
            train, val, test = (None if f is None else _columns(f, chosen_cols) for f in (train, val, test))
    else:
        kind = head
        best, trials = select(kind, X, y, protocol, {**base, **params}, "+".join(labels_), log=log,
                              budget_s=time_budget, holdout_ok=selection == "auto" and not scale)
        if best.holdout is not None:
            # Cross-validation would take too long: chosen on fold 1, whose model is kept.
            fit_rows, val_rows = best.holdout
            full_cv = protocol.describe()
            train, val = train.subset(fit_rows), train.subset(val_rows)
            rows = np.concatenate([fit_rows, val_rows])  # the val protocol's order: fit rows, then scored rows
            X, y = X[rows], y[rows]
            protocol, protocol_kind, made_val = val_protocol(len(fit_rows), len(val_rows), seed), "val", True
            val_split = len(val_rows) / (len(fit_rows) + len(val_rows))
    final_params = {**base, **best.params}
    if scale:
        # Every train row (and val with refit_all). The dense head stops early again, on an inner
        # split; LightGBM builds the trees chosen on the subsample, which bounds the refit's cost.
        rows = feats.subset(np.isin(feats.split, ["train", "val"])) if protocol_kind == "val" and refit_all else train
        if kind == "lightgbm":
            est = make_head(kind, **{**final_params, **best.chosen}).fit(rows.X, _names(rows, names))
        else:
            chosen = {k: v for k, v in best.chosen.items() if k != "epochs"}
            est, _ = fit_for_scoring(kind, {**final_params, **chosen}, rows.X, _names(rows, names),
                                     np.arange(len(rows)), seed)
    elif protocol_kind == "cv":
        est = make_head(kind, **{**final_params, **best.chosen}).fit(X, y)
    elif refit_all:
        est = make_head(kind, **{**final_params, **best.chosen}).fit(X, y)
    elif kind in EARLY_STOPPING_KINDS:
        # the validated model stopped on an inner split of train: the head is refitted on all of train
        # with the epochs or trees it chose, so it loses no training row
        n_fit = len(protocol.pairs[0][0])
        est = make_head(kind, **{**final_params, **best.chosen}).fit(X[:n_fit], y[:n_fit])
    else:
        est = best.estimator
    fit_s = time.perf_counter() - t0
    calibration = None
    if calibrate:
        if val is None or not len(val):
            raise HeadError("--calibrate fits a temperature on a validation split, and this head has none "
                            "(chosen by cross-validation on train without a val/ split). Pass --selection val "
                            "or add a val/ split.")
        validated = best.estimator if protocol_kind == "val" and best.estimator is not None and not scale else est
        calibration = _calibrate(validated, val, names)

    by_split = {"train": _score(est, train, names, top_k)}
    if val is not None and len(val):
        by_split["val"] = _score(est, val, names, top_k)
    if test is not None and len(test):
        by_split["test"] = _score(est, test, names, top_k)
    cv = None
    if protocol_kind == "cv":
        cv = {"accuracy": best.mean, "std": best.std, "folds": protocol.folds, "scores": best.scores}
    record = heads_split_record(
        protocol_kind, train_sha256=train.sha256, val_sha256=val.sha256 if protocol_kind == "val" else None,
        folds=protocol.folds, seed=seed, val_split=val_split if made_val else None,
        refit_all=protocol_kind == "val" and refit_all,
    )
    board = [t.row(protocol_kind) for t in trials]

    first = parts[0]
    backbone_name = "+".join(dict.fromkeys(p.settings.backbone for p in parts))
    directory = Path(out) if out else default_dir(results_dir("head", home), backbone_name, kind)
    ext = first.extraction
    manifest = {
        "extraction": ext.name,
        **first.spec.record(),
        "source": first.view.source,
        "extractions": [_extraction_record(p) for p in parts],
        "feature_widths": widths,
        "featx_version": __version__,
        "refit_all": record["refit_all"],
        "val_from": (("fold 1 of " + full_cv + " (time budget)" if best.holdout is not None
                      else "stratified split of train") if made_val else "val split") if protocol_kind == "val" else None,
        "selection": record,
    }
    if made_val:
        manifest["val_split"] = val_split
    if calibration:
        manifest["temperature"] = calibration["temperature"]
    est.save(directory, manifest)
    metrics = {
        "head": kind, "extraction": ext.name, "extractions": [p.extraction.name for p in parts],
        "source": first.view.source, "fit_seconds": fit_s, "refit_all": record["refit_all"], "classes": names,
        "splits": by_split, "selection": {"protocol": protocol_kind, "folds": protocol.folds, "chosen": best.chosen,
                                          "normalise": best.normalise, "score": best.mean, "spread": best.std,
                                          "note": best.holdout_note, "subsample": subsample_note or None},
        "leaderboard": board,
    }
    if cv:
        metrics["cv"] = cv
    if calibration:
        metrics["calibration"] = calibration
    if hasattr(est, "C_"):
        metrics["C"] = est.C_
    if hasattr(est, "best_iteration_"):
        metrics["best_iteration"] = est.best_iteration_
    if hasattr(est, "best_epoch_"):
        metrics["best_epoch"] = est.best_epoch_
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shown = "test" if "test" in by_split else "val" if "val" in by_split else "train"
    plot_confusion(by_split[shown]["confusion"], names, directory / "confusion.png",
                   f"{backbone_name} + {kind}: {shown} confusion")
    if kind == "dense":
        plot_curves(est.history_, directory / "curves.png", f"{backbone_name} + dense head")
    set_latest("head", directory, home, kind=kind)
    report = format_report(by_split, names, fit_s).split("\n")
    if cv:
        report.insert(1, f"   cv: accuracy {cv['accuracy']:.4f} +- {cv['std']:.4f}  ({cv['folds']}-fold on train; "
                         f"the head is refit on all of train)")
    chosen = " ".join(f"{k}={v}" for k, v in best.chosen.items())
    described_protocol = protocol.describe()
    if best.holdout is not None:
        described_protocol = (f"fold 1 of {full_cv}, its {len(val)} held-out rows kept as the validation split "
                              f"({best.holdout_note.split(': ', 1)[1]}; --time-budget or --selection cv for the full CV)")
    report.insert(0, f"selection: {described_protocol}; chosen {kind} normalise={best.normalise}"
                     + (f" {chosen}" if chosen else "") + (f"; {subsample_note}" if subsample_note else ""))
    described = feats.describe() if len(parts) == 1 else (
        f"{' + '.join(_part_labels(parts))} on {first.view.source} ({len(feats)} images; {len(names)} classes)")
    table = leaderboard_table(board, BOARD_COLUMNS[protocol_kind]) if auto or len(trials) > 1 else ""
    return FitResult(directory, est, metrics, fit_s,
                     f"{described} [extraction {', '.join(p.extraction.name for p in parts)}]",
                     "\n".join(report), table)


BOARD_COLUMNS = {
    "cv": ["features", "normalise", "head", "params", "cv_acc", "cv_std", "fit_s", "note"],
    "val": ["features", "normalise", "head", "params", "val_acc", "fit_s", "note"],
}


def _calibrate(est, val: Features, names: Sequence[str]) -> dict:
    """Temperature scaling fitted on the validation split, with its ECE before and after."""
    from .calibration import apply_temperature, expected_calibration_error, fit_temperature

    proba = align_proba(est, est.predict_proba(val.X), names)
    T = fit_temperature(proba, val.y)
    return {"temperature": T, "fitted_on": "val", "val_ece_before": expected_calibration_error(proba, val.y),
            "val_ece_after": expected_calibration_error(apply_temperature(proba, T), val.y)}


def _part_labels(parts: list[Features]) -> list[str]:
    from .fusion import labels

    return labels(parts)


def _in_memory(f: Features) -> Features:
    """The same features with their rows read into memory."""
    if not f.lazy:
        return f
    return Features(np.asarray(f.X), f.y, f.paths, f.sha256, f.split, f.class_names, f.extraction, f.view)


def _columns(f: Features, cols) -> Features:
    return Features(f.X[:, cols], f.y, f.paths, f.sha256, f.split, f.class_names, f.extraction, f.view)


def _names(f: Features, names: Sequence[str]) -> np.ndarray:
    return np.asarray(names, dtype=object)[f.y].astype(str)


def _score(est, f: Features, names: Sequence[str], top_k: int) -> dict:
    proba = align_proba(est, est.predict_proba(f.X), names)
    return classification_metrics(f.y, proba, names, top_k)


# --------------------------------------------------------------------------- predict


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
    from .arrays import as_dataset, is_array_data, is_streamed, spooled
    from .datasets import Dataset
    from .extraction import extract

    if is_array_data(data):
        data = as_dataset(data, split=split, scale=scale, log=lambda msg: print(msg, file=sys.stderr))
    elif split is not None:
        raise FeatxError(f"split= picks a split of arrays or an .npz file; {data} is neither.")

    head_dir = resolve_result("head", head, home)
    man = read_manifest(head_dir)
    est = load_head(head_dir)
    classes = [str(c) for c in man["classes"]]
    specs = specs_of_manifest(man, where=f"Head {head_dir}")
    columns: list[dict[str, np.ndarray]] = [{} for _ in specs]
    order: list[str] = []
    skipped: dict[str, str] = {}
    groups = one_pass_groups(specs)
    with contextlib.ExitStack() as stack:
        if len(groups) > 1 and isinstance(data, Dataset) and is_streamed(data):
            # One pass per backbone, and a stream is read once: its rows wait on disk for the other passes.
            data = spooled(data, stack.enter_context(tempfile.TemporaryDirectory(prefix="featx-stream-")))
        for group in groups:
            try:
                res = extract(data, spec=[specs[i] for i in group], weights=weights, batch_size=batch_size,
                              cache_dir=cache_dir, progress=progress, record=False)
            except WeightsError as exc:
                raise HeadError(f"Cannot rebuild the backbone of head {head_dir} for the images not cached yet: {exc}") from None
            skipped.update(dict(res.skipped))
            order = order or list(res.paths)
            for i, ext in zip(group, res.extractions):
                if ext is not None and res.sha256:
                    columns[i] = dict(zip(res.paths, ext.read(res.sha256)))
    paths = [p for p in order if all(p in c for c in columns)]
    if not paths:
        return Predictions([], np.zeros((0, len(classes))), classes, list(skipped.items()), str(head_dir))
    X = np.stack([np.concatenate([c[p] for c in columns]) for p in paths])
    if X.shape[1] != int(man["feature_width"]):
        raise HeadError(f"Head {head_dir} expects {man['feature_width']} features; its extraction(s) give {X.shape[1]}.")
    proba = est.predict_proba(X)
    if man.get("temperature"):
        from .calibration import apply_temperature

        proba = apply_temperature(proba, man["temperature"])
    return Predictions(paths, proba, classes, list(skipped.items()), str(head_dir))


def predict_imagenet(
    data: str | os.PathLike | Sequence,
    backbone: str = "inceptionv3",
    *,
    top_k: int = 5,
    batch_size: int = 32,
) -> Predictions:
    """ImageNet top-k with a backbone's full classifier (needs the ImageNet weights)."""
    from . import backbones as B
    from .datasets import discover
    from .decode import read_image
    from .runtime import import_keras

    keras = import_keras()
    bb = B.get_backbone(backbone)
    ds = discover(data)
    w = B.Weights("imagenet", fingerprint="imagenet")
    try:
        with _quiet_stdout():
            model = getattr(keras.applications, bb.constructor)(weights="imagenet", include_top=True)
    except Exception as exc:
        raise B._weights_error(bb, w, exc, "then run this again (the ImageNet classifier has no other weights)") from None
    size = int(model.input.shape[1])
    paths, rows, skipped = [], [], []
    for i in range(0, len(ds.items), batch_size):
        batch = []
        for it in ds.items[i:i + batch_size]:
            try:
                batch.append(read_image(it.path, size))
                paths.append(it.path)
            except FeatxError as exc:
                skipped.append((it.path, str(exc)))
        if batch:
            x = B.preprocess(np.stack(batch), bb.preprocessing)
            rows.append(np.asarray(model.predict_on_batch(x)))
    proba = np.concatenate(rows) if rows else np.zeros((0, 1000))
    try:
        with _quiet_stdout():
            names = _imagenet_names()
    except Exception:
        from .runtime import keras_cache_dir

        raise WeightsError(
            "The ImageNet class names could not be downloaded (no network?). Keras looks for "
            f"{os.path.join(keras_cache_dir('models'), 'imagenet_class_index.json')}: put that file there."
        ) from None
    return Predictions(paths, proba, names, skipped, f"imagenet:{bb.name}")


def _imagenet_names() -> list[str]:
    """The 1000 ImageNet class names, in output order (Keras' class index file)."""
    from .runtime import import_keras

    decoded = import_keras().applications.imagenet_utils.decode_predictions(np.eye(1000, dtype="float32"), top=1)
    return [row[0][1] for row in decoded]


class _quiet_stdout:
    """Keras prints download notices on stdout; keep them off the CSV output."""

    def __enter__(self):
        self._old, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._old


# --------------------------------------------------------------------------- compare


@dataclass
class Leaderboard:
    """Ranked trials of the head search (the table ``fit-head --head auto`` prints too)."""

    rows: list[dict]
    csv_path: Path | None = None
    protocol: str = "val"

    def table(self) -> str:
        from .selection import leaderboard_table

        columns = BOARD_COLUMNS[self.protocol] + (["test_acc"] if any("test_acc" in r for r in self.rows) else [])
        return leaderboard_table(self.rows, columns)


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
    from .fusion import fuse, labels
    from .selection import cv_protocol, feature_set_names, search, val_protocol

    for h in heads:
        head_class(h)
    cache = Cache(cache_dir)
    source = find_view(cache, data).source
    parts = dataset_parts(cache, source)
    feats, _, widths = fuse(parts)
    _check_labeled(feats)
    names = feats.class_names
    kind = selection if selection != "auto" else ("val" if "val" in feats.splits else "cv")
    test = feats.only("test") if "test" in feats.splits else None
    if kind == "val":
        sp = make_splits(feats, val_split, seed)
        X = np.concatenate([sp.train.X, sp.val.X])
        y = np.concatenate([_names(sp.train, names), _names(sp.val, names)])
        protocol = val_protocol(len(sp.train), len(sp.val), seed)
    else:
        train = feats.only("train")
        X, y = train.X, _names(train, names)
        protocol = cv_protocol(train.y, names, folds, seed)
    labels_ = labels(parts)
    offsets = np.cumsum([0] + widths)
    sets = {}
    for combo in feature_set_names(labels_):
        cols = [j for n in combo for j in range(offsets[labels_.index(n)], offsets[labels_.index(n) + 1])]
        sets["+".join(combo)] = cols
    trials = search({k: X[:, c] for k, c in sets.items()}, y, protocol, kinds=list(heads), base={"seed": seed},
                    budget_s=float("inf"), finalists=len(sets) * 3, log=log)
    rows = []
    for t in trials:
        row = t.row(kind)
        if t.estimator is not None and test is not None:
            row["test_acc"] = round(float((t.estimator.predict(test.X[:, sets[t.features]])
                                           == _names(test, names)).mean()), 4)
        rows.append(row)
    path = Path(out) if out else results_dir("head", home) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return Leaderboard(rows, path, kind)


__all__ = ["fit_head", "predict", "predict_imagenet", "compare", "latest_head", "make_splits", "HEADS"]
