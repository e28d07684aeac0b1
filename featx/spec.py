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
     "loaded_weights": "sha256:...",
     "versions": {"featx": ..., "keras": ..., "backend": ..., ...}}

which is what ``meta.json`` and ``manifest.json`` hold, so a spec read back
from either is the same object.

``loaded_weights`` is a hash over the weight arrays of the backbone as Keras
built and loaded it (:func:`featx.backbones.loaded_fingerprint`). Every
model featx builds for an extraction (to extract, predict or fine-tune) is
checked against it: the same weights file on another backend, another
Keras, or ImageNet weights replaced in Keras' cache would give other
features under the same key, and are refused instead (one line saying what
differs). Records from before it was kept have none, and are not checked.
ImageNet weights are keyed by this hash too: Keras publishes no API that
names the file it loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path

from . import backbones as B
from .errors import CacheError, FeatxError, FeatxValueError, HeadError, WeightsError, WeightsMismatch
from .runtime import backend_name, resolve_precision

# Version 2: the tap layer, the backend for mixed precision and the ImageNet
# file's hash joined the key.
FORMAT_VERSION = 2
RESIZE = "squash-bilinear"
TAP_OUTPUT = "output"  # the backbone's own pooled output (no cut)
POOLINGS = B.POOLINGS
TTAS = B.TTAS
STORES = ("float32", "float16")  # the dtype feature rows are stored in
# Marks the key fields that differ between the outputs one forward pass fills
# (its taps, each stored as it chooses); the other key fields are the pass's.
PER_OUTPUT = {"per_output": True}


@dataclass(frozen=True)
class ExtractionSpec:
    """Everything besides the image bytes that decides a feature vector.

    The fields up to ``format_version`` make up the cache key; the rest say
    where the weights came from and what produced the features, and do not
    change the key (a renamed weights file with the same bytes is the same
    extraction).
    """

    backbone: str
    weights: str  # fingerprint: "sha256:...", "imagenet:loaded-sha256:...", "random:seed=0:tensorflow"
    input_size: int
    preprocessing: str
    pooling: str
    tap: str = field(metadata=PER_OUTPUT)  # the layer whose output is pooled; "output": the backbone's own
    cut_blocks: int = field(metadata=PER_OUTPUT)
    precision: str
    numerics: str = ""  # the backend, where it changes the numbers (mixed precision)
    resize: str = RESIZE
    store: str = field(default="float32", metadata=PER_OUTPUT)  # in the key only when not float32, so that older keys stay
    tta: str = "none"  # in the key only when not "none", as store; a different forward pass
    format_version: int = FORMAT_VERSION
    weights_source: str = field(default="imagenet", compare=False)
    seed: int = field(default=0, compare=False)
    versions: tuple = field(default=(), compare=False)  # sorted (name, version) pairs
    loaded: str = field(default="", compare=False)  # hash of the weight arrays as built; "" when not known

    @classmethod
    def key_fields(cls) -> tuple[str, ...]:
        names = [f.name for f in fields(cls)]
        return tuple(names[: names.index("format_version") + 1])

    @classmethod
    def pass_fields(cls) -> tuple[str, ...]:
        """The key fields one forward pass shares: all but those marked :data:`PER_OUTPUT`."""
        return tuple(f.name for f in fields(cls) if f.name in cls.key_fields() and not f.metadata.get("per_output"))

    def settings(self) -> dict:
        """The fields of the key, as a dict (``store`` and ``tta`` only where they are not the default)."""
        defaults = {"store": "float32", "tta": "none"}
        return {k: getattr(self, k) for k in self.key_fields() if getattr(self, k) != defaults.get(k, ...)}

    @property
    def key(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        cut = f"-cut{self.cut_blocks}" if self.cut_blocks else ""
        f16 = "-f16" if self.store == "float16" else ""
        flip = "-flip" if self.tta == "flip" else ""
        return f"{self.backbone}-{self.input_size}px-{self.pooling.replace(',', '')}{cut}{f16}{flip}-{self.key}"

    def describe(self) -> str:
        cut = f" cut{self.cut_blocks} ({self.tap})" if self.cut_blocks else ""
        f16 = " float16" if self.store == "float16" else ""
        flip = " tta-flip" if self.tta == "flip" else ""
        return f"{self.backbone} {self.input_size}px {self.pooling}{cut}{f16}{flip}"

    def record(self) -> dict:
        """The JSON form stored in ``meta.json`` and in head manifests."""
        out = {
            "settings": self.settings(),
            "weights_source": self.weights_source,
            "seed": self.seed,
            "versions": dict(self.versions),
        }
        if self.loaded:
            out["loaded_weights"] = self.loaded
        return out

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
            loaded=str(record.get("loaded_weights") or ""),
        )

    def with_store(self, store: str) -> "ExtractionSpec":
        """The same extraction with its rows stored as ``store`` (another key unless it is the same)."""
        check_store(store)
        return replace(self, store=store)

    def with_weights_source(self, source: str) -> "ExtractionSpec":
        return dataclasses.replace(self, weights_source=source)

    def check_rebuildable(self) -> None:
        """Refuse a spec whose resizing or preprocessing this featx cannot reproduce.

        Both are read from the spec, never from today's registry: a family
        whose preprocessing changed in the registry still rebuilds the
        extraction's own.
        """
        if self.resize != RESIZE:
            raise FeatxError(
                f"Extraction {self.dirname} resized its images by {self.resize!r}; this featx resizes by "
                f"{RESIZE!r} only. Use the featx that made it, or extract again."
            )
        if self.preprocessing not in B.PREPROCESSING_MODES:
            raise FeatxError(
                f"Extraction {self.dirname} preprocessed its images by {self.preprocessing!r}, which this featx "
                f"does not know ({', '.join(B.PREPROCESSING_MODES)}). Use the featx that made it, or extract again."
            )

    def check_loaded(self, loaded: str) -> None:
        """Refuse a rebuilt backbone whose weights are not the ones this extraction recorded.

        Says in one line what differs from the recorded versions (backend,
        Keras, the backend's own version), or, where none does, the weights.
        """
        if not self.loaded or not loaded or loaded == self.loaded:
            return
        then, now = dict(self.versions), dict(versions())
        labels = {"backend": "backend", "keras": "Keras", "tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
        changed = [f"{label} {then[k]} then, {now.get(k, 'none')} now" for k, label in labels.items()
                   if k in then and then[k] != now.get(k)]
        if not changed:
            kind = self.weights.split(":", 1)[0]
            changed = [{"imagenet": "the ImageNet weights file in Keras' cache was replaced",
                        "random": "the random initialisation differs on this machine",
                        }.get(kind, f"the weights file {self.weights_source} loads differently")]
        raise WeightsMismatch(
            f"The rebuilt {self.backbone} does not have the weights extraction {self.dirname} was made with "
            f"(loaded weights {loaded.removeprefix('sha256:')[:12]} now, {self.loaded.removeprefix('sha256:')[:12]} "
            f"then): {'; '.join(changed)}. Use the recorded setup, or `featx cache rm {self.dirname}` and extract "
            "again (and refit its heads)."
        )

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
    """Indices of the specs one forward pass serves (equal in every
    :meth:`~ExtractionSpec.pass_fields` field: the same model, weights and
    input; other taps), grouped in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(specs):
        key = tuple(getattr(s, name) for name in s.pass_fields())
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _sha256_file(path) -> str:
    from .datasets import sha256_file

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


def check_store(store: str) -> None:
    if store not in STORES:
        raise FeatxValueError(f"store must be one of {STORES}. Received: store={store!r}")


def check_settings(pooling: str, cut_blocks: int, tta: str = "none") -> None:
    """The one check of the spec's own options (``ExtractOptions`` and :func:`resolve_spec` call it)."""
    if pooling not in POOLINGS:
        raise FeatxValueError(f"pooling must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if tta not in TTAS:
        raise FeatxValueError(f"tta must be one of {TTAS}. Received: tta={tta!r}")
    if not isinstance(cut_blocks, int) or cut_blocks < 0:
        raise FeatxValueError(f"cut_blocks must be an integer >= 0. Received: cut_blocks={cut_blocks!r}")


def resolve_spec(
    cache,
    backbone: str,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int = 0,
    precision: str = "auto",
    seed: int = 0,
    tta: str = "none",
) -> tuple[ExtractionSpec, B.Weights]:
    """Resolve the user's options into a spec and the weights to load.

    A weights file is hashed (through the memo, so an unchanged file is not
    read again); ImageNet weights are keyed by the hash of the arrays Keras
    loads, found once per backbone, input size, Keras version and backend and
    remembered in the cache until Keras' download folder changes. A cut is
    keyed by the name of the tapped layer. Neither needs a model once it is
    remembered, so a warm run imports no framework.
    """
    bb = B.get_backbone(backbone)
    check_settings(pooling, cut_blocks, tta)
    backend = backend_name()
    memo = cache.memo()
    try:
        w = B.resolve_weights(weights, seed, file_hasher=memo.hash_file, backend=backend)
        size = B.check_input_size(bb, image_size, w)
    finally:
        memo.close()
    # Other weights get their hash when a model is first built for the extraction (note_loaded).
    loaded = ""
    if w.kind == "imagenet":
        loaded = _imagenet_loaded(cache, bb, size, backend)
        w = B.Weights("imagenet", None, f"imagenet:loaded-{loaded}")
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
        tta=tta,
        weights_source=w.source,
        seed=w.seed,
        versions=versions(),
        loaded=loaded,
    )
    return spec, w


def note_loaded(extraction, loaded: str) -> None:
    """After a model was built to extract into ``extraction``: check and record its weights' hash.

    An extraction that recorded one must match it (one from before featx
    recorded it is not checked); a new extraction records it in its
    meta.json, written with its first shard.
    """
    parts = getattr(extraction, "parts", None) or ([extraction] if extraction is not None else [])
    for ext in parts:
        if ext.meta.get("loaded_weights"):
            ext.spec.check_loaded(loaded)
        elif ext.unsaved:
            ext.meta["loaded_weights"] = loaded


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


@contextlib.contextmanager
def _resolved_lock(cache):
    """Exclusive right to rewrite resolved.json (released by the kernel if we die).

    Without it two resolvers would each read the file, add their entry and
    replace it, and the later one would drop the earlier one's entry. A cache
    where the lock file cannot be made is read-only: nothing is written there.
    """
    try:
        fh = open(Path(cache.root) / ".resolved.lock", "a+b")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remember(cache, section: str, key: str, value) -> None:
    """Best effort: a read-only cache still works, it only forgets."""
    path = Path(cache.root) / "resolved.json"
    with _resolved_lock(cache):
        data = _resolved(cache)  # read under the lock: another resolver may have added its entry
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


def _loaded_key(weights: str, backbone: str, size: int, backend: str) -> str:
    # The input size matters: MobileNet's ImageNet file depends on it.
    return f"{weights}|{backbone}|{size}px|keras-{_keras_version()}|{backend}"


def _imagenet_loaded(cache, bb: B.Backbone, size: int, backend: str) -> str:
    """The hash of ``bb``'s ImageNet weights as Keras loads them, building the model the first time.

    Remembered per backbone, input size, Keras version and backend, with the
    state of Keras' download folder: a file added or replaced there makes
    the next resolve build the model again, so a replaced ImageNet file gets
    a key of its own.
    """
    from .runtime import keras_cache_dir

    key = _loaded_key("imagenet", bb.name, size, backend)
    folder = _folder_state(keras_cache_dir("models"))
    entry = _resolved(cache).get("imagenet-loaded", {}).get(key)
    if isinstance(entry, dict) and entry.get("models") == folder and entry.get("loaded"):
        return entry["loaded"]
    model = B.build_backbone(bb, B.Weights("imagenet", None, "imagenet"), size)
    loaded = B.loaded_fingerprint(model)
    _remember(cache, "imagenet-loaded", key, {"loaded": loaded, "models": _folder_state(keras_cache_dir("models"))})
    return loaded


def _folder_state(folder: str) -> str:
    """A short hash of the names, sizes and mtimes of the files in ``folder`` ("" when absent)."""
    try:
        with os.scandir(folder) as it:
            rows = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
    except OSError:
        return ""
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


__all__ = ["ExtractionSpec", "resolve_spec", "note_loaded", "specs_of_manifest", "one_pass_groups", "FORMAT_VERSION",
           "versions"]
