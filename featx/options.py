"""One options object per command: what ``fit-head``, ``predict`` and ``compare`` accept, checked once.

Each command's settings are a frozen dataclass. Its fields carry their
constraints (``Interval`` and :class:`OneOf`, see :mod:`featx.params`) in the
field metadata; ``__post_init__`` checks every field against them, so an
options object that exists is a valid one. The Python API
(:func:`featx.fit_head`, :func:`featx.predict`, :func:`featx.compare`) and the
CLI both build these objects; the CLI also reads its choices and ranges from
them (:func:`constraint`), so the two never disagree.

This module imports no scikit-learn: the head kinds are read from the heads
registry (:data:`featx.heads.HEADS`) the first time they are asked for, so
``featx --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Callable, Sequence

from .errors import HeadParamError
from .normalise import NORMALISATIONS
from .params import Interval, check_params

# The selection protocols of featx.selection (cv_protocol, val_protocol), and "auto": val when the data has one.
SELECTIONS = ("auto", "cv", "val")
SEED_RANGE = (0, 2**32 - 1)


class OneOf:
    """One of an ordered set of strings; ``values`` may be a function, read when first asked for."""

    def __init__(self, values: Sequence[str] | Callable[[], Sequence[str]]):
        self._values = values

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self._values() if callable(self._values) else self._values)

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return f"one of {', '.join(map(repr, self.values))}"


def head_kinds() -> tuple[str, ...]:
    """The head kinds of the heads registry, in its order.

    Read from :data:`featx.heads.KINDS`, which a test keeps equal to the
    registry, so that ``featx fit-head --help`` imports no scikit-learn.
    """
    from . import heads

    return tuple(heads.KINDS)


HEAD_KIND = OneOf(head_kinds)
HEAD_OR_AUTO = OneOf(lambda: (*head_kinds(), "auto"))
SELECTION = OneOf(SELECTIONS)
NORMALISE = OneOf(NORMALISATIONS)
SEED = Interval(Integral, *SEED_RANGE, closed="both")
POSITIVE_INT = Interval(Integral, 1, None, closed="left")
FOLDS = Interval(Integral, 2, None, closed="left")
VAL_SPLIT = Interval(Real, 0, 1, closed="neither")
POSITIVE_REAL = Interval(Real, 0, None, closed="neither")
PATH = (str, os.PathLike)


def _opt(default=None, *allowed):
    """A field with its default and the constraints a value must meet (one of them)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"allowed": allowed})
    return field(default=default, metadata={"allowed": allowed})


def constraint(cls, name: str, kind: type | None = None):
    """The first constraint of ``cls``'s field ``name`` (an instance of ``kind`` when given).

    The CLI builds its option types from these (see ``featx.cli.types.option_type``).
    """
    for f in fields(cls):
        if f.name == name:
            allowed = f.metadata.get("allowed", ())
            return [c for c in allowed if c is not None and (kind is None or isinstance(c, kind))][0]
    raise KeyError(name)


class _Checked:
    """Checks every field against its constraints; a field of a sequence type is checked item by item."""

    def __post_init__(self):
        for f in fields(self):
            allowed = f.metadata.get("allowed")
            if not allowed:
                continue
            value = getattr(self, f.name)
            items = [value]
            if isinstance(value, (list, tuple)) and any(c in (list, tuple) for c in allowed):
                items = list(value)
                allowed = [c for c in allowed if c not in (list, tuple)]
            for item in items:
                self._check(f.name, item, allowed)

    def _check(self, name: str, value, allowed) -> None:
        check_params({name: list(allowed)}, {name: value}, type(self).__name__, error=HeadParamError)

    def kwargs(self) -> dict:
        """The fields as keyword arguments of the API function of the same name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def name_list(value) -> list[str]:
    """None, "a,b" or a sequence -> a list of names."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


@dataclass(frozen=True)
class FitHeadOptions(_Checked):
    """Everything ``fit_head`` (and ``featx fit-head``) is told: see :func:`featx.fit_head` for each field.

    ``params`` holds the head's own parameters (``hidden``, ``C``,
    ``normalise``...); the head checks them against its own constraints.
    An unknown head kind is a :class:`~featx.errors.HeadError` that suggests
    the closest kind; a bad value is a :class:`~featx.errors.HeadParamError`.
    """

    head: str = _opt("dense", HEAD_OR_AUTO)
    data: str | os.PathLike | None = _opt(None, None, *PATH)
    backbone: str | Sequence[str] | None = _opt(None, None, str, list, tuple)
    extraction: str | Sequence[str] | None = _opt(None, None, str, list, tuple)
    cache_dir: str | os.PathLike | None = _opt(None, None, *PATH)
    out: str | os.PathLike | None = _opt(None, None, *PATH)
    seed: int = _opt(0, SEED)
    selection: str = _opt("auto", SELECTION)
    folds: int = _opt(5, FOLDS)
    val_split: float = _opt(0.2, VAL_SPLIT)
    refit_all: bool = _opt(False, bool)
    class_weight: str | dict | None = _opt(None, None, OneOf(("balanced",)), dict)
    top_k: int = _opt(5, POSITIVE_INT)
    time_budget: float | None = _opt(None, None, POSITIVE_REAL)
    auto_heads: tuple[str, ...] = _opt(("logreg", "lightgbm", "dense"), list, tuple, HEAD_KIND)
    home: str | os.PathLike | None = _opt(None, None, *PATH)
    calibrate: bool = _opt(False, bool)
    params: dict = _opt({}, dict)

    def __post_init__(self):
        object.__setattr__(self, "auto_heads", tuple(self.auto_heads))
        object.__setattr__(self, "params", dict(self.params))
        from .heads import head_class

        # An unknown kind gets the registry's close-match suggestion, before any other check.
        for kind in self.auto_heads if self.auto else [self.head]:
            head_class(kind)
        if self.selection not in SELECTIONS:  # the message predates this object
            raise HeadParamError(f"selection must be 'auto', 'cv' or 'val'. Received: selection={self.selection!r}")
        super().__post_init__()

    @property
    def auto(self) -> bool:
        return self.head == "auto"

    @property
    def extractions(self) -> list[str]:
        return name_list(self.extraction)

    @property
    def backbones(self) -> list[str]:
        return name_list(self.backbone)


@dataclass(frozen=True)
class PredictOptions(_Checked):
    """Everything ``predict`` (and ``featx predict --head``) is told: see :func:`featx.predict`."""

    data: object = None
    head: str | os.PathLike | None = _opt(None, None, *PATH)
    cache_dir: str | os.PathLike | None = _opt(None, None, *PATH)
    batch_size: int = _opt(32, POSITIVE_INT)
    progress: bool = _opt(True, bool)
    weights: str | os.PathLike | None = _opt(None, None, *PATH)
    home: str | os.PathLike | None = _opt(None, None, *PATH)
    split: str | None = _opt(None, None, str)
    scale: str | float = _opt("auto", OneOf(("auto",)), Real)


@dataclass(frozen=True)
class CompareOptions(_Checked):
    """Everything ``compare`` (and ``featx compare``) is told: see :func:`featx.compare`."""

    data: str | os.PathLike | None = _opt(None, None, *PATH)
    cache_dir: str | os.PathLike | None = _opt(None, None, *PATH)
    heads: tuple[str, ...] = _opt(("dense", "logreg", "lightgbm"), list, tuple, HEAD_KIND)
    out: str | os.PathLike | None = _opt(None, None, *PATH)
    seed: int = _opt(0, SEED)
    selection: str = _opt("auto", SELECTION)
    folds: int = _opt(5, FOLDS)
    val_split: float = _opt(0.2, VAL_SPLIT)
    home: str | os.PathLike | None = _opt(None, None, *PATH)

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(self.heads))
        from .heads import head_class

        for kind in self.heads:
            head_class(kind)
        super().__post_init__()


__all__ = ["FitHeadOptions", "PredictOptions", "CompareOptions", "OneOf", "constraint", "SELECTIONS", "NORMALISATIONS"]
