"""Every kind of array input as one :class:`~featx.datasets.Dataset` (:func:`as_dataset`), and its rows read again."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..datasets import SPLIT_ALIASES, SPLIT_ORDER, Dataset, ImageItem
from .checks import ArrayError, check_images, check_labels, Labels, scale_for
from .files import open_file
from .keras_datasets import KERAS_DATASETS, load_keras_dataset
from .rows import ANONYMOUS, LAYOUT, ArrayItem, Rows, row_key
from .stream import stream_dataset


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
    labels = Labels(class_names)
    source = name or ANONYMOUS
    if isinstance(data, (str, os.PathLike)):
        s = os.fspath(data)
        if s.startswith("keras:"):
            splits = load_keras_dataset(s[len("keras:"):], log)
            if class_names is None and KERAS_DATASETS.get(s[len("keras:"):]):
                labels = Labels(KERAS_DATASETS[s[len("keras:"):]])
            source = name or s
        else:
            splits = open_file(s, log)
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
        return stream_dataset(data, source, labels, scale)
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
        x = check_images(x, what)
        rows = Rows(x, scale_for(x, what, scale))
        y = check_labels(y, len(x), what)
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
