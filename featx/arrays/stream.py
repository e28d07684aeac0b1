"""Iterables of ``(images, labels)`` batches (``tf.data`` too): read once, batch by batch, never held whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..datasets import Dataset, ImageItem
from .checks import ArrayError, check_images, check_labels, Labels, scale_for, value_range
from .rows import LAYOUT, ArrayItem, BatchRows, Rows


class StreamItems:
    """Items read from an iterable of batches on first iteration, then replayed.

    The items are kept (a path, label and split each); their batches are
    dropped as soon as every row of them has been read.
    """

    def __init__(self, batches: Iterator, labels: Labels, scale, class_names: list[str]):
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
            y = check_labels(y, len(x), what)
            names = self._labels.names(y, what) if y is not None else [None] * len(x)
            rows = BatchRows(x, scale)
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
        x = check_images(_numpy(x), f"Batch {len(self._items)} of the stream")
        return x, (None if y is None else _numpy(y))

    def _batch_scale(self, x, what):
        if x.dtype == np.uint8:
            return None
        lo_hi = value_range(x, what)
        if self._chosen is None:
            self._chosen = scale_for(x, what, self._scale, lo_hi)
            return self._chosen
        return scale_for(x, what + " (scale chosen on the first float batch)", self._chosen, lo_hi)


def is_streamed(ds: Dataset) -> bool:
    """Whether ``ds`` reads its rows as they arrive (its length is known only at the end)."""
    return isinstance(ds.items, StreamItems)


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
        rows = Rows(np.load(path, mmap_mode="r"), None)
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


def stream_dataset(data, source: str, labels: Labels, scale) -> Dataset:
    try:
        batches = iter(data)
    except TypeError:
        raise ArrayError(f"Cannot read images from a {type(data).__name__}.") from None
    class_names: list[str] = []
    return Dataset(source, LAYOUT, StreamItems(batches, labels, scale, class_names), class_names)
