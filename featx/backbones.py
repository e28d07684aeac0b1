"""The backbone registry: every ``keras.applications`` image model as data.

A backbone is a frozen record (constructor, native input size, preprocessing,
pooled feature width, how its layers group into named blocks). Building the
Keras model, tapping it at a block boundary and the offline-weights message
live here so that extraction and fine-tuning rebuild exactly the same network.

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
import difflib
import fnmatch
import hashlib
import io
import numbers
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FeatxError, FeatxValueError, UnknownBackbone, WeightsError

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


@dataclass(frozen=True)
class Family:
    """What every member of a model family shares."""

    module: str  # keras.applications.<module>, where preprocess_input lives
    preprocessing: str  # one of PREPROCESSING_MODES
    block_pattern: str  # regex; its first group names the block a layer belongs to
    block_template: str = r"\1"
    min_input_size: int = 32
    fixed_imagenet_size: bool = False  # NASNet's ImageNet weights need the native size
    # Where blocks end, for families whose cells read more than the previous
    # cell (NASNet) and so have no single-layer cut points between them.
    block_end_pattern: str | None = None


@dataclass(frozen=True)
class Backbone:
    """A registry record: everything featx needs to know about one backbone.

    Attributes
    ----------
    name : str
        Registry name, lower case (``"resnet50"``).
    constructor : str
        Attribute of ``keras.applications`` that builds it (``"ResNet50"``).
    input_size : int
        Native (ImageNet) square input size in pixels.
    feature_width : int
        Width of the pooled feature vector of the full backbone.
    params : int
        Parameters of the headless backbone.
    family : Family
        Preprocessing mode and block structure shared by the family.
    """

    name: str
    constructor: str
    input_size: int
    feature_width: int
    params: int
    family: Family = field(repr=False)

    @property
    def preprocessing(self) -> str:
        return self.family.preprocessing

    @property
    def module(self) -> str:
        return self.family.module

    @property
    def min_input_size(self) -> int:
        return self.family.min_input_size

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "constructor": f"keras.applications.{self.constructor}",
            "input_size": self.input_size,
            "feature_width": self.feature_width,
            "params": self.params,
            "preprocessing": self.preprocessing,
            "preprocess_input": f"keras.applications.{self.module}.preprocess_input",
        }


_RESNET = Family("resnet", "caffe", r"^(conv\d_block\d+)_")
_RESNET_V2 = Family("resnet_v2", "tf", r"^(conv\d_block\d+)_")
_INCEPTION_V3 = Family("inception_v3", "tf", r"^(mixed\d+)", min_input_size=75)
_INCEPTION_RESNET_V2 = Family(
    "inception_resnet_v2", "tf", r"^(block\d+_\d+|mixed_\d[a-z]|conv_7b)", min_input_size=75
)
_VGG16 = Family("vgg16", "caffe", r"^(block\d)_")
_VGG19 = Family("vgg19", "caffe", r"^(block\d)_")
_XCEPTION = Family("xception", "tf", r"^(block\d+)_", min_input_size=71)
_DENSENET = Family("densenet", "torch", r"^(conv\d_block\d+|pool\d)_")
_MOBILENET = Family("mobilenet", "tf", r"^conv_(?:dw|pw|pad)_(\d+)", r"block\1")
_MOBILENET_V2 = Family("mobilenet_v2", "tf", r"^(block_\d+|expanded_conv)_")
_MOBILENET_V3 = Family("mobilenet_v3", "none", r"^(expanded_conv(?:_\d+)?)_")
_EFFICIENTNET = Family("efficientnet", "none", r"^(block\d[a-z])_")
_EFFICIENTNET_V2 = Family("efficientnet_v2", "none", r"^(block\d[a-z])_")
_CONVNEXT = Family(
    "convnext", "none", r"^convnext_[a-z]+_(stage_\d+_block_\d+|downsampling_block_\d+)"
)
_NASNET = Family(
    "nasnet",
    "tf",
    r"(?:normal|reduction|adjust)\w*?_((?:stem_|reduce_)?\d+)$",
    r"cell_\1",
    fixed_imagenet_size=True,
    block_end_pattern=r"^(normal|reduction)_concat",
)

# name, constructor, native size, pooled width, headless params, family.
# Widths and parameter counts are checked against the real models by
# tests/test_backbones.py (weights=None, tiny inputs).
_TABLE: Sequence[tuple] = (
    ("resnet50", "ResNet50", 224, 2048, 23587712, _RESNET),
    ("resnet101", "ResNet101", 224, 2048, 42658176, _RESNET),
    ("resnet152", "ResNet152", 224, 2048, 58370944, _RESNET),
    ("resnet50v2", "ResNet50V2", 224, 2048, 23564800, _RESNET_V2),
    ("resnet101v2", "ResNet101V2", 224, 2048, 42626560, _RESNET_V2),
    ("resnet152v2", "ResNet152V2", 224, 2048, 58331648, _RESNET_V2),
    ("inceptionv3", "InceptionV3", 299, 2048, 21802784, _INCEPTION_V3),
    ("inceptionresnetv2", "InceptionResNetV2", 299, 1536, 54336736, _INCEPTION_RESNET_V2),
    ("vgg16", "VGG16", 224, 512, 14714688, _VGG16),
    ("vgg19", "VGG19", 224, 512, 20024384, _VGG19),
    ("xception", "Xception", 299, 2048, 20861480, _XCEPTION),
    ("densenet121", "DenseNet121", 224, 1024, 7037504, _DENSENET),
    ("densenet169", "DenseNet169", 224, 1664, 12642880, _DENSENET),
    ("densenet201", "DenseNet201", 224, 1920, 18321984, _DENSENET),
    ("mobilenet", "MobileNet", 224, 1024, 3228864, _MOBILENET),
    ("mobilenetv2", "MobileNetV2", 224, 1280, 2257984, _MOBILENET_V2),
    ("mobilenetv3small", "MobileNetV3Small", 224, 576, 939120, _MOBILENET_V3),
    ("mobilenetv3large", "MobileNetV3Large", 224, 960, 2996352, _MOBILENET_V3),
    ("efficientnetb0", "EfficientNetB0", 224, 1280, 4049571, _EFFICIENTNET),
    ("efficientnetb1", "EfficientNetB1", 240, 1280, 6575239, _EFFICIENTNET),
    ("efficientnetb2", "EfficientNetB2", 260, 1408, 7768569, _EFFICIENTNET),
    ("efficientnetb3", "EfficientNetB3", 300, 1536, 10783535, _EFFICIENTNET),
    ("efficientnetb4", "EfficientNetB4", 380, 1792, 17673823, _EFFICIENTNET),
    ("efficientnetb5", "EfficientNetB5", 456, 2048, 28513527, _EFFICIENTNET),
    ("efficientnetb6", "EfficientNetB6", 528, 2304, 40960143, _EFFICIENTNET),
    ("efficientnetb7", "EfficientNetB7", 600, 2560, 64097687, _EFFICIENTNET),
    ("efficientnetv2b0", "EfficientNetV2B0", 224, 1280, 5919312, _EFFICIENTNET_V2),
    ("efficientnetv2b1", "EfficientNetV2B1", 240, 1280, 6931124, _EFFICIENTNET_V2),
    ("efficientnetv2b2", "EfficientNetV2B2", 260, 1408, 8769374, _EFFICIENTNET_V2),
    ("efficientnetv2b3", "EfficientNetV2B3", 300, 1536, 12930622, _EFFICIENTNET_V2),
    ("efficientnetv2s", "EfficientNetV2S", 384, 1280, 20331360, _EFFICIENTNET_V2),
    ("efficientnetv2m", "EfficientNetV2M", 480, 1280, 53150388, _EFFICIENTNET_V2),
    ("efficientnetv2l", "EfficientNetV2L", 480, 1280, 117746848, _EFFICIENTNET_V2),
    ("convnexttiny", "ConvNeXtTiny", 224, 768, 27820128, _CONVNEXT),
    ("convnextsmall", "ConvNeXtSmall", 224, 768, 49454688, _CONVNEXT),
    ("convnextbase", "ConvNeXtBase", 224, 1024, 87566464, _CONVNEXT),
    ("convnextlarge", "ConvNeXtLarge", 224, 1536, 196230336, _CONVNEXT),
    ("convnextxlarge", "ConvNeXtXLarge", 224, 2048, 348147968, _CONVNEXT),
    ("nasnetmobile", "NASNetMobile", 224, 1056, 4269716, _NASNET),
    ("nasnetlarge", "NASNetLarge", 331, 4032, 84916818, _NASNET),
)

REGISTRY: dict[str, Backbone] = {row[0]: Backbone(*row) for row in _TABLE}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


def list_backbones(pattern: str | None = None) -> list[Backbone]:
    """Registry records whose name matches ``pattern`` (all by default).

    A shell-style pattern (``efficientnet*``, ``resnet?0``) matches whole
    names; a plain word matches anywhere in the name, as ``*word*`` would
    (``vgg`` finds vgg16 and vgg19; case, ``-`` and ``_`` do not matter).
    """
    if not pattern:
        return list(REGISTRY.values())
    pat = pattern.lower() if any(c in pattern for c in "*?[") else f"*{_normalise(pattern)}*"
    return [b for b in REGISTRY.values() if fnmatch.fnmatchcase(b.name, pat)]


def get_backbone(name: str | Backbone) -> Backbone:
    """Look a backbone up by name (case, ``-`` and ``_`` do not matter).

    Raises
    ------
    UnknownBackbone
        With the closest registry names as suggestions.
    """
    if isinstance(name, Backbone):
        return name
    key = _normalise(name)
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownBackbone(
        f"Unknown backbone {name!r}.{hint} Run `featx backbones` to list all "
        f"{len(REGISTRY)}. Received: backbone={name!r}"
    )


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
    from .runtime import import_keras

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


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class Weights:
    """Which weights to load, and a fingerprint of them for cache keys.

    ``kind`` is ``"imagenet"``, ``"random"`` (seeded initialisation) or
    ``"file"``. For a file, the fingerprint is the sha256 of its bytes, so a
    renamed file still hits the cache and an edited one does not.
    """

    kind: str
    path: str | None = None
    fingerprint: str = ""
    seed: int = 0

    @property
    def source(self) -> str:
        """What to pass to :func:`resolve_weights` to get these weights back."""
        return {"imagenet": "imagenet", "random": "none", "file": str(self.path)}[self.kind]

    @property
    def keras_arg(self):
        return {"imagenet": "imagenet", "random": None, "file": self.path}[self.kind]

    def describe(self) -> str:
        return {"imagenet": "imagenet", "random": f"none (random, seed {self.seed})", "file": str(self.path)}[
            self.kind
        ]


def resolve_weights(
    weights: str | os.PathLike | None, seed: int = 0, *, file_hasher=None, backend: str | None = None
) -> Weights:
    """Turn ``imagenet`` / ``none`` / a path into a :class:`Weights`.

    Random weights are keyed by seed and Keras backend, because the same
    seed draws different numbers on TensorFlow and JAX.
    """
    if isinstance(weights, Weights):
        return weights
    if weights is None or str(weights).lower() in ("none", "random"):
        if backend is None:
            from .runtime import backend_name

            backend = backend_name()
        return Weights("random", None, f"random:seed={seed}:{backend}", seed)
    if str(weights).lower() == "imagenet":
        return Weights("imagenet", None, "imagenet")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file not found: {path}. Pass --weights imagenet, none, or the path of a "
            f"Keras weights file (.weights.h5 or .h5). Received: weights={str(weights)!r}"
        )
    path = path.resolve()
    if file_hasher is None:
        from .data import sha256_file as file_hasher
    return Weights("file", str(path), f"sha256:{file_hasher(path)}")


_PARTIAL_LOAD = re.compile(r"freshly-initialized|Skipping variable loading|did not match|mismatch", re.I)
_URL = re.compile(r"https?://\S+?\.(?:h5|keras)")


def _weights_error(
    backbone: Backbone,
    weights: Weights,
    exc: Exception,
    alternative: str = "or pass --weights PATH to a local weights file (or --weights none for random weights)",
) -> WeightsError:
    """A one-line message for weights that could not be fetched or loaded."""
    msg = str(exc)
    if weights.kind == "imagenet":
        url = _URL.search(msg)
        if url:
            from .runtime import keras_cache_dir

            fname = url.group(0).rsplit("/", 1)[-1]
            where = os.path.join(keras_cache_dir("models"), fname)
            return WeightsError(
                f"ImageNet weights for {backbone.name} could not be downloaded (no network?). Keras "
                f"looks for {where}: download {url.group(0)} and put it there, {alternative}."
            )
        return WeightsError(f"ImageNet weights for {backbone.name} could not be loaded: {msg.splitlines()[0]}")
    return WeightsError(
        f"Weights file {weights.path} does not fit {backbone.name} (include_top=False): {_one_sentence(msg, exc)} "
        "Is it a weights file of another backbone, or of another input size with a classifier on top?"
    )


def _one_sentence(msg: str, exc: Exception) -> str:
    """Keras' load error as one complete sentence.

    Its first line ends in "Example error message for object <Conv2D ...>:", the
    example on the next line (which goes on to print the arrays): keep the
    count, the layer and the shapes, and drop the rest.
    """
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__ + "."
    first = lines[0]
    example = re.match(r"(.*?)\s*Example error message for object <\w+ name=([^,>]+)[^>]*>:$", first)
    if example:
        detail = lines[1].split(" Target variable:")[0] if len(lines) > 1 else ""
        shapes = re.search(r"variable\.shape=(\([^)]*\)).*value\.shape=(\([^)]*\))", detail)
        first = example.group(1).rstrip(".") + f", the first in layer {example.group(2)}"
        first += f" (the model wants shape {shapes.group(1)}, the file has {shapes.group(2)})." if shapes else "."
    elif first.endswith(":"):
        first = first[:-1] + "."
    first = first[:300]
    return first if first.endswith((".", "!", "?", ")")) else first + "."


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
    from .runtime import import_keras

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
    from .runtime import import_keras

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
    from .runtime import import_keras

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
