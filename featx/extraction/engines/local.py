"""The local engine: the missing images computed in this process.

The pipeline reads, hashes and decodes images in a thread pool, a few
images per task and a few batches ahead of the model (hashlib, Pillow's
decoder and simplejpeg release the GIL); dispatches each batch to the model
before fetching the previous batch's features (on JAX the device works while
the host prepares the next batch); and hands the rows to a writer thread that
flushes an immutable shard every couple of seconds. Images whose sha256 is
already in the extraction are never decoded; when nothing is missing, the
model is never built and no framework is imported. The progress bar counts
rows written to the cache (not images decoded), so its count, its ETA and
the line a stopped run prints all say what the cache keeps. A run's memory
budget is in docs/memory.md.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import time

import numpy as np

from ... import backbones as B
from ...errors import FeatxError
from ...spec import note_loaded
from .. import gpu_decode
from ..forward import SHELF, Forward, persist_jax_compilations
from ..steps import (FLUSH_ROWS, FLUSH_SECONDS, STAGES, Prepared, pad_batch, padded_rows, prepare_image,
                     progress_bar, stopped_message)
from ..taps import TapSet
from ..writer import Writer

# Images per decode task: one future per image costs more GIL-held
# bookkeeping than hashing a small JPEG.
CHUNK = 8
# While the model is being built (importing the framework, building and
# tracing: seconds), decoding goes on and up to this many bytes of decoded
# pixels, and at most AHEAD_IMAGES images, wait for it; past that the
# pipeline waits for the model. The image cap binds below about 145 px: a
# small image costs little to decode, and 85,000 of 32 px (256 MB of
# pixels, more with each one's bookkeeping) would save seconds at most
# while holding memory that grows with the data up to that size.
AHEAD_BYTES = 256 * 2**20
AHEAD_IMAGES = 4096


class LocalEngine:
    """Computes a run's missing images here: decoding threads, the model, a writer thread.

    ``decode``: where JPEGs are decoded, ``cpu`` (Pillow/simplejpeg), ``gpu``
    or ``auto`` (nvImageCodec where it can run: :mod:`featx.extraction.gpu_decode`);
    ``gpu`` raises its one-line error here, before any work, where it cannot.
    """

    def __init__(self, decode: str = "cpu"):
        self.decode = decode
        if decode == "gpu":
            gpu_decode.require()
        self.gpu: gpu_decode.GpuDecoder | None = None  # the current run's

    def compute(self, run, todo, memo, bad: dict[str, str], cached) -> None:
        """Compute ``todo`` (a list, or a stream of array rows) into ``run.extraction`` (whose lock the caller holds)."""
        total = len(todo) if isinstance(todo, list) else None
        self.gpu = gpu_decode.GpuDecoder(self.decode, run.settings.size) if self.decode != "cpu" else None
        _Pipeline(self, run, memo, bad, cached, total).execute(todo)
        run.extraction.settle()  # the run's own shards into one, then the size-class rule

    def _forward(self, run, key: str) -> Forward:
        """The run's forward pass: kept from an earlier run (forward.SHELF), else built."""
        forward = SHELF.take(key)
        if forward is None:
            return Forward(self._model(run))
        self._attach(run, forward.model)
        return forward

    def _model(self, run):
        """The feature model of the run's specs, attached to the run's extraction."""
        persist_jax_compilations(run.cache.root / "jax-compilation")
        specs = run.settings.specs
        model = B.build_feature_model(specs if len(specs) > 1 else specs[0], run.settings.weights)
        self._attach(run, model)
        return model

    @staticmethod
    def _attach(run, model) -> None:
        """The model's weights checked against (or recorded in) the extraction; a tap set's widths."""
        note_loaded(run.extraction, model._featx_loaded)  # recorded by a new extraction, checked by an old one
        if isinstance(run.extraction, TapSet):
            run.extraction.widths = list(model._featx_widths)

    def _prepare_chunk(self, run, items, cached, bad: dict) -> tuple[list[Prepared], list[float]]:
        clock = [0.0, 0.0, 0.0]
        gpu = self.gpu if self.gpu is not None and self.gpu.active() else None
        preps = [prepare_image(it, run.settings.size, cached, bad, clock, gpu and gpu.takes) for it in items]
        if gpu is not None:  # the JPEGs it took, in one call
            t = time.perf_counter()
            gpu.decode(preps)
            clock[2] += time.perf_counter() - t
        return preps, clock


class _Pipeline:
    """One run of the local pipeline; its state is what the steps below share."""

    def __init__(self, engine: LocalEngine, run, memo, bad: dict, cached, total: int | None):
        self.engine, self.run, self.bad, self.cached = engine, run, bad, cached
        self.name = run.settings.backbone.name
        # The bar counts rows written to the cache: its total is the images
        # to compute, less each one found cached or bad on the way.
        self.bar = progress_bar(total, run.progress, f"extract {self.name}")
        self.clock = run.stage_seconds
        self.batch: list[Prepared] = []
        self.in_flight: tuple | None = None  # (output handle, rows, batch) dispatched, not yet fetched
        self.pending = _Pending()
        self.memo_rows: list = []
        self.bad_rows: list = []
        self.last_flush = time.perf_counter()
        self.writer = Writer(run.extraction, memo, self.clock, on_written=self.bar.update)
        self.forward = None
        builders = (B.build_feature_model, Forward, type(engine)._model)  # a replaced one gets no kept model
        self.shelf_key = SHELF.key(run.settings.specs, run.settings.weights, builders) if SHELF.capacity() else ""
        self.builder: cf.Future | None = None  # the model, built on a thread of its own
        self.build_pool: cf.ThreadPoolExecutor | None = None
        # Full batches decoded before the model was ready.
        self.waiting: collections.deque[list[Prepared]] = collections.deque()
        self.waiting_bytes = self.waiting_images = 0
        self.t_start: float | None = None

    def execute(self, todo) -> None:
        self.build_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="featx-build")
        try:
            self._feed(todo)
        except BaseException as exc:
            stopped = exc
            raise
        else:
            stopped = None
        finally:
            self._finish(stopped)

    def _feed(self, todo) -> None:
        run = self.run
        with cf.ThreadPoolExecutor(run.workers, thread_name_prefix="featx-decode") as pool:
            chunks = _chunks(todo, CHUNK)  # todo may be a stream of array rows
            window = max(2, -(-(2 * run.batch_size) // CHUNK) + run.workers)
            prepare = lambda c: self.engine._prepare_chunk(run, c, self.cached, self.bad)  # noqa: E731
            for preps, spent in _bounded_map(pool, prepare, chunks, window):
                for stage, seconds in zip(STAGES, spent):
                    self.clock[stage] += seconds
                for prep in preps:
                    self._take(prep)
            self._submit(self.batch)
            self._submit(None)
            if self.in_flight is not None:
                self._fetch()

    def _take(self, prep: Prepared) -> None:
        """One prepared image: skipped, found cached, or added to the batch."""
        run = self.run
        if prep.sha and prep.stat:
            self.memo_rows.append((prep.item.path, *prep.stat, prep.sha))
        if prep.status == "bad":
            if prep.sha:
                self.bad_rows.append((prep.sha, prep.reason))
            if run.strict:  # keep what was computed before stopping
                self._submit(None)
                if self.in_flight is not None:
                    self._fetch()
                self._flush()
            _not_to_write(self.bar)
            run.skip(prep.item.path, prep.reason)
            return
        run.sha[prep.item.path] = prep.sha
        if prep.status == "cached" or prep.sha in self.cached:
            _not_to_write(self.bar)
            return
        if self.builder is None:  # the first image to compute: build the model beside the decoding
            self.bar.set_description(f"extract {self.name} (building model)")
            self.builder = self.build_pool.submit(self._build)
        self.cached.add(prep.sha)  # a copy later in the data is not computed twice
        self.batch.append(prep)
        if len(self.batch) == run.batch_size:
            self._submit(self.batch)
            self.batch = []

    def _build(self) -> Forward:
        return self.engine._forward(self.run, self.shelf_key)

    def _ready(self, block: bool) -> bool:
        """Whether the model is built (raising its error); waits for it when ``block``."""
        if self.forward is None and (block or self.builder.done()):
            self.forward = self.builder.result()
            self.bar.set_description(f"extract {self.name}")
            self.t_start = time.perf_counter()
        return self.forward is not None

    def _submit(self, full: list[Prepared] | None) -> None:
        """Run a full batch, or keep it while the model is being built and
        there is room; ``None`` runs whatever is kept (the model is waited for)."""
        if full:
            self.waiting.append(full)
            self.waiting_bytes += sum(int(np.prod(p.pixels.shape)) for p in full)  # uint8: NumPy or device
            self.waiting_images += len(full)
        full_up = self.waiting_bytes > AHEAD_BYTES or self.waiting_images > AHEAD_IMAGES
        if not self.waiting or not self._ready(block=full is None or full_up):
            return
        while self.waiting:  # each held batch is freed once it has run, not after the last one
            self.in_flight = self._dispatch(self.waiting.popleft())
        self.waiting_bytes = self.waiting_images = 0

    def _dispatch(self, batch: list[Prepared]) -> tuple:
        t = time.perf_counter()
        pixels = [p.pixels for p in batch]
        for p in batch:  # the batch is kept until its rows are fetched; its pixels are not needed
            p.pixels = None
        n = len(pixels)
        if all(isinstance(px, np.ndarray) for px in pixels):
            x = pad_batch(np.stack(pixels), self.run.batch_size, self.run.on_gpu)
        else:  # decoded on the device: stacked there
            x = gpu_decode.stack(pixels, padded_rows(n, self.run.batch_size, self.run.on_gpu))
        del pixels
        t1 = time.perf_counter()
        out = self.forward.dispatch(x)  # uint8 in; the model preprocesses
        self.clock["stack"] += t1 - t
        self.clock["model"] += time.perf_counter() - t1
        if self.in_flight is not None:
            self._fetch()  # the previous batch, while the device works on this one
        return out, n, batch

    def _fetch(self) -> None:
        out, n, done = self.in_flight
        self.in_flight = None
        t = time.perf_counter()
        feats = self.forward.fetch(out)[:n].astype(np.float32)
        self.clock["model"] += time.perf_counter() - t
        self.pending.add(feats, done)
        self.run.computed += n
        if self.pending.rows >= FLUSH_ROWS or time.perf_counter() - self.last_flush >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        self.writer.put(self.pending.take() if self.pending.rows else None, self.memo_rows[:], self.bad_rows[:])
        self.memo_rows.clear()
        self.bad_rows.clear()
        self.last_flush = time.perf_counter()

    def _finish(self, stopped: BaseException | None) -> None:
        self.build_pool.shutdown(wait=False)
        if getattr(self.forward, "model", None) is not None and self.shelf_key and stopped is None:
            SHELF.put(self.shelf_key, self.forward)
        try:
            self._flush()
        finally:
            try:
                self.writer.close()
            finally:
                self.bar.close()
                if self.t_start is not None:
                    self.run.compute_seconds = time.perf_counter() - self.t_start
                # A user mistake that kept nothing stays a one-line error.
                if stopped is not None and (self.writer.rows or not isinstance(stopped, FeatxError)):
                    self.run.log(stopped_message(self.writer.rows, self.bar.total))


class _Pending:
    """Feature rows computed but not yet written to a shard."""

    def __init__(self):
        self.feats, self.shas, self.paths, self.labels = [], [], [], []

    @property
    def rows(self) -> int:
        return len(self.shas)

    def add(self, feats: np.ndarray, batch: list[Prepared]) -> None:
        self.feats.append(feats)
        self.shas += [p.sha for p in batch]
        self.paths += [p.item.path for p in batch]
        self.labels += [p.item.label or "" for p in batch]

    def take(self):
        out = (np.concatenate(self.feats), self.shas, self.paths, self.labels)
        self.__init__()
        return out


def _chunks(items, size: int):
    """``items`` (a list or a stream) in lists of ``size``, lazily."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bounded_map(pool: cf.Executor, fn, items, window: int):
    """``pool.map`` that keeps at most ``window`` tasks in flight, in order.

    ``Executor.map`` submits everything at once, which would decode the
    whole dataset into memory ahead of the model.
    """
    it = iter(items)
    queue: collections.deque = collections.deque()
    for item in it:
        queue.append(pool.submit(fn, item))
        if len(queue) >= window:
            break
    while queue:
        yield queue.popleft().result()
        for item in it:
            queue.append(pool.submit(fn, item))
            break


def _not_to_write(bar) -> None:
    """One image of the bar's total turned out cached or bad: nothing to write for it."""
    if bar.total:
        bar.total -= 1  # shown at the next update
