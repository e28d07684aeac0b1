"""Predicting with a saved head (or ImageNet's own classifier): what :func:`featx.predict` runs.

:func:`predict_with` takes one validated :class:`~featx.options.PredictOptions`:
it reads the head's manifest, extracts through the cache exactly what the head
was trained on (one pass per backbone), and applies the head.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from typing import Sequence

import numpy as np

from .errors import FeatxError, HeadError, WeightsError
from .heads import load_head, read_manifest
from .options import PredictOptions
from .outputs import Predictions, resolve_result
from .spec import one_pass_groups, specs_of_manifest


def predict_with(opts: PredictOptions) -> Predictions:
    """Apply the head ``opts`` names to its images (see :func:`featx.predict`)."""
    from .arrays import as_dataset, is_array_data, is_streamed, spooled
    from .datasets import Dataset
    from .extraction import extract

    data, split, home = opts.data, opts.split, opts.home
    if is_array_data(data):
        data = as_dataset(data, split=split, scale=opts.scale, log=lambda msg: print(msg, file=sys.stderr))
    elif split is not None:
        raise FeatxError(f"split= picks a split of arrays or an .npz file; {data} is neither.")

    head_dir = resolve_result("head", opts.head, home)
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
                res = extract(data, spec=[specs[i] for i in group], weights=opts.weights, batch_size=opts.batch_size,
                              cache_dir=opts.cache_dir, progress=opts.progress, record=False)
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


__all__ = ["predict_with", "predict_imagenet", "Predictions"]
