"""One description of an extraction, read by every command that touches features.

An :class:`ExtractionSpec` is resolved once, when ``featx extract`` starts,
from the user's options: the backbone, the fingerprint of the weights that
were really loaded (a file's sha256, including the ImageNet file Keras
downloaded), the input size, preprocessing, pooling, the name of the layer
that is tapped, the precision and, when it changes the numbers, the backend.
The cache key, the extraction's ``meta.json``, a head's manifest, ``predict``
and the fine-tune rebuild all read this object; none of them derives it again.

Its on-disk form is :meth:`ExtractionSpec.record`::

    {"settings": {...the fields of the key...},
     "weights_source": "imagenet" | "none" | "/path/to/file.weights.h5",
     "seed": 0,
     "versions": {"featx": ..., "keras": ..., "backend": ..., ...}}

which is what ``meta.json`` and ``manifest.json`` hold, so a spec read back
from either is the same object.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path

from . import backbones as B
from .errors import CacheError, FeatxError, FeatxValueError, HeadError, WeightsError
from .runtime import backend_name, resolve_precision

# Version 2: the tap layer, the backend for mixed precision and the ImageNet
# file's hash joined the key.
FORMAT_VERSION = 2
RESIZE = "squash-bilinear"
TAP_OUTPUT = "output"  # the backbone's own pooled output (no cut)
POOLINGS = ("avg", "max")
STORES = ("float32", "float16")  # the dtype feature rows are stored in


@dataclass(frozen=True)
class ExtractionSpec:
    """Everything besides the image bytes that decides a feature vector.

    The fields up to ``format_version`` make up the cache key; the rest say
    where the weights came from and what produced the features, and do not
    change the key (a renamed weights file with the same bytes is the same
    extraction).
    """

    backbone: str
    weights: str  # fingerprint: "sha256:...", "imagenet:sha256:...", "random:seed=0:tensorflow"
    input_size: int
    preprocessing: str
    pooling: str
    tap: str  # the layer whose output is pooled; "output" for the backbone's own pooled output
    cut_blocks: int
    precision: str
    numerics: str = ""  # the backend, where it changes the numbers (mixed precision)
    resize: str = RESIZE
    store: str = "float32"  # in the key only when not float32, so that older keys stay as they were
    format_version: int = FORMAT_VERSION
    weights_source: str = field(default="imagenet", compare=False)
    seed: int = field(default=0, compare=False)
    versions: tuple = field(default=(), compare=False)  # sorted (name, version) pairs

    @classmethod
    def key_fields(cls) -> tuple[str, ...]:
        names = [f.name for f in fields(cls)]
        return tuple(names[: names.index("format_version") + 1])

    def settings(self) -> dict:
        """The fields of the key, as a dict (``store`` only where it is not float32)."""
        return {k: getattr(self, k) for k in self.key_fields() if k != "store" or self.store != "float32"}

    @property
    def key(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        cut = f"-cut{self.cut_blocks}" if self.cut_blocks else ""
        f16 = "-f16" if self.store == "float16" else ""
        return f"{self.backbone}-{self.input_size}px-{self.pooling}{cut}{f16}-{self.key}"

    def describe(self) -> str:
        cut = f" cut{self.cut_blocks} ({self.tap})" if self.cut_blocks else ""
        f16 = " float16" if self.store == "float16" else ""
        return f"{self.backbone} {self.input_size}px {self.pooling}{cut}{f16}"

    def record(self) -> dict:
        """The JSON form stored in ``meta.json`` and in head manifests."""
        return {
            "settings": self.settings(),
            "weights_source": self.weights_source,
            "seed": self.seed,
            "versions": dict(self.versions),
        }

    @classmethod
    def from_record(cls, record: dict, where: str = "") -> "ExtractionSpec":
        """Read a spec back from a ``meta.json`` or a head manifest."""
        settings = record.get("settings") if isinstance(record, dict) else None
        names = set(cls.key_fields())
        if not isinstance(settings, dict) or not {"backbone", "weights", "input_size"} <= set(settings):
            raise CacheError(f"{where or 'This record'} has no usable extraction settings.")
        if settings.get("format_version", 1) != FORMAT_VERSION:
            raise CacheError(
                f"{where or 'This record'} was written by an older featx (cache format "
                f"{settings.get('format_version', 1)}, now {FORMAT_VERSION}). Run `featx extract` again "
                "(and refit heads on the new extraction)."
            )
        versions = record.get("versions") or {}
        return cls(
            **{k: v for k, v in settings.items() if k in names},
            weights_source=str(record.get("weights_source") or "imagenet"),
            seed=int(record.get("seed") or 0),
            versions=tuple(sorted((str(k), str(v)) for k, v in versions.items())),
        )

    def with_store(self, store: str) -> "ExtractionSpec":
        """The same extraction with its rows stored as ``store`` (another key unless it is the same)."""
        if store not in STORES:
            raise FeatxValueError(f"store must be one of {STORES}. Received: store={store!r}")
        return replace(self, store=store)

    def with_weights_source(self, source: str) -> "ExtractionSpec":
        return ExtractionSpec(**{**self.settings(), "weights_source": source, "seed": self.seed,
                                 "versions": self.versions})

    def load_weights(self, override: str | os.PathLike | None = None, hasher=None) -> B.Weights:
        """The weights to rebuild this extraction's model with.

        A weights file may have moved since the extraction: ``override``
        names its new place, and its bytes must hash to the recorded
        fingerprint.
        """
        if self.weights.startswith("random:"):
            return B.Weights("random", None, self.weights, self.seed)
        if self.weights.startswith("imagenet"):
            return B.Weights("imagenet", None, self.weights)
        path = Path(override or self.weights_source).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"The weights file of extraction {self.dirname} is no longer at {path}. "
                f"Pass --weights PATH to the file with sha256 {self.weights.removeprefix('sha256:')[:16]}..."
            )
        hasher = hasher or _sha256_file
        digest = f"sha256:{hasher(path.resolve())}"
        if digest != self.weights:
            raise WeightsError(
                f"{path} is not the weights file of extraction {self.dirname} (its sha256 differs). "
                "Pass the file the features were extracted with, or extract again with this one."
            )
        return B.Weights("file", str(path.resolve()), self.weights)


def specs_of_manifest(man: dict, where: str = "") -> list[ExtractionSpec]:
    """The specs a head reads, in its feature order: its ``extractions`` (a fused
    head has several), or the manifest's own record. A :class:`HeadError` when
    the manifest has none usable."""
    try:
        return [ExtractionSpec.from_record(r, where=where) for r in (man.get("extractions") or [man])]
    except FeatxError as exc:
        raise HeadError(f"{exc} Refit the head.") from None


def one_pass_groups(specs) -> list[list[int]]:
    """Indices of the specs one forward pass serves (the same model, weights and
    input; other taps), grouped in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(specs):
        key = (s.backbone, s.weights, s.input_size, s.preprocessing, s.pooling, s.precision, s.numerics)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _sha256_file(path) -> str:
    from .data import sha256_file

    return sha256_file(path)


def versions() -> tuple:
    """What produced the features: featx, Keras, the backend and its version, Pillow."""
    from . import __version__

    backend = backend_name()
    out = {"featx": __version__, "backend": backend}
    for dist in ("keras", {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend), "pillow"):
        if dist:
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    return tuple(sorted(out.items()))


def resolve_spec(
    cache,
    backbone: str,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int = 0,
    precision: str = "auto",
    seed: int = 0,
) -> tuple[ExtractionSpec, B.Weights]:
    """Resolve the user's options into a spec and the weights to load.

    A weights file is hashed (through the memo, so an unchanged file is not
    read again); ImageNet weights are keyed by the sha256 of the file Keras
    loads, found once per backbone and Keras version and remembered in the
    cache. A cut is keyed by the name of the tapped layer. Neither needs a
    model once it is remembered, so a warm run imports no framework.
    """
    bb = B.get_backbone(backbone)
    if pooling not in POOLINGS:
        raise FeatxValueError(f"pooling must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if not isinstance(cut_blocks, int) or cut_blocks < 0:
        raise FeatxValueError(f"cut_blocks must be an integer >= 0. Received: cut_blocks={cut_blocks!r}")
    backend = backend_name()
    memo = cache.memo()
    try:
        w = B.resolve_weights(weights, seed, file_hasher=memo.hash_file, backend=backend)
        size = B.check_input_size(bb, image_size, w)
        if w.kind == "imagenet":
            w = B.Weights("imagenet", None, _imagenet_fingerprint(cache, bb, memo))
    finally:
        memo.close()
    precision = resolve_precision(precision)
    tap = TAP_OUTPUT if cut_blocks == 0 else _tap_layer(cache, bb, size, cut_blocks)
    spec = ExtractionSpec(
        backbone=bb.name,
        weights=w.fingerprint,
        input_size=size,
        preprocessing=bb.preprocessing,
        pooling=pooling,
        tap=tap,
        cut_blocks=cut_blocks,
        precision=precision,
        numerics=backend if precision == "mixed" else "",
        weights_source=w.source,
        seed=w.seed,
        versions=versions(),
    )
    return spec, w


# --------------------------------------------------------------------------- what is remembered


def _keras_version() -> str:
    try:
        return metadata.version("keras")
    except metadata.PackageNotFoundError:
        return "unknown"


def _resolved(cache) -> dict:
    try:
        return json.loads((Path(cache.root) / "resolved.json").read_text())
    except (OSError, ValueError):
        return {}


def _remember(cache, section: str, key: str, value) -> None:
    """Best effort: a read-only cache still works, it only forgets."""
    path = Path(cache.root) / "resolved.json"
    data = _resolved(cache)
    data.setdefault(section, {})[key] = value
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _tap_layer(cache, bb: B.Backbone, size: int, cut_blocks: int) -> str:
    """The layer ``cut_blocks`` named blocks before the end (needs the graph once)."""
    key = f"{bb.name}@keras-{_keras_version()}"
    named = _resolved(cache).get("blocks", {}).get(key)
    if named is None:
        model = B.build_backbone(bb, B.Weights("random", None, "random:seed=0", 0), size, pooling=None)
        named = [[b.name, b.layer] for b in B.blocks(model, bb)]
        _remember(cache, "blocks", key, named)
    if cut_blocks >= len(named):
        raise FeatxError(
            f"{bb.name} has {len(named)} named blocks, so at most {len(named) - 1} can be cut. "
            f"Received: cut_blocks={cut_blocks}"
        )
    return named[-(cut_blocks + 1)][1]


def _imagenet_fingerprint(cache, bb: B.Backbone, memo) -> str:
    """``imagenet:sha256:<hash of the file Keras loads>``, downloading it the first time."""
    key = f"{bb.name}@keras-{_keras_version()}"
    path = _resolved(cache).get("imagenet", {}).get(key)
    if not path or not os.path.isfile(path):
        path = B.imagenet_weights_file(bb)
        _remember(cache, "imagenet", key, path)
    return f"imagenet:sha256:{memo.hash_file(path)}"


__all__ = ["ExtractionSpec", "resolve_spec", "specs_of_manifest", "one_pass_groups", "FORMAT_VERSION", "versions"]
