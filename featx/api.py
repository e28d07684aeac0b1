"""The workflows behind the CLI: fit a head, predict, compare backbones and heads.

Everything here works on the cache that ``featx.extract`` fills; the CLI
only parses options and prints what these functions return.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
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
from .outputs import Predictions, default_dir, latest_head, results_dir, set_latest
from .spec import ExtractionSpec
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


def fit_head(
    head: str = "dense",
    *,
    data: str | os.PathLike | None = None,
    backbone: str | None = None,
    extraction: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    val_split: float = 0.2,
    refit_all: bool = False,
    class_weight: str | None = None,
    top_k: int = 5,
    home: str | os.PathLike | None = None,
    **params,
) -> FitResult:
    """Fit a head on cached features and save it with its metrics.

    Parameters
    ----------
    head : {"dense", "logreg", "lightgbm"}
    data, backbone, extraction : optional
        Which cached extraction to use; the most recent one by default.
    cache_dir : path, optional
    out : path, optional
        Output directory; ``<home>/heads/<backbone>-<head>-<time>/`` by default.
    seed : int
        Seeds the validation split and the head.
    val_split : float
        Fraction of train held out for validation when the data has no val split.
    refit_all : bool
        After validation, refit the chosen configuration on train + val.
    class_weight : None or "balanced"
    top_k : int
        k of the top-k accuracy.
    home : path, optional
        The featx home (``$FEATX_HOME`` or the current directory): where
        ``heads/`` and its ``latest`` pointer live.
    **params
        The head's own parameters (``hidden``, ``dropout``, ``lr``, ``C``...).

    Returns
    -------
    FitResult
    """
    cls = head_class(head)
    cache = Cache(cache_dir)
    feats = load_features(data, backbone, cache_dir=cache.root, extraction=extraction)
    sp = make_splits(feats, val_split, seed)
    names = feats.class_names
    params = {**params, "seed": seed, "class_weight": class_weight}
    est = make_head(cls.kind, **params)
    t = time.perf_counter()
    est.fit(sp.train.X, _names(sp.train, names), eval_set=(sp.val.X, _names(sp.val, names)))
    fit_s = time.perf_counter() - t
    by_split = {"train": _score(est, sp.train, names, top_k), "val": _score(est, sp.val, names, top_k)}
    if refit_all:
        final = make_head(cls.kind, **{**params, **_chosen(est)})
        X = np.concatenate([sp.train.X, sp.val.X])
        y = np.concatenate([_names(sp.train, names), _names(sp.val, names)])
        t = time.perf_counter()
        final.fit(X, y)
        fit_s += time.perf_counter() - t
        est = final
    if sp.test is not None and len(sp.test):
        by_split["test"] = _score(est, sp.test, names, top_k)

    directory = Path(out) if out else default_dir(results_dir("head", home), feats.spec.backbone, cls.kind)
    ext = feats.extraction
    manifest = {
        "extraction": ext.name,
        **feats.spec.record(),
        "source": feats.view.source,
        "featx_version": __version__,
        "refit_all": refit_all,
        "val_from": "stratified split of train" if sp.made_val else "val split",
    }
    est.save(directory, manifest)
    metrics = {
        "head": cls.kind, "extraction": ext.name, "source": feats.view.source, "fit_seconds": fit_s,
        "refit_all": refit_all, "classes": names, "splits": by_split,
    }
    if hasattr(est, "C_"):
        metrics["C"] = est.C_
    if hasattr(est, "best_iteration_"):
        metrics["best_iteration"] = est.best_iteration_
    if hasattr(est, "best_epoch_"):
        metrics["best_epoch"] = est.best_epoch_
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shown = "test" if "test" in by_split else "val"
    plot_confusion(by_split[shown]["confusion"], names, directory / "confusion.png",
                   f"{feats.spec.backbone} + {cls.kind}: {shown} confusion")
    if cls.kind == "dense":
        plot_curves(est.history_, directory / "curves.png", f"{feats.spec.backbone} + dense head")
    set_latest("head", directory, home, kind=cls.kind)
    return FitResult(directory, est, metrics, fit_s, f"{feats.describe()} [extraction {ext.name}]",
                     format_report(by_split, names, fit_s))


def _names(f: Features, names: Sequence[str]) -> np.ndarray:
    return np.asarray(names, dtype=object)[f.y].astype(str)


def _score(est, f: Features, names: Sequence[str], top_k: int) -> dict:
    proba = align_proba(est, est.predict_proba(f.X), names)
    return classification_metrics(f.y, proba, names, top_k)


def _chosen(est) -> dict:
    """The configuration validation picked, to refit on train + val."""
    if est.kind == "dense":
        return {"epochs": est.best_epoch_}
    if est.kind == "logreg":
        return {"C": est.C_}
    return {"n_estimators": est.best_iteration_}


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

    The images go through exactly the extraction the head was trained on
    (its recorded :class:`~featx.spec.ExtractionSpec`); features already
    cached are reused and need no weights at all. ``weights`` names the new
    place of a moved weights file (checked against the recorded hash). No
    dataset view is written, so predicting never changes what ``fit-head``
    uses next.

    ``data`` may also be images that are not files (:mod:`featx.arrays`):
    an array, ``(x, y)``, a dict of splits, an ``.npz`` file, ``keras:NAME``
    or a stream of batches. ``split`` picks one split of such data. Each
    prediction's ``path`` is then the row's index in its array (``"12"``),
    or ``"test#12"`` for data with several splits and no ``split``.
    """
    from .arrays import as_dataset, is_array_data
    from .extract import extract

    if is_array_data(data):
        data = as_dataset(data, split=split, scale=scale, log=lambda msg: print(msg, file=sys.stderr))
    elif split is not None:
        raise FeatxError(f"split= picks a split of arrays or an .npz file; {data} is neither.")

    head_dir = Path(head) if head else latest_head(home)
    man = read_manifest(head_dir)
    est = load_head(head_dir)
    try:
        spec = ExtractionSpec.from_record(man, where=f"Head {head_dir}")
    except FeatxError as exc:
        raise HeadError(str(exc)) from None
    try:
        res = extract(data, spec=spec, weights=weights, batch_size=batch_size, cache_dir=cache_dir,
                      progress=progress, record=False)
    except WeightsError as exc:
        raise HeadError(f"Cannot rebuild the backbone of head {head_dir} for the images not cached yet: {exc}") from None
    if not res.sha256:
        return Predictions([], np.zeros((0, len(man["classes"]))), [str(c) for c in man["classes"]], res.skipped,
                           str(head_dir))
    X = res.extraction.read(res.sha256)
    if X.shape[1] != int(man["feature_width"]):
        raise HeadError(f"Head {head_dir} expects {man['feature_width']} features; the extraction gives {X.shape[1]}.")
    proba = est.predict_proba(X)
    return Predictions(list(res.paths), proba, [str(c) for c in man["classes"]], res.skipped, str(head_dir))


def predict_imagenet(
    data: str | os.PathLike | Sequence,
    backbone: str = "inceptionv3",
    *,
    top_k: int = 5,
    batch_size: int = 32,
) -> Predictions:
    """ImageNet top-k with a backbone's full classifier (needs the ImageNet weights)."""
    from . import backbones as B
    from .data import discover, read_image
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
        keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
        raise WeightsError(
            "The ImageNet class names could not be downloaded (no network?). Keras looks for "
            f"{os.path.join(keras_home, 'models', 'imagenet_class_index.json')}: put that file there."
        ) from None
    return Predictions(paths, proba, names, skipped, f"imagenet:{bb.name}")


def _imagenet_names() -> list[str]:
    """The 1000 ImageNet class names, in output order (Keras' class index file)."""
    from keras.src.applications import imagenet_utils

    decoded = imagenet_utils.decode_predictions(np.eye(1000, dtype="float32"), top=1)
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
    rows: list[dict]
    csv_path: Path | None = None

    def table(self) -> str:
        headers = ["backbone", "size", "pooling", "cut", "head", "val_acc", "test_acc", "fit_s"]
        cells = [headers] + [[str(r.get(h, "")) for h in headers] for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def compare(
    data: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    heads: Sequence[str] = ("dense", "logreg", "lightgbm"),
    out: str | os.PathLike | None = None,
    seed: int = 0,
    val_split: float = 0.2,
    log=None,
    home: str | os.PathLike | None = None,
) -> Leaderboard:
    """Fit every head kind on every cached extraction of a dataset; rank by validation accuracy.

    The dataset is ``data`` or the one extracted most recently.
    """
    for h in heads:
        head_class(h)
    cache = Cache(cache_dir)
    source = find_view(cache, data).source
    views = [v for v in cache.views() if v.source == source]
    rows = []
    for view in views:
        f = load_features(cache_dir=cache.root, extraction=view.extraction, data=source)
        sp = make_splits(f, val_split, seed)
        names = f.class_names
        s = f.settings
        for kind in heads:
            est = make_head(kind, seed=seed)
            t = time.perf_counter()
            est.fit(sp.train.X, _names(sp.train, names), eval_set=(sp.val.X, _names(sp.val, names)))
            fit_s = time.perf_counter() - t
            row = {
                "backbone": s.backbone, "size": s.input_size, "pooling": s.pooling, "cut": s.cut_blocks, "head": kind,
                "val_acc": round(_score(est, sp.val, names, 1)["accuracy"], 4),
                "test_acc": round(_score(est, sp.test, names, 1)["accuracy"], 4) if sp.test is not None else "",
                "fit_s": round(fit_s, 2), "extraction": view.extraction,
            }
            rows.append(row)
            if log:
                log(f"{s.backbone} {s.input_size}px cut{s.cut_blocks} {kind}: val {row['val_acc']:.4f} ({fit_s:.1f}s)")
    rows.sort(key=lambda r: -r["val_acc"])
    path = Path(out) if out else results_dir("head", home) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return Leaderboard(rows, path)


__all__ = ["fit_head", "predict", "predict_imagenet", "compare", "latest_head", "make_splits", "HEADS"]
