"""Images that are not files: NumPy arrays, ``.npz``/``.npy`` files, ``keras.datasets``, streams.

:func:`as_dataset` turns any of these into a :class:`~featx.datasets.Dataset`
whose items are :class:`ArrayItem` rows, so they go through the same
extraction, cache, heads and prediction as image files:

- ``x`` or ``(x, y)``: one array of images, optionally labelled (split "train");
- ``{"train": (x, y), "val": ..., "test": ...}``: named splits;
- ``"data.npz"``: keys ``x_train, y_train, x_val, y_val, x_test, y_test`` (or ``x, y``),
  as ``np.savez`` and ``keras.datasets`` produce them; ``"x.npy"``: unlabelled;
- ``"keras:cifar10"`` (``cifar100``, ``mnist``, ``fashion_mnist``): through ``keras.datasets``;
- a ``tf.data.Dataset`` or any other iterable of ``(images, labels)`` (or ``images``)
  batches, read batch by batch and never held whole.

Images are ``(N, H, W, 3)`` RGB or ``(N, H, W)`` / ``(N, H, W, 1)`` grayscale.
uint8 is taken as is. Other integer arrays must hold values in [0, 255].
Float arrays are scaled once per array, by its maximum: at most 1.0 means
[0, 1] images, multiplied by 255; otherwise [0, 255] as is (``scale=`` sets
the factor explicitly). Scaled values are rounded to uint8, the pixels every
image file decodes to as well; NaN, inf or values outside [0, 255] after
scaling are errors. A stream decides the scale on its first float batch.

A row's key is the sha256 of its uint8 pixels together with their shape and
dtype (``featx-array:HxWxC:uint8``), so the same array extracted twice, or
an array that grew, computes only rows never seen. Rows are resized to the
backbone's input exactly as decoded files are (Pillow bilinear squash;
grayscale resized, then repeated to 3 channels): the same pixels as a PNG
file and as an array give the same features.

A row's ``path`` is its index, ``"12"``, for one array, and ``"test#12"``
(split, then the index within that split's array) when the data has several
named splits. The dataset view is recorded under ``name=``, under the
``.npz`` file's path or ``keras:NAME``, or else ``arrays:<hash of the rows>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .datasets import SPLIT_ALIASES, SPLIT_ORDER, Dataset, ImageItem
from .decode import _target_size
from .errors import DataError
from .runtime import keras_cache_dir

LAYOUT = "arrays"
ANONYMOUS = "<arrays>"  # replaced by arrays:<hash> when the view is recorded
KERAS_DATASETS = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "cifar100": None,
    "mnist": None,
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
_SCAN_BYTES = 64 << 20  # validate big arrays in slices of this size: never a second copy of the input


class ArrayError(DataError, ValueError):
    """Image arrays of the wrong rank, channels, dtype, values or length."""


# --------------------------------------------------------------------------- rows


class _Rows:
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


class _BatchRows(_Rows):
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

    rows: _Rows = field(compare=False, repr=False)
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


# --------------------------------------------------------------------------- checking


def _check_images(x, what: str):
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


def _value_range(x, what: str) -> tuple[float, float]:
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


def _scale_for(x, what: str, scale, lo_hi=None) -> float | None:
    """The factor that brings ``x`` to [0, 255]; None for uint8 (nothing to do)."""
    if scale != "auto" and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ArrayError(f"scale must be 'auto' or a positive number. Received: scale={scale!r}")
    if x.dtype == np.uint8 and scale in ("auto", 1):
        return None
    lo, hi = lo_hi or _value_range(x, what)
    if scale == "auto":
        scale = 255.0 if x.dtype.kind == "f" and hi <= 1.0 else 1.0
    if lo * scale < 0 or hi * scale > 255.0 + 1e-6:
        hint = "floats in [0, 1] or [0, 255]" if x.dtype.kind == "f" else "integers in [0, 255]"
        raise ArrayError(
            f"{what} has values from {lo:g} to {hi:g}, which scale={scale:g} does not bring into [0, 255]; "
            f"pass {hint}, or scale= (e.g. scale=255/{hi:g})."
        )
    return float(scale)


def _check_labels(y, n: int, what: str) -> np.ndarray | None:
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


class _Labels:
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


# --------------------------------------------------------------------------- sources


def is_array_data(data) -> bool:
    """Whether :func:`as_dataset` (rather than :func:`~featx.datasets.discover`) reads ``data``."""
    if isinstance(data, (str, os.PathLike)):
        s = os.fspath(data)
        return s.startswith("keras:") or s.lower().endswith((".npz", ".npy"))
    if isinstance(data, Dataset):
        return False
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        return True
    if isinstance(data, dict):
        return True
    if isinstance(data, tuple) and data and hasattr(data[0], "shape"):
        return True
    if isinstance(data, (list, tuple)):
        return False  # image files and folders
    return hasattr(data, "__iter__")


def as_dataset(data, *, name: str | None = None, class_names=None, scale="auto", split: str | None = None,
               log=None) -> Dataset:
    """A :class:`~featx.datasets.Dataset` of :class:`ArrayItem` rows (see the module docstring).

    Parameters
    ----------
    data : array, (x, y), dict of splits, ``.npz``/``.npy`` path, ``"keras:NAME"`` or iterable of batches
    name : str, optional
        What the dataset view is recorded under (``load_features(name)``).
    class_names : sequence of str, optional
        Names of integer labels: label ``i`` is ``class_names[i]``.
    scale : "auto" or float
        Factor that brings pixels to [0, 255] (see the module docstring).
    split : {"train", "val", "test"}, optional
        Only this split of data that has several; rows are then named by index.
    log : callable, optional
        Receives a line saying what an ``.npz`` file or ``keras.datasets`` held.
    """
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ArrayError(f"name must be a non-empty string. Received: name={name!r}")
    labels = _Labels(class_names)
    source = name or ANONYMOUS
    if isinstance(data, (str, os.PathLike)):
        s = os.fspath(data)
        if s.startswith("keras:"):
            splits = _keras_dataset(s[len("keras:"):], log)
            if class_names is None and KERAS_DATASETS.get(s[len("keras:"):]):
                labels = _Labels(KERAS_DATASETS[s[len("keras:"):]])
            source = name or s
        else:
            splits = _open_file(s, log)
            source = name or os.path.realpath(os.path.expanduser(s))
    elif isinstance(data, dict):
        splits = {}
        for key, value in data.items():
            canon = SPLIT_ALIASES.get(str(key).lower())
            if canon is None:
                raise ArrayError(f"Unknown split {key!r}; the keys of a dict of arrays are train, val and test.")
            if canon in splits:
                raise ArrayError(f"Two entries of the dict are the {canon} split; keep one.")
            splits[canon] = value if isinstance(value, tuple) else (value, None)
    elif hasattr(data, "shape") and hasattr(data, "dtype"):
        splits = {"": (data, None)}
    elif isinstance(data, tuple):
        if len(data) != 2:
            raise ArrayError(f"Pass images as x or (x, y). Received: a tuple of {len(data)}.")
        splits = {"train" if data[1] is not None else "": data}
    else:
        return _stream_dataset(data, source, labels, scale)
    if split is not None:
        canon = SPLIT_ALIASES.get(split.lower(), split)
        if canon not in splits:
            raise ArrayError(f"No {split} split in the data; it has {', '.join(s or 'one array' for s in splits)}.")
        splits = {canon: splits[canon]}
    if not splits:
        raise ArrayError("No images given: the dict of splits is empty.")
    several = len(splits) > 1
    items: list[ImageItem] = []
    for sp in sorted(splits, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER)):
        x, y = splits[sp]
        what = f"The {sp} images" if sp else "The images"
        x = _check_images(x, what)
        rows = _Rows(x, _scale_for(x, what, scale))
        y = _check_labels(y, len(x), what)
        names = labels.names(y, what) if y is not None else [None] * len(x)
        items += [ArrayItem(f"{sp}#{i}" if several else str(i), names[i], sp, rows, i) for i in range(len(x))]
    return Dataset(source, LAYOUT, items, labels.class_names())


def view_source(ds: Dataset, shas, labels, splits) -> str:
    """The name a dataset of arrays is recorded under: its own, or a hash of its rows."""
    if ds.source != ANONYMOUS:
        return ds.source
    h = hashlib.sha256()
    for sha, label, split in zip(shas, labels, splits):
        h.update(f"{sha}\0{label}\0{split}\n".encode())
    return f"arrays:{h.hexdigest()[:16]}"


def is_streamed(ds: Dataset) -> bool:
    """Whether ``ds`` reads its rows as they arrive (its length is known only at the end)."""
    return isinstance(ds.items, _StreamItems)


def row_reader(data, source: str, paths, shas):
    """Read extracted array rows again by their path, for fine-tuning.

    ``data`` is the arrays given to ``extract`` (needed for a name or hash
    source; an ``.npz`` file or ``keras:NAME`` source is read again when
    ``data`` is None). Returns ``(read, native)``: ``read(path)`` gives the
    row's uint8 pixels at their own size, checked against the cached key,
    and ``native`` their common shape (H, W, C).
    """
    if data is None:
        if not (source.startswith("keras:") or source.lower().endswith(".npz")):
            raise ArrayError(
                f"These features come from arrays recorded as {source!r}: pass the same arrays as data= "
                "(fine-tuning trains on the pixels, which the cache does not keep)."
            )
        data = source
    if not isinstance(data, (str, os.PathLike, dict, tuple)) and not hasattr(data, "shape"):
        raise ArrayError("Fine-tuning reads rows by index: pass arrays, a dict of splits or an .npz file, not a stream.")
    ds = as_dataset(data)
    by_path = {it.path: it for it in ds.items}
    missing = [p for p in paths if p not in by_path]
    if missing:
        raise ArrayError(f"The given arrays lack {len(missing)} of the extracted rows (first: {missing[0]}); "
                         f"pass the arrays extracted as {source!r}.")
    shapes = {tuple(it.rows.canonical(it.index).shape) for it in {id(by_path[p].rows): by_path[p] for p in paths}.values()}
    if len(shapes) > 1:
        raise ArrayError(f"The splits have images of different shapes {sorted(shapes)}; one model takes one shape.")
    expected = dict(zip(paths, shas))

    def read(path: str) -> np.ndarray:
        pixels = by_path[path].pixels()
        if row_key(pixels) != expected[path]:
            raise ArrayError(f"Row {path} of the given arrays is not the image extracted as {source!r}; "
                             "pass the same arrays.")
        return pixels

    return read, shapes.pop()


# --------------------------------------------------------------------------- streams


class _StreamItems:
    """Items read from an iterable of batches on first iteration, then replayed.

    The items are kept (a path, label and split each); their batches are
    dropped as soon as every row of them has been read.
    """

    def __init__(self, batches: Iterator, labels: _Labels, scale, class_names: list[str]):
        self._batches = batches
        self._labels = labels
        self._scale = scale
        self._chosen = None
        self._class_names = class_names
        self._items: list[ArrayItem] = []
        self._done = False
        self._first = self._next_batch()
        if self._first is None:
            raise ArrayError("The stream of batches is empty: no images given.")

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def __iter__(self):
        if self._done:
            yield from self._items
            return
        batch, k = self._first, 0
        while batch is not None:
            x, y = batch
            what = f"Batch {k} of the stream"
            scale = self._batch_scale(x, what)
            y = _check_labels(y, len(x), what)
            names = self._labels.names(y, what) if y is not None else [None] * len(x)
            rows = _BatchRows(x, scale)
            start = len(self._items)
            for i in range(len(x)):
                item = ArrayItem(str(start + i), names[i], "train" if y is not None else "", rows, i)
                self._items.append(item)
                yield item
            batch, k = self._next_batch(), k + 1
        self._done = True
        self._class_names[:] = self._labels.class_names()

    def _next_batch(self):
        try:
            b = next(self._batches)
        except StopIteration:
            return None
        if isinstance(b, dict):
            raise ArrayError("Stream elements must be images or (images, labels) batches, not dicts.")
        x, y = (b[0], b[1]) if isinstance(b, (tuple, list)) and len(b) == 2 else (b, None)
        x = _check_images(_numpy(x), f"Batch {len(self._items)} of the stream")
        return x, (None if y is None else _numpy(y))

    def _batch_scale(self, x, what):
        if x.dtype == np.uint8:
            return None
        lo_hi = _value_range(x, what)
        if self._chosen is None:
            self._chosen = _scale_for(x, what, self._scale, lo_hi)
            return self._chosen
        return _scale_for(x, what + " (scale chosen on the first float batch)", self._chosen, lo_hi)


def spooled(ds: Dataset, folder: str | os.PathLike) -> Dataset:
    """A streamed ``ds`` read once into memory-mapped ``.npy`` files in ``folder``, to be read again.

    Several passes over one stream (a fused head's backbones, each with
    its own input) read it here once; each batch's canonical rows go to
    disk, not memory. Other datasets are returned as they are.
    """
    if not is_streamed(ds):
        return ds
    items: list[ImageItem] = []
    batch: list[ArrayItem] = []

    def save():
        pixels = np.stack([it.rows.canonical(it.index) for it in batch])
        for it in batch:
            it.rows.release(it.index)
        path = Path(folder, f"batch-{len(items)}.npy")
        np.save(path, pixels)
        rows = _Rows(np.load(path, mmap_mode="r"), None)
        items.extend(ArrayItem(it.path, it.label, it.split, rows, i) for i, it in enumerate(batch))
        batch.clear()

    for item in ds.items:
        if batch and item.rows is not batch[0].rows:
            save()
        batch.append(item)
    if batch:
        save()
    return Dataset(ds.source, LAYOUT, items, ds.class_names)


def _numpy(t):
    if hasattr(t, "numpy") and not isinstance(t, np.ndarray):
        t = t.numpy()
    return np.asarray(t)


def _stream_dataset(data, source: str, labels: _Labels, scale) -> Dataset:
    try:
        batches = iter(data)
    except TypeError:
        raise ArrayError(f"Cannot read images from a {type(data).__name__}.") from None
    class_names: list[str] = []
    return Dataset(source, LAYOUT, _StreamItems(batches, labels, scale, class_names), class_names)


# --------------------------------------------------------------------------- files


_NPZ_KEYS = {"x_train": "train", "x_val": "val", "x_valid": "val", "x_validation": "val", "x_test": "test", "x": ""}


def _open_file(path: str, log) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"Data path does not exist: {path}.")
    if p.suffix.lower() == ".npy":
        try:
            x = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ArrayError(f"Cannot read {p} as a NumPy array: {exc}") from None
        if log:
            log(f"{p.name}: images {tuple(x.shape)} {x.dtype} (unlabelled)")
        return {"": (x, None)}
    return _open_npz(p, log)


def _open_npz(path: Path, log) -> dict:
    """Splits of an ``.npz``: images memory-mapped where stored uncompressed, labels read."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArrayError(f"Cannot read {path} as an .npz file: {exc}") from None
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        found = [k for k in _NPZ_KEYS if k in members]
        if not found:
            raise ArrayError(f"{path} holds {', '.join(sorted(members)) or 'no arrays'}; expected x_train, y_train, "
                             "x_test, y_test (and x_val, y_val), or x, y.")
        if "x" in found and len(found) > 1:
            found.remove("x")
        splits, said = {}, []
        with np.load(path, allow_pickle=False) as npz:
            for key in found:
                sp = _NPZ_KEYS[key]
                if sp in splits:
                    raise ArrayError(f"{path} has two arrays for the {sp} split; keep one of x_val, x_valid.")
                x = _member(path, zf, zf.getinfo(members[key]), npz, key)
                ykey = "y" + key[1:]
                y = npz[ykey] if ykey in members else None
                splits[sp] = (x, y)
                said.append(f"{key} {tuple(x.shape)} {x.dtype}" + (f", {ykey}" if y is not None else ""))
    if log:
        extra = sorted(set(members) - set(found) - {"y" + k[1:] for k in found})
        log(f"{path.name}: " + "; ".join(said) + (f" (ignored: {', '.join(extra)})" if extra else ""))
    return splits


def _member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, npz, key: str):
    """An ``.npz`` member as a read-only memory map when stored uncompressed (``np.savez``).

    ``np.load`` would read the whole member; a compressed one
    (``np.savez_compressed``) has to be, and is.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return npz[key]
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(fh))
        offset = fh.tell()
    if dtype.hasobject:
        raise ArrayError(f"{key} in {path} is an object array; pass a numeric array of images.")
    if 0 in shape:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


# --------------------------------------------------------------------------- keras.datasets


def _keras_dataset(which: str, log) -> dict:
    if which not in KERAS_DATASETS:
        raise ArrayError(f"Unknown Keras dataset {which!r}. Choose from "
                         f"{', '.join('keras:' + k for k in KERAS_DATASETS)}.")
    from .runtime import import_keras

    keras = import_keras()
    # Keras announces downloads on stdout, which belongs to featx's own output.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, which).load_data()
        except Exception as exc:
            # keras.utils.get_file names the URL it failed on ("URL fetch failure on <url>: ...").
            url = re.search(r"https?://\S+?(?=[:\s]|$)", str(exc))
            if url:
                raise DataError(
                    f"keras:{which} could not be downloaded (no network?). Keras fetches {url.group(0)} into "
                    f"{keras_cache_dir('datasets')}: download it there, or run this where there is a network."
                ) from None
            raise DataError(f"keras:{which} could not be loaded: {str(exc).splitlines()[0][:200]}") from None
    if log:
        log(f"keras:{which}: x_train {x_tr.shape} {x_tr.dtype}, y_train; x_test {x_te.shape} {x_te.dtype}, y_test")
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


__all__ = ["ArrayItem", "ArrayError", "as_dataset", "is_array_data", "row_key", "resize_pixels", "row_reader", "spooled"]
