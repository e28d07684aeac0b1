"""Planning a run: the specs the options resolve to, and what the memo and the index already answer.

A :class:`Run` lists the files, asks the memo for their hashes and the
extraction's index for the rows it holds, takes the extraction's lock and
hands only the missing images to an engine: ``engine.compute(run, todo,
memo, bad, cached)``. Engines read and update the run through its public
attributes (``settings``, ``extraction``, ``sha``, ``computed``, ...) and
:meth:`Run.skip`; the run imports no engine.
"""

from __future__ import annotations

import os
from typing import Sequence

from .. import backbones as B
from ..arrays import ArrayItem, is_streamed
from ..cache import Cache, Extraction
from ..datasets import Dataset, ImageItem
from ..errors import DataError
from ..runtime import gpu_available
from ..spec import ExtractionSpec, resolve_spec
from .options import ExtractOptions
from .steps import STAGES
from .taps import TapSet


class Settings:
    """Resolved options of one extraction run: its specs (one per tap) and the weights to load."""

    def __init__(self, specs: Sequence[ExtractionSpec], weights: B.Weights | None = None,
                 override: str | os.PathLike | None = None):
        self.specs = list(specs)
        self.spec = self.specs[0]
        self._weights, self._override = weights, override
        self.backbone = B.get_backbone(self.spec.backbone)
        self.size = self.spec.input_size

    @classmethod
    def resolve(cls, cache: Cache, opts: ExtractOptions) -> "Settings":
        """The specs ``opts`` name: resolved from the options, or the recorded ones of ``opts.spec``
        (whose weights are loaded only if some image must be computed)."""
        if opts.spec is not None:
            return cls(opts.spec, None, opts.weights_override())
        precision = opts.compute_precision()  # decided once, here, for every engine
        resolved = [resolve_spec(cache, opts.backbone, opts.weights, opts.image_size, opts.pooling, k, precision,
                                 opts.seed, tta=opts.tta) for k in opts.cuts]
        return cls([s.with_store(opts.store) for s, _ in resolved], resolved[0][1])

    @property
    def weights(self) -> B.Weights:
        if self._weights is None:
            self._weights = self.spec.load_weights(self._override)
        return self._weights


class Run:
    """The state of one extraction run over one dataset."""

    def __init__(self, cache: Cache, settings: Settings, ds: Dataset, engine, *, batch_size: int, strict: bool,
                 workers: int | None, progress: bool, log):
        self.cache, self.settings, self.ds = cache, settings, ds
        self.engine = engine  # computes the missing images: engine.compute(run, todo, memo, bad, cached)
        self.batch_size, self.strict, self.progress, self.log = batch_size, strict, progress, log
        self.workers = workers or min(16, max(2, os.cpu_count() or 2))
        self.on_gpu = gpu_available()
        self.sha: dict[str, str] = {}  # path -> sha256 of every image the run answered
        self.skipped: list[tuple[str, str]] = []
        self.computed = 0
        self.compute_seconds = 0.0
        # Thread-seconds per pipeline stage (read, hash and decode summed over the workers).
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        found = [cache.extraction(s) for s in settings.specs]
        self.extraction: Extraction | TapSet | None = (
            found[0] if len(found) == 1 else TapSet(found) if all(found) else None
        )

    def extractions(self) -> list[Extraction]:
        """One extraction per tap (unsaved where nothing was computed)."""
        if isinstance(self.extraction, TapSet):
            return self.extraction.parts
        return [self.extraction or self.cache.extraction(s, create=True) for s in self.settings.specs]

    def skip(self, path: str, reason: str) -> None:
        """Leave out a bad image (stop the run with ``strict``)."""
        if self.strict:
            raise DataError(f"Bad image {path}: {reason} (--strict stops at the first bad image).")
        self.skipped.append((path, reason))

    def execute(self) -> None:
        memo = self.cache.memo()
        try:
            if is_streamed(self.ds):  # rows keyed by their pixels as they arrive: nothing to stat or look up
                self._compute(iter(self.ds.items), memo, {})
                return
            bad = memo.bad()
            todo = self._plan(memo, bad)
            if todo:
                self._compute(todo, memo, bad)
        finally:
            memo.close()

    def _plan(self, memo, bad: dict[str, str]) -> list[ImageItem]:
        """The items to read, hash and maybe compute; the others are answered here.

        The stats, the memo's answers and the extraction's keys are dropped
        on return: on a large extraction each is a dict or set of every
        row, and the run needs none of them (it reads the index again under
        the lock).
        """
        stats = self._stat_all()
        known = memo.lookup(stats)
        cached = self.extraction.known() if self.extraction else set()
        todo = []
        for item in self.ds.items:
            if isinstance(item, ArrayItem):  # keyed by its pixels: no file, no memo
                todo.append(item)
                continue
            if item.path not in stats:
                continue
            sha = known.get(item.path)
            if sha is not None and sha in cached:
                self.sha[item.path] = sha
            elif sha is not None and sha in bad:
                self.skip(item.path, bad[sha])
            else:
                todo.append(item)
        return todo

    def _stat_all(self) -> dict[str, tuple[int, int]]:
        stats = {}
        for item in self.ds.items:
            if isinstance(item, ArrayItem):
                continue
            try:
                st = os.stat(item.path)
                stats[item.path] = (st.st_size, st.st_mtime_ns)
            except OSError as exc:
                self.skip(item.path, "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc.strerror}")
        return stats

    def _compute(self, todo, memo, bad: dict[str, str]) -> None:
        # Not on disk until its first shard (with the model's real width):
        # a run that fails before that leaves nothing behind.
        if self.extraction is None:
            parts = [self.cache.extraction(s, create=True) for s in self.settings.specs]
            self.extraction = parts[0] if len(parts) == 1 else TapSet(parts)
        ext = self.extraction
        with ext.lock(on_wait=lambda: self.log(f"featx: waiting for another process extracting into {ext.name}...")):
            cached = ext.known()  # another process may have filled it while we waited
            self.engine.compute(self, todo, memo, bad, cached)
