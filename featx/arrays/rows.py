"""One array of images as dataset rows: canonical uint8 pixels, their cache key and their resizing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..datasets import ImageItem

from ..decode import _target_size
from .checks import ArrayError

LAYOUT = "arrays"
ANONYMOUS = "<arrays>"  # replaced by arrays:<hash> when the view is recorded


class Rows:
    """One array of images and how its rows become RGB uint8 pixels.

    ``x`` may be a memory map: a row is read only when it is needed.
    """

    def __init__(self, x, scale: float | None):
        self.x = x
        self.scale = scale  # None: integers taken as they are

    def __len__(self) -> int:
        return len(self.x)

    def canonical(self, i: int) -> np.ndarray:
        """Row ``i`` as contiguous uint8, shape (H, W, C) with C 1 or 3."""
        row = np.asarray(self.x[i])
        if self.scale is not None:
            row = np.clip(np.rint(row.astype(np.float64) * self.scale), 0, 255)
        row = np.ascontiguousarray(row, dtype=np.uint8)
        return row[..., None] if row.ndim == 2 else row

    def release(self, i: int) -> None:
        """Row ``i`` will not be read again (streamed batches free themselves)."""


class BatchRows(Rows):
    """One streamed batch: dropped once each of its rows has been read."""

    def __init__(self, x, scale):
        super().__init__(x, scale)
        self._left = len(x)
        self._n = len(x)

    def __len__(self) -> int:
        return self._n

    def canonical(self, i: int) -> np.ndarray:
        if self.x is None:
            raise ArrayError("This stream of batches was read already, and a stream is read once: pass a new "
                             "stream, or arrays (x, (x, y) or an .npz file), to read the images again.")
        return super().canonical(i)

    def release(self, i: int) -> None:
        self._left -= 1  # under the GIL; a lost decrement only delays freeing the batch
        if self._left <= 0:
            self.x = None


def row_key(pixels: np.ndarray) -> str:
    """sha256 of canonical uint8 pixels (H, W, C) with their shape and dtype."""
    h, w, c = pixels.shape
    digest = hashlib.sha256(f"featx-array:{h}x{w}x{c}:uint8\0".encode())
    digest.update(memoryview(pixels).cast("B"))
    return digest.hexdigest()


def resize_pixels(pixels: np.ndarray, size) -> np.ndarray:
    """(H, W, 1|3) uint8 to (size, size, 3) uint8 exactly as :func:`~featx.decode.read_image` resizes.

    Pillow's bilinear filter treats channels alike, so a grayscale row is
    resized once and then repeated, as a grayscale file decoded to RGB would be.
    """
    target = _target_size(size)
    if target is not None and pixels.shape[1::-1] != target:
        from PIL import Image

        mode = "L" if pixels.shape[2] == 1 else "RGB"
        img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        pixels = np.array(img.resize(target, Image.Resampling.BILINEAR), dtype=np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.array(pixels, dtype=np.uint8)  # a copy: the row may be a read-only memory map


@dataclass(frozen=True)
class ArrayItem(ImageItem):
    """One image row of an array; ``path`` is its index (``"12"`` or ``"test#12"``)."""

    rows: Rows = field(compare=False, repr=False)
    index: int = 0

    def load(self, size, skip=frozenset()) -> tuple[str, np.ndarray | None]:
        """(sha256, RGB uint8 pixels at ``size``); pixels None when the key is in ``skip``."""
        try:
            pixels = self.rows.canonical(self.index)
        finally:
            self.rows.release(self.index)
        sha = row_key(pixels)
        if sha in skip:
            return sha, None
        return sha, resize_pixels(pixels, size)

    def pixels(self) -> np.ndarray:
        """The row's canonical uint8 pixels at its own size, (H, W, 1|3)."""
        return self.rows.canonical(self.index)
