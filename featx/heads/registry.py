"""Heads by kind name: ``make_head("logreg", C=1.0)`` and ``load_head(folder)``."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ..errors import HeadError
from .base import _Head
from .dense import DenseHead
from .lightgbm import LightGBMHead
from .logreg import LogisticHead
from .storage import read_folder, read_manifest

# In the order of featx.heads.KINDS (tested), which the CLI reads without importing any head.
HEADS: dict[str, type[_Head]] = {"dense": DenseHead, "logreg": LogisticHead, "lightgbm": LightGBMHead}


def head_class(kind: str) -> type[_Head]:
    if kind in HEADS:
        return HEADS[kind]
    close = difflib.get_close_matches(str(kind), HEADS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise HeadError(f"Unknown head {kind!r}.{hint} Choose one of: {', '.join(HEADS)}.")


def make_head(kind: str, **params) -> _Head:
    """A head by kind name, with parameters checked against its signature."""
    cls = head_class(kind)
    allowed = cls().get_params()
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise HeadError(f"{cls.__name__} has no parameter {', '.join(bad)}. It takes: {', '.join(sorted(allowed))}.")
    return cls(**params)


def load_head(directory: str | os.PathLike) -> _Head:
    """Load a saved head; nothing in the directory is executed or unpickled."""
    d = Path(directory)
    man = read_manifest(d)
    return read_folder(head_class(man.get("kind", "?")), d, man)
