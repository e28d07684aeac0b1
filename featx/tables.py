"""Cached features as tables: Parquet, Arrow IPC and NPZ files, and pyarrow/pandas tables.

``featx export OUT.parquet`` (:func:`export`) writes one row per image of a
dataset view, read from the cache in chunks of rows, so memory stays flat
however many rows there are. The columns:

- ``sha256`` (string, not null): the image's cache key;
- ``path``, ``split``, ``label`` (strings; ``split`` and ``label`` null for unlabeled images);
- ``embedding``: the features, a non-null ``fixed_size_list<float32>[D]``;
- one more ``embedding_<tap>`` column per further extraction named (a tap
  of the same backbone is ``embedding_cut<K>``, another backbone
  ``embedding_<backbone>``): one row per image, never one row per tap, so
  a join on ``sha256`` gives every view of an image at once.

Parquet has no fixed-size list of its own: pyarrow restores the fixed size
from the Arrow schema stored in the file, and DuckDB reads a ``FLOAT[]``
that ``CAST(embedding AS FLOAT[D])`` makes fixed. The spec of each
embedding column (backbone, weights fingerprint, image size, pooling, tap,
featx version) is in the key-value metadata (``featx.*`` keys). NPZ files
hold the same columns as arrays (``label`` and ``split`` "" where null) and
the metadata as JSON in ``featx_meta``; they need no pyarrow.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .cache import Cache, DatasetView, Extraction
from .errors import CacheError, FeatxError, FeatxValueError
from .params import as_list

FORMATS = ("parquet", "arrow", "npz")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
             ".npz": "npz"}
ARROW_EXTRA = "pip install 'featx[arrow]'"
# Rows read from the cache and written per row group: about this many bytes of features.
CHUNK_BYTES = 64 << 20


def require_pyarrow():
    """The ``pyarrow`` module, or a one-line error naming the extra to install."""
    try:
        import pyarrow
    except ImportError:
        raise FeatxError(f"Arrow and Parquet tables need pyarrow, which is not installed: {ARROW_EXTRA}") from None
    return pyarrow


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    path: Path
    format: str
    rows: int
    columns: list[str]
    widths: list[int]
    seconds: float
    size_bytes: int = 0
    extractions: list[str] = field(default_factory=list)

    def summary(self) -> str:
        emb = ", ".join(f"{c} [{w}]" for c, w in zip(self.columns[4:], self.widths))
        return (f"wrote {self.rows} rows ({emb}) to {self.path} ({self.format}, {self.size_bytes / 2**20:.1f} MiB) "
                f"in {self.seconds:.1f}s")


@dataclass
class _Part:
    """One embedding column and the extraction it is read from."""

    column: str
    extraction: Extraction
    width: int = 0  # the extraction's feature width unless given (a fused Features is wider)

    def __post_init__(self):
        self.width = int(self.width or self.extraction.meta["feature_width"])


# --------------------------------------------------------------------------- what to export


def _views(cache: Cache, data, backbone, extraction) -> list[DatasetView]:
    """The views named, as ``fit-head`` picks them: the latest by default; several to export side by side."""
    from .features import find_view

    extractions, backbones = as_list(extraction), as_list(backbone)
    if extractions and backbones:
        raise FeatxValueError("Name the extractions to export either by --extraction or by --backbone, not both.")
    if extractions:
        views = [find_view(cache, data, extraction=e) for e in extractions]
    elif len(backbones) > 1:
        data = data if data is not None else find_view(cache).source
        views = [find_view(cache, data, b) for b in backbones]
    else:
        views = [find_view(cache, data, backbones[0] if backbones else None)]
    if len({v.source for v in views}) > 1:
        raise FeatxValueError(f"The extractions named belong to different datasets "
                              f"({', '.join(sorted({v.source for v in views}))}); name one with --data.")
    names = [v.extraction for v in views]
    if len(set(names)) < len(names):
        raise FeatxValueError(f"The same extraction is named twice: {', '.join(names)}.")
    return views


def _parts(cache: Cache, views: list[DatasetView]) -> list[_Part]:
    exts = []
    for v in views:
        try:
            exts.append(cache.get_extraction(v.extraction))
        except CacheError:
            raise CacheError(f"The extraction {v.extraction} behind {v.source} was removed. "
                             "Run `featx extract` again.") from None
    return [_Part(c, e) for c, e in zip(_column_names([e.spec for e in exts]), exts)]


def _column_names(specs) -> list[str]:
    """``embedding``, then ``embedding_cut<K>`` for another tap of the same backbone, else ``embedding_<backbone>[_cut<K>]``."""
    first = specs[0]
    names = ["embedding"]
    for i, s in enumerate(specs[1:], 1):
        cut = f"cut{s.cut_blocks}"
        name = f"embedding_{cut}" if s.backbone == first.backbone else \
            f"embedding_{s.backbone}" + (f"_{cut}" if s.cut_blocks else "")
        if name in names:  # the same backbone and tap at another size or pooling
            name = f"{name}_{s.input_size}px_{s.pooling}" if f"{name}_{s.input_size}px_{s.pooling}" not in names \
                else f"{name}_{i}"
        names.append(name)
    return names


def _metadata(parts: list[_Part], view: DatasetView) -> dict[str, str]:
    """The ``featx.*`` key-value metadata: the first column's spec flat, every column's record as JSON."""
    from . import __version__

    spec = parts[0].extraction.spec
    return {
        "featx.version": __version__,
        "featx.source": view.source,
        "featx.class_names": json.dumps(list(view.class_names)),
        "featx.backbone": spec.backbone,
        "featx.weights": spec.weights,
        "featx.image_size": str(spec.input_size),
        "featx.pooling": spec.pooling,
        "featx.tap": spec.tap,
        "featx.columns": json.dumps({p.column: {"extraction": p.extraction.name, "feature_width": p.width,
                                                **p.extraction.spec.record()} for p in parts}, sort_keys=True),
    }


# --------------------------------------------------------------------------- arrow


def _schema(parts: list[_Part], metadata: dict[str, str]):
    pa = require_pyarrow()
    item = pa.field("item", pa.float32(), nullable=False)
    return pa.schema(
        [pa.field("sha256", pa.string(), nullable=False), pa.field("path", pa.string()),
         pa.field("split", pa.string()), pa.field("label", pa.string())]
        + [pa.field(p.column, pa.list_(item, p.width), nullable=False) for p in parts],
        metadata=metadata,
    )


def _batch(schema, sha, path, split, label, embeddings: Sequence[np.ndarray]):
    pa = require_pyarrow()
    arrays = [pa.array(sha, pa.string()), pa.array(path, pa.string()), pa.array(split, pa.string()),
              pa.array(label, pa.string())]
    for fld, X in zip(list(schema)[4:], embeddings):
        X = np.ascontiguousarray(X, dtype=np.float32)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), type=fld.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _strings(split, label_idx, class_names) -> tuple[list, list]:
    names = np.asarray(list(class_names) + [None], dtype=object)  # -1 (unlabeled) -> None
    label = names[np.where(np.asarray(label_idx) < 0, len(class_names), label_idx)]
    return [s or None for s in split], list(label)


def features_table(f):
    """A :class:`~featx.features.Features` as a pyarrow Table with the columns and metadata of :func:`export`."""
    parts = [_Part("embedding", f.extraction, int(np.shape(f.X)[1]))]
    schema = _schema(parts, _metadata(parts, f.view))
    split, label = _strings(f.split, f.y, f.class_names)
    batch = _batch(schema, list(f.sha256), list(f.paths), split, label, [f.X])
    return require_pyarrow().Table.from_batches([batch], schema=schema)


# --------------------------------------------------------------------------- export


def export(
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    backbone: str | Sequence[str] | None = None,
    extraction: str | Sequence[str] | None = None,
    split: str | None = None,
    format: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_rows: int | None = None,
) -> ExportResult:
    """Write a dataset's cached features to a Parquet, Arrow IPC or NPZ file.

    Parameters
    ----------
    out : path
        The file to write (replaced atomically: a reader never sees half of it).
    data, backbone, extraction : optional
        Which dataset view, as for ``fit-head``: the latest extraction by
        default. Several extractions (a list, or comma-separated; taps of one
        backbone, or other backbones of the same dataset) give one
        embedding column each (see the module docstring).
    split : {"train", "val", "test"}, optional
        Only the rows of this split.
    format : {"parquet", "arrow", "npz"}, optional
        By default from the suffix of ``out`` (``.parquet``, ``.arrow``/
        ``.feather``, ``.npz``), else Parquet.
    cache_dir : path, optional
    chunk_rows : int, optional
        Rows read from the cache at a time, one Parquet row group or Arrow
        record batch each; by default about 64 MiB of features.

    Returns
    -------
    ExportResult

    Examples
    --------
    >>> featx.export("features.parquet", data="data/")          # doctest: +SKIP
    """
    t0 = time.perf_counter()
    fmt = _format(out, format)
    if fmt != "npz":
        require_pyarrow()
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise FeatxValueError(f"chunk_rows must be an integer >= 1. Received: chunk_rows={chunk_rows!r}")
    cache = Cache(cache_dir)
    views = _views(cache, data, backbone, extraction)
    parts = _parts(cache, views)
    view = views[0]
    cols = cache.read_view(view)
    if split is not None:
        keep = cols["split"] == split
        if not keep.any():
            present = ", ".join(sorted({s or "unlabeled" for s in cols["split"]}))
            raise FeatxValueError(f"{view.source} has no {split} split (splits: {present}).")
        cols = {k: v[keep] for k, v in cols.items()}
    n = len(cols["sha256"])
    rows = chunk_rows or max(1, CHUNK_BYTES // (4 * sum(p.width for p in parts)))
    split_col, label_col = _strings(cols["split"], cols["label"], view.class_names)
    out = Path(out)
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex}-{out.name}")
    metadata = _metadata(parts, view)
    try:
        writer = {"parquet": _write_parquet, "arrow": _write_arrow, "npz": _write_npz}[fmt]
        writer(tmp, parts, metadata, cols, split_col, label_col, n, rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, fmt, n, ["sha256", "path", "split", "label", *(p.column for p in parts)],
                        [p.width for p in parts], time.perf_counter() - t0, out.stat().st_size,
                        [p.extraction.name for p in parts])


def _format(out, format) -> str:
    if format is not None:
        if format not in FORMATS:
            raise FeatxValueError(f"format must be one of {FORMATS}. Received: format={format!r}")
        return format
    return _SUFFIXES.get(Path(out).suffix.lower(), "parquet")


def _chunks(n: int, rows: int):
    for lo in range(0, n, rows):
        yield slice(lo, min(n, lo + rows))


def _read(part: _Part, shas) -> np.ndarray:
    # Through the cache's public read, one chunk at a time: the cache finds
    # the rows by key, and memory holds one chunk whatever the dataset's size.
    return part.extraction.read(list(shas))


def _batches(schema, parts, cols, split_col, label_col, n, rows):
    for sl in _chunks(n, rows):
        shas = cols["sha256"][sl]
        yield _batch(schema, list(shas), list(cols["path"][sl]), split_col[sl], label_col[sl],
                     [_read(p, shas) for p in parts])


def _write_parquet(path, parts, metadata, cols, split_col, label_col, n, rows) -> None:
    import pyarrow.parquet as pq

    schema = _schema(parts, metadata)
    # Dictionaries and statistics only where they pay: not for keys, paths or float vectors.
    with pq.ParquetWriter(path, schema, use_dictionary=["split", "label"],
                          write_statistics=["sha256", "path", "split", "label"]) as w:
        if n == 0:
            w.write_table(schema.empty_table())
        for batch in _batches(schema, parts, cols, split_col, label_col, n, rows):
            w.write_batch(batch, row_group_size=len(batch))


def _write_arrow(path, parts, metadata, cols, split_col, label_col, n, rows) -> None:
    pa = require_pyarrow()
    schema = _schema(parts, metadata)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for batch in _batches(schema, parts, cols, split_col, label_col, n, rows):
            w.write_batch(batch)


def _write_npz(path, parts, metadata, cols, split_col, label_col, n, rows) -> None:
    """An ``.npz`` that ``np.load(allow_pickle=False)`` reads; each embedding streamed into its member."""
    small = {
        "sha256": np.asarray(cols["sha256"], dtype=str),
        "path": np.asarray(cols["path"], dtype=str),
        "split": np.asarray([s or "" for s in split_col], dtype=str),
        "label": np.asarray([s or "" for s in label_col], dtype=str),
        "featx_meta": np.asarray(json.dumps(metadata, sort_keys=True)),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in small.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
        for p in parts:
            with zf.open(f"{p.column}.npy", "w", force_zip64=True) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                          "shape": (n, p.width)}
                np.lib.format.write_array_header_2_0(fh, header)
                for sl in _chunks(n, rows):
                    fh.write(np.ascontiguousarray(_read(p, cols["sha256"][sl]), dtype="<f4").tobytes())


__all__ = ["export", "ExportResult", "features_table", "require_pyarrow", "FORMATS"]
