"""Dataset views: one dataset (paths, sha256, labels, splits) seen through one extraction.

``datasets/<id>.h5`` holds a view's columns; ``latest.json`` names the most
recent one, which ``fit-head`` and ``load_features`` read by default. Only
``featx extract`` writes views.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CacheError
from ..spec import FORMAT_VERSION
from .atomic import atomic_write_json, fsync, publish_file
from .layout import tmp_name
from .shards import h5, string_dtype

if TYPE_CHECKING:
    from .extraction import Extraction


@dataclass
class DatasetView:
    """One dataset (its images, labels and splits) seen through one extraction."""

    path: Path
    source: str
    layout: str
    extraction: str
    class_names: list[str]
    created: float
    rows: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.path.stem

    def __repr__(self) -> str:
        from ..reprs import ends

        return (f"DatasetView({self.source!r}, {self.layout}, {self.rows} rows, extraction {self.extraction}, "
                f"classes {ends(self.class_names, 5)}, {len(self.skipped)} skipped)")


def view_path(root: Path, source: str, extraction: "Extraction") -> Path:
    """Where the view of ``source`` through ``extraction`` lives: one file per pair."""
    vid = hashlib.sha256(f"{source}\0{extraction.name}".encode()).hexdigest()[:16]
    return root / "datasets" / f"{vid}.h5"


def write_view_file(final: Path, extraction: "Extraction", source: str, layout: str, class_names, paths, shas,
                    labels, splits, skipped) -> None:
    """Write a view's columns atomically at ``final``."""
    s = string_dtype()
    tmp = tmp_name(final)
    with h5().File(tmp, "w") as f:
        f.create_dataset("path", data=list(paths), dtype=s)
        f.create_dataset("sha256", data=np.array(shas, dtype="S64"))
        f.create_dataset("label", data=np.asarray(labels, dtype=np.int32))
        f.create_dataset("split", data=list(splits), dtype=s)
        f.create_dataset("skipped_path", data=[p for p, _ in skipped], dtype=s)
        f.create_dataset("skipped_reason", data=[r for _, r in skipped], dtype=s)
        f.attrs["source"] = source
        f.attrs["layout"] = layout
        f.attrs["extraction"] = extraction.name
        f.attrs["class_names"] = json.dumps(list(class_names))
        f.attrs["created"] = time.time()
        f.attrs["format_version"] = FORMAT_VERSION
    fsync(tmp)
    publish_file(tmp, final)


def set_latest(root: Path, view: DatasetView) -> None:
    atomic_write_json(root / "latest.json", {"view": view.id, "extraction": view.extraction, "source": view.source})


def unchanged_view(root: Path, final: Path, extraction: "Extraction", paths, shas, labels, splits,
                   skipped) -> DatasetView:
    """The view at ``final`` where it already holds exactly these rows (a read-only cache); else a CacheError."""
    try:
        if extraction.unsaved:
            raise KeyError("no extraction")
        view = view_info(final)
        cols = read_view(view)
        same = (
            list(cols["path"]) == list(paths)
            and list(cols["sha256"]) == list(shas)
            and np.array_equal(cols["label"], np.asarray(labels, dtype=np.int32))
            and list(cols["split"]) == list(splits)
            and view.skipped == [tuple(x) for x in skipped]
        )
    except (OSError, KeyError, ValueError):
        same = False
    if not same:
        raise CacheError(
            f"Cannot record this dataset: the cache folder {root} is read-only and does not hold "
            "these features yet. Extract into a writable --cache-dir."
        )
    return view


def view_info(path: Path) -> DatasetView:
    with h5().File(path, "r") as f:
        skipped = list(zip(f["skipped_path"].asstr()[...], f["skipped_reason"].asstr()[...]))
        return DatasetView(
            path=path,
            source=str(f.attrs["source"]),
            layout=str(f.attrs["layout"]),
            extraction=str(f.attrs["extraction"]),
            class_names=json.loads(f.attrs["class_names"]),
            created=float(f.attrs["created"]),
            rows=int(f["path"].shape[0]),
            skipped=skipped,
        )


def list_views(root: Path) -> list[DatasetView]:
    """The readable views under ``root``, oldest first (an unreadable one is a warning)."""
    out = []
    base = root / "datasets"
    if not base.is_dir():
        return out
    for p in base.glob("*.h5"):
        if p.name.startswith("."):
            continue
        try:
            out.append(view_info(p))
        except (OSError, KeyError, ValueError) as exc:
            warnings.warn(f"featx: ignoring unreadable dataset view {p}: {exc}")
    return sorted(out, key=lambda v: v.created)


def latest_view_id(root: Path) -> str | None:
    try:
        return json.loads((root / "latest.json").read_text())["view"]
    except (OSError, ValueError, KeyError):
        return None


def read_view(view: DatasetView) -> dict:
    with h5().File(view.path, "r") as f:
        return {
            "path": np.array(f["path"].asstr()[...], dtype=object),
            "sha256": np.array([x.decode() for x in f["sha256"][...]], dtype=object),
            "label": f["label"][...],
            "split": np.array(f["split"].asstr()[...], dtype=object),
        }
