"""``featx.extract``: the options checked, the specs resolved, the run planned and computed, the views recorded."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..arrays import as_dataset, is_array_data, view_source
from ..cache import Cache, DatasetView, Extraction
from ..datasets import Dataset, discover
from ..errors import DataError
from ..runtime import gpu_available
from ..spec import ExtractionSpec, resolve_spec
from .engines.local import LocalEngine
from .forward import default_batch_size
from .options import ExtractOptions
from .plan import Run, Settings


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
        from ..reprs import block, ends

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
    decode: str = "auto",
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
    decode : {"auto", "cpu", "gpu"}
        Where JPEGs are decoded and resized: ``gpu`` with nvImageCodec
        (``pip install "featx[gpu-decode]"``), straight into the model's
        batch on the device; ``cpu`` with Pillow/simplejpeg; ``auto`` on
        the GPU where the library, a GPU and the backend allow, else on the
        CPU. Not part of the key: the rows are interchangeable (docs/gpu.md).

    Returns
    -------
    ExtractResult
    """
    t0 = time.perf_counter()
    opts = ExtractOptions(
        backbone=backbone, weights=weights, image_size=image_size, pooling=pooling, cut_blocks=cut_blocks, taps=taps,
        batch_size=batch_size, cache_dir=cache_dir, strict=strict, workers=workers, precision=precision, seed=seed,
        progress=progress, record=record, spec=spec, engine=engine, address=address,
        num_gpus_per_worker=num_gpus_per_worker, name=name, class_names=class_names, scale=scale, store=store,
        tta=tta, decode=decode,
    )
    return extract_with(data, opts, log=log, started=t0)


def extract_with(data, options: ExtractOptions, *, log: Callable[[str], None] | None = None,
                 started: float | None = None) -> ExtractResult:
    """:func:`extract` with its options already built (what the CLI calls)."""
    t0 = time.perf_counter() if started is None else started
    opts = options
    log = log or (lambda msg: print(msg, file=sys.stderr))
    engine = _engine(opts)
    cache = Cache(opts.cache_dir)
    # Arrays first: an offline keras: name says so before the weights would.
    ds = (as_dataset(data, name=opts.name, class_names=opts.class_names, scale=opts.scale, log=log)
          if is_array_data(data) else None)
    settings = Settings.resolve(cache, opts)
    if ds is None:
        ds = data if isinstance(data, Dataset) else discover(data)
    if not ds.items:
        raise DataError(f"No images found in {ds.source}.")
    if opts.remote and ds.layout == "arrays":
        raise DataError("--engine ray reads image files on shared storage; arrays are extracted by the local engine.")
    if opts.remote and len(settings.specs) > 1:
        raise DataError("--engine ray extracts one tap per run: run it once per --cut-blocks K, or use the local "
                        "engine for --taps.")
    batch_size = opts.batch_size or default_batch_size(gpu_available(), settings.size)
    run = Run(cache, settings, ds, engine, batch_size=batch_size, strict=opts.strict, workers=opts.workers,
              progress=opts.progress, log=log)
    run.execute()
    return _result(run, ds, opts.record, t0)


def _engine(opts: ExtractOptions):
    """The engine that computes the missing images (Ray's needs the ``ray`` extra, checked now)."""
    if not opts.remote:
        return LocalEngine(opts.decode)
    from .engines.ray import RayEngine, require

    require()
    return RayEngine(opts.address, opts.num_gpus_per_worker, opts.workers)


def _result(run: Run, ds: Dataset, record: bool, t0: float) -> ExtractResult:
    """Record the dataset views (when ``record``) and say what the run did."""
    cache = run.cache
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
        spec=run.settings.spec,
        views=views,
        extractions=saved,
        specs=list(run.settings.specs),
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
