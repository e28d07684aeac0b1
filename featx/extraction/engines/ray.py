"""The Ray engine: ``featx extract --engine ray`` fills the same cache from a Ray cluster.

The driver (the process that runs ``featx extract``) plans exactly as a
local run does: it lists the files, asks the memo and the extraction's index
what is missing and takes the extraction's lock. Only the missing files go
to Ray, as one Ray Data pipeline:

1. CPU tasks read, hash and decode each file with the step both engines
   share (:func:`featx.extraction.steps.prepare_image`), so a bad file is skipped with the same reason;
2. a pool of actors, each building the feature model once, embeds the
   decoded images and writes each call's rows as one shard named by its
   content (:func:`featx.cache.write_staged_shard`): a retried call
   rewrites the same file, never a second copy;
3. the driver receives one small record per image (no features), moves the
   progress bar, publishes the staged shards, fills the memo and, at the
   end, merges the run's shards and writes the dataset view.

The driver is the only process that publishes, merges or removes shards;
workers only create new, uniquely named files. The cache root must be a
path every node sees (NFS, a mounted bucket): the driver checks that with a
probe file before anything runs, instead of letting a worker write to its
own disk.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import backbones as B
from ...cache import write_staged_shard
from ...datasets import ImageItem
from ...errors import CacheError, DataError, FeatxError
from ...runtime import stderr_to_devnull, visible_gpus
from ..steps import FLUSH_SECONDS, pad_batch, prepare_image, progress_bar

EXTRA = 'pip install "featx[ray]"'
# Rows an actor embeds per call, written as one shard. A call is Ray's unit
# of retry, so this bounds the work a lost actor costs and the shard count.
# The progress bar also moves by calls. FEATX_RAY_SHARD_ROWS overrides it
# (read when a run starts).
SHARD_ROWS = 256
DECODE_ROWS = 64  # files per decoding task
# Test hook: "K:PATH" makes one actor exit hard after writing the shard of
# its K-th call, once (PATH is created as the marker).
FAULT_ENV = "FEATX_RAY_FAULT"
# Test hook: "N:DIR" holds each actor's first call until N actors have had one (each
# leaves its pid in DIR; a minute at most), so that every actor of a small run gets work.
MEET_ENV = "FEATX_RAY_MEET"
_RESULT_COLUMNS = ("path", "sha", "status", "reason", "size", "mtime")
_NO_GPU = " (no such GPU here: CPU)"


def verbose() -> bool:
    """``featx --verbose`` (FEATX_VERBOSE=1): Ray's own log lines and its workers' output are shown."""
    return bool(os.environ.get("FEATX_VERBOSE"))


def quiet_ray() -> None:
    """Keep Ray's start-up and shutdown chatter off a featx run, unless --verbose.

    Ray logs from C++ (``E ... core_worker.cc``: actor restart notes),
    which reads ``RAY_BACKEND_LOG_LEVEL`` when the driver connects, and from
    Python loggers (the token-authentication notice, Ray Data's banners),
    which ``ray.init(logging_level=)`` and the ``ray`` logger's level set.
    """
    if verbose():
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def require():
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise FeatxError(f"--engine ray needs Ray ({exc}). Install the extra: {EXTRA}") from None
    quiet_ray()
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Where and how a run's missing images are computed on Ray.

    Parameters
    ----------
    address : str, optional
        ``auto`` (the cluster this machine belongs to), ``ray://host:10001``
        or a GCS address; None joins ``$RAY_ADDRESS`` or starts Ray on this
        machine. An already initialised Ray is used as it is.
    num_gpus_per_worker : float
        GPUs each embedding actor asks for (0: CPU actors).
    workers : int, optional
        Embedding actors; by default one per ``num_gpus_per_worker`` GPUs
        of the cluster, or one per 4 CPUs without GPUs.
    """

    address: str | None = None
    num_gpus_per_worker: float = 0
    workers: int | None = None

    def compute(self, run, todo: list[ImageItem], memo, bad: dict[str, str], cached: set) -> None:
        """Compute ``todo`` into ``run.extraction`` (whose lock the caller holds)."""
        ray = require()
        if not ray.is_initialized():
            try:
                # Quiet unless --verbose: the C++ core worker says at start-up which log level it read
                # from the environment, and Ray prints notices (token authentication) as it starts.
                with contextlib.nullcontext() if verbose() else stderr_to_devnull():
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=verbose(),
                             logging_level=logging.INFO if verbose() else logging.ERROR)
            except (ConnectionError, RuntimeError) as exc:
                raise FeatxError(f"Could not start or join Ray (address={self.address!r}): {_first_line(exc)}") from None
        ext = run.extraction
        shard_dir = ext.shard_dir.resolve()
        shard_dir.mkdir(parents=True, exist_ok=True)
        check_shared_storage(ray, shard_dir)
        actors = self.workers or _default_actors(ray, self.num_gpus_per_worker)
        known = ray.put((frozenset(cached), dict(bad)))
        rows = [{"path": it.path, "label": it.label or "", "split": it.split} for it in todo]
        blocks = max(1, min(len(rows), 4 * actors, -(-len(rows) // DECODE_ROWS)))

        bar = progress_bar(len(todo), run.progress, f"extract {run.settings.backbone.name} (ray)")
        # Rows come back a shard at a time, the first only once the actors are up: a rate
        # (and so an ETA) read from them is noise (4:16:04 for a 40 s job), so the bar shows counts.
        bar.bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
        memo_rows, bad_rows = [], []
        placement = _Placement()
        staged: set[str] = set()  # a call's name may come back in several blocks
        published: dict = {}  # ordered set of shard paths
        last_flush = time.perf_counter()

        def flush():
            nonlocal last_flush
            published.update(dict.fromkeys(ext.publish(shard_dir / name for name in sorted(staged))))
            staged.clear()
            memo.remember(memo_rows)
            memo.remember_bad(bad_rows)
            memo_rows.clear()
            bad_rows.clear()
            last_flush = time.perf_counter()

        t0 = time.perf_counter()
        try:
            with _quiet_data(ray):
                ds = self._pipeline(ray, run, rows, blocks, known, actors, shard_dir)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    staged.update(name for name in batch["shard"].tolist() if name)
                    placement.add(batch)
                    for path, sha, status, reason, size, mtime in zip(*(batch[c].tolist() for c in _RESULT_COLUMNS)):
                        bar.update(1)
                        if sha and size >= 0:
                            memo_rows.append((path, size, mtime, sha))
                        if status == "bad":
                            if sha:
                                bad_rows.append((sha, reason))
                            run.skip(path, reason)
                            continue
                        run.sha[path] = sha
                        if status == "computed" and sha not in cached:
                            cached.add(sha)
                            run.computed += 1
                    if time.perf_counter() - last_flush >= FLUSH_SECONDS:
                        flush()
        except ray.exceptions.RayError as exc:
            raise FeatxError(f"The Ray run failed: {_first_line(exc)}") from exc
        finally:
            flush()
            bar.close()
            run.compute_seconds += time.perf_counter() - t0
        for line in placement.report(verbose()):
            run.log(line)
        ext.settle()  # the run's own shards into one, then the size-class rule

    def _pipeline(self, ray, run, rows: list[dict], blocks: int, known, actors: int, shard_dir: Path):
        """The Ray Data pipeline: CPU decoding tasks, then the pool of embedding actors."""
        ext, spec = run.extraction, run.settings.spec
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        # The memory of a decoding task (its files' bytes and pixels, with room); asking for
        # it also keeps the decoding a stage of CPU tasks, which Ray would otherwise fuse
        # into the actors (and so into their GPUs). The decoding asks for no GPU.
        ds = ds.map_batches(_decode, batch_format="numpy", batch_size=DECODE_ROWS,
                            memory=DECODE_ROWS * (3 * spec.input_size**2 + 2**20) * 4,
                            fn_kwargs={"size": spec.input_size, "known": known})
        return ds.map_batches(
            _Embedder, batch_format="numpy", batch_size=int(os.environ.get("FEATX_RAY_SHARD_ROWS", SHARD_ROWS)),
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=self.num_gpus_per_worker or None,
            fn_constructor_kwargs={
                # with the extraction's recorded weights hash, which each actor's model must match
                "record": {**spec.record(), **{k: v for k, v in getattr(ext, "meta", {}).items()
                                              if k == "loaded_weights"}},
                "weights": run.settings.weights, "shard_dir": str(shard_dir),
                "extraction": ext.name, "batch_size": run.batch_size,
                "gpus": self.num_gpus_per_worker, "fault": os.environ.get(FAULT_ENV, ""),
                "meet": os.environ.get(MEET_ENV, ""),
            },
        )


def check_shared_storage(ray, folder: Path) -> None:
    """Refuse to run unless every live node reads the driver's probe file in ``folder``.

    A node that sees another disk (or none) at that path would write shards
    nobody else finds; this says so before any work is done.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = folder / f".probe-{token}"
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        read = ray.remote(_read_probe)
        refs = [
            read.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(probe))
            for n in nodes
        ]
        try:
            seen = ray.get(refs, timeout=300)
        except ray.exceptions.RayError as exc:
            raise FeatxError(
                f"A Ray worker could not run featx ({_first_line(exc)}). featx and its dependencies must be "
                f"installed on every node of the cluster."
            ) from None
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"{n['NodeManagerAddress']} ({got})" for n, got in zip(nodes, seen) if got != token]
    if blind:
        raise CacheError(
            f"Ray node(s) {', '.join(blind)} cannot see the cache folder {folder}. With --engine ray the cache "
            f"must be on storage every node mounts at the same path (NFS, a mounted bucket): pass --cache-dir there."
        )


def _read_probe(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def _default_actors(ray, num_gpus: float) -> int:
    """One actor per ``num_gpus`` GPUs of the cluster (0.5: two per GPU), else one per 4 CPUs."""
    res = ray.cluster_resources()
    if num_gpus:
        # A hair of slack: 0.6 / 0.2 is 2.9999999999999996 in floating point, and Ray itself
        # counts GPU fractions in units of 1/10000.
        found = math.floor(res.get("GPU", 0) / num_gpus + 1e-6)
        if found < 1:
            raise DataError(
                f"The Ray cluster has {res.get('GPU', 0):g} GPUs, fewer than one worker's "
                f"num_gpus_per_worker={num_gpus:g}."
            )
        return found
    return max(1, int(res.get("CPU", 1)) // 4)


class _Placement:
    """Where a run's rows were decoded and embedded, as the workers report it with each row.

    ``featx --verbose`` prints it after a Ray run; a GPU actor that found no
    GPU (Ray's GPUs declared but absent, so it computed on the CPU) is
    reported whatever the verbosity.
    """

    def __init__(self):
        self.decoders: set[str] = set()
        self.actors: dict[str, int] = {}  # actor -> rows it embedded

    def add(self, batch: dict) -> None:
        self.decoders.update(batch["decoder"].tolist())
        for actor, status in zip(batch["actor"].tolist(), batch["status"].tolist()):
            self.actors[actor] = self.actors.get(actor, 0) + (status == "computed")

    def report(self, verbose: bool) -> list[str]:
        lines = []
        if verbose and self.actors:
            held = sorted({d.split(" ", 1)[1] for d in self.decoders})
            lines.append(
                f"featx: Ray decoded in {len(self.decoders)} task processes (GPUs held: {', '.join(held)}); "
                f"{len(self.actors)} actors embedded: "
                + ", ".join(f"{actor} ({n} images)" for actor, n in sorted(self.actors.items()))
            )
        lost = sorted(a for a in self.actors if a.endswith(_NO_GPU))
        if lost:
            lines.append(f"featx: warning: {len(lost)} Ray actors were given a GPU this machine does not have and "
                         f"computed on the CPU: {', '.join(a.removesuffix(_NO_GPU) for a in lost)}")
        return lines


@contextlib.contextmanager
def _quiet_data(ray):
    """featx draws its own progress bar; Ray Data's bars and banners would interleave with it."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, getattr(ctx, "print_on_execution_start", True)
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


# --------------------------------------------------------------------------- on the workers


def claim_devices(gpus: float, environ=os.environ, present: int | None = None) -> tuple[bool, str]:
    """Set an actor's devices before its framework starts: (computes on a GPU, how the driver names it).

    An actor asks Ray for ``gpus`` GPUs; Ray sets ``CUDA_VISIBLE_DEVICES`` to
    the ids it gave. Without a GPU that exists here (an actor that asked for
    none, which Ray 2.60 leaves every GPU visible to, or Ray's GPUs declared
    but absent) the actor hides all GPUs, so that neither TensorFlow nor JAX
    probes a device and both compute on the CPU. Actors that share a GPU
    (``gpus`` below 1) must not each reserve all of its memory.
    """
    given = environ.get("CUDA_VISIBLE_DEVICES", "")
    seen = visible_gpus(environ, present) if gpus else []
    where = f"pid={os.getpid()} CUDA_VISIBLE_DEVICES={given or '-'}"
    if not seen:
        environ["CUDA_VISIBLE_DEVICES"] = ""
        return False, where + (_NO_GPU if gpus else "")
    if gpus < 1:
        environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 * gpus:.2f}")
    return True, where


def _decode(batch: dict, size: int, known) -> dict:
    """CPU task: stat, read, hash and decode each file, exactly as a local run does."""
    import ray

    cached, bad = ray.get(known)
    n = len(batch["path"])
    out = {k: [] for k in ("path", "label", "sha", "status", "reason", "size", "mtime")}
    pixels = np.zeros((n, size, size, 3), np.uint8)
    for i, (path, label, split) in enumerate(zip(batch["path"], batch["label"], batch["split"])):
        item = ImageItem(str(path), str(label) or None, str(split))
        prep = prepare_image(item, size, cached, bad)
        if prep.pixels is not None:
            pixels[i] = prep.pixels
        out["path"].append(item.path)
        out["label"].append(str(label))
        out["sha"].append(prep.sha or "")
        out["status"].append(prep.status)
        out["reason"].append(prep.reason)
        out["size"].append(prep.stat[0] if prep.stat else -1)
        out["mtime"].append(prep.stat[1] if prep.stat else -1)
    cols = {k: np.array(v, dtype=object if k not in ("size", "mtime") else np.int64) for k, v in out.items()}
    gpus = ",".join(map(str, ray.get_runtime_context().get_accelerator_ids().get("GPU", []))) or "none"
    return {**cols, "pixels": pixels, "decoder": np.array([f"pid={os.getpid()} {gpus}"] * n, dtype=object)}


class _Embedder:
    """Actor: builds the feature model once, embeds a call's images and writes them as one staged shard."""

    def __init__(self, record: dict, weights, shard_dir: str, extraction: str, batch_size: int, gpus: float,
                 fault: str = "", meet: str = ""):
        on_gpu, self.where = claim_devices(gpus)  # before the framework is imported
        from ...runtime import backend_name
        from ...spec import ExtractionSpec

        spec = ExtractionSpec.from_record(record)
        driver, here = dict(spec.versions).get("backend"), backend_name()
        if driver and driver != here:  # random weights and mixed precision differ by backend
            raise FeatxError(f"This Ray worker's Keras backend is {here}, the driver's {driver}: "
                             "set KERAS_BACKEND alike on every node.")
        self.model = B.build_feature_model(spec, weights)
        self.store = spec.store
        self.shard_dir, self.extraction = shard_dir, extraction
        self.batch_size, self.on_gpu = batch_size, on_gpu
        self.fault, self.meet = fault, meet
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        if self.meet and not self.calls:
            self._meet()
        status = np.array(batch["status"], dtype=object)
        first: dict[str, int] = {}
        for i in np.flatnonzero(status == "compute"):
            first.setdefault(batch["sha"][i], i)  # duplicate content in one call: embedded once
        rows = sorted(first.values())
        shard = ""
        if rows:
            feats = self._embed(batch["pixels"][rows])
            shard = write_staged_shard(self.shard_dir, self.extraction, feats, [batch["sha"][i] for i in rows],
                                       [batch["path"][i] for i in rows], [batch["label"][i] for i in rows],
                                       store=self.store)
            status[status == "compute"] = "computed"
        self.calls += 1
        self._maybe_fail()
        out = {k: batch[k] for k in _RESULT_COLUMNS if k != "status"}
        n = len(status)
        return {**out, "status": status, "shard": np.array([shard] * n, dtype=object), "decoder": batch["decoder"],
                "actor": np.array([self.where] * n, dtype=object)}

    def _embed(self, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.batch_size):
            part = x[i : i + self.batch_size]
            n = len(part)
            part = pad_batch(part, self.batch_size, self.on_gpu)
            out.append(np.asarray(self.model.predict_on_batch(part))[:n].astype(np.float32))
        return np.concatenate(out)

    def _meet(self) -> None:
        n, folder = self.meet.split(":", 1)
        Path(folder, str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(os.listdir(folder)) < int(n) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _maybe_fail(self) -> None:
        if not self.fault:
            return
        k, marker = self.fault.split(":", 1)
        if self.calls == int(k):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)  # a lost actor, after its shard is written and before Ray hears of it


__all__ = ["RayEngine", "require", "check_shared_storage", "EXTRA"]
