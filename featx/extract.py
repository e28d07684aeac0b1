"""Phase one: run a headless backbone over a dataset once and cache the features.

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
import contextlib
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
from .arrays import ArrayItem, as_dataset, is_array_data, is_streamed, view_source
from .cache import Cache, DatasetView, Extraction
from .data import Dataset, ImageItem, discover, read_image
from .errors import BadImage, DataError, DecoderUnavailable, FeatxError
from .runtime import backend_name, gpu_available
from .spec import ExtractionSpec, note_loaded, one_pass_groups, resolve_spec

# A shard is flushed every FLUSH_SECONDS of computing (or FLUSH_ROWS rows):
# that bounds what a killed run loses. FEATX_FLUSH_SECONDS overrides it.
FLUSH_SECONDS = float(os.environ.get("FEATX_FLUSH_SECONDS", 2.0))
FLUSH_ROWS = 2048
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
# A CPU batch's input pixels when no batch size is given above 32 px (64
# images of 64 px): its activations, not the model's weights, are most of
# a run's memory (see default_batch_size).
CPU_BATCH_PIXELS = 64 * 64 * 64
STAGES = ("read", "hash", "decode", "stack", "model", "write")


@dataclass
class ExtractResult:
    """What an extraction did: counts, skipped files, where the rows are."""

    view: DatasetView | None
    extraction: Extraction | None  # None when no image could be computed (all bad)
    spec: ExtractionSpec
    total: int
    computed: int
    reused: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    compute_seconds: float = 0.0
    paths: list[str] = field(default_factory=list)  # the rows, in dataset order
    sha256: list[str] = field(default_factory=list)
    views: list[DatasetView] = field(default_factory=list)  # one per tap, the first tap's first
    extractions: list[Extraction | None] = field(default_factory=list)
    specs: list[ExtractionSpec] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        from .reprs import block, ends

        taps = [e.name if e is not None else "-" for e in self.extractions] or [
            self.extraction.name if self.extraction else "nothing cached"]
        return block("ExtractResult", [
            f"{self.total} images: {self.computed} computed, {self.reused} reused, {len(self.skipped)} skipped "
            f"in {self.seconds:.1f}s",
            f"extraction: {self.spec.describe()} -> {', '.join(taps)}",
            f"source: {self.view.source}" if self.view else "",
            f"paths: {ends(self.paths, under=self.view.source if self.view else None)}",
            f"skipped: {ends([p for p, _ in self.skipped])}" if self.skipped else "",
        ])

    @property
    def images_per_second(self) -> float:
        return self.computed / self.compute_seconds if self.compute_seconds else 0.0

    def summary(self) -> str:
        rate = f", {self.images_per_second:.1f} img/s" if self.computed else ""
        where = self.extraction.root if self.extraction else "nothing cached (no image could be read)"
        taps = f" + {len(self.specs) - 1} more tap(s)" if len(self.specs) > 1 else ""
        return (
            f"{self.spec.describe()}{taps}: "
            f"{self.total} images, {self.computed} computed, {self.reused} reused, "
            f"{len(self.skipped)} skipped in {self.seconds:.1f}s{rate} -> {where}"
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
    """Resolved options of one extraction run: its specs (one per tap) and the weights to load."""

    def __init__(self, cache, backbone, weights, image_size, pooling, cuts, precision, seed, store="float32",
                 tta="none"):
        resolved = [resolve_spec(cache, backbone, weights, image_size, pooling, k, precision, seed, tta=tta)
                    for k in cuts]
        self.specs = [s.with_store(store) for s, _ in resolved]
        self.spec, self._weights = self.specs[0], resolved[0][1]
        self._override = None
        self.backbone = B.get_backbone(self.spec.backbone)
        self.size = self.spec.input_size

    @classmethod
    def from_spec(cls, specs: Sequence[ExtractionSpec], weights: B.Weights | None, override=None) -> "_Settings":
        """Options of recorded extractions (taps of one pass); the weights are loaded only if needed."""
        self = cls.__new__(cls)
        self.specs = list(specs)
        self.spec, self._weights, self._override = self.specs[0], weights, override
        if len(one_pass_groups(self.specs)) != 1:
            raise DataError("Specs extracted together must differ only in their tap.")
        self.backbone = B.get_backbone(self.spec.backbone)
        self.size = self.spec.input_size
        return self


    @property
    def weights(self) -> B.Weights:
        if self._weights is None:
            self._weights = self.spec.load_weights(self._override)
        return self._weights


def spec_for(
    backbone: str = "resnet50",
    *,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int = 0,
    precision: str = "auto",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    store: str = "float32",
    tta: str = "none",
) -> ExtractionSpec:
    """The :class:`~featx.spec.ExtractionSpec` (and so the cache key) these options resolve to."""
    spec = resolve_spec(Cache(cache_dir), backbone, weights, image_size, pooling, cut_blocks, precision, seed,
                        tta=tta)[0]
    return spec.with_store(store)


def extract(
    data: str | os.PathLike | Sequence | Dataset,
    backbone: str = "resnet50",
    *,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    pooling: str = "avg",
    cut_blocks: int = 0,
    taps: Sequence[int] | None = None,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    strict: bool = False,
    workers: int | None = None,
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    record: bool = True,
    spec: ExtractionSpec | Sequence[ExtractionSpec] | None = None,
    engine: str = "local",
    address: str | None = None,
    num_gpus_per_worker: float = 0,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    scale: str | float = "auto",
    store: str = "float32",
    tta: str = "none",
) -> ExtractResult:
    """Extract pooled backbone features for every image of ``data`` into the cache.

    Parameters
    ----------
    data : path, list of paths, arrays or Dataset
        A folder of class folders, a folder of split folders, a CSV
        ``path,label[,split]``, a folder of unlabeled images or image files;
        or images that are not files (:mod:`featx.arrays`): an array ``x``,
        ``(x, y)``, a dict of splits, an ``.npz``/``.npy`` file,
        ``"keras:cifar10"`` (cifar100, mnist, fashion_mnist) or an iterable
        of batches such as a ``tf.data.Dataset``.
    backbone : str
        Registry name (``featx backbones`` lists them).
    weights : "imagenet", "none" or path
        ImageNet weights (downloaded by Keras), seeded random weights, or a
        Keras weights file for the headless model.
    image_size : int, optional
        Square input size; the backbone's native size by default.
    pooling : {"avg", "max", "avg,max", "gem"}
        Global pooling of every tapped feature map: average, maximum, both
        side by side, or generalised mean (GeM, p=3); docs/accuracy.md.
    cut_blocks : int
        Tap the backbone this many named blocks before its end.
    taps : list of int, optional
        Several taps from one forward pass (``[0, 1, 2]``: the output and
        the ends of the one and two blocks before it), each cached as its own
        extraction; the first is the one ``fit-head`` uses by default and
        ``fit-head --head auto`` searches them all. ``cut_blocks=K`` is the
        same as ``taps=[K]``.
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
    record : bool
        Write the dataset view (its paths, labels, splits) and make it the
        one ``fit-head`` and ``load_features()`` use by default. Prediction
        runs pass False: they read the rows from the result instead, so
        predicting never changes what a later ``fit-head`` trains on.
    spec : ExtractionSpec or list of them, optional
        Extract exactly this recorded extraction (a head's; several taps of
        one backbone in one pass) instead of
        resolving the options above; ``weights`` may then name the new place
        of a moved weights file, checked against the recorded hash, and is
        only needed when some image is not cached yet.
    engine : {"local", "ray"}
        Where missing images are computed: in this process, or on a Ray
        cluster (``pip install "featx[ray]"``; the cache root must be on
        storage every node sees). Planning, the memo, the lock and the
        dataset view stay in this process either way; ``workers`` then
        counts embedding actors.
    address : str, optional
        engine="ray": ``auto``, ``ray://host:10001`` or None (``$RAY_ADDRESS``,
        else Ray started on this machine).
    num_gpus_per_worker : float
        engine="ray": GPUs per embedding actor; with ``precision="auto"``
        a GPU actor computes in mixed precision.
    name, class_names, scale
        Arrays only: the name the dataset view is recorded under (default:
        the ``.npz`` path, ``keras:NAME``, or a hash of the rows), the names
        of integer labels, and the factor that brings pixels to [0, 255]
        (``"auto"``: floats up to 1.0 are multiplied by 255).
    store : {"float32", "float16"}
        The dtype rows are stored in. float16 halves the disk (reads still
        return float32); it is part of the extraction's key (docs/cache.md).
    tta : {"none", "flip"}
        ``flip``: every feature is the mean over the image and its mirror,
        both in one forward pass (a doubled batch); part of the key.

    Returns
    -------
    ExtractResult
    """
    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise DataError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise DataError(f"workers must be an integer >= 1. Received: workers={workers!r}")
    remote = _ray_engine(engine, address, num_gpus_per_worker, workers)
    if remote is not None and precision == "auto":  # decided by the workers' devices, not the driver's
        precision = "mixed" if num_gpus_per_worker else "float32"
    cache = Cache(cache_dir)
    # Arrays first: an offline keras: name says so before the weights would.
    ds = as_dataset(data, name=name, class_names=class_names, scale=scale, log=log) if is_array_data(data) else None
    cuts = _cuts(cut_blocks, taps)
    if spec is None:
        opts = _Settings(cache, backbone, weights, image_size, pooling, cuts, precision, seed, store, tta)
    else:
        override = None if weights in (None, "imagenet", "none") else weights
        opts = _Settings.from_spec(spec if isinstance(spec, (list, tuple)) else [spec], None, override)
    if ds is None:
        ds = data if isinstance(data, Dataset) else discover(data)
    if not ds.items:
        raise DataError(f"No images found in {ds.source}.")

    if remote is not None and ds.layout == "arrays":
        raise DataError("--engine ray reads image files on shared storage; arrays are extracted by the local engine.")
    if remote is not None and len(opts.specs) > 1:
        raise DataError("--engine ray extracts one tap per run: run it once per --cut-blocks K, or use the local "
                        "engine for --taps.")
    if batch_size is None:
        batch_size = default_batch_size(gpu_available(), opts.size)
    run = _Run(cache, opts, ds, batch_size, strict, workers, progress, log, engine=remote)
    run.execute()
    labels = ds.labels_index()
    keep = [i for i, it in enumerate(ds.items) if run.sha.get(it.path)]
    paths = [ds.items[i].path for i in keep]
    shas = [run.sha[ds.items[i].path] for i in keep]
    views = []
    if record:
        # The first tap's view last, so that it is the latest one.
        for ext in reversed(run.extractions()):
            views.insert(0, cache.write_view(
                ext,
                source=_view_source(ds, shas, labels[keep], [ds.items[i].split for i in keep]),
                layout=ds.layout,
                class_names=ds.class_names,
                paths=paths,
                shas=shas,
                labels=labels[keep],
                splits=[ds.items[i].split for i in keep],
                skipped=run.skipped,
            ))
    saved = [e if not e.unsaved else None for e in run.extractions()]
    return ExtractResult(
        view=views[0] if views else None,
        extraction=saved[0],
        spec=opts.spec,
        views=views,
        extractions=saved,
        specs=list(opts.specs),
        total=len(ds.items),
        computed=run.computed,
        reused=len(keep) - run.computed,
        skipped=run.skipped,
        ignored=list(ds.ignored),
        seconds=time.perf_counter() - t0,
        compute_seconds=run.compute_seconds,
        paths=paths,
        sha256=shas,
        stage_seconds=run.stage_seconds,
    )


def _cuts(cut_blocks: int, taps: Sequence[int] | None) -> list[int]:
    if taps is None:
        return [cut_blocks]
    if cut_blocks:
        raise DataError("Pass cut_blocks or taps, not both (--cut-blocks K is --taps K).")
    cuts = [int(t) for t in taps]
    if not cuts or min(cuts) < 0 or len(set(cuts)) != len(cuts):
        raise DataError(f"taps must be distinct block counts >= 0, e.g. 0,1,2. Received: taps={list(taps)!r}")
    return cuts


def _ray_engine(engine: str, address, num_gpus_per_worker, workers):
    """The Ray engine of ``engine="ray"`` (None for local), with its options checked."""
    if engine not in ("local", "ray"):
        raise DataError(f"engine must be 'local' or 'ray'. Received: engine={engine!r}")
    if engine == "local":
        if address is not None or num_gpus_per_worker:
            raise DataError("address and num_gpus_per_worker apply to engine='ray' only (--engine ray).")
        return None
    if isinstance(num_gpus_per_worker, bool) or not isinstance(num_gpus_per_worker, (int, float)) or num_gpus_per_worker < 0:
        raise DataError(f"num_gpus_per_worker must be a number >= 0. Received: num_gpus_per_worker={num_gpus_per_worker!r}")
    from .ray_engine import RayEngine, require

    require()
    return RayEngine(address, num_gpus_per_worker, workers)


def _view_source(ds: Dataset, shas=(), labels=(), splits=()) -> str:
    """What names a dataset's view: its folder or CSV, or for a list of files
    a hash of the list, so two lists never share (and overwrite) a view;
    arrays have their own (:func:`featx.arrays.view_source`)."""
    if ds.layout == "arrays":
        return view_source(ds, shas, labels, splits)
    if ds.layout != "files":
        return ds.source
    digest = hashlib.sha256("\0".join(sorted(it.path for it in ds.items)).encode()).hexdigest()[:16]
    return f"<files:{digest}>"


class _Run:
    """The state of one extraction run over one dataset."""

    def __init__(self, cache: Cache, opts: _Settings, ds: Dataset, batch_size, strict, workers, progress, log,
                 engine=None):
        self.cache, self.opts, self.ds = cache, opts, ds
        self.engine = engine  # a RayEngine computes the missing images elsewhere; None: _pipeline here
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
        found = [cache.extraction(s) for s in opts.specs]
        self.extraction: Extraction | _TapSet | None = (
            found[0] if len(found) == 1 else _TapSet(found) if all(found) else None
        )

    def extractions(self) -> list[Extraction]:
        """One extraction per tap (unsaved where nothing was computed)."""
        if isinstance(self.extraction, _TapSet):
            return self.extraction.parts
        return [self.extraction or self.cache.extraction(s, create=True) for s in self.opts.specs]

    # -- planning: what the memo and the index already answer
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
                self._skip(item.path, bad[sha])
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
                self._skip(item.path, "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc.strerror}")
        return stats

    def _skip(self, path: str, reason: str) -> None:
        if self.strict:
            raise DataError(f"Bad image {path}: {reason} (--strict stops at the first bad image).")
        self.skipped.append((path, reason))

    # -- computing what is missing
    def _compute(self, todo: list[ImageItem], memo, bad: dict[str, str]) -> None:
        # Not on disk until its first shard (with the model's real width):
        # a run that fails before that leaves nothing behind.
        if self.extraction is None:
            parts = [self.cache.extraction(s, create=True) for s in self.opts.specs]
            self.extraction = parts[0] if len(parts) == 1 else _TapSet(parts)
        ext = self.extraction
        with ext.lock(on_wait=lambda: self.log(f"featx: waiting for another process extracting into {ext.name}...")):
            cached = ext.known()  # another process may have filled it while we waited
            if self.engine is not None:
                self.engine.compute(self, todo, memo, bad, cached)
            else:
                self._pipeline(todo, memo, bad, cached)

    def _model(self):
        if self.model is None:
            _persist_jax_compilations(self.cache.root / "jax-compilation")
            specs = self.opts.specs
            model = B.build_feature_model(specs if len(specs) > 1 else specs[0], self.opts.weights)
            note_loaded(self.extraction, model._featx_loaded)  # recorded by a new extraction, checked by an old one
            self.model = model
            if isinstance(self.extraction, _TapSet):
                self.extraction.widths = list(self.model._featx_widths)
        return self.model

    def _prepare(self, item: ImageItem, cached: set, bad: dict, clock: list[float] | None = None) -> _Prepared:
        """Read, hash and (unless the hash is known) decode one image; adds to clock's read, hash, decode."""
        if isinstance(item, ArrayItem):  # keyed by its pixels: no file to read
            sha, pixels = item.load(self.opts.size, skip=cached)
            return _Prepared(item, None, sha, pixels, "cached" if pixels is None else "compute")
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
        clock = clock if clock is not None else [0.0, 0.0, 0.0]
        clock[0] += t1 - t0
        clock[1] += t2 - t1
        if sha in cached:
            return _Prepared(item, stat, sha, None, "cached")
        if sha in bad:
            return _Prepared(item, stat, sha, None, "bad", bad[sha])
        try:
            pixels = read_image(data, self.opts.size)
        except DecoderUnavailable as exc:  # this process's fault, not the file's: no sha, so not remembered
            return _Prepared(item, stat, None, None, "bad", str(exc))
        except BadImage as exc:
            return _Prepared(item, stat, sha, None, "bad", str(exc))
        finally:
            clock[2] += time.perf_counter() - t2
        return _Prepared(item, stat, sha, pixels, "compute")

    def _prepare_chunk(self, items: list[ImageItem], cached: set, bad: dict) -> tuple[list[_Prepared], list[float]]:
        clock = [0.0, 0.0, 0.0]
        return [self._prepare(it, cached, bad, clock) for it in items], clock

    def _pipeline(self, todo, memo, bad, cached: set) -> None:
        # The bar counts rows written to the cache: its total is the images
        # to compute, less each one found cached or bad on the way.
        bar = _progress(len(todo) if isinstance(todo, list) else None, self.progress, f"extract {self.opts.backbone.name}")
        clock = self.stage_seconds
        batch: list[_Prepared] = []
        in_flight: tuple | None = None  # (output handle, rows, batch) dispatched, not yet fetched
        pending = _Pending()
        memo_rows, bad_rows = [], []
        last_flush = time.perf_counter()
        writer = _Writer(self.extraction, memo, clock, on_written=bar.update)
        forward = None
        builder: cf.Future | None = None  # the model, built on a thread of its own
        waiting: collections.deque[list[_Prepared]] = collections.deque()  # full batches decoded before the model was ready
        waiting_bytes = waiting_images = 0
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

        def ready(block: bool) -> bool:
            """Whether the model is built (raising its error); waits for it when ``block``."""
            nonlocal forward, t_start
            if forward is None and (block or builder.done()):
                forward = builder.result()
                bar.set_description(f"extract {self.opts.backbone.name}")
                t_start = time.perf_counter()
            return forward is not None

        def submit(full: list[_Prepared] | None) -> None:
            """Run a full batch, or keep it while the model is being built and
            there is room; ``None`` runs whatever is kept (the model is waited for)."""
            nonlocal in_flight, waiting_bytes, waiting_images
            if full:
                waiting.append(full)
                waiting_bytes += sum(p.pixels.nbytes for p in full)
                waiting_images += len(full)
            full_up = waiting_bytes > AHEAD_BYTES or waiting_images > AHEAD_IMAGES
            if not waiting or not ready(block=full is None or full_up):
                return
            while waiting:  # each held batch is freed once it has run, not after the last one
                in_flight = dispatch(waiting.popleft())
            waiting_bytes = waiting_images = 0

        def dispatch(batch):
            t = time.perf_counter()
            x = np.stack([p.pixels for p in batch])
            for p in batch:  # the batch is kept until its rows are fetched; its pixels are not needed
                p.pixels = None
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
            return out, n, batch

        def build() -> _Forward:
            return _Forward(self._model())

        build_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="featx-build")
        try:
            with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="featx-decode") as pool:
                chunks = _chunks(todo, CHUNK)  # todo may be a stream of array rows
                window = max(2, -(-(2 * self.batch_size) // CHUNK) + self.workers)
                for preps, spent in _bounded_map(pool, lambda c: self._prepare_chunk(c, cached, bad), chunks, window):
                    for stage, seconds in zip(STAGES, spent):
                        clock[stage] += seconds
                    for prep in preps:
                        if prep.sha and prep.stat:
                            memo_rows.append((prep.item.path, *prep.stat, prep.sha))
                        if prep.status == "bad":
                            if prep.sha:
                                bad_rows.append((prep.sha, prep.reason))
                            if self.strict:  # keep what was computed before stopping
                                submit(None)
                                if in_flight is not None:
                                    fetch()
                                flush()
                            _not_to_write(bar)
                            self._skip(prep.item.path, prep.reason)
                            continue
                        self.sha[prep.item.path] = prep.sha
                        if prep.status == "cached" or prep.sha in cached:
                            _not_to_write(bar)
                            continue
                        if builder is None:  # the first image to compute: build the model beside the decoding
                            bar.set_description(f"extract {self.opts.backbone.name} (building model)")
                            builder = build_pool.submit(build)
                        cached.add(prep.sha)  # a copy later in the data is not computed twice
                        batch.append(prep)
                        if len(batch) == self.batch_size:
                            submit(batch)
                            batch = []
                submit(batch)
                submit(None)
                if in_flight is not None:
                    fetch()
        except BaseException as exc:
            stopped = exc
            raise
        else:
            stopped = None
        finally:
            build_pool.shutdown(wait=False)
            try:
                flush()
            finally:
                try:
                    writer.close()
                finally:
                    bar.close()
                    if t_start is not None:
                        self.compute_seconds = time.perf_counter() - t_start
                    # A user mistake that kept nothing stays a one-line error.
                    if stopped is not None and (writer.rows or not isinstance(stopped, FeatxError)):
                        self.log(_stopped_message(writer.rows, bar.total))
        self.extraction.settle()  # the run's own shards into one, then the size-class rule


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

    def __init__(self, extraction: Extraction, memo, clock: dict[str, float], on_written=None):
        self.extraction, self.memo, self.clock = extraction, memo, clock
        self.on_written = on_written or (lambda n: None)
        self.rows = 0  # rows written so far (their shards are in the cache)
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
                    self.rows += len(rows[1])
                    self.on_written(len(rows[1]))
                self.memo.remember(memo_rows)
                self.memo.remember_bad(bad_rows)
            except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                self.error = exc
            self.clock["write"] += time.perf_counter() - t


def default_batch_size(on_gpu: bool, image_size: int | None = None) -> int:
    """Images per forward pass when none is given: 128 on a GPU; on a CPU
    256 for inputs of 32 px or less, else as many as hold the pixels of 64
    images of 64 px, as a power of two from 16 to 64 (64 up to 64 px, 32
    up to 90 px, 16 from 91 px up).

    On a GPU a larger batch keeps the device busy while the host prepares
    the next. On a CPU each call has a fixed cost: with mobilenetv3small at
    32 px the model's CPU time per image is 0.25 ms at batch 32, 0.22 at 64
    and 0.17 at 256, on cores the decoders need. From 64 px up the model's
    own work dominates and a larger batch only costs memory: a batch's
    activations grow with its pixels, and VGG16 at 224 px peaked at 3.2 GB
    RSS at batch 64 against 1.6 GB at 16, for the same images/s
    (docs/memory.md).
    """
    if on_gpu:
        return 128
    size = image_size or 224
    if size <= 32:
        return 256
    fits = max(1, CPU_BATCH_PIXELS // (size * size))
    return min(64, max(16, 1 << (fits.bit_length() - 1)))


class _TapSet:
    """Several extractions filled from one forward pass (one per tap).

    Looks like one :class:`~featx.cache.Extraction` to the pipeline: an
    image is cached only when every tap has it, each shard written is split
    by columns into each tap's own shard (rows a tap already holds are not
    written again), and the locks are taken in a fixed order.
    """

    def __init__(self, parts: list[Extraction]):
        self.parts = parts
        self.widths: list[int] | None = None
        self._held: dict[str, set] = {}

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.parts)

    @property
    def unsaved(self) -> bool:
        return all(p.unsaved for p in self.parts)

    def known(self) -> "_AllOf":
        self._held = {p.name: p.known() for p in self.parts}
        return _AllOf(list(self._held.values()))

    @contextlib.contextmanager
    def lock(self, on_wait=None):
        with contextlib.ExitStack() as stack:
            for part in sorted(self.parts, key=lambda p: p.name):
                stack.enter_context(part.lock(on_wait=on_wait))
            yield

    def write_shard(self, features, shas, paths, labels):
        bounds = np.cumsum([0, *self.widths])
        written = []
        for part, lo, hi in zip(self.parts, bounds[:-1], bounds[1:]):
            held = self._held.setdefault(part.name, set())
            rows = [i for i, sha in enumerate(shas) if sha not in held]
            if not rows:
                continue
            written.append(part.write_shard(features[rows, lo:hi], [shas[i] for i in rows],
                                            [paths[i] for i in rows], [labels[i] for i in rows]))
            held.update(shas[i] for i in rows)
        return written

    def shards(self) -> list:
        return max((p.shards() for p in self.parts), key=len)

    def compact(self, min_shards: int = 2, only=None) -> int:
        mine = None if only is None else {str(x) for group in only for x in (group if isinstance(group, list) else [group])}
        merged = 0
        for part in self.parts:
            subset = None if mine is None else [s for s in part.shards() if str(s) in mine]
            merged += part.compact(min_shards=min_shards, only=subset)
        return merged

    def merge_tiers(self) -> int:
        return sum(part.merge_tiers() for part in self.parts)

    def settle(self) -> int:
        return sum(part.settle() for part in self.parts)


class _AllOf:
    """Keys every tap holds (``in``), and keys the run adds to all of them."""

    def __init__(self, knowns):
        self.knowns = knowns
        self._added: set = set()

    def __contains__(self, sha) -> bool:
        return sha in self._added or all(sha in k for k in self.knowns)

    def add(self, sha) -> None:
        self._added.add(sha)

    def __iter__(self):
        first, *rest = self.knowns
        yield from (s for s in set(first) | self._added if s in self._added or all(s in k for k in rest))


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


def _stopped_message(written: int, total: int | None) -> str:
    of = f" of {total:,}" if total is not None else ""
    return (f"featx: stopped after writing {written:,}{of} rows to the cache; "
            f"{'those stay' if written != 1 else 'it stays'} cached and the next run computes only the rest.")


def _progress(total: int | None, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
                disable=not enabled)
