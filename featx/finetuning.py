"""Phase two: rebuild backbone + trained head end to end and fine-tune it.

The end-to-end model is rebuilt from the head's manifest with exactly the
extraction's backbone, weights, input size, preprocessing and pooling, and
the head's trained weights (a logistic head becomes an equivalent softmax
layer). A parity check proves the rebuild before any training: on held-out
images its probabilities must equal the cached head's. Every BatchNorm
layer stays in inference mode, and the run ends on the best validation
epoch, never below the head it started from.

The saved ``.keras`` model takes RGB uint8 pixels and holds its own
preprocessing as stock Keras layers, so it loads in safe mode without featx.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import backbones as B
from .datasets import discover
from .decode import read_image
from .errors import BadImage, FeatxError, HeadError
from .heads import load_head, read_manifest
from .outputs import Predictions
from .runtime import import_keras
from .spec import one_pass_groups, specs_of_manifest

AUGMENTATIONS = ("flip", "rotate", "zoom", "shift", "contrast")


class FinetuneError(FeatxError):
    """Fine-tuning cannot start or cannot be trusted (parity check failed...)."""


# --------------------------------------------------------------------------- building


def parse_augment(spec: str | Sequence[str] | None) -> dict[str, float]:
    """``"flip,rotate=0.1,zoom"`` -> {"flip": 1, "rotate": 0.1, "zoom": 0.1}."""
    if not spec:
        return {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    defaults = {"flip": 1.0, "rotate": 0.05, "zoom": 0.1, "shift": 0.1, "contrast": 0.1}
    out = {}
    for item in (i.strip() for i in items if i.strip()):
        name, _, value = item.partition("=")
        if name not in defaults:
            raise FinetuneError(f"Unknown augmentation {name!r}. Choose from {', '.join(AUGMENTATIONS)} "
                                "(e.g. --augment flip,rotate=0.1,zoom=0.2).")
        try:
            out[name] = float(value) if value else defaults[name]
        except ValueError:
            raise FinetuneError(f"Augmentation strength must be a number: {item!r}") from None
        if not 0 < out[name] <= 1:  # also refuses nan
            raise FinetuneError(f"Augmentation strength must be in (0, 1]: {item!r}")
    return out


def _augment_layers(keras, augment: dict[str, float], seed: int):
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
    from .normalise import keras_normalise

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
    return model, bases[0], man


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


def _sublayers(layer):
    """Every layer nested in ``layer``, depth first (a Keras 3 model's trainable flag is recursive)."""
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _sublayers(sub)


def _is_bn(layer) -> bool:
    return "BatchNormalization" in type(layer).__name__


def set_trainable(model, base, backbone: str, unfreeze: int | str | None = None, unfreeze_blocks: int | None = None) -> int:
    """Unfreeze the last ``unfreeze`` layers or ``unfreeze_blocks`` named blocks
    of the backbone (``"all"`` for every layer); the head stays trainable.

    BatchNormalization layers stay frozen whatever is unfrozen: in Keras 3 a
    frozen BN layer runs in inference mode, so its moving statistics are
    neither used per batch nor overwritten (the classic ResNet/Inception
    fine-tuning trap). Returns the number of backbone layers with weights
    made trainable.
    """
    if unfreeze is not None and unfreeze_blocks is not None:
        raise FinetuneError("Pass --unfreeze or --unfreeze-blocks, not both.")
    n_layers = len(base.layers)
    if unfreeze == "all":
        start = 0
    elif unfreeze is not None:
        # Counted in layers that have weights to train (BatchNorm excluded,
        # it stays frozen): pooling, activation or padding layers would
        # otherwise make "--unfreeze 2" on VGG16 train nothing.
        n = int(unfreeze)
        weighted = [i for i, layer in enumerate(base.layers) if layer.weights and not _is_bn(layer)]
        if n < 1 or n > len(weighted):
            raise FinetuneError(f"The {backbone} backbone has {len(weighted)} layers with trainable weights "
                                f"(BatchNorm excluded); cannot unfreeze the last {n}. The largest is --unfreeze "
                                f"{len(weighted)} (or all); --unfreeze-blocks K unfreezes whole blocks.")
        start = weighted[-n]
    elif unfreeze_blocks is not None:
        named = B.blocks(base, backbone)
        k = int(unfreeze_blocks)
        if k < 1 or k > len(named):
            raise FinetuneError(f"The {backbone} backbone has {len(named)} named blocks; cannot unfreeze the last {k}. "
                                f"The largest is --unfreeze-blocks {len(named)} (or --unfreeze all).")
        start = 0 if k == len(named) else named[-(k + 1)].end + 1
    else:
        start = n_layers  # the head alone
    model.trainable = True  # recursive in Keras 3; the lines below narrow it
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not _is_bn(layer)
    for layer in model.layers:
        if layer is base:
            continue
        if layer.name.startswith("featx_preprocess") or layer.name in ("featx_head_order", "featx_gray_to_rgb"):
            layer.trainable = False  # fixed maps, not weights to learn
        elif layer.name != "head" and hasattr(layer, "layers"):
            layer.trainable = False  # another backbone of a fused head stays frozen
        for sub in _sublayers(layer) if layer.name == "head" else ():  # the head (and the models inside it)
            sub.trainable = not _is_bn(sub)
    n_unfrozen = sum(1 for layer in base.layers if layer.trainable and layer.weights)
    if (unfreeze is not None or unfreeze_blocks is not None) and n_unfrozen == 0:
        raise FinetuneError(f"That setting unfreezes no layer with weights in {backbone}; unfreeze more.")
    return n_unfrozen


def layer_table(base, max_rows: int = 60) -> str:
    """Backbone layers with their trainable flag; long frozen runs summarised."""
    rows, run = [], []

    def flush():
        if len(run) == 1:
            rows.append(_row(run[0]))
        elif run:
            params = sum(layer.count_params() for layer in run)
            rows.append(f"  ... {len(run)} frozen layers ({run[0].name} .. {run[-1].name}), {params:,} params")
        run.clear()

    shown, rest = 0, []
    for layer in base.layers:
        if shown >= max_rows:
            rest.append(layer)
        elif not layer.trainable:
            run.append(layer)
        else:
            flush()
            rows.append(_row(layer))
            shown += 1
    flush()
    if rest:
        n_train = sum(1 for layer in rest if layer.trainable)
        params = sum(layer.count_params() for layer in rest)
        rows.append(f"  ... {len(rest)} more layers ({rest[0].name} .. {rest[-1].name}): "
                    f"{n_train} trainable, {len(rest) - n_train} frozen, {params:,} params")
    return "\n".join(rows)


def _row(layer) -> str:
    state = "trainable" if layer.trainable else "frozen"
    return f"  {layer.name:<40} {type(layer).__name__:<22} {state:<10} {layer.count_params():>12,}"


def param_counts(model) -> tuple[int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, frozen


# --------------------------------------------------------------------------- data


def load_pixels(paths: Sequence[str], size: int, workers: int | None = None, read=None) -> tuple[np.ndarray, list[int], list]:
    """Decode images exactly as extraction does, in threads; returns (pixels, kept indices, skipped).

    ``read`` reads one row by its path instead (array rows, :func:`featx.arrays.row_reader`).
    On an interrupt the decodes not started are cancelled, not waited for.
    """
    out, kept, skipped = [], [], []
    read = read or (lambda p: _try_read(p, size))
    pool = cf.ThreadPoolExecutor(workers or min(16, max(2, os.cpu_count() or 2)), thread_name_prefix="featx-decode")
    try:
        for i, (path, res) in enumerate(zip(paths, pool.map(read, paths))):
            if isinstance(res, str):
                skipped.append((path, res))
            else:
                out.append(res)
                kept.append(i)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    pixels = np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)
    return pixels, kept, skipped


def _try_read(path, size):
    try:
        return read_image(path, size)
    except BadImage as exc:
        return str(exc)


class _Batches:
    """A keras.utils.PyDataset of (uint8 pixels, labels), decoded in threads, shuffled per epoch.

    The threads are featx's own and only decode (no framework call):
    ``prefetch`` batches ahead of the one asked for decode on the pool while
    the model trains, so Keras needs no worker threads of its own
    (``workers=1``). :meth:`close` cancels what is pending and joins the
    pool, so that nothing runs on after training stops, Ctrl-C included.

    An image that cannot be read is left out of its batch and listed in
    ``skipped``; a batch in which none can be read is an empty batch (no
    rows, no loss, no gradient) and counted in ``empty_batches``.
    """

    def __new__(cls, *args, **kwargs):
        keras = import_keras()

        class Batches(keras.utils.PyDataset):
            def __init__(self, paths, labels, size, batch_size, shuffle, seed, workers, read=None, shape=None,
                         prefetch=2):
                super().__init__(workers=1, use_multiprocessing=False)
                self.paths, self.labels = list(paths), np.asarray(labels)
                self.batch_size, self.shuffle, self.prefetch = batch_size, shuffle, prefetch
                self.shape = tuple(shape) if shape else (size, size, 3)
                self.read = read or (lambda p: _try_read(p, size))
                self.rng = np.random.default_rng(seed)
                self.order = np.arange(len(self.paths))
                self.pool = cf.ThreadPoolExecutor(workers or min(16, max(2, os.cpu_count() or 2)),
                                                  thread_name_prefix="featx-batches")
                self.pending: dict[int, list] = {}
                self.lock = threading.Lock()
                self.closed = False
                self.skipped: dict[str, str] = {}
                self.empty_batches = 0
                if shuffle:
                    self.rng.shuffle(self.order)

            def __len__(self):
                return int(np.ceil(len(self.paths) / self.batch_size))

            def _submit(self, i):
                if i not in self.pending and 0 <= i < len(self):
                    idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
                    self.pending[i] = [(j, self.pool.submit(self.read, self.paths[j])) for j in idx]

            def __getitem__(self, i):
                with self.lock:
                    if self.closed:
                        return self._empty()
                    for k in range(i, i + 1 + self.prefetch):
                        self._submit(k)
                    jobs = self.pending.pop(i)
                good, rows = [], []
                for j, job in jobs:
                    image = job.result()
                    if isinstance(image, str):
                        self.skipped.setdefault(self.paths[j], image)
                    else:
                        good.append(image)
                        rows.append(j)
                if not good:
                    self.empty_batches += 1
                    return self._empty()
                return np.stack(good), self.labels[rows]

            def _empty(self):
                return np.zeros((0, *self.shape), np.uint8), self.labels[:0]

            def on_epoch_end(self):
                with self.lock:  # decodes made for the old order are of no use now
                    for jobs in self.pending.values():
                        for _, job in jobs:
                            job.cancel()
                    self.pending.clear()
                    if self.shuffle:
                        self.rng.shuffle(self.order)

            def close(self):
                with self.lock:
                    self.closed = True
                    self.pending.clear()
                self.pool.shutdown(wait=True, cancel_futures=True)

        return Batches(*args, **kwargs)


# --------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneResult:
    directory: Path
    model: object
    metrics: dict
    layer_table: str = ""
    trainable_params: int = 0
    frozen_params: int = 0
    parity_max_diff: float = 0.0
    notes: list[str] = field(default_factory=list)


def _split_rows(man: dict, cache_dir, seed: int | None = None):
    """Train and validation rows for fine-tuning, as the head saw them.

    A head validated on held-out rows (the data's val split, or its own
    stratified split of train) records them, and fine-tuning validates on
    exactly those rows: with any other split, images the head trained on
    would be scored as validation and the before/after comparison would
    flatter the head. A head that has no held-out rows (refit on train+val,
    or chosen by cross-validation and refit on all of train) gets a
    stratified split of train with the head's seed, and says so.

    Returns ``(features, splits, note)``.
    """
    from .features import Splits, load_features, make_splits

    names = [e["name"] for e in man.get("extractions") or []] or [man["extraction"]]
    try:
        parts = [load_features(man.get("source"), cache_dir=cache_dir, extraction=n) for n in names]
    except FeatxError as exc:
        raise FinetuneError(f"The features the head was fitted on are not in the cache: {exc}") from None
    if len(parts) == 1:
        feats = parts[0]
    else:
        from .fusion import fuse

        feats = fuse(parts)[0]
    classes = list(man["classes"])
    if feats.class_names != classes:
        raise HeadError(f"The cached dataset's classes {feats.class_names} differ from the head's {classes}.")
    selection = man.get("selection") or {}
    params = man.get("params") or {}
    if seed is None:
        seed = int(selection.get("seed", params.get("seed")) or 0)
    val_split = float(selection.get("val_split") or man.get("val_split") or 0.2)
    val_sha = selection.get("val_sha256")
    held_out = not man.get("refit_all") and selection.get("protocol", "val") != "cv"
    if val_sha and held_out:
        is_val = np.isin(feats.sha256, np.asarray(val_sha, dtype=object))
        train_rows = (feats.split == "train") & ~is_val
        test = feats.only("test") if "test" in feats.splits else None
        return feats, Splits(feats.subset(train_rows), feats.subset(is_val), test, made_val=False), ""
    try:
        sp = make_splits(feats, val_split, seed)
    except HeadError as exc:
        raise FinetuneError(f"Too little data to fine-tune with a validation split: {exc}") from None
    note = ""
    if not held_out:
        why = "was refit on train+val" if man.get("refit_all") else "was chosen by cross-validation and refit on all of train"
        note = (f"the head {why}, so it has no held-out rows: validating on a stratified {val_split:g} of train "
                f"(seed {seed}, listed in validation.csv); the head has seen these images, so its 'before' "
                "figures are optimistic")
    return feats, sp, note


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


def finetune(
    head: str | os.PathLike | None = None,
    *,
    unfreeze: int | str | None = None,
    unfreeze_blocks: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-5,
    optimizer: str = "adam",
    augment: str | Sequence[str] | None = None,
    class_weight: str | None = None,
    patience: int = 3,
    seed: int = 0,
    export: bool = True,
    workers: int | None = None,
    weights: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
    data=None,
    log=print,
) -> FinetuneResult:
    """Fine-tune backbone + head end to end, starting from a fitted head.

    Parameters
    ----------
    head : path, optional
        A dense or logreg head folder; the latest fitted head by default.
    unfreeze : int or "all", optional
        Unfreeze the backbone's last N layers with weights (BatchNorm excluded),
        or all of them.
    unfreeze_blocks : int, optional
        Unfreeze the backbone's last K named blocks (:func:`featx.backbones.blocks`).
        With neither, the last block (``DEFAULT_UNFREEZE_BLOCKS``). Both are
        checked against :mod:`featx.unfreeze_table` before anything is built.
    epochs, batch_size, lr, optimizer, patience
        Training; EarlyStopping and ReduceLROnPlateau watch validation loss and
        the best epoch is restored.
    augment : str, optional
        ``"flip,rotate=0.1,zoom=0.2,shift,contrast"``: Keras preprocessing
        layers, active on the training split only.
    class_weight : None or "balanced"
    seed : int
        Seeds the shuffling and the augmentation. Validation is the data's val
        split, or the same stratified split of train the head was fitted with.
    export : bool
        Also write a SavedModel for serving (``model.export``).
    weights : path, optional
        The new place of a moved weights file (its sha256 must match).
    home : path, optional
        The featx home: where ``heads/latest`` is read and ``models/`` written.
    data : arrays, optional
        For a head fitted on arrays recorded under a name: the same arrays
        (``(x, y)``, dict of splits), checked row by row against the cached
        keys. An ``.npz`` file or ``keras:NAME`` is read again by itself.
        The model then takes uint8 arrays at their own size and resizes them
        inside.

    Returns
    -------
    FinetuneResult
    """
    from .heads import _class_weights
    from .outputs import default_dir, resolve_result, results_dir, set_latest
    from .metrics import classification_metrics, plot_curves

    # Every argument is checked before the backbone is built or an image read.
    _check_args(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, unfreeze=unfreeze,
                unfreeze_blocks=unfreeze_blocks, optimizer=optimizer, class_weight=class_weight)
    aug = parse_augment(augment)
    head_dir = resolve_result("head", head, home) if head else seed_head(home)
    man = read_manifest(head_dir)
    if man.get("kind") not in SEED_KINDS:
        raise FinetuneError(f"Fine-tuning starts from a dense or logreg head; {head_dir} is a {man.get('kind')} head. "
                            "Run `featx fit-head --head dense` (or logreg) first, or pass --head DIR.")
    specs = specs_of_manifest(man, where=f"Head {head_dir}")
    by_default = unfreeze is None and unfreeze_blocks is None
    if by_default:
        unfreeze_blocks = DEFAULT_UNFREEZE_BLOCKS
    check_unfreeze(specs, unfreeze, unfreeze_blocks)
    log(f"head: {head_dir}")
    feats, sp, split_note = _split_rows(man, cache_dir)
    settings = specs[0]
    size = settings.input_size
    read, native = None, None
    if feats.view.layout == "arrays":
        from .arrays import row_reader

        read, native = row_reader(data, feats.view.source, feats.paths, feats.sha256)
    keras = import_keras()

    strategy = _strategy(keras)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model, base, man = build_end_to_end(head_dir, aug, seed, weights=weights, native=native)
        rows = _parity_sample(sp.val.y, PARITY_SAMPLE)
        log(f"parity check on {len(rows)} validation images from {len(np.unique(sp.val.y[rows]))} classes...")
        diff = parity_check(model, base, head_dir, sp, size, settings.precision, sample=PARITY_SAMPLE, read=read)
        log(f"parity ok: features match the cache to {diff:.2e} of their scale")
        n_unfrozen = set_trainable(model, base, settings.backbone, unfreeze, unfreeze_blocks)
        table = layer_table(base)
        trainable, frozen = param_counts(model)
        log(f"unfroze: {_unfroze(base, settings.backbone, unfreeze, unfreeze_blocks, n_unfrozen, by_default)}")
        opt = make_optimizer(keras, optimizer, lr, settings.precision)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    classes = list(man["classes"])
    notes = [split_note] if split_note else []
    val_pixels, val_kept, val_bad = load_pixels(list(sp.val.paths), size, workers, read)
    if not val_kept:
        raise FinetuneError(f"None of the {len(sp.val)} validation images can be read now (first: {val_bad[0][1]}).")
    y_val = sp.val.y[val_kept]
    log(f"validation: {_rows_note(len(val_kept), val_bad)}")
    before = {"val": classification_metrics(y_val, model.predict(val_pixels, batch_size=batch_size, verbose=0), classes)}
    start_weights = model.get_weights()
    directory = Path(out) if out else default_dir(results_dir("model", home), settings.backbone, "finetune")
    directory.mkdir(parents=True, exist_ok=True)
    if split_note:
        log(f"note: {split_note}")
        _write_rows(directory / "validation.csv", sp.val, classes)
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    callbacks = [
        stopping,
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, patience // 2),
                                          min_lr=lr / 100),
        keras.callbacks.ModelCheckpoint(str(directory / "best.keras"), monitor="val_loss", save_best_only=True),
    ]
    train_ds = _Batches(list(sp.train.paths), sp.train.y, size, batch_size, True, seed, workers, read, native)
    log(f"training on {len(sp.train)} images, {len(train_ds)} batches an epoch, up to {epochs} epochs...")
    t = time.perf_counter()
    hist = None
    with _StopOnCtrlC() as ctrl_c:
        try:
            hist = model.fit(train_ds, validation_data=(val_pixels, y_val), epochs=epochs,
                             callbacks=[*callbacks, ctrl_c.callback(keras)],
                             class_weight=_class_weights(sp.train.y, len(classes), class_weight), verbose=2,
                             shuffle=False)  # the batches are shuffled by the seed, not by Keras
        except KeyboardInterrupt:
            pass  # a second Ctrl-C; leaving the except block frees the traceback that holds Keras' iterator
        finally:
            train_ds.close()  # the decode threads stop before anything else
    if hist is None or ctrl_c.requested:
        raise _interrupted(directory)
    train_s = time.perf_counter() - t
    if train_ds.skipped:
        first = next(iter(train_ds.skipped.items()))
        notes.append(f"{len(train_ds.skipped)} training images could not be read and were left out of their batches"
                     + (f" ({train_ds.empty_batches} batches had none and were skipped)" if train_ds.empty_batches else "")
                     + f" (first: {first[0]}: {first[1]})")
    after_val = classification_metrics(y_val, model.predict(val_pixels, batch_size=batch_size, verbose=0), classes)
    best_epoch = stopping.best_epoch + 1 if len(hist.history.get("loss", [])) else 0
    if after_val["accuracy"] < before["val"]["accuracy"]:
        model.set_weights(start_weights)
        after_val = before["val"]
        best_epoch = 0
        notes.append("fine-tuning did not beat the head on validation; kept the starting weights")
    (directory / "best.keras").unlink(missing_ok=True)
    after = {"val": after_val}
    test_bad: list = []
    if sp.test is not None and len(sp.test):
        # Before and after on the same rows: the test images that can be read now.
        test_pixels, test_kept, test_bad = load_pixels(list(sp.test.paths), size, workers, read)
        log(f"test: {_rows_note(len(test_kept), test_bad)}")
        if test_kept:
            y_test = sp.test.y[test_kept]
            after["test"] = classification_metrics(y_test, model.predict(test_pixels, batch_size=batch_size, verbose=0),
                                                   classes)
            before["test"] = classification_metrics(
                y_test, _proba_in_order(load_head(head_dir), sp.test.X[test_kept], classes), classes)
        if test_bad:
            notes.append(f"test: {_rows_note(len(test_kept), test_bad)}")

    model.save(directory / "model.keras")
    if export:
        try:
            model.export(str(directory / "saved_model"), verbose=False)
        except Exception as exc:  # export needs TensorFlow; the .keras model is the primary artifact
            notes.append(f"SavedModel export skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    metrics = {
        "head": str(head_dir), "backbone": settings.backbone, "unfreeze": unfreeze, "unfreeze_blocks": unfreeze_blocks,
        "unfreeze_default": by_default, "unfrozen_backbone_layers": n_unfrozen, "trainable_params": trainable,
        "non_trainable_params": frozen, "epochs_run": len(history.get("loss", [])), "best_epoch": best_epoch,
        "train_seconds": train_s, "parity_max_diff": diff, "before": before, "after": after, "history": history,
        "unreadable": {"val": len(val_bad), "test": len(test_bad), "train": len(train_ds.skipped)},
        "notes": notes,
    }
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(history, directory / "curves.png", f"{settings.backbone}: fine-tuning", best_epoch=best_epoch)
    manifest = {**man, "kind": "end-to-end", "head": str(head_dir.resolve()), "input_size": size,
                "input": "RGB uint8 pixels, squashed to input_size x input_size (bilinear)"}
    if native:
        manifest["input"] = f"uint8 arrays of shape {tuple(native)}, resized inside to input_size (bilinear)"
        manifest["input_shape"] = list(native)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    set_latest("model", directory, home)
    return FinetuneResult(directory, model, metrics, table, trainable, frozen, diff, notes)


class _StopOnCtrlC:
    """Ctrl-C during ``fit`` stops training after the current batch, through Keras' own flags.

    A KeyboardInterrupt raised wherever the main thread happens to be (in a
    callback, between two TensorFlow calls) leaves Keras' iterators and
    TensorFlow's data threads mid-call, to be torn down at exit. Here the
    first Ctrl-C only asks to stop: ``fit`` ends the batch, validates that
    epoch and returns normally, having closed its own iterators, and the
    caller then raises. The request is read from
    the Python handler and, should that run late, from the byte that the
    C-level handler writes to a wakeup pipe (``signal.set_wakeup_fd``),
    which any thread that receives the signal writes. A second Ctrl-C raises
    at once. Only in the main thread (elsewhere Python allows no handler).
    """

    def __init__(self):
        self.requested = False
        self._saved = None

    def __enter__(self):
        import signal

        if threading.current_thread() is not threading.main_thread():
            return self
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._saved = (signal.signal(signal.SIGINT, self._handle), signal.set_wakeup_fd(self._w, warn_on_full_buffer=False))
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def poll(self) -> bool:
        import signal

        if not self.requested and self._saved is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                if bytes([int(signal.SIGINT)]) in os.read(self._r, 256):
                    self.requested = True
        return self.requested

    def callback(self, keras):
        guard = self

        class StopOnCtrlC(keras.callbacks.Callback):
            def _check(self, *args, **kwargs):
                if guard.poll() and not self.model.stop_training:
                    self.model.stop_training = True
                    print("\nCtrl-C: stopping after this batch (Ctrl-C again to stop at once)", file=sys.stderr,
                          flush=True)

            on_train_batch_end = on_epoch_begin = _check

        return StopOnCtrlC()

    def __exit__(self, *exc):
        import signal

        if self._saved is not None:
            handler, fd = self._saved
            signal.signal(signal.SIGINT, handler)
            signal.set_wakeup_fd(fd)
            os.close(self._r)
            os.close(self._w)
            self._saved = None
        return False


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised once the decode threads have stopped; ``str()`` says what was kept."""


def _interrupted(directory: Path) -> FinetuneInterrupted:
    import gc

    gc.collect()  # Keras' iterator over the batches (and TensorFlow's threads behind it) go now, not at exit
    if (directory / "best.keras").exists():
        return FinetuneInterrupted(f"no model was saved; the best epoch so far is {directory / 'best.keras'}")
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty: nothing of this run to keep
    return FinetuneInterrupted("no model was saved")


def _rows_note(n: int, bad: list) -> str:
    if not bad:
        return f"{n} images"
    return (f"{n} images ({len(bad)} cannot be read now and are left out of both the before and after figures; "
            f"first: {bad[0][0]})")


def _unfroze(base, backbone: str, unfreeze, unfreeze_blocks, n_layers: int, by_default: bool) -> str:
    """One line: what trains in the backbone, and how to change it."""
    params = sum(int(np.prod(w.shape)) for w in base.trainable_weights)
    if unfreeze == "all":
        what = f"all of {backbone}"
    elif unfreeze is not None:
        what = f"the last {unfreeze} layers with weights of {backbone}"
    else:
        named = B.blocks(base, backbone)
        last = [b.name for b in named[-unfreeze_blocks:]]
        what = (f"the last block of {backbone} ({last[0]})" if len(last) == 1 else
                f"the last {len(last)} blocks of {backbone} ({last[0]} .. {last[-1]})")
    line = f"{what}: {n_layers} layers, {params:,} params (BatchNorm stays frozen)"
    if by_default:
        line += "; the default, change it with --unfreeze-blocks K or --unfreeze N|all"
    return line


DEFAULT_UNFREEZE_BLOCKS = 1
PARITY_SAMPLE = 32


def check_unfreeze(specs, unfreeze=None, unfreeze_blocks=None) -> None:
    """Refuse an ``unfreeze`` or ``unfreeze_blocks`` the head's backbone cannot take, before building it.

    Reads :mod:`featx.unfreeze_table` (counts measured once from the real
    models), for the backbone as the head tapped it: an earlier tap ends
    the backbone there. The message gives the largest valid value and what
    each ``--unfreeze-blocks`` would unfreeze. A backbone the table does not
    know is checked after the build, by :func:`set_trainable`.
    """
    from .unfreeze_table import unfreezable

    group = [specs[i] for i in one_pass_groups(specs)[0]]  # the backbone that set_trainable works on
    table = unfreezable(group[0].backbone, min(s.cut_blocks for s in group))
    if table is None or (unfreeze is None and unfreeze_blocks is None) or unfreeze == "all":
        return
    name = group[0].backbone
    tapped = " as this head tapped it" if min(s.cut_blocks for s in group) else ""
    if unfreeze is not None and int(unfreeze) > table.total:
        raise FinetuneError(
            f"{name}{tapped} has {table.total} layers with trainable weights (BatchNorm excluded); cannot unfreeze "
            f"the last {unfreeze}. The largest is --unfreeze {table.total} (or all); to unfreeze whole blocks: "
            f"{table.blocks_hint()}.")
    if unfreeze_blocks is not None and int(unfreeze_blocks) > len(table.blocks):
        raise FinetuneError(
            f"{name}{tapped} has {len(table.blocks)} named blocks; cannot unfreeze the last {unfreeze_blocks}. "
            f"The largest is --unfreeze-blocks {len(table.blocks)} (or --unfreeze all); {table.blocks_hint()}.")


def make_optimizer(keras, name: str, lr: float, precision: str):
    """The training optimizer; with loss scaling when the backbone runs in float16.

    The outer model is built under the float32 policy, so ``compile()`` does
    not add loss scaling for the mixed-precision backbone by itself; without
    it small gradients underflow to zero at fine-tuning learning rates.
    """
    opts = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    opt = opts[name](learning_rate=lr)
    return keras.optimizers.LossScaleOptimizer(opt) if precision == "mixed" else opt


SEED_KINDS = ("dense", "logreg")


def seed_head(home=None) -> Path:
    """The newest dense or logreg head under the featx home (``heads/latest-dense``, ``-logreg``)."""
    from .outputs import latest_head, read_latest

    found = [p for p in (read_latest("head", home, kind) for kind in SEED_KINDS)
             if p is not None and (p / "manifest.json").exists()]
    if not found:
        latest = latest_head(home)  # raises when no head at all
        raise FinetuneError(f"Fine-tuning starts from a dense or logreg head; the latest head {latest} is not one. "
                            "Run `featx fit-head --head dense` (or logreg) first, or pass --head DIR.")
    return max(found, key=lambda p: (p / "manifest.json").stat().st_mtime)


def _check_args(*, epochs, batch_size, lr, patience, unfreeze, unfreeze_blocks, optimizer, class_weight) -> None:
    def bad(name, value, want):
        raise FinetuneError(f"{name} must be {want}. Received: {name}={value!r}")

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad(name, value, "an integer >= 1")
    if not isinstance(patience, int) or patience < 0:
        bad("patience", patience, "an integer >= 0")
    if not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr <= 0:
        bad("lr", lr, "a positive number")
    if optimizer not in ("adam", "sgd", "rmsprop"):
        bad("optimizer", optimizer, "one of adam, sgd, rmsprop")
    if class_weight not in (None, "balanced"):
        bad("class_weight", class_weight, "None or 'balanced'")
    if unfreeze is not None and unfreeze_blocks is not None:
        raise FinetuneError("Pass --unfreeze or --unfreeze-blocks, not both.")
    if unfreeze is not None and unfreeze != "all" and (not isinstance(unfreeze, int) or unfreeze < 1):
        bad("unfreeze", unfreeze, "a number of layers >= 1 or 'all'")
    if unfreeze_blocks is not None and (not isinstance(unfreeze_blocks, int) or unfreeze_blocks < 1):
        bad("unfreeze_blocks", unfreeze_blocks, "an integer >= 1")


def _write_rows(path: Path, rows, classes) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label"])
        for p, y in zip(rows.paths, rows.y):
            w.writerow([p, classes[int(y)]])


def _proba_in_order(est, X, classes):
    from .heads import align_proba

    return align_proba(est, est.predict_proba(X), classes)


def _strategy(keras):
    """All visible GPUs through tf.distribute when there are several (TensorFlow backend)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None


# --------------------------------------------------------------------------- predict


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
    from .arrays import as_dataset, is_array_data

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
