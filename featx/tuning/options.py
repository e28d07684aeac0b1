"""What a fine-tuning run is asked to do: one frozen, validated options object.

:class:`FinetuneOptions` is built by the Python API (:func:`featx.finetune`)
and meant to be built by the CLI too; its class attributes (``OPTIMIZERS``,
``AUGMENTATIONS``, ``AUGMENT_DEFAULTS``...) are the choices and ranges the
CLI offers. Every value is checked once, in ``__post_init__``, before a
model is built or an image read. What depends on the data (how much to
unfreeze, which augmentation) is chosen later by :func:`default_unfreeze_blocks`
and :func:`default_augment`, from the number of training images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from ..errors import FeatxError


class FinetuneError(FeatxError):
    """Fine-tuning cannot start or cannot be trusted (parity check failed...)."""


AUGMENTATIONS = ("flip", "crop", "rotate", "zoom", "shift", "contrast")
AUGMENT_DEFAULTS = {"flip": 1.0, "crop": 0.35, "rotate": 0.05, "zoom": 0.1, "shift": 0.1, "contrast": 0.1}
# The aspect ratios a random-resized crop draws from (log-uniformly), as in torchvision.
CROP_RATIO = (3 / 4, 4 / 3)

# (fewer training images than, unfreeze blocks, augmentation): docs/finetune.md's table
BY_SIZE = (
    (1_000, 1, "flip,crop"),
    (10_000, 2, "flip,crop,rotate"),
    (math.inf, 3, "flip,crop,rotate,shift,contrast"),
)


def parse_augment(spec: str | Sequence[str] | None) -> dict[str, float]:
    """``"flip,rotate=0.1,crop"`` -> {"flip": 1, "rotate": 0.1, "crop": 0.35}; ``"none"`` -> {}.

    ``crop=s`` is a random-resized crop keeping between ``1 - s`` and all of
    the image's area, at an aspect ratio in ``CROP_RATIO``.
    """
    if not spec:
        return {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = {}
    for item in (i.strip() for i in items if i.strip()):
        name, _, value = item.partition("=")
        if name == "none" and not value and len(items) == 1:
            return {}
        if name not in AUGMENT_DEFAULTS:
            raise FinetuneError(f"Unknown augmentation {name!r}. Choose from {', '.join(AUGMENTATIONS)} or none "
                                "(e.g. --augment flip,rotate=0.1,crop=0.3).")
        try:
            out[name] = float(value) if value else AUGMENT_DEFAULTS[name]
        except ValueError:
            raise FinetuneError(f"Augmentation strength must be a number: {item!r}") from None
        limit = 0.9 if name == "crop" else 1.0  # a crop keeps at least a tenth of the image
        if not 0 < out[name] <= limit:  # also refuses nan
            raise FinetuneError(f"Augmentation strength must be in (0, {limit:g}]: {item!r}")
    return out


def default_unfreeze_blocks(n_train: int) -> int:
    """How many named blocks to unfreeze for ``n_train`` training images (docs/finetune.md)."""
    return next(blocks for limit, blocks, _ in BY_SIZE if n_train < limit)


def default_augment(n_train: int) -> dict[str, float]:
    """The augmentation for ``n_train`` training images (docs/finetune.md)."""
    return parse_augment(next(aug for limit, _, aug in BY_SIZE if n_train < limit))


def size_band(n_train: int) -> str:
    """``"under 1,000"``, ``"1,000 - 10,000"`` or ``"over 10,000"`` training images."""
    lower = 0
    for limit, _, _ in BY_SIZE:
        if n_train < limit:
            break
        lower = limit
    if lower == 0:
        return f"under {BY_SIZE[0][0]:,}"
    return f"over {lower:,}" if limit == math.inf else f"{lower:,} - {limit:,}"


@dataclass(frozen=True)
class FinetuneOptions:
    """The settings of one fine-tuning run, checked once.

    Parameters
    ----------
    unfreeze : int or "all", optional
        The backbone's last N layers with weights (BatchNorm excluded), or all.
    unfreeze_blocks : int, optional
        The backbone's last K named blocks. With neither, chosen by the number
        of training images (:func:`default_unfreeze_blocks`).
    epochs, batch_size : int >= 1
    lr : float > 0
        The learning rate of the head and of the top unfrozen block.
    lr_decay : float in (0, 1]
        Discriminative learning rates: the k-th unfrozen block below the top
        one trains at ``lr * lr_decay**k`` (1 trains all at ``lr``).
    optimizer : {"adam", "sgd", "rmsprop"}
    augment : str, sequence or None
        ``"flip,crop=0.3,rotate=0.1"``; None chooses by data size
        (:func:`default_augment`), ``"none"`` turns it off.
    class_weight : None or "balanced"
    patience : int >= 0
        EarlyStopping patience on validation loss.
    warmup_epochs : int >= 0, optional
        Epochs that train the head alone (backbone frozen) first. None: one,
        unless the starting head was fitted on exactly the training rows.
    seed : int
    export : bool
        Also write a SavedModel (``model.export``).
    workers : int, optional
        Decode threads.
    """

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "sgd", "rmsprop")
    CLASS_WEIGHTS: ClassVar[tuple[str, ...]] = ("balanced",)
    AUGMENTATIONS: ClassVar[tuple[str, ...]] = AUGMENTATIONS
    AUGMENT_DEFAULTS: ClassVar[dict] = AUGMENT_DEFAULTS
    DEFAULT_LR_DECAY: ClassVar[float] = 0.5

    unfreeze: int | str | None = None
    unfreeze_blocks: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-5
    lr_decay: float = 0.5
    optimizer: str = "adam"
    augment: str | Sequence[str] | None = None
    class_weight: str | None = None
    patience: int = 3
    warmup_epochs: int | None = None
    seed: int = 0
    export: bool = True
    workers: int | None = None
    augmentation: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        def bad(name, want):
            raise FinetuneError(f"{name} must be {want}. Received: {name}={getattr(self, name)!r}")

        def is_int(value):
            return isinstance(value, int) and not isinstance(value, bool)

        for name in ("epochs", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if not is_int(self.patience) or self.patience < 0:
            bad("patience", "an integer >= 0")
        if self.warmup_epochs is not None and (not is_int(self.warmup_epochs) or self.warmup_epochs < 0):
            bad("warmup_epochs", "None or an integer >= 0")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            bad("lr", "a positive number")
        if not isinstance(self.lr_decay, (int, float)) or not 0 < self.lr_decay <= 1:  # also refuses nan
            bad("lr_decay", "a number in (0, 1]")
        if self.optimizer not in self.OPTIMIZERS:
            bad("optimizer", f"one of {', '.join(self.OPTIMIZERS)}")
        if self.class_weight not in (None, *self.CLASS_WEIGHTS):
            bad("class_weight", "None or 'balanced'")
        if self.unfreeze is not None and self.unfreeze_blocks is not None:
            raise FinetuneError("Pass --unfreeze or --unfreeze-blocks, not both.")
        if self.unfreeze is not None and self.unfreeze != "all" and (not is_int(self.unfreeze) or self.unfreeze < 1):
            bad("unfreeze", "a number of layers >= 1 or 'all'")
        if self.unfreeze_blocks is not None and (not is_int(self.unfreeze_blocks) or self.unfreeze_blocks < 1):
            bad("unfreeze_blocks", "an integer >= 1")
        if self.workers is not None and (not is_int(self.workers) or self.workers < 1):
            bad("workers", "None or an integer >= 1")
        object.__setattr__(self, "augmentation", parse_augment(self.augment))

    @property
    def unfreeze_by_default(self) -> bool:
        """Neither ``unfreeze`` nor ``unfreeze_blocks`` was given: chosen by data size."""
        return self.unfreeze is None and self.unfreeze_blocks is None

    def augment_for(self, n_train: int) -> dict[str, float]:
        """The augmentation asked for, or the default for ``n_train`` training images."""
        return default_augment(n_train) if self.augment is None else self.augmentation
