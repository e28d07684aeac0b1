"""The cache root: its extractions, its dataset views and its memo."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BrokenExtraction, CacheError, FeatxError
from ..spec import ExtractionSpec
from . import views as _views
from .atomic import atomic_write_bytes, fsync_dir, writable_or_raise, write_errors
from .extraction import Extraction
from .layout import default_cache_dir, trash_name
from .memo import Memo
from .views import DatasetView


def _broken_message(e: Extraction) -> str:
    return f"Extraction {e.name} is broken: {e.error}. Remove it with `featx cache rm {e.name}`."


class Cache:
    """A featx cache root. Cheap to create; nothing is read until asked."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # -- layout
    def ensure(self) -> "Cache":
        """Create the layout; a read-only cache that already has it is left as it is."""
        with write_errors(self.root):
            for sub in ("extractions", "datasets"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            gitignore = self.root / ".gitignore"
            if not gitignore.exists():
                atomic_write_bytes(gitignore, b"# featx cache: generated data, never committed\n*\n!README.md\n!.gitignore\n")
        return self

    def writable(self) -> bool:
        """Whether this process may write here (False for a read-only cache).

        A read-only cache still serves everything already extracted.
        """
        folders = [self.root / "extractions", self.root / "datasets"]
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return all(os.access(p, os.W_OK | os.X_OK) for p in [probe, *(f for f in folders if f.exists())])

    def memo(self) -> Memo:
        """The memo; read-only (lookups only) where this process may not write it."""
        path = self.root / "memo.sqlite"
        if not self.writable() or (path.exists() and not os.access(path, os.W_OK)):
            return Memo(path, readonly=True)
        self.ensure()
        try:
            return Memo(path)
        except sqlite3.OperationalError as exc:
            # Locked past the busy timeout, disk full, an I/O error, a file system without
            # working locks: the file may be fine. Never moved aside; this run reads what it can.
            warnings.warn(f"featx: the memo {path} cannot be written ({exc}); going on with it read-only "
                          "(see docs/filesystems.md)")
            return Memo(path, readonly=True)
        except sqlite3.DatabaseError as exc:  # not a database any more: it only saved work
            aside = path.with_name(f"memo.sqlite.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            warnings.warn(f"featx: the memo {path} was unreadable ({exc}); moved it aside to {aside.name} and started a new one")
            return Memo(path)

    # -- extractions
    def extraction(self, spec: ExtractionSpec, feature_width: int | None = None, create: bool = False) -> Extraction | None:
        """The extraction of ``spec``: None if absent, unless ``create``.

        A created extraction writes its meta.json with its first shard or
        dataset view: a run that fails before (bad weights, a crash while
        building the model) leaves no empty entry in ``featx cache list``.
        """
        root = self.root / "extractions" / spec.dirname
        found = self._load(root)
        if found is not None:
            if found.error:
                raise BrokenExtraction(_broken_message(found))
            return found
        if not create:
            return None
        meta = {
            **spec.record(),
            "key": spec.key,
            "feature_width": None if feature_width is None else int(feature_width),
            "created": time.time(),
        }
        return Extraction(root, meta, unsaved=True)

    @staticmethod
    def _load(root: Path) -> Extraction | None:
        """The extraction in ``root``; broken (``error`` set) if its meta.json is unreadable.

        A folder with neither meta.json nor shards is a run that never
        wrote anything (or is about to): not an extraction.
        """
        meta_path = root / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
                raise ValueError("no settings in it")
            ExtractionSpec.from_record(meta)
            return Extraction(root, meta)
        except FileNotFoundError:
            if not Extraction(root, {})._files():
                return None
            return Extraction(root, {}, error="meta.json is missing")
        except (OSError, ValueError, TypeError, FeatxError) as exc:
            reason = " ".join(str(exc).split())[:120]
            return Extraction(root, {}, error=f"meta.json is unreadable ({type(exc).__name__}: {reason})")

    def extractions(self, broken: bool = False) -> list[Extraction]:
        """The cached extractions; with ``broken=True`` also those whose meta.json is unreadable."""
        out = []
        base = self.root / "extractions"
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            e = self._load(d)
            if e is not None and (broken or not e.error):
                out.append(e)
        return out

    def get_extraction(self, name: str, broken: bool = False) -> Extraction:
        """An extraction by directory name or unique prefix of it or of its key.

        A broken extraction is an error that says how to remove it, unless
        ``broken=True`` (what removal needs).
        """
        every = self.extractions(broken=True)
        exact = [e for e in every if e.name == name]
        matches = exact or [e for e in every if e.name.startswith(name) or e.meta.get("key", "").startswith(name)]
        if len(matches) == 1:
            if matches[0].error and not broken:
                raise BrokenExtraction(_broken_message(matches[0]))
            return matches[0]
        if not matches:
            raise CacheError(f"No extraction {name!r} in {self.root}. `featx cache list` shows what is cached.")
        raise CacheError(f"{name!r} matches {len(matches)} extractions: {', '.join(e.name for e in matches)}.")

    def remove_extraction(self, extraction: Extraction, on_wait=None) -> list[DatasetView]:
        """Delete an extraction and the dataset views that read it.

        Waits for the extraction's lock, so a running extraction finishes
        first; a run that waited for it afterwards refuses to write
        (:class:`ExtractionRemoved`) instead of recreating the folder.
        """
        writable_or_raise(self.root / "extractions", f"remove {extraction.name}")
        writable_or_raise(self.root / "datasets", f"remove the dataset views of {extraction.name}")
        with extraction.lock(on_wait=on_wait):
            views = [v for v in self.views() if v.extraction == extraction.name]
            for v in views:
                with contextlib.suppress(FileNotFoundError):
                    v.path.unlink()
            latest = self.latest_view_id()
            if latest and any(v.id == latest for v in views):
                with contextlib.suppress(FileNotFoundError):
                    (self.root / "latest.json").unlink()
            trash = trash_name(extraction.root)
            os.replace(extraction.root, trash)  # one rename: readers see all or nothing
            fsync_dir(trash.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return views

    # -- dataset views: see featx.cache.views
    def write_view(
        self,
        extraction: Extraction,
        source: str,
        layout: str,
        class_names: Sequence[str],
        paths: Sequence[str],
        shas: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        skipped: Sequence[tuple[str, str]] = (),
        set_latest: bool = True,
    ) -> DatasetView:
        """Record a dataset's rows (path, sha256, label, split) for an extraction.

        Only ``featx extract`` writes views: they are what ``fit-head`` and
        ``load_features`` read, so predicting never changes them. A dataset
        none of whose images could be read records its view (with the
        skipped files) but creates no extraction. In a read-only cache, an
        identical view already there is returned as it is; anything else is
        a :class:`CacheError`.
        """
        final = _views.view_path(self.root, source, extraction)
        if not self.writable():
            return _views.unchanged_view(self.root, final, extraction, paths, shas, labels, splits, skipped)
        self.ensure()
        if extraction.meta.get("feature_width") is not None:
            extraction.save_meta()
        _views.write_view_file(final, extraction, source, layout, class_names, paths, shas, labels, splits, skipped)
        view = _views.view_info(final)
        if set_latest:
            _views.set_latest(self.root, view)
        return view

    def views(self) -> list[DatasetView]:
        return _views.list_views(self.root)

    def latest_view_id(self) -> str | None:
        return _views.latest_view_id(self.root)

    def read_view(self, view: DatasetView) -> dict:
        return _views.read_view(view)
