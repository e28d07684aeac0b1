"""The GPU check: one call on a lent accelerator says what bounds featx's extraction there.

Runs, in one process (so the framework starts once), on synthetic 400 px JPEGs:

* featx cold, warm and +10% images, for ResNet50 at 224 px in mixed precision,
  at every batch size x decode-worker count asked for (default 128, 256 x the
  default and every core); each cold run uses an empty cache, so it includes
  building and compiling the model, as a user's first run does;
* the model-alone ceiling: the feature model on uint8 batches already on the
  device (no decoding, no host transfer);
* the host-alone ceiling: featx's real pipeline with the model replaced by a
  stub (read, hash, decode, resize, stack, write);
* the per-stage profile of the best cold run;
* when nvImageCodec imports there (``bash benchmarks/gpu_wheels.sh``
  carries it), the best batch size once more with ``decode="gpu"``: JPEGs
  decoded by nvJPEG and resized on the device. The other runs decode on the
  CPU (``decode="cpu"``), so that they stay comparable with earlier checks.
  ``--dry`` runs that row on nvImageCodec's CPU backend where the library
  is installed, to prove the code path.

Writes ``gpu.json`` (a list of run records, the schema of
``benchmarks/results/gpu.json``) and ``gpu.md`` (the tables) to ``--out``,
and prints the tables. ``--dry`` runs the same steps at tiny sizes on any
machine (a CPU included), so the script is known to run end to end before a
device is lent; a test runs it.

Usage (the device machine; see benchmarks/gpu_check.sh, which installs what
the device lacks and picks the backend)::

    bash benchmarks/gpu_check.sh                 # the real check, writes $OUT/gpu.json and $OUT/gpu.md
    python benchmarks/gpu_check.py --dry --out /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract import featx_extract, host_ceiling, model_ceiling  # noqa: E402  (benchmarks/extract.py)

FIELDS = ("device", "date", "backend", "backbone", "image_size", "precision", "batch_size", "workers", "decode",
          "images_per_s", "pipeline_images_per_s", "model_ceiling", "host_ceiling", "warm_fraction",
          "plus10_fraction", "images", "cold_s", "stages")


def _write_jpegs(args) -> int:
    """Photo-like JPEGs (smooth picture + light noise, a unique comment each) for indices lo..hi."""
    import numpy as np
    from PIL import Image

    root, lo, hi, px = args
    rng = np.random.default_rng(lo)
    h = px * 3 // 4
    for i in range(lo, hi):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(small).resize((px, h), Image.BICUBIC))
        im = im ^ rng.integers(0, 16, im.shape, dtype=np.uint8)
        folder = Path(root) / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"{i:07d}.jpg", quality=90, comment=str(i).encode())
    return hi - lo


def make_images(root: Path, n: int, px: int, start: int = 0) -> Path:
    """``n`` distinct ``px`` x ``3/4 px`` JPEGs in 10 class folders, written on every core."""
    step = 250
    jobs = [(str(root), lo, min(lo + step, start + n), px) for lo in range(start, start + n, step)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        sum(pool.map(_write_jpegs, jobs))
    return root


def device_name() -> str:
    from featx.runtime import backend_name

    try:
        if backend_name() == "jax":
            import jax

            d = jax.devices()[0]
            return f"{d.platform}:{getattr(d, 'device_kind', d)}"
        if backend_name() == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return f"gpu:{tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)}"
    except Exception as exc:  # a report, not a crash: the rest of the check still runs
        return f"unknown ({type(exc).__name__})"
    return f"cpu:{platform.processor() or platform.machine()}"


@contextlib.contextmanager
def decoding(mode: str):
    """``featx.extract`` (as benchmarks/extract.py calls it) with ``decode=mode``."""
    import featx

    plain = featx.extract
    featx.extract = functools.partial(plain, decode=mode)
    try:
        yield
    finally:
        featx.extract = plain


def gpu_decode_missing(dry: bool) -> str | None:
    """Why the ``decode="gpu"`` row cannot run here (None: it runs); ``dry`` uses nvImageCodec's CPU backend."""
    from featx.extraction import gpu_decode

    if dry:
        os.environ[gpu_decode.CPU_BACKEND_ENV] = "1"  # the code path without a GPU
    why = gpu_decode.missing()
    if why is None:
        try:
            gpu_decode._nvimgcodec()
        except Exception as exc:  # a wheel for another CUDA or Python: a report, not a crash
            why = f"nvImageCodec does not import: {type(exc).__name__}: {exc}"[:200]
    return why


def one_config(data: Path, extra: Path, work: Path, a, batch: int, workers: int | None, decode: str = "cpu") -> dict:
    """Cold into an empty cache, warm, then +10% images; rates and fractions."""
    cache = work / f"cache-b{batch}-w{workers or 'default'}-{decode}"
    shutil.rmtree(cache, ignore_errors=True)
    with decoding(decode):
        res, cold = featx_extract(data, cache, a.backbone, a.weights, a.image_size, batch, a.precision, workers)
        _, warm = featx_extract(data, cache, a.backbone, a.weights, a.image_size, batch, a.precision, workers)
        plus = _plus10(data, extra, cache, a, batch, workers, decode)
    return {
        "batch_size": batch, "workers": workers or "default", "decode": decode, "images": res.computed,
        "cold_s": round(cold, 3),
        "images_per_s": round(res.computed / cold, 1),
        "pipeline_images_per_s": round(res.images_per_second, 1),
        "warm_fraction": round(warm / cold, 4), "plus10_fraction": round(plus / cold, 4),
        "stages": {k: round(v, 3) for k, v in res.stage_seconds.items()},
    }


def _plus10(data: Path, extra: Path, cache: Path, a, batch: int, workers, decode: str) -> float:
    """Seconds of a re-run over the data with 10% more images added (hard links, no copies)."""
    grown = data.parent / f"{data.name}-plus10-b{batch}-w{workers or 'd'}-{decode}"
    if not grown.exists():
        shutil.copytree(data, grown, copy_function=os.link)
        shutil.copytree(extra, grown, copy_function=os.link, dirs_exist_ok=True)
    _, seconds = featx_extract(grown, cache, a.backbone, a.weights, a.image_size, batch, a.precision, workers)
    return seconds


def markdown(records: list[dict], header: dict) -> str:
    lines = [f"# GPU check, {header['date']}", "",
             f"device: {header['device']}; backend: {header['backend']}; {header['backbone']} at "
             f"{header['image_size']} px, {header['precision']}; {header['images']} JPEGs of {header['px']} px; "
             f"{header['cores']} cores", "",
             f"model-alone ceiling: {header['model_ceiling']} img/s; host-alone ceiling: {header['host_ceiling']} img/s",
             "", "| batch | workers | decode | cold img/s (incl. build) | pipeline img/s | cold s | warm / cold "
                 "| +10% / cold |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['batch_size']} | {r['workers']} | {r['decode']} | {r['images_per_s']} | "
                     f"{r['pipeline_images_per_s']} | {r['cold_s']} | {r['warm_fraction']:.2%} | "
                     f"{r['plus10_fraction']:.2%} |")
    if header.get("gpu_decode"):
        lines += ["", f"decode gpu: {header['gpu_decode']}"]
    best = max(records, key=lambda r: r["pipeline_images_per_s"])
    n = max(best["images"], 1)
    lines += ["", f"Per-stage thread-seconds, best run (batch {best['batch_size']}, workers {best['workers']}):", "",
              "| stage | seconds | ms/image |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {1e3 * v / n:.3f} |" for k, v in best["stages"].items()]
    bound = "host" if header["host_ceiling"] < header["model_ceiling"] else "model"
    lines += ["", f"Bound by the {bound} ceiling; featx's best pipeline rate is "
              f"{best['pipeline_images_per_s'] / min(header['host_ceiling'], header['model_ceiling']):.0%} of it."]
    return "\n".join(lines) + "\n"


def ceilings(a, data: Path, work: Path, best_batch: int, header: dict) -> None:
    """The model-alone and host-alone ceilings (host: decoding on the CPU), into ``header``."""
    header["model_ceiling"] = round(model_ceiling(a.backbone, a.weights, a.image_size, best_batch, a.precision,
                                                  seconds=a.ceiling_seconds), 1)
    host, _ = host_ceiling(data, work / "cache-host", a.backbone, a.weights, a.image_size, best_batch, a.precision)
    header["host_ceiling"] = round(host, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    ap.add_argument("--dry", action="store_true", help="tiny sizes, any machine: proves the script runs end to end")
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--px", type=int, default=400, help="JPEG width (height is 3/4 of it)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--precision", default="mixed")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated [128,256; --dry: 8,16]")
    ap.add_argument("--workers", default=None,
                    help="decode worker counts: 'default', 'all' (every core) or numbers [default,all]")
    ap.add_argument("--ceiling-seconds", type=float, default=10.0)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder [a temporary one]")
    a = ap.parse_args(argv)
    if a.dry:
        a.images, a.px, a.backbone, a.image_size, a.precision = 30, 64, "vgg16", 32, "float32"
        a.batch_sizes, a.ceiling_seconds = a.batch_sizes or "8,16", 0.5
    a.batch_sizes, a.workers = a.batch_sizes or "128,256", a.workers or "default,all"
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="featx-gpu-", dir=a.work))
    try:
        return _run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(a, work: Path) -> int:
    from featx.runtime import backend_name

    t0 = time.perf_counter()
    os.environ["FEATX_CACHE_DIR"] = str(work / "cache-spec")  # what resolving a spec writes stays in the scratch folder
    extra_n = max(1, a.images // 10)
    data = make_images(work / "data", a.images, a.px)
    extra = make_images(work / "extra", extra_n, a.px, start=a.images)
    print(f"made {a.images} + {extra_n} JPEGs of {a.px} px in {time.perf_counter() - t0:.1f} s", flush=True)
    header = {"date": dt.date.today().isoformat(), "backend": backend_name(), "device": device_name(),
              "backbone": a.backbone, "image_size": a.image_size, "precision": a.precision, "images": a.images,
              "px": a.px, "cores": os.cpu_count()}
    print(json.dumps(header), flush=True)
    batches = [int(b) for b in a.batch_sizes.split(",")]
    workers = [None if w == "default" else (os.cpu_count() if w == "all" else int(w)) for w in a.workers.split(",")]
    records = []
    for batch in batches:
        for w in dict.fromkeys(workers):
            r = one_config(data, extra, work, a, batch, w)
            print(json.dumps({k: v for k, v in r.items() if k != "stages"}), flush=True)
            records.append(r)
    best_batch = max(records, key=lambda r: r["pipeline_images_per_s"])["batch_size"]
    with decoding("cpu"):
        ceilings(a, data, work, best_batch, header)
    write(a, records, header)  # before the GPU-decode row: a crash there keeps the rest
    why = gpu_decode_missing(a.dry)
    header["gpu_decode"] = f"not run: {why}" if why else (
        "run on nvImageCodec's CPU backend (--dry)" if a.dry else "nvJPEG, resized on the device")
    print(f"decode gpu: {header['gpu_decode']}", flush=True)
    if why is None:
        try:
            r = one_config(data, extra, work, a, best_batch, None, decode="gpu")
        except Exception as exc:  # the CPU rows and the ceilings are written all the same
            header["gpu_decode"] = f"failed: {type(exc).__name__}: {exc}"[:300]
            print(f"decode gpu: {header['gpu_decode']}", flush=True)
        else:
            print(json.dumps({k: v for k, v in r.items() if k != "stages"}), flush=True)
            records.append(r)
    print(write(a, records, header))
    print(f"gpu check done in {time.perf_counter() - t0:.0f} s; wrote {a.out / 'gpu.json'} and {a.out / 'gpu.md'}")
    return 0


def write(a, records: list[dict], header: dict) -> str:
    """``gpu.json`` and ``gpu.md`` in ``--out``; returns the table."""
    runs = [{**{k: header.get(k) for k in FIELDS if k in header}, **r,
             "model_ceiling": header["model_ceiling"], "host_ceiling": header["host_ceiling"]} for r in records]
    runs = [{k: r.get(k) for k in FIELDS} for r in runs]
    (a.out / "gpu.json").write_text(json.dumps(runs, indent=2) + "\n")
    table = markdown(records, header)
    (a.out / "gpu.md").write_text(table)
    return table


if __name__ == "__main__":
    sys.exit(main())
