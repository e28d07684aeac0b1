"""Declarative parameter checks, in the spirit of scikit-learn's ``_parameter_constraints``.

An estimator lists, for each parameter, the values it accepts: ``None``, a
type (``dict``, ``tuple``), an :class:`Interval`, :class:`Options` or
:class:`Items` (a sequence of accepted values). A value
that none of them accepts is an error naming the class, the parameter, what is
accepted and what was received::

    The 'C' parameter of LogisticHead must be a float in the range (0, inf) or None. Got 0 instead.

featx's own (a few dozen lines), because scikit-learn's lives in a private
module (``sklearn.utils._param_validation``) that may change in any release.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from .errors import FeatxValueError


@dataclass(frozen=True)
class Interval:
    """Numbers of ``type`` (``Integral`` or ``Real``) between ``left`` and ``right`` (None: unbounded).

    ``closed`` is "left", "right", "both" or "neither". A bool is never a number here.
    """

    type: type
    left: float | None
    right: float | None
    closed: str = "both"

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.type):
            return False
        if self.left is not None and (value < self.left or (value == self.left and self.closed in ("right", "neither"))):
            return False
        if self.right is not None and (value > self.right or (value == self.right and self.closed in ("left", "neither"))):
            return False
        return True

    def __str__(self) -> str:
        kind = "an int" if self.type is Integral else "a float"
        lo = "-inf" if self.left is None else self.left
        hi = "inf" if self.right is None else self.right
        left = "[" if self.closed in ("left", "both") and self.left is not None else "("
        right = "]" if self.closed in ("right", "both") and self.right is not None else ")"
        return f"{kind} in the range {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """One of a set of values (strings, usually)."""

    values: frozenset

    def __init__(self, values):
        object.__setattr__(self, "values", frozenset(values))

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return f"a str among {sorted(self.values)}"


@dataclass(frozen=True)
class Items:
    """A non-empty tuple or list whose every item ``item`` (a constraint) accepts: ``hidden=(512, 128)``."""

    item: object

    def accepts(self, value) -> bool:
        return isinstance(value, (tuple, list)) and len(value) > 0 and all(_accepts(self.item, v) for v in value)

    def __str__(self) -> str:
        return f"a non-empty tuple or list, each item {_describe(self.item)},"


def _accepts(constraint, value) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint)
    return constraint.accepts(value)


def _describe(constraint) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        return f"an instance of '{constraint.__name__}'"
    return str(constraint)


def check_params(constraints: dict, params: dict, caller: str, error: type = FeatxValueError) -> None:
    """Raise ``error`` (a ValueError) for the first parameter no constraint of its list accepts.

    Parameters without an entry in ``constraints`` are not checked.
    """
    for name, value in params.items():
        allowed = constraints.get(name)
        if allowed is None or any(_accepts(c, value) for c in allowed):
            continue
        said = [_describe(c) for c in allowed]
        expected = said[0] if len(said) == 1 else f"{', '.join(said[:-1])} or {said[-1]}"
        raise error(f"The {name!r} parameter of {caller} must be {expected}. Got {value!r} instead.")


def as_list(value) -> list[str]:
    """Names given as one comma-separated string or a sequence (``"a,b"``, ``["a", "b"]``); None is none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


__all__ = ["Interval", "Items", "Options", "as_list", "check_params", "Integral", "Real"]
