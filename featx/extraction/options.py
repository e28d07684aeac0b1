"""Every option of an extraction, in one frozen object checked once.

:func:`featx.extract` builds an :class:`ExtractOptions` from its keyword
arguments, and so should the CLI: a bad value is refused here, with the
message the Python API has always given, and nowhere else. The choices and
ranges are data on the class (``ExtractOptions.CHOICES["pooling"]``,
``ExtractOptions.IMAGE_SIZES``), so that a command line can offer them
without keeping copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import ClassVar

from .. import backbones as B
from ..errors import DataError, FeatxValueError
from ..runtime import PRECISIONS, check_precision, resolve_precision
from ..spec import POOLINGS, STORES, TTAS, ExtractionSpec, check_settings, check_store, one_pass_groups

ENGINES = ("local", "ray")
# Where JPEGs are decoded (featx.extraction.gpu_decode); how pixels are made, not part of the key.
DECODES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class ExtractOptions:
    """The options of one extraction (see :func:`featx.extract` for each one's meaning).

    Checked on construction: an invalid value raises the
    :class:`~featx.errors.FeatxError` (a ``ValueError`` where it is about a
    value) that ``featx.extract`` raises for it. ``taps`` and ``spec`` are
    kept as tuples.

    Examples
    --------
    >>> ExtractOptions(backbone="vgg16", image_size=64).cuts
    (0,)
    >>> ExtractOptions.CHOICES["tta"]
    ('none', 'flip')
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "pooling": POOLINGS,
        "precision": PRECISIONS,
        "store": STORES,
        "tta": TTAS,
        "engine": ENGINES,
        "decode": DECODES,
    }
    IMAGE_SIZES: ClassVar[tuple[int, int]] = B.IMAGE_SIZE_RANGE  # px, inclusive

    backbone: str = "resnet50"
    weights: str | os.PathLike | None = "imagenet"
    image_size: int | None = None
    pooling: str = "avg"
    cut_blocks: int = 0
    taps: tuple[int, ...] | None = None
    batch_size: int | None = None
    cache_dir: str | os.PathLike | None = None
    strict: bool = False
    workers: int | None = None
    precision: str = "auto"
    seed: int = 0
    progress: bool = True
    record: bool = True
    spec: tuple[ExtractionSpec, ...] | None = None
    engine: str = "local"
    address: str | None = None
    num_gpus_per_worker: float = 0
    name: str | None = None
    class_names: tuple[str, ...] | None = None
    scale: str | float = "auto"
    store: str = "float32"
    tta: str = "none"
    decode: str = "auto"

    def __post_init__(self):
        if self.taps is not None:
            object.__setattr__(self, "taps", tuple(self.taps))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.spec is not None:
            object.__setattr__(self, "spec", tuple(self.spec) if isinstance(self.spec, (list, tuple)) else (self.spec,))
        self._check_run()
        self._check_engine()
        self._check_taps()
        if self.spec is None:
            self._check_model()
        else:
            self._check_specs()

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in :func:`featx.extract`'s order."""
        return tuple(f.name for f in fields(cls))

    # -- checks, one concern each
    def _check_run(self) -> None:
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise DataError(f"batch_size must be an integer >= 1. Received: batch_size={self.batch_size!r}")
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise DataError(f"workers must be an integer >= 1. Received: workers={self.workers!r}")
        check_precision(self.precision)
        check_store(self.store)

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise DataError(f"engine must be 'local' or 'ray'. Received: engine={self.engine!r}")
        gpus = self.num_gpus_per_worker
        if self.engine == "local":
            if self.address is not None or gpus:
                raise DataError("address and num_gpus_per_worker apply to engine='ray' only (--engine ray).")
        elif isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0:
            raise DataError(f"num_gpus_per_worker must be a number >= 0. Received: num_gpus_per_worker={gpus!r}")
        if self.decode not in DECODES:
            raise FeatxValueError(f"decode must be 'auto', 'cpu' or 'gpu'. Received: decode={self.decode!r}")
        if self.remote and self.decode == "gpu":
            raise DataError("--decode gpu applies to the local engine: --engine ray decodes on the CPU only "
                            "(--decode cpu or auto).")

    def _check_taps(self) -> None:
        if self.taps is None:
            return
        if self.cut_blocks:
            raise DataError("Pass cut_blocks or taps, not both (--cut-blocks K is --taps K).")
        cuts = [int(t) for t in self.taps]
        if not cuts or min(cuts) < 0 or len(set(cuts)) != len(cuts):
            raise DataError(f"taps must be distinct block counts >= 0, e.g. 0,1,2. Received: taps={list(self.taps)!r}")
        object.__setattr__(self, "taps", tuple(cuts))

    def _check_model(self) -> None:
        """The options that resolve into a spec (the weights and the tap layer are resolved later)."""
        bb = B.get_backbone(self.backbone)
        check_settings(self.pooling, self.cut_blocks, self.tta)
        B.check_input_size(bb, self.image_size)

    def _check_specs(self) -> None:
        if not self.spec or not all(isinstance(s, ExtractionSpec) for s in self.spec):
            raise FeatxValueError(f"spec must be an ExtractionSpec or a list of them. Received: spec={self.spec!r}")
        if len(one_pass_groups(self.spec)) != 1:
            raise DataError("Specs extracted together must differ only in their tap.")

    # -- what the options decide
    @property
    def cuts(self) -> tuple[int, ...]:
        """The block counts to tap, the first one first (``taps``, else ``(cut_blocks,)``)."""
        return self.taps if self.taps is not None else (self.cut_blocks,)

    @property
    def remote(self) -> bool:
        return self.engine == "ray"

    def compute_precision(self) -> str:
        """``precision`` with ``auto`` decided by the devices that compute: this process's
        GPU locally; on Ray the workers', which is whether they ask for GPUs."""
        if self.remote and self.precision == "auto":
            return "mixed" if self.num_gpus_per_worker else "float32"
        return resolve_precision(self.precision)

    def weights_override(self) -> str | os.PathLike | None:
        """With recorded specs: the new place of a moved weights file, if ``weights`` names one."""
        return None if self.weights in (None, "imagenet", "none") else self.weights
