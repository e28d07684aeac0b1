"""The end-to-end model: the head's backbone(s), rebuilt at its taps, with the head on top.

The rebuild reads the head's manifest: exactly the extraction's backbone,
weights, input size, preprocessing (a frozen 1x1 convolution) and pooling,
one backbone per one-pass group of a fused head, and the head's trained
weights (a logistic head becomes an equivalent softmax layer). The parity
check proves the rebuild before any training.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from .. import backbones as B
from ..errors import HeadError
from ..heads import load_head, read_manifest
from ..runtime import import_keras
from ..spec import one_pass_groups, specs_of_manifest
from .data import load_pixels
from .options import FinetuneError

SEED_KINDS = ("dense", "logreg")
PARITY_SAMPLE = 32


def _augment_layers(keras, augment: dict[str, float], seed: int):
    """Keras layers for the augmentations that run in the model (the crop runs in the batches)."""
    layers = []
    if "flip" in augment:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="augment_flip"))
    if "rotate" in augment:
        layers.append(keras.layers.RandomRotation(augment["rotate"], seed=seed, name="augment_rotate"))
    if "zoom" in augment:
        layers.append(keras.layers.RandomZoom(augment["zoom"], seed=seed, name="augment_zoom"))
    if "shift" in augment:
        s = augment["shift"]
        layers.append(keras.layers.RandomTranslation(s, s, seed=seed, name="augment_shift"))
    if "contrast" in augment:
        layers.append(keras.layers.RandomContrast(augment["contrast"], seed=seed, name="augment_contrast",
                                                  value_range=(0, 255)))
    return layers


def _head_model(keras, head_dir: Path, man: dict):
    """The head as a Keras model on feature vectors, its normalisation included.

    A logistic head becomes one softmax layer; the head's ``normalise``
    (``l2``, ``sqrt-l2``, ``standard``) runs first as stock Keras ops, so
    the rebuilt model computes what ``predict_proba`` computes.
    """
    from ..normalise import keras_normalise

    head = load_head(head_dir)
    kind = man["kind"]
    if kind not in SEED_KINDS:
        raise FinetuneError(f"Fine-tuning starts from a dense or logreg head; {head_dir} is a {kind} head. "
                            "Run `featx fit-head --head dense` first.")
    width = int(man["feature_width"])
    inp = keras.Input((width,), name="features")
    x = keras_normalise(inp, getattr(head, "normalise", "none"), getattr(head, "norm_stats_", None))
    if kind == "dense":
        return keras.Model(inp, head.model_(x), name="head")
    # softmax(((x - m) / s) @ C.T + b) == softmax(x @ W + b') with
    # W = C.T / s and b' = b - (m / s) @ C.T; a binary logit z becomes
    # softmax([0, z]) == [1 - sigmoid(z), sigmoid(z)].
    coef = head.coef_ / head.scale_[None, :]
    bias = head.intercept_ - (head.mean_ / head.scale_) @ head.coef_.T
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        bias = np.concatenate([[0.0], bias])
    dense = keras.layers.Dense(coef.shape[0], activation="softmax", name="head_output", dtype="float32")
    out = dense(x)
    dense.set_weights([coef.T.astype("float32"), bias.astype("float32")])
    return keras.Model(inp, out, name="head")


def build_end_to_end(head_dir: str | os.PathLike, augment: dict[str, float] | None = None, seed: int = 0,
                     weights: str | os.PathLike | None = None, native: tuple | None = None):
    """Backbone(s) + trained head as one Keras model on RGB uint8 pixels.

    The backbone is rebuilt at exactly the head's taps: an earlier-tap head
    gets a backbone that ends at its tap (the layers after it are dropped,
    not left frozen and unused), and a fused head gets one backbone per
    model it fused, each tapped where its extractions were, their pooled
    features side by side in the head's order. ``weights`` names the new
    place of a moved weights file (its sha256 must be the recorded one).
    ``native`` (H, W, C) makes a model on uint8 arrays of that shape,
    resized inside (see :func:`featx.backbones.pixels_input`).

    Returns
    -------
    model : keras.Model
    base : keras.Model
        The (first) backbone inside it, to choose what to unfreeze.
    manifest : dict
    """
    keras = import_keras()
    head_dir = Path(head_dir)
    man = read_manifest(head_dir)
    specs = specs_of_manifest(man, where=f"Head {head_dir}")
    sizes = {s.input_size for s in specs}
    if len(sizes) > 1:
        raise FinetuneError(f"Head {head_dir} fuses extractions at several input sizes ({sorted(sizes)}); an "
                            "end-to-end model takes one size. Fuse extractions of one size to fine-tune.")
    size = specs[0].input_size
    groups = one_pass_groups(specs)
    order = [i for g in groups for i in g]
    bases = []
    for g in groups:
        group = [specs[i] for i in g]
        bases.append(B.build_feature_model(group if len(group) > 1 else group[0], group[0].load_weights(weights),
                                           include_preprocessing=False))
    head = _head_model(keras, head_dir, man)
    width = sum(int(b.output.shape[-1]) for b in bases)
    if width != int(man["feature_width"]):
        raise HeadError(f"Head {head_dir} expects {man['feature_width']} features; {specs[0].backbone} at "
                        f"{size}px gives {width}.")
    inp, x = B.pixels_input(size, "none", between=_augment_layers(keras, augment or {}, seed), native=native)
    outs = []
    for k, (g, base) in enumerate(zip(groups, bases)):
        mode = specs[g[0]].preprocessing
        xg = x
        if mode != "none":
            kernel, bias = B.preprocess_affine(mode)
            conv = keras.layers.Conv2D(3, 1, dtype="float32", trainable=False,
                                       name="featx_preprocess" if k == 0 else f"featx_preprocess_{k}")
            xg = conv(x)
            conv.set_weights([kernel.reshape(1, 1, 3, 3), bias])
        outs.append(base(xg))
    feats = outs[0] if len(outs) == 1 else keras.layers.Concatenate(name="featx_fused", dtype="float32")(outs)
    if order != sorted(order):  # the groups' columns back into the head's order
        widths = [int(w) for w in (man.get("feature_widths") or [])]
        if len(widths) != len(specs):
            raise HeadError(f"Head {head_dir} lacks the width of each extraction it fused; refit it.")
        starts = np.cumsum([0, *widths])
        cols = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in order])
        feats = _reorder(keras, feats, np.argsort(cols))
    out = head(feats)
    model = keras.Model(inp, out, name=f"featx_{specs[0].backbone}_finetuned")
    _FEATURES[model] = keras.Model(inp, feats, name="featx_features")  # what the parity check compares
    return model, _backbone_of(bases[0]), man


def _backbone_of(base):
    """The backbone inside a feature model: ``--tta flip`` wraps it (backbones.flip_tta), and what
    unfreezes is the backbone's own blocks."""
    if any(layer.name == "featx_tta_batch" for layer in base.layers):
        return next(layer for layer in base.layers if hasattr(layer, "layers"))
    return base


# The pooled-features model beside each rebuilt model (kept out of the model
# itself, so that saving it saves nothing more).
_FEATURES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _reorder(keras, x, index: np.ndarray):
    """Columns of ``x`` in the order ``index`` gives, as a frozen 0/1 Dense (a stock layer, safe to load)."""
    perm = np.zeros((len(index), len(index)), dtype="float32")
    perm[index, np.arange(len(index))] = 1.0
    layer = keras.layers.Dense(len(index), use_bias=False, trainable=False, dtype="float32", name="featx_head_order")
    y = layer(x)
    layer.set_weights([perm])
    return y


def _parity_sample(y: np.ndarray, sample: int) -> np.ndarray:
    """Up to ``sample`` row indices, taken round-robin from every class."""
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    picked: list[int] = []
    for i in range(max((len(r) for r in by_class), default=0)):
        for rows in by_class:
            if i < len(rows) and len(picked) < sample:
                picked.append(int(rows[i]))
    return np.sort(np.asarray(picked, dtype=int))


def parity_check(model, base, head_dir: Path, sp, size: int, precision: str, sample: int = 32, read=None) -> float:
    """Compare the rebuilt model with the cache on up to ``sample`` validation images in all,
    taken round-robin from every class.

    Two checks, both before any training: the rebuilt backbone's pooled
    features must equal the cached ones (relative to their scale: 1e-3 in
    float32, 2e-2 in mixed precision), since a saturated softmax can hide a
    wrong backbone; and the end-to-end probabilities must equal the cached
    head's. Returns the largest relative feature difference.

    A model that resizes arrays inside (``featx_resize``) gets 2e-2: its
    resized pixels are not rounded to uint8 as extraction's are.
    """
    head = load_head(head_dir)
    rows = _parity_sample(sp.val.y, sample)
    pixels, kept, _ = load_pixels(list(sp.val.paths[rows]), size, read=read)
    if not kept:
        raise FinetuneError("No validation image could be decoded for the parity check.")
    rows = rows[kept]
    rebuilt_f = np.asarray(_FEATURES[model].predict(pixels, batch_size=32, verbose=0), dtype=np.float64)
    cached_f = sp.val.X[rows].astype(np.float64)
    scale = max(float(np.abs(cached_f).max()), 1e-6)
    diff = float(np.abs(rebuilt_f - cached_f).max()) / scale
    resized = any(layer.name == "featx_resize" for layer in model.layers)
    tol = 2e-2 if precision == "mixed" or resized else 1e-3
    p_diff = float(np.abs(np.asarray(model.predict(pixels, batch_size=32, verbose=0), dtype=np.float64)
                          - head.predict_proba(sp.val.X[rows])).max())
    if not np.isfinite(diff) or diff > tol or not np.isfinite(p_diff) or p_diff > max(tol, 1e-3):
        raise FinetuneError(
            f"Parity check failed on {len(rows)} validation images of {len(np.unique(sp.val.y[rows]))} classes: "
            f"the rebuilt backbone's features differ from the cached ones by up to {diff:.3g} of their scale "
            f"(tolerance {tol}) and the probabilities by {p_diff:.3g}. The backbone, weights, preprocessing or "
            "resizing do not match the extraction (or BatchNorm is not in inference mode); fine-tuning would "
            "not start from the head."
        )
    return diff
