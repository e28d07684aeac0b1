"""Phase one: run a headless backbone over a dataset once and cache the features.

The pipeline reads, hashes and decodes images in a thread pool, a few
images per task and a few batches ahead of the model (hashlib, Pillow's
decoder and simplejpeg release the GIL); dispatches each batch to the model
before fetching the previous batch's features (on JAX the device works while
the host prepares the next batch); and hands the rows to a writer thread that
flushes an immutable shard every couple of seconds. Images whose sha256 is
already in the extraction are never decoded; when nothing is missing, the
model is never built and no framework is imported.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import backbones as B
from .cache import Cache, DatasetView, Extraction, ExtractionSettings
from .data import Dataset, ImageItem, discover, read_image
from .errors import BadImage, DataError
from .runtime import backend_name, gpu_available, import_keras, resolve_precision

# A shard is flushed every FLUSH_SECONDS of computing (or FLUSH_ROWS rows):
# that bounds what a killed run loses. FEATX_FLUSH_SECONDS overrides it.
FLUSH_SECONDS = float(os.environ.get("FEATX_FLUSH_SECONDS", 2.0))
FLUSH_ROWS = 2048
# Images per decode task: one future per image costs more GIL-held
# bookkeeping than hashing a small JPEG.
CHUNK = 8
STAGES = ("read", "hash", "decode", "stack", "model", "write")


@dataclass
class ExtractResult:
    """What an extraction did: counts, skipped files, where the rows are."""

    view: DatasetView
    extraction: Extraction
    total: int
    computed: int
    reused: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    compute_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.computed / self.compute_seconds if self.compute_seconds else 0.0

    def summary(self) -> str:
        s = self.extraction.settings
        rate = f", {self.images_per_second:.1f} img/s" if self.computed else ""
        return (
            f"{s.backbone} {s.input_size}px {s.pooling}{f' cut{s.cut_blocks}' if s.cut_blocks else ''}: "
            f"{self.total} images, {self.computed} computed, {self.reused} reused, "
            f"{len(self.skipped)} skipped in {self.seconds:.1f}s{rate} -> {self.extraction.root}"
        )


@dataclass
class _Prepared:
    item: ImageItem
    stat: tuple[int, int] | None
    sha: str | None
    pixels: np.ndarray | None
    status: str  # "compute" | "cached" | "bad"
    reason: str = ""


class _Settings:
    """Resolved options of one extraction, shared by extract() and predict."""

    def __init__(self, cache, backbone, weights, image_size, pooling, cut_blocks, precision, seed):
        self.cache = cache
        self.backbone = B.get_backbone(backbone)
        memo = cache.memo()
        try:
            self.weights = B.resolve_weights(weights, seed, file_hasher=memo.hash_file, backend=backend_name())
        finally:
            memo.close()
        self.size = B.check_input_size(self.backbone, image_size, self.weights)
        self.pooling = pooling
        self.cut_blocks = int(cut_blocks)
        self.precision = resolve_precision(precision)
        self.settings = ExtractionSettings(
            backbone=self.backbone.name,
            weights=self.weights.fingerprint,
            input_size=self.size,
            preprocessing=self.backbone.preprocessing,
            pooling=pooling,
            cut_blocks=self.cut_blocks,
            precision=self.precision,
        )

    def meta(self) -> dict:
        """What a later rebuild of this model needs beyond the settings."""
        return {"weights_source": self.weights.source, "seed": self.weights.seed, "backend": backend_name()}


def settings_for(
    backbone: str = "resnet50",
    *,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int = 0,
    precision: str = "auto",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> ExtractionSettings:
    """The cache settings (and so the key) an extraction with these options uses."""
    return _Settings(Cache(cache_dir), backbone, weights, image_size, pooling, cut_blocks, precision, seed).settings


def build_feature_model(settings: ExtractionSettings, weights: B.Weights, include_preprocessing: bool = True):
    """Build the Keras feature model for cached settings (mixed precision if they say so)."""
    keras = import_keras()
    bb = B.get_backbone(settings.backbone)
    previous = keras.config.dtype_policy()
    if settings.precision == "mixed":
        keras.config.set_dtype_policy("mixed_float16")
    try:
        return B.feature_model(bb, weights, settings.input_size, settings.pooling, settings.cut_blocks,
                               include_preprocessing=include_preprocessing)
    finally:
        keras.config.set_dtype_policy(previous)


def extract(
    data: str | os.PathLike | Sequence | Dataset,
    backbone: str = "resnet50",
    *,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int = 0,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    strict: bool = False,
    workers: int | None = None,
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    set_latest: bool = True,
) -> ExtractResult:
    """Extract pooled backbone features for every image of ``data`` into the cache.

    Parameters
    ----------
    data : path, list of paths or Dataset
        A folder of class folders, a folder of split folders, a CSV
        ``path,label[,split]``, a folder of unlabeled images or image files.
    backbone : str
        Registry name (``featx backbones`` lists them).
    weights : "imagenet", "none" or path
        ImageNet weights (downloaded by Keras), seeded random weights, or a
        Keras weights file for the headless model.
    image_size : int, optional
        Square input size; the backbone's native size by default.
    pooling : {"avg", "max"}
        Global pooling of the last feature map.
    cut_blocks : int
        Tap the backbone this many named blocks before its end.
    batch_size : int, optional
        Images per forward pass; :func:`default_batch_size` by default.
    cache_dir : path, optional
        Cache root; ``$FEATX_CACHE_DIR`` or ``./cache`` by default.
    strict : bool
        Stop at the first bad image instead of skipping it.
    workers : int, optional
        Threads that read and decode images (default: CPU count, at most 16).
    precision : {"auto", "float32", "mixed"}
        ``auto`` is mixed float16 on a GPU, float32 on a CPU.
    seed : int
        Seed of the random initialisation when ``weights="none"``.
    progress : bool
        Show a progress bar (images/s, ETA) on stderr.
    log : callable, optional
        Receives one-line notes (waiting for a lock, skipped files).
    set_latest : bool
        Make this the extraction that ``fit-head`` and ``load_features()``
        use by default (prediction runs pass False).

    Returns
    -------
    ExtractResult
    """
    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if batch_size is None:
        batch_size = default_batch_size(gpu_available())
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
    cache = Cache(cache_dir).ensure()
    opts = _Settings(cache, backbone, weights, image_size, pooling, cut_blocks, precision, seed)
    ds = data if isinstance(data, Dataset) else discover(data)
    if not ds.items:
        raise DataError(f"No images found in {ds.source}.")

    run = _Run(cache, opts, ds, batch_size, strict, workers, progress, log)
    run.execute()
    labels = ds.labels_index()
    keep = [i for i, it in enumerate(ds.items) if run.sha.get(it.path)]
    view = cache.write_view(
        run.extraction,
        source=ds.source,
        layout=ds.layout,
        class_names=ds.class_names,
        paths=[ds.items[i].path for i in keep],
        shas=[run.sha[ds.items[i].path] for i in keep],
        labels=labels[keep],
        splits=[ds.items[i].split for i in keep],
        skipped=run.skipped,
        set_latest=set_latest,
    )
    return ExtractResult(
        view=view,
        extraction=run.extraction,
        total=len(ds.items),
        computed=run.computed,
        reused=len(keep) - run.computed,
        skipped=run.skipped,
        ignored=list(ds.ignored),
        seconds=time.perf_counter() - t0,
        compute_seconds=run.compute_seconds,
        stage_seconds=run.stage_seconds,
    )


class _Run:
    """The state of one extraction run over one dataset."""

    def __init__(self, cache: Cache, opts: _Settings, ds: Dataset, batch_size, strict, workers, progress, log):
        self.cache, self.opts, self.ds = cache, opts, ds
        self.batch_size, self.strict, self.progress, self.log = batch_size, strict, progress, log
        self.workers = workers or min(16, max(2, os.cpu_count() or 2))
        self.on_gpu = gpu_available()
        self.sha: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []
        self.computed = 0
        self.compute_seconds = 0.0
        # Thread-seconds per pipeline stage (read, hash and decode summed over the workers).
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.model = None
        self.extraction: Extraction | None = cache.extraction(opts.settings, opts.backbone.feature_width)

    # -- planning: what the memo and the index already answer
    def execute(self) -> None:
        memo = self.cache.memo()
        try:
            stats = self._stat_all()
            known = memo.lookup(stats)
            bad = memo.bad()
            cached = set(self.extraction.index()) if self.extraction else set()
            todo = []
            for item in self.ds.items:
                if item.path not in stats:
                    continue
                sha = known.get(item.path)
                if sha is not None and sha in cached:
                    self.sha[item.path] = sha
                elif sha is not None and sha in bad:
                    self._skip(item.path, bad[sha])
                else:
                    todo.append(item)
            if not todo:
                if self.extraction is None:  # every image was bad: still record the dataset
                    self.extraction = self.cache.extraction(
                        self.opts.settings, self.opts.backbone.feature_width, create=True, extra=self.opts.meta()
                    )
                return
            self._compute(todo, stats, memo, bad)
        finally:
            memo.close()

    def _stat_all(self) -> dict[str, tuple[int, int]]:
        stats = {}
        for item in self.ds.items:
            try:
                st = os.stat(item.path)
                stats[item.path] = (st.st_size, st.st_mtime_ns)
            except OSError as exc:
                self._skip(item.path, "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc.strerror}")
        return stats

    def _skip(self, path: str, reason: str) -> None:
        if self.strict:
            raise DataError(f"Bad image {path}: {reason} (--strict stops at the first bad image).")
        self.skipped.append((path, reason))

    # -- computing what is missing
    def _compute(self, todo: list[ImageItem], stats, memo, bad: dict[str, str]) -> None:
        self.extraction = self.extraction or self.cache.extraction(
            self.opts.settings, self._feature_width(), create=True, extra=self.opts.meta()
        )
        ext = self.extraction
        with ext.lock(on_wait=lambda: self.log(f"featx: waiting for another process extracting into {ext.name}...")):
            cached = set(ext.index())  # another process may have filled it while we waited
            self._pipeline(todo, stats, memo, bad, cached)

    def _feature_width(self) -> int:
        if self.opts.cut_blocks == 0:
            return self.opts.backbone.feature_width
        return int(self._model().output.shape[-1])

    def _model(self):
        if self.model is None:
            _persist_jax_compilations(self.cache.root / "jax-compilation")
            self.model = build_feature_model(self.opts.settings, self.opts.weights)
        return self.model

    def _prepare(self, item: ImageItem, cached: set, bad: dict, clock: list[float]) -> _Prepared:
        """Read, hash and (unless the hash is known) decode one image; adds to clock's read, hash, decode."""
        t0 = time.perf_counter()
        try:
            # stat before reading: a file edited in between keeps its old mtime
            # in the memo, so the next run hashes it again.
            st = os.stat(item.path)
            with open(item.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc.strerror}"
            return _Prepared(item, None, None, None, "bad", reason)
        stat = (st.st_size, st.st_mtime_ns)
        t1 = time.perf_counter()
        sha = hashlib.sha256(data).hexdigest()
        t2 = time.perf_counter()
        clock[0] += t1 - t0
        clock[1] += t2 - t1
        if sha in cached:
            return _Prepared(item, stat, sha, None, "cached")
        if sha in bad:
            return _Prepared(item, stat, sha, None, "bad", bad[sha])
        try:
            pixels = read_image(data, self.opts.size)
        except BadImage as exc:
            return _Prepared(item, stat, sha, None, "bad", str(exc))
        finally:
            clock[2] += time.perf_counter() - t2
        return _Prepared(item, stat, sha, pixels, "compute")

    def _prepare_chunk(self, items: list[ImageItem], cached: set, bad: dict) -> tuple[list[_Prepared], list[float]]:
        clock = [0.0, 0.0, 0.0]
        return [self._prepare(it, cached, bad, clock) for it in items], clock

    def _pipeline(self, todo, stats, memo, bad, cached: set) -> None:
        bar = _progress(len(todo), self.progress, f"extract {self.opts.backbone.name}")
        clock = self.stage_seconds
        batch: list[_Prepared] = []
        in_flight: tuple | None = None  # (output handle, rows, batch) dispatched, not yet fetched
        pending = _Pending()
        memo_rows, bad_rows = [], []
        last_flush = time.perf_counter()
        writer = _Writer(self.extraction, memo, clock)
        forward = None
        t_start = None

        def flush():
            nonlocal last_flush
            writer.put(pending.take() if pending.rows else None, memo_rows[:], bad_rows[:])
            memo_rows.clear()
            bad_rows.clear()
            last_flush = time.perf_counter()

        def fetch():
            nonlocal in_flight
            out, n, done = in_flight
            in_flight = None
            t = time.perf_counter()
            feats = forward.fetch(out)[:n].astype(np.float32)
            clock["model"] += time.perf_counter() - t
            pending.add(feats, done)
            self.computed += n
            if pending.rows >= FLUSH_ROWS or time.perf_counter() - last_flush >= FLUSH_SECONDS:
                flush()

        def dispatch():
            t = time.perf_counter()
            x = np.stack([p.pixels for p in batch])
            n = len(x)
            padded = _padded(n, self.batch_size, self.on_gpu)
            if n < padded:  # few distinct shapes keep the compiled graphs
                x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
            t1 = time.perf_counter()
            out = forward.dispatch(x)  # uint8 in; the model preprocesses
            clock["stack"] += t1 - t
            clock["model"] += time.perf_counter() - t1
            if in_flight is not None:
                fetch()  # the previous batch, while the device works on this one
            return out, n, batch[:]

        try:
            with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="featx-decode") as pool:
                chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
                window = max(2, -(-(2 * self.batch_size) // CHUNK) + self.workers)
                for preps, spent in _bounded_map(pool, lambda c: self._prepare_chunk(c, cached, bad), chunks, window):
                    for stage, seconds in zip(STAGES, spent):
                        clock[stage] += seconds
                    bar.update(len(preps))
                    for prep in preps:
                        if prep.sha and prep.stat:
                            memo_rows.append((prep.item.path, *prep.stat, prep.sha))
                        if prep.status == "bad":
                            if prep.sha:
                                bad_rows.append((prep.sha, prep.reason))
                            if self.strict:  # keep what was computed before stopping
                                if in_flight is not None:
                                    fetch()
                                flush()
                            self._skip(prep.item.path, prep.reason)
                            continue
                        self.sha[prep.item.path] = prep.sha
                        if prep.status == "cached" or prep.sha in cached:
                            continue
                        if forward is None:
                            bar.set_description(f"extract {self.opts.backbone.name} (building model)")
                            forward = _Forward(self._model())
                            bar.set_description(f"extract {self.opts.backbone.name}")
                            t_start = time.perf_counter()
                        cached.add(prep.sha)  # a copy later in the data is not computed twice
                        batch.append(prep)
                        if len(batch) == self.batch_size:
                            in_flight = dispatch()
                            batch.clear()
                if batch:
                    in_flight = dispatch()
                    batch.clear()
                if in_flight is not None:
                    fetch()
        finally:
            try:
                flush()
            finally:
                writer.close()
                bar.close()
                if t_start is not None:
                    self.compute_seconds = time.perf_counter() - t_start
        ext = self.extraction
        if len(writer.shards) > 1:
            ext.compact(only=writer.shards)
        if len(ext.shards()) > 32:
            ext.compact()


class _Forward:
    """Runs batches through the model; ``dispatch`` returns before the result is ready where it can.

    On JAX a jitted stateless call returns as soon as the work is queued on
    the device, so the host prepares batch i+1 while the device computes
    batch i and ``fetch`` waits only for what is not done yet. On
    TensorFlow one ``tf.function`` traced for any batch length, at build
    time: ``predict_on_batch`` traced again for each new batch length, which
    cost seconds per shape (the short last batch of every run) and copied
    every result back to NumPy before returning. Other backends use
    ``predict_on_batch``.
    """

    def __init__(self, model):
        self.dispatch = model.predict_on_batch
        backend = backend_name()
        if backend == "jax":
            import jax

            state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            call = jax.jit(lambda trainable, non_trainable, x: model.stateless_call(trainable, non_trainable, x)[0])
            self.dispatch = lambda x: call(*state, x)
        elif backend == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)
            call = tf.function(lambda x: model(x, training=False), input_signature=[spec])
            call.get_concrete_function()  # trace now, while the bar says "building model"
            self.dispatch = call

    @staticmethod
    def fetch(out) -> np.ndarray:
        return np.asarray(out)


class _Writer:
    """Writes shards and memo rows on a thread of its own, so the model never waits for the disk.

    The queue holds two flushes: a slow disk slows the run down instead of
    filling memory. An error in the thread is raised in the caller at the
    next ``put`` or at ``close``; later jobs are dropped, never half written.
    """

    def __init__(self, extraction: Extraction, memo, clock: dict[str, float]):
        self.extraction, self.memo, self.clock = extraction, memo, clock
        self.shards: list = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, name="featx-writer", daemon=True)
        self._thread.start()

    def put(self, rows, memo_rows: list, bad_rows: list) -> None:
        self._raise()
        if rows is not None or memo_rows or bad_rows:
            self._queue.put((rows, memo_rows, bad_rows))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so that put() never blocks
            t = time.perf_counter()
            try:
                rows, memo_rows, bad_rows = job
                if rows is not None:
                    self.shards.append(self.extraction.write_shard(*rows))
                self.memo.remember(memo_rows)
                self.memo.remember_bad(bad_rows)
            except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                self.error = exc
            self.clock["write"] += time.perf_counter() - t


def default_batch_size(on_gpu: bool) -> int:
    """Images per forward pass when none is given: 128 on a GPU, 64 on a CPU.

    On a GPU a larger batch keeps the device busy while the host prepares
    the next. On a CPU, 64 costs 20% less model time per image than 32 with
    a small backbone (fewer calls, each with a fixed overhead; measured with
    mobilenetv3small at 32 px) and no more with a large one; more than 64
    only delays the first shard.
    """
    return 128 if on_gpu else 64


def _persist_jax_compilations(folder) -> None:
    """Keep XLA's compiled model on disk beside the features (JAX backend only).

    An incremental run on a GPU otherwise spends most of its time
    recompiling the same model. A cache the user configured is left alone.
    """
    if backend_name() != "jax":
        return
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _padded(n: int, batch_size: int, on_gpu: bool) -> int:
    """Rows to run for a batch of ``n``: the full batch on a GPU (padding is
    nearly free there and a new shape costs a compile), else the next
    multiple of 8 (on a CPU every padded row costs as much as a real one;
    JAX compiles each of these few shapes once, TensorFlow none)."""
    return batch_size if on_gpu else min(batch_size, -(-n // 8) * 8)


class _Pending:
    """Feature rows computed but not yet written to a shard."""

    def __init__(self):
        self.feats, self.shas, self.paths, self.labels = [], [], [], []

    @property
    def rows(self) -> int:
        return len(self.shas)

    def add(self, feats: np.ndarray, batch: list[_Prepared]) -> None:
        self.feats.append(feats)
        self.shas += [p.sha for p in batch]
        self.paths += [p.item.path for p in batch]
        self.labels += [p.item.label or "" for p in batch]

    def take(self):
        out = (np.concatenate(self.feats), self.shas, self.paths, self.labels)
        self.__init__()
        return out


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


class _NoBar:
    def update(self, n=1):
        pass

    def set_description(self, desc):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
