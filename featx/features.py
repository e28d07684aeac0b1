"""Reading cached features back: one call gives X, y, paths, classes and splits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbones import get_backbone
from .cache import Cache, DatasetView, Extraction
from .errors import BrokenExtraction, CacheError, FeatxError, HeadError


# Rows per read when a head or a prediction walks on-disk rows: 8,192 x 2,048 float32
# rows are 64 MB, a bounded working set that still reads each shard in long runs.
CHUNK_ROWS = 8192


class CachedRows:
    """Feature rows that stay on disk: an extraction and the sha256 of each row.

    What ``load_features(..., lazy=True)`` puts in ``Features.X``. It has an
    array's ``shape``, ``dtype`` and ``len``; ``np.asarray(rows)`` (or
    ``rows[idx]``) reads rows into memory, ``rows.subset(idx)`` selects rows
    without reading any, and :meth:`chunks` walks them in bounded pieces.
    Rows are read through :meth:`featx.cache.Extraction.read`, which
    binary-searches each shard's sorted key column: no table of every row
    is built, so memory follows the rows read, not the extraction.

    Attributes
    ----------
    extraction : Extraction
    sha256 : ndarray of str, shape (n,)
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, extraction: Extraction, sha256):
        self.extraction = extraction
        self.sha256 = np.asarray(sha256, dtype=object)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.sha256), int(self.extraction.meta["feature_width"]))

    def __len__(self) -> int:
        return len(self.sha256)

    def __repr__(self) -> str:
        return f"CachedRows({self.shape[0]} x {self.shape[1]} of {self.extraction.name})"

    def subset(self, idx) -> "CachedRows":
        """The rows selected by a boolean mask or an index array; nothing is read."""
        return CachedRows(self.extraction, self.sha256[idx])

    def read(self, idx=None) -> np.ndarray:
        """Rows ``idx`` (all by default) as a float32 array, in that order."""
        shas = self.sha256 if idx is None else self.sha256[idx]
        if len(shas) == 0:
            return np.empty((0, self.shape[1]), np.float32)
        return self.extraction.read(list(shas))

    def storage_order(self) -> np.ndarray:
        """Row positions sorted by where they are stored (shard, row): reads in this order are sequential.

        Found by binary-searching the shards' sorted key columns
        (:meth:`~featx.cache.Extraction.locate`); rows not in the cache come last.
        """
        shard, row = self.extraction.locate(self.sha256.tolist())
        shard[shard < 0] = np.iinfo(np.int64).max
        return np.lexsort((row, shard))

    def chunks(self, rows: int | None = None):
        """(positions, float32 rows) pieces of at most ``rows`` (CHUNK_ROWS) rows, covering every row once in storage order."""
        rows = rows or CHUNK_ROWS
        order = self.storage_order()
        for start in range(0, len(order), rows):
            pos = order[start:start + rows]
            yield pos, self.read(pos)

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            rows, cols = key[0], key[1:]
            return self.read(np.arange(len(self))[rows])[(slice(None), *cols)]
        return self.read(np.arange(len(self))[key])


def array_chunks(X, rows: int | None = None):
    """(positions, rows) pieces of an array or :class:`CachedRows`, each at most ``rows`` (CHUNK_ROWS) rows."""
    rows = rows or CHUNK_ROWS
    if isinstance(X, CachedRows):
        yield from X.chunks(rows)
        return
    for start in range(0, len(X), rows):
        yield np.arange(start, min(start + rows, len(X))), X[start:start + rows]


def take_rows(X, idx):
    """Rows ``idx`` of an array, or a :class:`CachedRows` subset of them (nothing read)."""
    return X.subset(idx) if isinstance(X, CachedRows) else X[idx]


@dataclass
class Features:
    """Cached features of one dataset through one extraction.

    Attributes
    ----------
    X : ndarray, shape (n_images, feature_width), float32; or CachedRows
        :class:`CachedRows` (rows left on disk, read on demand) when loaded with ``lazy=True``.
    y : ndarray, shape (n_images,), int
        Index into ``class_names``; -1 for unlabeled images.
    paths, sha256, split : ndarray of str, shape (n_images,)
    class_names : list of str
    extraction : Extraction
        Where the rows live, with its settings (backbone, size, pooling...).
    view : DatasetView
    """

    X: np.ndarray
    y: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    split: np.ndarray
    class_names: list[str]
    extraction: Extraction
    view: DatasetView

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        from .reprs import block, ends

        return block("Features", [
            f"{len(self)} rows x {self.X.shape[1] if self.X.ndim == 2 else '?'} features, {self.extraction.name}",
            f"source: {self.view.source}",
            "splits: " + ", ".join(f"{sp or 'unlabeled'} {int((self.split == sp).sum())}" for sp in self.splits),
            f"classes: {ends(self.class_names, 5)}",
            f"paths: {ends(self.paths, under=self.view.source)}",
        ])

    @property
    def spec(self):
        """The :class:`~featx.spec.ExtractionSpec` these features were extracted with."""
        return self.extraction.spec

    settings = spec

    @property
    def splits(self) -> list[str]:
        present = set(self.split.tolist())
        return [s for s in ("train", "val", "test", "") if s in present]

    @property
    def lazy(self) -> bool:
        """Whether the rows are left on disk (:class:`CachedRows`)."""
        return isinstance(self.X, CachedRows)

    def subset(self, mask) -> "Features":
        """The rows selected by a boolean mask or index array (not read, when lazy)."""
        return Features(
            take_rows(self.X, mask), self.y[mask], self.paths[mask], self.sha256[mask], self.split[mask],
            self.class_names, self.extraction, self.view,
        )

    def only(self, split: str) -> "Features":
        return self.subset(self.split == split)

    def to_arrow(self):
        """These rows as a pyarrow Table, with the columns and metadata of ``featx export`` (``featx[arrow]``)."""
        from .tables import features_table

        return features_table(self)

    def to_pandas(self):
        """These rows as a pandas DataFrame (``embedding``: one float32 array per row)."""
        return self.to_arrow().to_pandas()

    def describe(self) -> str:
        s = self.settings
        counts = ", ".join(f"{sp or 'unlabeled'} {int((self.split == sp).sum())}" for sp in self.splits)
        cut = f" cut{s.cut_blocks}" if s.cut_blocks else ""
        return (
            f"{s.backbone} {s.input_size}px {s.pooling}{cut} on {self.view.source} "
            f"({len(self)} images: {counts}; {len(self.class_names)} classes)"
        )


def find_view(
    cache: Cache,
    data: str | os.PathLike | None = None,
    backbone: str | None = None,
    extraction: str | None = None,
) -> DatasetView:
    """The dataset view to use: the latest one matching what is given.

    With nothing given it is the most recent extraction run (``latest.json``),
    so ``featx fit-head`` right after ``featx extract`` needs no arguments.
    """
    views = cache.views()
    if not views:
        raise CacheError(
            f"Nothing has been extracted into {cache.root} yet. Run `featx extract --backbone NAME DATA` first."
        )
    if data is None and backbone is None and extraction is None:
        latest = cache.latest_view_id()
        for v in views:
            if v.id == latest:
                return v
        return views[-1]
    picked = views
    if data is not None:
        # A name as recorded (arrays: name=, keras:cifar10, arrays:<hash>), else a path.
        src = str(data) if any(v.source == str(data) for v in picked) else str(Path(data).expanduser().resolve())
        picked = [v for v in picked if v.source == src]
        if not picked:
            raise CacheError(f"No extraction of {src} in {cache.root}. Run `featx extract --backbone NAME {data}` first.")
    if backbone is not None:
        name = get_backbone(backbone).name
        picked = [v for v in picked if _backbone_of(cache, v) == name]
        if not picked:
            raise CacheError(f"No {name} extraction{' of ' + str(data) if data else ''} in {cache.root}.")
    if extraction is not None:
        ext = cache.get_extraction(extraction)
        picked = [v for v in picked if v.extraction == ext.name]
        if not picked:
            raise CacheError(f"No dataset was extracted with {ext.name}.")
    return picked[-1]


def _backbone_of(cache: Cache, view: DatasetView) -> str | None:
    """The backbone the view's extraction recorded in its spec (None if it cannot be read).

    Read from the spec, never parsed back out of the folder name."""
    try:
        return cache.get_extraction(view.extraction).spec.backbone
    except FeatxError:
        return None


def load_features(
    data: str | os.PathLike | None = None,
    backbone: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    extraction: str | None = None,
    split: str | None = None,
    lazy: bool = False,
) -> Features:
    """Load cached features in one call.

    Parameters
    ----------
    data : path or str, optional
        The dataset folder or CSV given to ``extract``, or the name arrays
        were recorded under (``name=``, ``keras:cifar10``, an ``.npz`` path);
        latest extraction if omitted.
    backbone : str, optional
        Pick the latest extraction with this backbone.
    cache_dir : path, optional
        Cache root; ``$FEATX_CACHE_DIR`` or ``./cache`` by default.
    extraction : str, optional
        An extraction directory name (or unique prefix) from ``featx cache list``.
    split : {"train", "val", "test"}, optional
        Only rows of this split.
    lazy : bool
        Leave the rows on disk: ``X`` is a :class:`CachedRows`, read on
        demand (the heads stream it; ``np.asarray(f.X)`` loads it). Memory
        then holds the view's columns, not the matrix.

    Examples
    --------
    >>> f = featx.load_features("data/")            # doctest: +SKIP
    >>> f.X.shape, f.class_names                     # doctest: +SKIP
    ((398, 2048), ['ants', 'bees'])
    """
    cache = Cache(cache_dir)
    view = find_view(cache, data, backbone, extraction)
    try:
        ext = cache.get_extraction(view.extraction)
    except BrokenExtraction:
        raise
    except CacheError:
        raise CacheError(
            f"The extraction {view.extraction} behind {view.source} was removed. Run `featx extract` again."
        ) from None
    cols = cache.read_view(view)
    if lazy:
        X = CachedRows(ext, cols["sha256"])
        missing = ext.known().missing(X.sha256.tolist())
        if missing:  # an error now, not halfway through a head
            raise CacheError(f"{len(missing)} images are not in extraction {ext.name} (first: {missing[0][:12]}). "
                             "Run `featx extract` again to compute them.")
    else:
        X = ext.read(list(cols["sha256"]))
    feats = Features(X, cols["label"].astype(np.int64), cols["path"], cols["sha256"], cols["split"],
                     view.class_names, ext, view)
    return feats.only(split) if split else feats


# --------------------------------------------------------------------------- splits


@dataclass
class Splits:
    """Train/val/test rows of a Features set (val made by a stratified split if absent)."""

    train: Features
    val: Features
    test: Features | None
    made_val: bool


def make_splits(f: Features, val_split: float = 0.2, seed: int = 0) -> Splits:
    if (f.y < 0).all():
        raise HeadError(f"fit-head needs labeled data; {f.view.source} was extracted as unlabeled images.")
    if len(f.class_names) < 2:
        raise HeadError(f"{f.view.source} has {len(f.class_names)} class; a classifier needs at least 2.")
    train = f.only("train")
    test = f.only("test") if "test" in f.splits else None
    if len(train) == 0:
        raise HeadError(f"The train split of {f.view.source} is empty (splits present: {', '.join(f.splits)}).")
    if "val" in f.splits:
        val = f.only("val")
        return Splits(train, val, test, made_val=False)
    from sklearn.model_selection import train_test_split

    if not 0 < val_split < 1:
        raise HeadError(f"val_split must be between 0 and 1. Received: val_split={val_split}")
    counts = np.bincount(train.y, minlength=len(f.class_names))
    n_val = int(round(val_split * len(train)))
    k = len(f.class_names)
    if counts.min() < 2:
        small = [f"{f.class_names[i]} ({counts[i]})" for i in np.flatnonzero(counts < 2)]
        raise HeadError(
            f"Too little data for a stratified validation split: every class needs at least 2 train images, "
            f"and {', '.join(small)} {'has' if len(small) == 1 else 'have'} fewer. Add images, or provide a val/ split."
        )
    if n_val < k:
        raise HeadError(
            f"Too little data for a validation split: {val_split:g} of {len(train)} train images is {n_val}, "
            f"fewer than the {k} classes. Raise --val-split, add images, or provide a val/ split."
        )
    if len(train) - n_val < k:
        raise HeadError(
            f"Too little data left to train on: {val_split:g} of {len(train)} train images go to validation, "
            f"leaving {len(train) - n_val} for {k} classes. Lower --val-split, add images, or provide a val/ split."
        )
    idx = np.arange(len(train))
    tr, va = train_test_split(idx, test_size=val_split, random_state=seed, stratify=train.y)
    return Splits(train.subset(np.sort(tr)), train.subset(np.sort(va)), test, made_val=True)
