"""Labelling images with a fine-tuned end-to-end model (``featx predict --model``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..datasets import discover
from ..outputs import Predictions
from ..runtime import import_keras
from .data import load_pixels
from .options import FinetuneError


def predict_images(model_path: str | os.PathLike, data, *, top_k: int = 5, batch_size: int = 32,
                   split: str | None = None) -> Predictions:
    """Label images with a fine-tuned end-to-end model (a ``.keras`` file or its folder).

    A model fine-tuned on arrays takes arrays (or an ``.npz``, ``split=`` one of its splits).
    """
    keras = import_keras()
    path = Path(model_path)
    if path.is_dir():
        path = path / "model.keras"
    try:
        kind = json.loads((path.parent / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None  # reported below
    if kind in ("dense", "logreg", "lightgbm"):
        raise FinetuneError(f"{path.parent} is a {kind} head (from `featx fit-head`), not a fine-tuned model: "
                            "predict with it as a head, or fine-tune it first (`featx finetune --head`).")
    if not path.exists():
        raise FinetuneError(f"No model at {path}. `featx finetune` writes models/<name>/model.keras.")
    man_path = path.parent / "manifest.json"
    try:
        classes = json.loads(man_path.read_text())["classes"]
    except (OSError, ValueError, KeyError):
        raise FinetuneError(f"{man_path} (the class names of {path.name}) is missing or unreadable.") from None
    keras = import_keras()
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise FinetuneError(f"Cannot load {path}: {str(exc).splitlines()[0][:200]}") from None
    size = int(model.input.shape[1])
    from ..arrays import as_dataset, is_array_data

    if is_array_data(data):  # rows at the model's input shape, named by index
        ds = as_dataset(data, split=split)
        if not isinstance(ds.items, list):
            raise FinetuneError("A fine-tuned model predicts on arrays or an .npz file, not on a stream of batches.")
        probs = [np.asarray(model.predict(np.stack([it.pixels() for it in ds.items[i:i + 256]]),
                                          batch_size=batch_size, verbose=0), dtype=np.float64)
                 for i in range(0, len(ds.items), 256)]
        return Predictions([it.path for it in ds.items], np.concatenate(probs), list(classes), [], str(path))
    ds = discover(data)
    paths = [it.path for it in ds.items]
    probs, kept_paths, skipped = [], [], []
    for i in range(0, len(paths), 256):
        pixels, kept, bad = load_pixels(paths[i:i + 256], size)
        skipped += bad
        if kept:
            probs.append(np.asarray(model.predict(pixels, batch_size=batch_size, verbose=0), dtype=np.float64))
            kept_paths += [paths[i + k] for k in kept]
    proba = np.concatenate(probs) if probs else np.zeros((0, len(classes)))
    return Predictions(kept_paths, proba, list(classes), skipped, str(path))
