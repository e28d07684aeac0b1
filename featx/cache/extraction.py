"""One extraction: the folder of shards computed with one set of settings.

:class:`Extraction` is the face the rest of featx sees. Each of its jobs
lives in a module of its own: the shards in use (:mod:`.shardset`), the
lock (:mod:`.lock`), lookups and reads (:mod:`.reading`), merging
(:mod:`.merge`) and staged shards (:mod:`.staging`).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import ExtractionRemoved
from ..spec import ExtractionSpec
from . import lock as _lock
from . import merge, reading, staging
from .atomic import atomic_write_json, file_size, publish_file, writable_or_raise, write_errors
from .layout import shard_name, tmp_name
from .reading import KnownRows
from .shards import Shard, write_shard_file
from .shardset import ShardSet


@dataclass
class Extraction:
    """One extraction directory: the shards of one set of settings.

    ``error`` is set (and ``meta`` empty) for a broken extraction, one whose
    meta.json cannot be read; such an entry can only be listed and removed.
    An extraction made by ``Cache.extraction(create=True)`` has its
    meta.json written with its first shard (or view), so a run that fails
    before computing anything leaves no empty entry behind.
    """

    root: Path
    meta: dict
    error: str | None = None
    unsaved: bool = field(default=False, repr=False, compare=False)
    _shardset: ShardSet = field(init=False, repr=False, compare=False)
    _knowns: weakref.WeakSet = field(default_factory=weakref.WeakSet, init=False, repr=False, compare=False)
    _own: set = field(default_factory=set, init=False, repr=False, compare=False)  # shards holding only this lock's rows

    def __post_init__(self):
        self._shardset = ShardSet(self.root / "shards", self.root.name)

    def __repr__(self) -> str:
        return f"Extraction({str(self.root)!r}" + (f", error={self.error!r})" if self.error else ")")

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def spec(self) -> ExtractionSpec:
        """The extraction's :class:`~featx.spec.ExtractionSpec`, read from its ``meta.json``."""
        return ExtractionSpec.from_record(self.meta, where=f"Extraction {self.name}")

    settings = spec  # the fields used to be called settings

    @property
    def store(self) -> str:
        """The dtype rows are stored in (``float32``, or ``float16`` where asked for)."""
        return (self.meta.get("settings") or {}).get("store") or "float32"

    @property
    def _locked(self) -> bool:
        return self._shardset.locked

    # -- the shards in use
    def _files(self) -> list[Path]:
        return self._shardset.files()

    def _live(self, keep_unreadable: bool = False) -> list[tuple[Path, Shard | None]]:
        return self._shardset.live(keep_unreadable)

    def _drop_replaced(self) -> None:
        self._shardset.drop_replaced()

    def _refresh_knowns(self) -> None:
        for k in list(self._knowns):
            k.refresh()

    def shards(self) -> list[Path]:
        """The shards readers use: every ``shards/*.h5`` but those a merged shard replaces."""
        return [p for p, _ in self._live(keep_unreadable=True)]

    def quarantined(self) -> list[Path]:
        return self._shardset.quarantined()

    def rows(self) -> int:
        """Rows in the live shards (a row copied into two shards, which only old caches hold, counts twice)."""
        return sum(s.n for _, s in self._live())

    def size_bytes(self) -> int:
        return sum(file_size(p) for p in self.shards())

    # -- reading
    def index(self) -> dict[str, tuple[Path, int]]:
        """sha256 -> (shard, row) over all readable shards; the first copy wins.

        Builds a dict of every row: for tools and tests. Runs use
        :meth:`known`, :meth:`locate` and :meth:`read`, which binary-search each shard.
        """
        out: dict[str, tuple[Path, int]] = {}
        for path, shard in self._live():
            rows = np.arange(shard.n) if shard.perm is None else shard.perm
            for row, key in zip(rows.tolist(), shard.keys.tolist()):
                out.setdefault(key.decode(), (path, row))
        return out

    def known(self) -> KnownRows:
        """The extraction's keys as a set-like object for ``sha in known`` (and ``known.add``)."""
        k = KnownRows(self)
        self._knowns.add(k)
        return k

    def locate(self, shas: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, file row) of each sha256, -1 where absent: see :func:`.reading.locate`."""
        return reading.locate(self, shas)

    def read(self, shas: Sequence[str]) -> np.ndarray:
        """Feature rows for ``shas`` in that order, as float32; raises if any is missing.

        Reading k rows costs about O(k log N), whatever the size of the
        extraction (see :func:`.reading.read_rows`).
        """
        return reading.read_rows(self, shas)

    # -- writing (holding the lock)
    @contextlib.contextmanager
    def lock(self, on_wait=None) -> Iterator[None]:
        """Exclusive right to add, merge or remove shards; released by the kernel if we die.

        Shards found unreadable while the lock is held are moved aside
        (``shards/.quarantine-*``) when the holder finishes without error:
        by then a run has recomputed the rows its data needed. Taking the
        lock also tidies what killed runs left: half-written ``.tmp-*``
        files, a removal's ``.trash-*`` folder, and the parts of a merge
        that was killed before it removed them.
        """
        with _lock.hold(self, on_wait):
            yield

    def save_meta(self) -> None:
        """Write meta.json if this extraction has none yet (first shard or view)."""
        meta_path = self.root / "meta.json"
        if not self.unsaved or meta_path.exists():
            self.unsaved = False
            return
        writable_or_raise(self.root.parent, f"write extraction {self.name}")
        self.root.mkdir(parents=True, exist_ok=True)
        with write_errors(self.root):
            atomic_write_json(meta_path, self.meta)
        self.unsaved = False

    def write_shard(self, features: np.ndarray, shas: Sequence[str], paths: Sequence[str], labels: Sequence[str]) -> Path:
        """Write one immutable shard atomically and return its path.

        Refuses (:class:`ExtractionRemoved`) when the extraction's meta.json
        is gone: a run must not resurrect an extraction removed under it.
        While the lock is held, shards of one size class are then merged
        (:meth:`merge_tiers`).
        """
        if self.meta.get("feature_width") is None:  # known once the model has run
            self.meta["feature_width"] = int(np.shape(features)[1])
        self.save_meta()
        if not (self.root / "meta.json").exists():
            raise ExtractionRemoved(
                f"Extraction {self.name} was removed (`featx cache rm`) while this run was writing to it; "
                "nothing more was written. Run the command again."
            )
        writable_or_raise(self.root, f"write to extraction {self.name}")
        with write_errors(self.root):
            self.shard_dir.mkdir(exist_ok=True)
        final = self.shard_dir / shard_name()
        tmp = tmp_name(final)
        try:
            with write_errors(self.root):
                write_shard_file(tmp, self.name, features, shas, paths, labels, store=self.store)
            publish_file(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if self._locked:
            self._own.add(final.name)
            self.merge_tiers()
        return final

    def staged(self) -> list[Path]:
        """Complete shards that distributed workers wrote but no driver has published yet."""
        return staging.staged(self.shard_dir)

    def publish(self, staged: Iterable[Path]) -> list[Path]:
        """Rename staged shards (``shards/.staged-*``, see :func:`write_staged_shard`) into place.

        Call while holding :meth:`lock`. The first shard also writes
        meta.json, with the feature width read from it. A staged shard that
        is not readable is deleted: its rows are computed again when needed.
        Shards of one size class are then merged (:meth:`merge_tiers`).
        """
        out = staging.publish(self, staged)
        if out and self._locked:
            self.merge_tiers()
        return out

    # -- merging (holding the lock): see featx.cache.merge
    def settle(self) -> int:
        """At the end of a run: merge the shards that hold only this run's rows into one, then apply
        the size-class rule (:meth:`merge_tiers`). Returns the shards merged."""
        return merge.settle(self)

    def merge_tiers(self) -> int:
        """Merge the shards of any size class that holds FANOUT of them; returns the shards merged."""
        return merge.merge_tiers(self)

    def compact(self, min_shards: int = 2, only: Sequence[Path] | None = None) -> int:
        """Merge shards (all, or ``only``) into one, streamed; returns the shards merged (:func:`.merge.compact`)."""
        return merge.compact(self, min_shards, only)
