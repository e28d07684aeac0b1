"""Which weights a backbone loads, their fingerprint for cache keys, and one-line errors about them.

Re-exported by :mod:`featx.backbones`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from .registry import Backbone

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
            from ..runtime import backend_name

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
        from ..datasets import sha256_file as file_hasher
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
            from ..runtime import keras_cache_dir

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
