"""Fitting a head on cached features, in named steps: what :func:`featx.fit_head` runs.

:func:`fit_with` takes one validated :class:`~featx.options.FitHeadOptions`
and goes through the steps in order:

1. :func:`resolve_extractions`: the extraction(s) named, or the latest one
   (every extraction of the dataset for ``head="auto"``);
2. :func:`load_rows`: rows into memory (or left on disk at scale), fused
   when there are several extractions;
3. :func:`choose_protocol`: cross-validation on train or a validation split,
   on a subsample at scale;
4. :func:`choose_head`: the auto search or one head kind's selection;
5. :func:`fit_final`: the chosen configuration on all its rows;
6. :func:`evaluate`: scores per split, the calibration temperature;
7. :func:`save_head`: the head, its manifest, metrics.json and plots;
8. :func:`move_latest`: the ``heads/latest`` pointers;

then :func:`describe` writes the report that the CLI prints.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .cache import Cache
from .errors import HeadError
from .features import Features, find_view, load_features, make_splits
from .heads import align_proba, make_head
from .metrics import classification_metrics, format_report, plot_confusion, plot_curves
from .options import FitHeadOptions, name_list as as_list
from .outputs import default_dir, results_dir, set_latest

BOARD_COLUMNS = {
    "cv": ["features", "normalise", "head", "params", "cv_acc", "cv_std", "fit_s", "note"],
    "val": ["features", "normalise", "head", "params", "val_acc", "fit_s", "note"],
}


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


# --------------------------------------------------------------------------- shared with compare


def load_parts(cache: Cache, data=None, backbone=None, extraction=None, lazy: bool = False) -> list[Features]:
    """The extractions named (several for fusion), or the latest one.

    ``extraction`` and ``backbone`` may each be a list (or a comma-separated
    string): one extraction per item, in order, all of the same dataset.
    ``lazy`` leaves the rows on disk (see :func:`featx.load_features`).
    """
    extractions, backbones = as_list(extraction), as_list(backbone)
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


def check_labeled(f: Features) -> None:
    if (f.y < 0).all():
        raise HeadError(f"fit-head needs labeled data; {f.view.source} was extracted as unlabeled images.")
    if len(f.class_names) < 2:
        raise HeadError(f"{f.view.source} has {len(f.class_names)} class; a classifier needs at least 2.")
    if not len(f.only("train")):
        raise HeadError(f"The train split of {f.view.source} is empty (splits present: {', '.join(f.splits)}).")


def label_names(f: Features, names: Sequence[str]) -> np.ndarray:
    """Each row's class name (the heads are fitted on names, not indices)."""
    return np.asarray(names, dtype=object)[f.y].astype(str)


def part_labels(parts: list[Features]) -> list[str]:
    from .fusion import labels

    return labels(parts)


def _joined(parts: list[Features], log=None) -> tuple[Features, list[int]]:
    if len(parts) == 1:
        return parts[0], [parts[0].X.shape[1]]
    from .fusion import fuse

    feats, left_out, widths = fuse(parts)
    if left_out and log:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        log(f"left out {len(left_out)} image(s) missing from at least one extraction: {shown}")
    return feats, widths


def _in_memory(f: Features) -> Features:
    """The same features with their rows read into memory."""
    if not f.lazy:
        return f
    return Features(np.asarray(f.X), f.y, f.paths, f.sha256, f.split, f.class_names, f.extraction, f.view)


def _columns(f: Features, cols) -> Features:
    return Features(f.X[:, cols], f.y, f.paths, f.sha256, f.split, f.class_names, f.extraction, f.view)


# --------------------------------------------------------------------------- the steps' records


@dataclass
class Rows:
    """The features a head is fitted on: the extractions, their join and whether they stay on disk."""

    parts: list[Features]
    feats: Features
    widths: list[int]
    scale: bool

    @property
    def names(self) -> list[str]:
        return self.feats.class_names


@dataclass
class Plan:
    """How the head is chosen (``kind`` "cv" or "val"), on which rows, and the splits it is scored on."""

    kind: str
    protocol: object  # featx.selection.Protocol
    X: np.ndarray
    y: np.ndarray
    train: Features
    val: Features | None
    test: Features | None
    made_val: bool
    val_split: float
    subsample_note: str = ""
    full_cv: str = ""  # the CV given up for fold 1 under a time budget (see choose_head)


@dataclass
class Choice:
    """The chosen head kind and configuration, and every trial (the leaderboard)."""

    kind: str
    best: object  # featx.selection.Trial
    trials: list = field(default_factory=list)


# --------------------------------------------------------------------------- the steps


def resolve_extractions(opts: FitHeadOptions) -> list[Features]:
    """Step 1: the extractions named, the latest one, or (auto, none named) every extraction of its dataset."""
    cache = Cache(opts.cache_dir)
    parts = load_parts(cache, opts.data, opts.backbone, opts.extraction, lazy=True)
    if opts.auto and len(parts) == 1 and opts.extraction is None and len(opts.backbones) <= 1:
        parts = dataset_parts(cache, parts[0].view.source, lazy=True) or parts
    return parts


def load_rows(parts: list[Features], log=None) -> Rows:
    """Step 2: rows into memory and joined; from ``SCALE_ROWS`` train rows (one extraction) they stay on disk."""
    from .selection import SCALE_ROWS

    scale = len(parts) == 1 and int((parts[0].split == "train").sum()) >= SCALE_ROWS
    if not scale:
        parts = [_in_memory(p) for p in parts]
    feats, widths = _joined(parts, log)
    check_labeled(feats)
    return Rows(parts, feats, widths, scale)


def choose_protocol(opts: FitHeadOptions, rows: Rows, log=None) -> Plan:
    """Step 3: the val split (the data's, or made from train) or K folds; at scale, on a stratified subsample."""
    from .selection import SELECT_ROWS, cv_protocol, stratified_subsample, val_protocol

    feats, names, seed, scale = rows.feats, rows.names, opts.seed, rows.scale
    kind = opts.selection if opts.selection != "auto" else ("val" if "val" in feats.splits else "cv")
    if kind == "val":
        sp = make_splits(feats, opts.val_split, seed)
        train, val, test, made_val = sp.train, sp.val, sp.test, sp.made_val
        sel_train, sel_val = train, val
        if scale:
            sel_train = train.subset(stratified_subsample(train.y, SELECT_ROWS, seed))
            sel_val = val.subset(stratified_subsample(val.y, SELECT_ROWS // 4, seed))
        X = np.concatenate([np.asarray(sel_train.X), np.asarray(sel_val.X)])
        y = np.concatenate([label_names(sel_train, names), label_names(sel_val, names)])
        protocol = val_protocol(len(sel_train), len(sel_val), seed)
    else:
        train = feats.only("train")
        val = feats.only("val") if "val" in feats.splits else None
        test = feats.only("test") if "test" in feats.splits else None
        made_val = False
        sel_train = train.subset(stratified_subsample(train.y, SELECT_ROWS, seed)) if scale else train
        X, y = np.asarray(sel_train.X), label_names(sel_train, names)
        protocol = cv_protocol(sel_train.y, names, opts.folds, seed)
    note = ""
    if scale:
        note = (f"selected on a stratified subsample of {len(sel_train):,} of {len(train):,} train rows"
                + (f" and {len(sel_val):,} of {len(val):,} val rows" if kind == "val" else "")
                + f", then refitted on all {len(train):,} train rows")
        if log:
            log(f"{len(train):,} train rows: {note}")
    return Plan(kind, protocol, X, y, train, val, test, made_val, opts.val_split, note)


def choose_head(opts: FitHeadOptions, rows: Rows, p: Plan, log=None) -> Choice:
    """Step 4: ``auto`` searches head kind x feature set x normalisation; a named kind selects its own parameters.

    Narrows ``rows`` (auto: to the chosen feature set) and ``p`` (a dense
    head chosen on fold 1 under its time budget: that fold becomes the
    validation split) to what the chosen head is fitted on.
    """
    from .selection import feature_set_names, search, select, val_protocol

    base = {"seed": opts.seed, "class_weight": opts.class_weight}
    labels = part_labels(rows.parts)
    if opts.auto:
        offsets = np.cumsum([0] + rows.widths)
        sets = {"+".join(labels[i] for i in combo): [j for i in combo for j in range(offsets[i], offsets[i + 1])]
                for combo in ([tuple(labels.index(n) for n in s) for s in feature_set_names(labels)])}
        trials = search({k: p.X[:, cols] for k, cols in sets.items()}, p.y, p.protocol, kinds=list(opts.auto_heads),
                        base=base, budget_s=90.0 if opts.time_budget is None else opts.time_budget, log=log)
        best = trials[0]
        cols = sets[best.features]
        used = [labels.index(n) for n in best.features.split("+")]
        rows.parts, rows.widths = [rows.parts[i] for i in used], [rows.widths[i] for i in used]
        if len(cols) < p.X.shape[1]:  # a single extraction at scale keeps all its columns, on disk
            p.X = p.X[:, cols]
            p.train, p.val, p.test = (None if f is None else _columns(f, cols) for f in (p.train, p.val, p.test))
        return Choice(best.kind, best, trials)
    best, trials = select(opts.head, p.X, p.y, p.protocol, {**base, **opts.params}, "+".join(labels), log=log,
                          budget_s=opts.time_budget, holdout_ok=opts.selection == "auto" and not rows.scale)
    if best.holdout is not None:
        # Cross-validation would take too long: chosen on fold 1, whose model is kept.
        fit_rows, val_rows = best.holdout
        p.full_cv = p.protocol.describe()
        p.train, p.val = p.train.subset(fit_rows), p.train.subset(val_rows)
        order = np.concatenate([fit_rows, val_rows])  # the val protocol's order: fit rows, then scored rows
        p.X, p.y = p.X[order], p.y[order]
        p.protocol, p.kind, p.made_val = val_protocol(len(fit_rows), len(val_rows), opts.seed), "val", True
        p.val_split = len(val_rows) / (len(fit_rows) + len(val_rows))
    return Choice(opts.head, best, trials)


def fit_final(opts: FitHeadOptions, rows: Rows, p: Plan, c: Choice):
    """Step 5: the chosen configuration fitted on the rows it keeps (all of train; train+val with refit_all)."""
    from .selection import EARLY_STOPPING_KINDS, fit_for_scoring

    kind, best = c.kind, c.best
    final = {"seed": opts.seed, "class_weight": opts.class_weight, **best.params}
    if rows.scale:
        # Every train row (and val with refit_all). The dense head stops early again, on an inner
        # split; LightGBM builds the trees chosen on the subsample, which bounds the refit's cost.
        feats = rows.feats
        on = feats.subset(np.isin(feats.split, ["train", "val"])) if p.kind == "val" and opts.refit_all else p.train
        if kind == "lightgbm":
            return make_head(kind, **{**final, **best.chosen}).fit(on.X, label_names(on, rows.names))
        chosen = {k: v for k, v in best.chosen.items() if k != "epochs"}
        est, _ = fit_for_scoring(kind, {**final, **chosen}, on.X, label_names(on, rows.names), np.arange(len(on)),
                                 opts.seed)
        return est
    if p.kind == "cv" or opts.refit_all:
        return make_head(kind, **{**final, **best.chosen}).fit(p.X, p.y)
    if kind in EARLY_STOPPING_KINDS:
        # the validated model stopped on an inner split of train: the head is refitted on all of train
        # with the epochs or trees it chose, so it loses no training row
        n_fit = len(p.protocol.pairs[0][0])
        return make_head(kind, **{**final, **best.chosen}).fit(p.X[:n_fit], p.y[:n_fit])
    return best.estimator


# At scale (``rows.scale``), the train split's metrics are computed on this many rows, drawn with the seed.
TRAIN_SCORE_ROWS = 50_000


def _score(est, f: Features, names: Sequence[str], top_k: int) -> dict:
    proba = align_proba(est, est.predict_proba(f.X), names)
    return classification_metrics(f.y, proba, names, top_k)


def _calibrate(est, val: Features, names: Sequence[str]) -> dict:
    """Temperature scaling fitted on the validation split, with its ECE before and after."""
    from .calibration import apply_temperature, expected_calibration_error, fit_temperature

    proba = align_proba(est, est.predict_proba(val.X), names)
    T = fit_temperature(proba, val.y)
    return {"temperature": T, "fitted_on": "val", "val_ece_before": expected_calibration_error(proba, val.y),
            "val_ece_after": expected_calibration_error(apply_temperature(proba, T), val.y)}


def _score_train(est, rows: Rows, train: Features, names: Sequence[str], opts: FitHeadOptions) -> dict:
    """Train metrics, a diagnostic: at scale on a seeded sample of ``TRAIN_SCORE_ROWS`` rows (``sampled_from`` says of how many).

    Scoring every train row of a million cost LightGBM most of its refit time.
    """
    n = len(train)
    if not rows.scale or n <= TRAIN_SCORE_ROWS:
        return _score(est, train, names, opts.top_k)
    idx = np.sort(np.random.default_rng(opts.seed).choice(n, TRAIN_SCORE_ROWS, replace=False))
    return {**_score(est, train.subset(idx), names, opts.top_k), "sampled_from": n}


def evaluate(opts: FitHeadOptions, rows: Rows, p: Plan, c: Choice, est) -> tuple[dict, dict | None]:
    """Step 6: metrics per split (train, val, test), and the calibration when asked for."""
    names, calibration = rows.names, None
    if opts.calibrate:
        if p.val is None or not len(p.val):
            raise HeadError("--calibrate fits a temperature on a validation split, and this head has none "
                            "(chosen by cross-validation on train without a val/ split). Pass --selection val "
                            "or add a val/ split.")
        best = c.best
        validated = best.estimator if p.kind == "val" and best.estimator is not None and not rows.scale else est
        calibration = _calibrate(validated, p.val, names)
    by_split = {"train": _score_train(est, rows, p.train, names, opts)}
    for split, f in (("val", p.val), ("test", p.test)):
        if f is not None and len(f):
            by_split[split] = _score(est, f, names, opts.top_k)
    return by_split, calibration


def _extraction_record(f: Features) -> dict:
    """One extraction of a head: its name and its spec record (see :mod:`featx.spec`)."""
    return {"name": f.extraction.name, **f.spec.record()}


def _backbone_name(parts: list[Features]) -> str:
    return "+".join(dict.fromkeys(p.settings.backbone for p in parts))


def _cv(p: Plan, c: Choice) -> dict | None:
    if p.kind != "cv":
        return None
    return {"accuracy": c.best.mean, "std": c.best.std, "folds": p.protocol.folds, "scores": c.best.scores}


def save_head(opts: FitHeadOptions, rows: Rows, p: Plan, c: Choice, est, by_split: dict,
              calibration: dict | None, fit_s: float) -> tuple[Path, dict]:
    """Step 7: the head, its manifest, metrics.json, confusion.png (curves.png for dense); -> (folder, metrics)."""
    from .selection import heads_split_record

    kind, best, parts, names = c.kind, c.best, rows.parts, rows.names
    record = heads_split_record(
        p.kind, train_sha256=p.train.sha256, val_sha256=p.val.sha256 if p.kind == "val" else None,
        folds=p.protocol.folds, seed=opts.seed, val_split=p.val_split if p.made_val else None,
        refit_all=p.kind == "val" and opts.refit_all,
    )
    first, backbone_name = parts[0], _backbone_name(parts)
    directory = Path(opts.out) if opts.out else default_dir(results_dir("head", opts.home), backbone_name, kind)
    val_from = None
    if p.kind == "val":
        val_from = "val split"
        if p.made_val:
            val_from = ("fold 1 of " + p.full_cv + " (time budget)") if best.holdout is not None \
                else "stratified split of train"
    manifest = {
        "extraction": first.extraction.name,
        **first.spec.record(),
        "source": first.view.source,
        "extractions": [_extraction_record(f) for f in parts],
        "feature_widths": rows.widths,
        "featx_version": __version__,
        "refit_all": record["refit_all"],
        "val_from": val_from,
        "selection": record,
    }
    if p.made_val:
        manifest["val_split"] = p.val_split
    if calibration:
        manifest["temperature"] = calibration["temperature"]
    est.save(directory, manifest)
    metrics = {
        "head": kind, "extraction": first.extraction.name, "extractions": [f.extraction.name for f in parts],
        "source": first.view.source, "fit_seconds": fit_s, "refit_all": record["refit_all"], "classes": names,
        "splits": by_split, "selection": {"protocol": p.kind, "folds": p.protocol.folds, "chosen": best.chosen,
                                          "normalise": best.normalise, "score": best.mean, "spread": best.std,
                                          "note": best.holdout_note, "subsample": p.subsample_note or None},
        "leaderboard": [t.row(p.kind) for t in c.trials],
    }
    if _cv(p, c):
        metrics["cv"] = _cv(p, c)
    if calibration:
        metrics["calibration"] = calibration
    for attr, key in (("C_", "C"), ("best_iteration_", "best_iteration"), ("best_epoch_", "best_epoch")):
        if hasattr(est, attr):
            metrics[key] = getattr(est, attr)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shown = "test" if "test" in by_split else "val" if "val" in by_split else "train"
    plot_confusion(by_split[shown]["confusion"], names, directory / "confusion.png",
                   f"{backbone_name} + {kind}: {shown} confusion")
    if kind == "dense":
        plot_curves(est.history_, directory / "curves.png", f"{backbone_name} + dense head")
    return directory, metrics


def move_latest(opts: FitHeadOptions, directory: Path, kind: str) -> None:
    """Step 8: ``heads/latest`` and ``heads/latest-<kind>`` point at the new head."""
    set_latest("head", directory, opts.home, kind=kind)


def describe(rows: Rows, p: Plan, c: Choice, by_split: dict, fit_s: float, auto: bool) -> tuple[str, str, str]:
    """The report lines, the features line and the leaderboard (auto, or several trials) that the CLI prints."""
    from .selection import leaderboard_table

    kind, best, names, parts, feats = c.kind, c.best, rows.names, rows.parts, rows.feats
    report = format_report(by_split, names, fit_s).split("\n")
    cv = _cv(p, c)
    if cv:
        report.insert(1, f"   cv: accuracy {cv['accuracy']:.4f} +- {cv['std']:.4f}  ({cv['folds']}-fold on train; "
                         f"the head is refit on all of train)")
    chosen = " ".join(f"{k}={v}" for k, v in best.chosen.items())
    described_protocol = p.protocol.describe()
    if best.holdout is not None:
        described_protocol = (f"fold 1 of {p.full_cv}, its {len(p.val)} held-out rows kept as the validation split "
                              f"({best.holdout_note.split(': ', 1)[1]}; --time-budget or --selection cv for the full CV)")
    report.insert(0, f"selection: {described_protocol}; chosen {kind} normalise={best.normalise}"
                     + (f" {chosen}" if chosen else "") + (f"; {p.subsample_note}" if p.subsample_note else ""))
    described = feats.describe() if len(parts) == 1 else (
        f"{' + '.join(part_labels(parts))} on {parts[0].view.source} ({len(feats)} images; {len(names)} classes)")
    table = ""
    if auto or len(c.trials) > 1:
        table = leaderboard_table([t.row(p.kind) for t in c.trials], BOARD_COLUMNS[p.kind])
    features = f"{described} [extraction {', '.join(f.extraction.name for f in parts)}]"
    return "\n".join(report), features, table


def fit_with(opts: FitHeadOptions, log=None) -> FitResult:
    """Fit, evaluate and save the head ``opts`` describes (see :func:`featx.fit_head`)."""
    rows = load_rows(resolve_extractions(opts), log)
    protocol = choose_protocol(opts, rows, log)
    t0 = time.perf_counter()
    choice = choose_head(opts, rows, protocol, log)
    est = fit_final(opts, rows, protocol, choice)
    fit_s = time.perf_counter() - t0
    by_split, calibration = evaluate(opts, rows, protocol, choice, est)
    directory, metrics = save_head(opts, rows, protocol, choice, est, by_split, calibration, fit_s)
    move_latest(opts, directory, choice.kind)
    report, features, table = describe(rows, protocol, choice, by_split, fit_s, opts.auto)
    return FitResult(directory, est, metrics, fit_s, features, report, table)


__all__ = ["FitResult", "fit_with", "load_parts", "dataset_parts", "BOARD_COLUMNS"]
