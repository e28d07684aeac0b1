"""Arrays checked where they enter: images (rank, channels, dtype), pixel values and scale, labels."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

_SCAN_BYTES = 64 << 20  # validate big arrays in slices of this size: never a second copy of the input


class ArrayError(DataError, ValueError):
    """Image arrays of the wrong rank, channels, dtype, values or length."""


def check_images(x, what: str):
    """An array of images (no copy of a NumPy array or memory map), or an ArrayError."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x)  # tf / torch tensors; a memory map stays one
    kind = x.dtype.kind
    if x.dtype.hasobject:
        raise ArrayError(f"{what} is an object array; pass a numeric array of images (uint8 or float). "
                         f"Received: dtype={x.dtype}")
    if kind not in "uif":
        raise ArrayError(f"{what} must hold uint8, integer or float pixels. Received: dtype={x.dtype}")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise ArrayError(
            f"{what} must have shape (N, H, W, 3) for RGB or (N, H, W) / (N, H, W, 1) for grayscale. "
            f"Received: shape={tuple(x.shape)}"
        )
    if 0 in x.shape:
        raise ArrayError(f"{what} is empty. Received: shape={tuple(x.shape)}")
    return x


def value_range(x, what: str) -> tuple[float, float]:
    """(min, max) of ``x`` read in slices; NaN or inf is an ArrayError."""
    step = max(1, _SCAN_BYTES // max(1, x[:1].nbytes))
    lo, hi = np.inf, -np.inf
    for i in range(0, len(x), step):
        part = np.asarray(x[i:i + step])
        if part.dtype.kind == "f" and not np.isfinite(part).all():
            bad = i + int(np.flatnonzero(~np.isfinite(part.reshape(len(part), -1)).all(axis=1))[0])
            raise ArrayError(f"{what} holds NaN or inf (first in row {bad}); images must be finite.")
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    return lo, hi


def scale_for(x, what: str, scale, lo_hi=None) -> float | None:
    """The factor that brings ``x`` to [0, 255]; None for uint8 (nothing to do)."""
    if scale != "auto" and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ArrayError(f"scale must be 'auto' or a positive number. Received: scale={scale!r}")
    if x.dtype == np.uint8 and scale in ("auto", 1):
        return None
    lo, hi = lo_hi or value_range(x, what)
    if scale == "auto":
        scale = 255.0 if x.dtype.kind == "f" and hi <= 1.0 else 1.0
    if lo * scale < 0 or hi * scale > 255.0 + 1e-6:
        hint = "floats in [0, 1] or [0, 255]" if x.dtype.kind == "f" else "integers in [0, 255]"
        raise ArrayError(
            f"{what} has values from {lo:g} to {hi:g}, which scale={scale:g} does not bring into [0, 255]; "
            f"pass {hint}, or scale= (e.g. scale=255/{hi:g})."
        )
    return float(scale)


def check_labels(y, n: int, what: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # keras.datasets gives (N, 1)
        y = y[:, 0]
    if y.ndim != 1:
        raise ArrayError(f"Labels of {what} must be one per image, shape (N,) or (N, 1). Received: shape={y.shape}")
    if len(y) != n:
        raise ArrayError(f"{what} has {n} images but {len(y)} labels; they must be equally long.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ArrayError(f"Labels of {what} are floats that are not whole numbers; pass integers or strings.")
        y = y.astype(np.int64)
    if y.dtype.kind == "b" or (y.dtype.kind not in "iuUSO"):
        raise ArrayError(f"Labels of {what} must be integers or strings. Received: dtype={y.dtype}")
    if y.dtype.kind in "iu" and len(y) and y.min() < 0:
        raise ArrayError(f"Integer labels of {what} must be >= 0. Received: {int(y.min())}")
    return y


class Labels:
    """Label values to class names, shared by the splits of one input."""

    def __init__(self, class_names):
        self.given = None if class_names is None else [str(c) for c in class_names]
        self.seen_ints: set[int] = set()
        self.seen_strs: set[str] = set()

    def names(self, y: np.ndarray, what: str) -> list[str]:
        if y.dtype.kind in "iu":
            ints = y.astype(np.int64)
            if self.given is not None:
                if len(ints) and ints.max() >= len(self.given):
                    raise ArrayError(f"Label {int(ints.max())} of {what} has no name: class_names has "
                                     f"{len(self.given)} entries.")
                table = np.asarray(self.given, dtype=object)
                self.seen_ints.update(np.unique(ints).tolist())
                return list(table[ints])
            self.seen_ints.update(np.unique(ints).tolist())
            return [str(v) for v in ints.tolist()]
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()]
        self.seen_strs.update(names)
        return names

    def class_names(self) -> list[str]:
        if self.seen_strs and self.seen_ints:
            raise ArrayError("Labels mix integers and strings across splits; use one kind.")
        if self.seen_ints:
            table = self.given or None
            return [table[i] if table else str(i) for i in sorted(self.seen_ints)]
        return sorted(self.seen_strs)
