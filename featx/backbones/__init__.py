"""Building backbones: preprocessing, weights, the Keras model, its taps and pooling.

The registry of backbones (frozen records) is :mod:`featx.backbones.registry`, whose
names are re-exported here. Building the Keras model, tapping it at a block
boundary, pooling it and the offline-weights message live here so that
extraction and fine-tuning rebuild exactly the same network.

Examples
--------
>>> from featx.backbones import get_backbone, list_backbones
>>> get_backbone("resnet50").feature_width
2048
>>> [b.name for b in list_backbones("efficientnetv2*")][:2]
['efficientnetv2b0', 'efficientnetv2b1']
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import numbers
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import FeatxError, FeatxValueError
from .registry import _TABLE, REGISTRY, Backbone, Family, _normalise, get_backbone, list_backbones  # noqa: F401
from .weights import _PARTIAL_LOAD, Weights, _one_sentence, _weights_error, resolve_weights  # noqa: F401

# Per-channel constants of the three preprocessing conventions Keras uses
# (keras/src/applications/imagenet_utils.py).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")
IMAGE_SIZE_RANGE = (32, 1024)  # px, inclusive: the --image-size values featx accepts
# Global poolings of a feature map: Keras' own two, both side by side (avg
# first), and generalised mean (GeM) of the activations clamped at GEM_EPS.
POOLINGS = ("avg", "max", "avg,max", "gem")
GEM_P = 3.0
GEM_EPS = 1e-6
TTAS = ("none", "flip")  # test-time augmentation inside the feature model




# --------------------------------------------------------------------------- preprocessing


def preprocess(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Apply a Keras preprocessing convention to RGB pixels in [0, 255].

    A numpy twin of ``keras.applications.<module>.preprocess_input`` (tested
    equal to it), so extraction needs no framework call per batch.

    Parameters
    ----------
    pixels : ndarray, shape (..., 3)
        RGB values in [0, 255], any integer or float dtype.
    mode : {"caffe", "tf", "torch", "none"}
        ``caffe``: RGB to BGR, minus the ImageNet BGR mean; ``tf``: scaled to
        [-1, 1]; ``torch``: scaled to [0, 1] then standardised per channel;
        ``none``: unchanged (the model rescales inside, e.g. EfficientNet).
    """
    x = np.asarray(pixels, dtype=np.float32)
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if mode == "none":
        return x
    raise FeatxError(f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. Received: mode={mode!r}")


def preprocess_affine(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess(x, mode)`` as ``x @ K + b`` over channels: (K 3x3, b 3).

    Every Keras convention is a channel permutation or scale plus an offset,
    so a frozen 1x1 convolution reproduces it inside a model.
    """
    if mode == "caffe":
        return np.eye(3, dtype=np.float32)[::-1].copy(), -CAFFE_MEAN_BGR
    if mode == "tf":
        return np.eye(3, dtype=np.float32) / 127.5, -np.ones(3, np.float32)
    if mode == "torch":
        return np.diag(1.0 / (255.0 * TORCH_STD)).astype(np.float32), (-TORCH_MEAN / TORCH_STD).astype(np.float32)
    if mode == "none":
        return np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    raise FeatxError(f"Unknown preprocessing mode. Expected one of {PREPROCESSING_MODES}. Received: mode={mode!r}")


def pixels_input(size: int, mode: str, name: str = "pixels", between=(), native: tuple | None = None):
    """An RGB uint8 input and the preprocessed float32 tensor it becomes.

    Built from stock Keras pieces only (a cast and a frozen 1x1 Conv2D kept
    in float32 under mixed precision), so a saved model holding it loads in
    safe mode without featx, and preprocessing runs on the accelerator:
    feeding uint8 moves a quarter of the bytes float32 would. ``between``
    layers run on the float pixels before preprocessing.

    ``native`` (H, W, C), C 1 or 3, makes the input arrays of that shape:
    grayscale is repeated to 3 channels (a frozen 1x1 convolution of ones)
    and other sizes resized to ``size`` by a bilinear, antialiased
    ``Resizing`` layer, Pillow's filter in extraction up to its rounding
    to uint8.
    """
    from ..runtime import import_keras

    keras = import_keras()
    inp = keras.Input(tuple(native) if native else (size, size, 3), dtype="uint8", name=name)
    x = keras.ops.cast(inp, "float32")
    if native and native[2] == 1:
        gray = keras.layers.Conv2D(3, 1, use_bias=False, name="featx_gray_to_rgb", dtype="float32", trainable=False)
        x = gray(x)
        gray.set_weights([np.ones((1, 1, 1, 3), np.float32)])
    if native and tuple(native[:2]) != (size, size):
        x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, name="featx_resize",
                                  dtype="float32")(x)
    for layer in between:  # e.g. augmentation, which works on [0, 255] pixels
        x = layer(x)
    if mode == "none":
        return inp, x
    kernel, bias = preprocess_affine(mode)
    conv = keras.layers.Conv2D(3, 1, name="featx_preprocess", dtype="float32", trainable=False)
    x = conv(x)
    conv.set_weights([kernel.reshape(1, 1, 3, 3), bias])
    return inp, x


# --------------------------------------------------------------------------- models


def check_input_size(backbone: Backbone, input_size: int | None, weights: Weights | None = None) -> int:
    """The square input size to use, validated against the family's limits.

    ``None`` means the backbone's native size; anything else must be an int in
    ``IMAGE_SIZE_RANGE`` (a 10,000 px input needs tens of GB per batch).
    """
    if input_size is None:
        return backbone.input_size
    lo, hi = IMAGE_SIZE_RANGE
    if isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral) or not lo <= input_size <= hi:
        raise FeatxValueError(
            f"image_size must be an integer from {lo} to {hi} px, or None for the backbone's native size. "
            f"Received: image_size={input_size!r}"
        )
    size = int(input_size)
    if size < backbone.min_input_size:
        raise FeatxError(
            f"{backbone.name} needs inputs of at least {backbone.min_input_size} px. "
            f"Received: image_size={size}"
        )
    if weights is not None and weights.kind == "imagenet" and backbone.family.fixed_imagenet_size:
        if size != backbone.input_size:
            raise FeatxError(
                f"{backbone.name}'s ImageNet weights only load at {backbone.input_size} px. "
                f"Received: image_size={size}"
            )
    return size


def build_backbone(
    backbone: Backbone | str,
    weights: Weights,
    input_size: int | None = None,
    pooling: str | None = None,
):
    """Build the headless ``keras.applications`` model with its weights loaded.

    ``pooling`` is passed to Keras itself so that the uncut model's features
    are exactly Keras' (ConvNeXt normalises after pooling, for instance).
    """
    from ..runtime import import_keras

    keras = import_keras()

    bb = get_backbone(backbone)
    size = check_input_size(bb, input_size, weights)
    ctor = getattr(keras.applications, bb.constructor)
    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed)
    # Keras prints download notices on stdout: keep them off our output, show
    # them (on stderr) only if the build worked, so a failure is one line.
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(chatter):
            warnings.simplefilter("always")
            model = ctor(weights=weights.keras_arg, include_top=False, input_shape=(size, size, 3), pooling=pooling)
    except Exception as exc:  # Keras raises a bare Exception for download failures
        raise _weights_error(bb, weights, exc) from exc
    if chatter.getvalue():
        sys.stderr.write(chatter.getvalue())
    # Keras only warns when a weights file leaves layers at their random
    # initialisation; features from such a model would be silently wrong.
    partial = [w for w in caught if _PARTIAL_LOAD.search(str(w.message))]
    if partial:
        raise _weights_error(bb, weights, ValueError(str(partial[0].message)))
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def loaded_fingerprint(model) -> str:
    """``sha256:<hex>`` over a built model's weight arrays, in layer order, as loaded.

    What a weights file, a seed or Keras' ImageNet file really put into the
    network: the same file on another backend, or after a Keras upgrade that
    loads it differently, gives another hash. Shapes and dtypes are hashed
    too, so arrays cut at other places cannot collide. About 0.1 s per 100 MB
    of weights, once per model build.
    """
    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(np.asarray(w))
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    return f"sha256:{h.hexdigest()}"


def build_feature_model(spec, weights: Weights | None = None, include_preprocessing: bool = True):
    """The Keras feature model of an :class:`~featx.spec.ExtractionSpec` (or of
    several specs that differ only in their tap: one pass, their features side
    by side).

    Mixed precision when the spec says so; the tapped layer must be the one
    the spec names (a Keras upgrade that renamed it is an error, not other
    features under the same key).
    """
    from ..runtime import import_keras

    keras = import_keras()
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    spec = specs[0]
    for s in specs:
        s.check_rebuildable()
    weights = weights or spec.load_weights()
    previous = keras.config.dtype_policy()
    if spec.precision == "mixed":
        keras.config.set_dtype_policy("mixed_float16")
    try:
        cuts = [s.cut_blocks for s in specs]
        model = feature_model(spec.backbone, weights, spec.input_size, spec.pooling, cuts if len(cuts) > 1 else cuts[0],
                              include_preprocessing=include_preprocessing, preprocessing=spec.preprocessing,
                              tta=spec.tta)
    finally:
        keras.config.set_dtype_policy(previous)
    for s in specs:  # the weights the extraction recorded, or a one-line refusal saying what differs
        s.check_loaded(model._featx_loaded)
    tapped = getattr(model, "_featx_tap", "output")
    for s, t in zip(specs, [tapped] if isinstance(tapped, str) else tapped):
        if t != s.tap:
            raise FeatxError(
                f"{s.backbone}'s block {s.cut_blocks} before the end is now layer {t!r}, but the "
                f"extraction tapped {s.tap!r} (a different Keras version?). Extract again."
            )
    return model


@dataclass(frozen=True)
class Block:
    """A named block of a built model: its output layer and the index after it."""

    name: str
    layer: str  # name of the layer whose output ends the block
    end: int  # index in model.layers of that layer


def cut_points(model) -> list[int]:
    """Indices of layers every input-to-output path goes through.

    In a topological order, layer i is such a point iff no connection jumps
    over it (from a layer before i to a layer after i). Tapping there gives
    the whole state of the network, residual branches included.
    """
    layers = model.layers
    index = {id(layer): i for i, layer in enumerate(layers)}
    jumps = np.zeros(len(layers) + 1, dtype=np.int64)
    for j, layer in enumerate(layers):
        for node in getattr(layer, "_inbound_nodes", []):
            for parent in getattr(node, "parent_nodes", []):
                i = index.get(id(parent.operation))
                if i is not None and j - i > 1:
                    jumps[i + 1] += 1
                    jumps[j] -= 1
    covered = np.cumsum(jumps)[: len(layers)]
    return [i for i in range(len(layers)) if covered[i] == 0]


def blocks(model, backbone: Backbone | str) -> list[Block]:
    """The named blocks of a built backbone, in order, as cut points.

    Each cut point is named after the block of the nearest layer at or
    before it whose name the family pattern recognises; a block ends at its
    last cut point, so residual additions and trailing layers (EfficientNet's
    top convolution) belong to the block before them.
    """
    bb = get_backbone(backbone)
    pattern = re.compile(bb.family.block_pattern)
    layers = model.layers
    owner: list[str | None] = []
    current = None
    for layer in layers:
        m = pattern.search(layer.name)
        if m:
            current = m.expand(bb.family.block_template)
        owner.append(current)
    if bb.family.block_end_pattern:
        end_re = re.compile(bb.family.block_end_pattern)
        candidates = [i for i, layer in enumerate(layers) if end_re.search(layer.name)]
    else:
        candidates = cut_points(model)
    ends: dict[str, int] = {}
    for i in candidates:
        if owner[i] is not None:
            ends[owner[i]] = i  # later cut points of the same block win
    return [Block(name, layers[i].name, i) for name, i in sorted(ends.items(), key=lambda kv: kv[1])]


def pool_layer(keras, pooling: str, name: str):
    """A callable from a feature map (N, H, W, C) to pooled features, built from stock Keras pieces.

    ``avg,max`` gives (N, 2C), the average first; ``gem`` is the generalised
    mean ``mean(max(x, eps) ** p) ** (1 / p)`` per channel, in float32 (eps
    cubed underflows in float16), which sits between the average (p=1) and
    the maximum (p to infinity).
    """
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=name)
    if pooling == "avg,max":
        def both(x):
            avg = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg", dtype="float32")(x)
            top = keras.layers.GlobalMaxPooling2D(name=f"{name}_max", dtype="float32")(x)
            return keras.layers.Concatenate(name=name, dtype="float32")([avg, top])
        return both
    if pooling == "gem":
        def gem(x):
            x = keras.ops.power(keras.ops.maximum(keras.ops.cast(x, "float32"), GEM_EPS), GEM_P)
            x = keras.layers.GlobalAveragePooling2D(name=name, dtype="float32")(x)
            return keras.ops.power(x, 1.0 / GEM_P)
        return gem
    raise FeatxValueError(f"pooling must be one of {POOLINGS}. Received: pooling={pooling!r}")


def flip_tta(keras, model, name: str):
    """``model`` on a batch and on its mirror image in one call, features averaged.

    The batch is doubled (images, then their left-right mirrors), run through
    ``model`` once, and the two halves averaged: one decode and one forward
    pass per batch, twice the images in it.
    """
    inp = keras.Input(tuple(model.input.shape[1:]), name="featx_tta_input", dtype=model.input.dtype)
    doubled = keras.layers.Concatenate(axis=0, name="featx_tta_batch", dtype=model.input.dtype)(
        [inp, keras.ops.flip(inp, axis=2)])
    y = keras.ops.cast(model(doubled), "float32")
    width = int(model.output.shape[-1])
    y = keras.ops.mean(keras.ops.reshape(y, (2, -1, width)), axis=0)
    return keras.Model(inp, y, name=name)


def feature_model(
    backbone: Backbone | str,
    weights: Weights,
    input_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int | Sequence[int] = 0,
    include_preprocessing: bool = True,
    preprocessing: str | None = None,
    tta: str = "none",
):
    """A Keras model from images to pooled feature vectors.

    With ``include_preprocessing`` (the default) it takes RGB uint8 pixels
    and applies the backbone's preprocessing itself; otherwise it takes
    already-preprocessed float input. With ``cut_blocks=0`` and ``avg`` or
    ``max`` pooling the backbone is
    ``keras.applications.<X>(include_top=False, pooling=pooling)`` unchanged;
    with ``cut_blocks=K`` it is tapped at the output of the block K blocks
    before the end, then pooled. ``avg,max`` and ``gem`` pooling
    (:func:`pool_layer`) pool every tap, the last block's feature map
    included, themselves. A list of cuts (``[0, 1, 2]``) taps them
    all in one forward pass: the output is their pooled features side by
    side, in that order (``model._featx_widths`` gives each one's width), and
    the layers after the deepest tap are not in the model at all.
    ``tta="flip"`` averages every feature over the image and its mirror
    (:func:`flip_tta`).
    ``preprocessing`` (default: the registry's for the family) is the mode
    an extraction recorded; ``model._featx_loaded`` is the
    :func:`loaded_fingerprint` of the backbone's weights.
    """
    from ..runtime import import_keras

    keras = import_keras()
    bb = get_backbone(backbone)
    if pooling not in POOLINGS:
        raise FeatxValueError(f"pooling must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if tta not in TTAS:
        raise FeatxValueError(f"tta must be one of {TTAS}. Received: tta={tta!r}")
    cuts = [cut_blocks] if isinstance(cut_blocks, (int, np.integer)) else [int(c) for c in cut_blocks]
    if not cuts or min(cuts) < 0 or len(set(cuts)) != len(cuts):
        raise FeatxError(f"cut_blocks must be distinct integers >= 0. Received: cut_blocks={cut_blocks!r}")
    keras_pooling = pooling if pooling in ("avg", "max") else None  # Keras pools the uncut output itself
    label = pooling.replace(",", "")
    if cuts == [0] and keras_pooling:
        base = build_backbone(bb, weights, input_size, pooling=pooling)
        names = ["output"]
        loaded = loaded_fingerprint(base)
    else:
        full = build_backbone(bb, weights, input_size, pooling=keras_pooling if 0 in cuts else None)
        loaded = loaded_fingerprint(full)
        named = blocks(full, bb)
        if max(cuts) >= len(named):
            raise FeatxError(
                f"{bb.name} has {len(named)} named blocks, so at most {len(named) - 1} can be cut. "
                f"Received: cut_blocks={max(cuts)}"
            )
        outs, names = [], []
        for k in cuts:
            if k == 0:
                outs.append(full.output if keras_pooling else pool_layer(keras, pooling, f"featx_{label}_pool")(full.output))
                names.append("output")
            else:
                tap = named[-(k + 1)]
                outs.append(pool_layer(keras, pooling, f"featx_{label}_pool_cut{k}")(full.get_layer(tap.layer).output))
                names.append(tap.layer)
        if len(outs) == 1:
            out = outs[0]
        else:
            outs = [keras.layers.Activation("linear", dtype="float32", name=f"featx_tap{i}")(o)
                    for i, o in enumerate(outs)]
            out = keras.layers.Concatenate(name="featx_taps", dtype="float32")(outs)
        cut_label = "-".join(f"cut{k}" for k in cuts)
        base = keras.Model(full.input, out, name=f"{bb.name}_{cut_label}")
        widths = [int(o.shape[-1]) for o in outs]
    if tta == "flip":
        base = flip_tta(keras, base, name=f"{base.name}_flip")
    if include_preprocessing:
        size = int(base.input.shape[1])
        inp, x = pixels_input(size, preprocessing or bb.preprocessing)
        base = keras.Model(inp, base(x), name=f"featx_{base.name}")
    base._featx_tap = names[0] if len(names) == 1 else names
    base._featx_loaded = loaded
    base._featx_widths = [int(base.output.shape[-1])] if len(names) == 1 else widths
    return base
