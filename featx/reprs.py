"""Short reprs for results that hold one row per image (pandas-style: the shape, then a few rows)."""

from __future__ import annotations

from typing import Sequence

SHOWN = 2  # rows shown at each end


def ends(items: Sequence, n: int = SHOWN, under: str | None = None) -> str:
    """``[a, b, ..., y, z] (N)``: the first and last ``n`` items of a long list, with its length.

    Paths under the folder ``under`` are shown relative to it.
    """
    items = [str(i) for i in items]
    prefix = under.rstrip("/") + "/" if under else None
    if prefix and items and all(i.startswith(prefix) for i in items):
        items = [i[len(prefix):] for i in items]
    if len(items) <= 2 * n:
        return "[" + ", ".join(items) + "]"
    return "[" + ", ".join(items[:n] + ["..."] + items[-n:]) + f"] ({len(items)})"


def block(name: str, lines: Sequence[str]) -> str:
    """``Name(first line`` then indented lines and ``)``: one field per line."""
    lines = [ln for ln in lines if ln]
    return f"{name}(" + "\n  ".join([lines[0], *lines[1:]]) + ")" if lines else f"{name}()"
