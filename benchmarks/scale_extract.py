"""Memory of an extraction over its run and over the data's size (docs/memory.md).

Three measurements, each a real ``featx.extract`` in a child process whose
RSS (``/proc/self/status``) is sampled by a thread beside the run together
with the rows written to the cache so far:

``small``
    Many small generated JPEGs (32 to 48 px, 200,000 by default) with a
    near-free model (mobilenetv3small, random weights, 32 px, as
    ``../shared/bench/host_scaling.py`` uses): the table of rows written
    against RSS shows whether anything grows with the rows done.
``photos``
    Photo-like JPEGs of 400 to 800 px (1,500 by default) through VGG16 at
    224 px (random weights: the memory is the same as ImageNet's): a real
    run's memory budget (model, decode window, batches waiting for the
    build, write queue), and the peak under each of the knobs that decide it.
``arrays``
    ``featx.extract((x, y), backbone="resnet50", weights="none", image_size=32)``
    on 6,000 and 60,000 generated CIFAR-shaped rows: peak RSS before the
    end-of-run merge and at the end.
``model``
    featx's model alone (built as extraction builds it) on three batches of
    random pixels, at each batch size: what the activations add.

The generated files go under ``--root`` (``/work/scratch/scale-pipeline`` by
default) and are deleted afterwards unless ``--keep`` is given::

    python benchmarks/scale_extract.py small --n 200000
    python benchmarks/scale_extract.py photos --n 1500
    python benchmarks/scale_extract.py arrays --sizes 6000,60000
    python benchmarks/scale_extract.py model --backbone vgg16 --image-size 224 --batches 8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import make_jpegs  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = Path("/work/scratch/scale-pipeline")


# --------------------------------------------------------------------------- data


def make_arrays(n: int, seed: int = 0):
    """CIFAR-shaped uint8 images with a class-dependent colour, 10 classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    base = rng.integers(0, 256, (10, 1, 1, 3))
    x = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(0, n, 5000):  # in slices: no int64 copy of the whole array
        x[i:i + 5000] = np.clip(base[y[i:i + 5000]] + rng.integers(-60, 60, (len(y[i:i + 5000]), 32, 32, 3)), 0, 255)
    return x, y


# --------------------------------------------------------------------------- the measured child


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """RSS and rows written, every ``every`` seconds, on a thread of its own."""

    def __init__(self, every: float = 0.25):
        self.every, self.rows, self.samples = every, 0, []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        from featx.cache import Extraction

        real = Extraction.write_shard
        sampler = self

        def write_shard(ext, features, *a, **k):
            out = real(ext, features, *a, **k)
            sampler.rows += len(features)
            return out

        Extraction.write_shard = write_shard
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self):
        self.samples.append((time.perf_counter() - self.t0, self.rows, _status_mb("VmRSS")))

    def _run(self):
        while not self._stop.wait(self.every):
            self.sample()


def child(args) -> None:
    import featx
    from featx.cache import Extraction

    extract_mod = sys.modules["featx.extraction.engines.local"]  # the pipeline's AHEAD_* limits
    if args.ahead_mb is not None:
        extract_mod.AHEAD_BYTES = int(args.ahead_mb * 2**20)
    if args.ahead_images is not None:
        extract_mod.AHEAD_IMAGES = args.ahead_images
    before_merge = []
    merge = Extraction.compact

    def compact(self, *a, **k):
        before_merge.append(_status_mb("VmHWM"))
        return merge(self, *a, **k)

    Extraction.compact = compact
    opts = dict(backbone=args.backbone, weights="none", image_size=args.image_size, batch_size=args.batch_size,
                cache_dir=args.cache, progress=False, workers=args.workers)
    if args.data.startswith("arrays:"):
        x, y = make_arrays(int(args.data.split(":")[1]))
        data = (x, y)
    else:
        data = args.data
    t = time.perf_counter()
    with Sampler() as s:
        res = featx.extract(data, **opts)
    print(json.dumps({
        "n": res.total, "computed": res.computed, "seconds": time.perf_counter() - t,
        "peak_mb": _status_mb("VmHWM"), "before_merge_mb": before_merge[0] if before_merge else None,
        "samples": s.samples,
    }))


def model_child(args) -> None:
    """Peak RSS after building featx's model, and after three batches of random uint8 pixels through it."""
    import featx  # noqa: F401
    from featx import backbones as B

    extract_mod = sys.modules["featx.extraction"]
    spec = extract_mod.spec_for(args.backbone, weights="none", image_size=args.image_size, cache_dir=args.cache)
    forward = extract_mod.forward.Forward(B.build_feature_model(spec, spec.load_weights()))
    built = _status_mb("VmHWM")
    x = np.random.default_rng(0).integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3), np.uint8)
    forward.fetch(forward.dispatch(x))
    t = time.perf_counter()
    for _ in range(2):
        forward.fetch(forward.dispatch(x))
    rate = 2 * args.batch_size / (time.perf_counter() - t)
    print(json.dumps({"built_mb": built, "peak_mb": _status_mb("VmHWM"), "rss_mb": _status_mb("VmRSS"),
                      "images_per_second": rate}))


def measure(data, cache: Path, backbone: str, image_size: int, batch_size=None, workers=None, ahead_mb=None,
            ahead_images=None, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "child", "--data", str(data), "--cache", str(cache), "--backbone", backbone,
           "--image-size", str(image_size)]
    for flag, value in (("--batch-size", batch_size), ("--workers", workers), ("--ahead-mb", ahead_mb),
                        ("--ahead-images", ahead_images)):
        if value is not None:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode:
        sys.exit(f"the measured run failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- reports


def over_the_run(rep: dict, rows: int = 12) -> None:
    """Rows written against RSS at evenly spaced points of the run."""
    samples = rep["samples"]
    n = max(rep["computed"], 1)
    print("| rows written | % of rows | seconds | RSS (MB) |\n|---|---|---|---|")
    shown = set()
    for k in range(rows + 1):
        goal = n * k / rows
        i = next((j for j, (_, r, _) in enumerate(samples) if r >= goal), len(samples) - 1)
        if i in shown:
            continue
        shown.add(i)
        t, r, mb = samples[i]
        print(f"| {r} | {100 * r / n:.0f}% | {t:.1f} | {mb:.0f} |")
    steady = [mb for _, r, mb in samples if 0.1 * n <= r <= 0.95 * n]
    if steady:
        print(f"\nRSS between 10% and 95% of the rows: min {min(steady):.0f} MB, max {max(steady):.0f} MB "
              f"(spread {max(steady) - min(steady):.0f} MB); peak before the end-of-run merge "
              f"{rep['before_merge_mb'] or float('nan'):.0f} MB, peak {rep['peak_mb']:.0f} MB, "
              f"{rep['seconds']:.1f} s, {rep['computed']} computed")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name, n in (("small", 200000), ("photos", 1500)):
        p = sub.add_parser(name)
        p.add_argument("--n", type=int, default=n)
    sub.choices["photos"].add_argument("--variants", default="default,batch64",
                                       help="knobs to measure, comma-separated")
    mod = sub.add_parser("model")
    mod.add_argument("--backbone", default="vgg16")
    mod.add_argument("--image-size", type=int, default=224)
    mod.add_argument("--batches", default="8,16,32,64")
    arr = sub.add_parser("arrays")
    arr.add_argument("--sizes", default="6000,60000")
    arr.add_argument("--backbone", default="resnet50")
    arr.add_argument("--ahead-images", type=int, help="images that may wait for the model build [featx's]")
    for p in sub.choices.values():
        p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
        p.add_argument("--keep", action="store_true", help="keep the generated images")
    c = sub.add_parser("child")
    c.add_argument("--data", required=True)
    c.add_argument("--cache", required=True)
    c.add_argument("--backbone", required=True)
    c.add_argument("--image-size", type=int, required=True)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--workers", type=int)
    c.add_argument("--ahead-mb", type=float)
    c.add_argument("--ahead-images", type=int)
    c.add_argument("--model-only", action="store_true")
    args = ap.parse_args(argv)
    if args.what == "child":
        return model_child(args) if args.model_only else child(args)
    args.root.mkdir(parents=True, exist_ok=True)
    cache = args.root / f"cache-{args.what}"
    shutil.rmtree(cache, ignore_errors=True)
    if args.what == "small":
        data = make_jpegs(args.root / f"small-{args.n}", args.n, "small")
        rep = measure(data, cache, "mobilenetv3small", 32)
        print(f"\n{args.n} JPEGs of 32-48 px, mobilenetv3small (random weights) at 32 px:\n")
        over_the_run(rep)
        if not args.keep:
            shutil.rmtree(data)
            (args.root / f"small-{args.n}.done").unlink()
    elif args.what == "photos":
        data = make_jpegs(args.root / f"photos-{args.n}", args.n, "photo")
        variants = {
            "default": {},
            "batch16": {"batch_size": 16},
            "batch32": {"batch_size": 32},
            "batch64": {"batch_size": 64},
            "ahead0": {"ahead_mb": 0},
            "no-onednn": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
        }
        print(f"\n{args.n} photo-like JPEGs of 400-800 px, VGG16 (random weights) at 224 px:\n")
        print("| variant | seconds | images/s | peak RSS before the merge (MB) | peak RSS (MB) |\n|---|---|---|---|---|")
        for name in args.variants.split(","):
            rep = measure(data, cache, "vgg16", 224, **variants[name])
            print(f"| {name} | {rep['seconds']:.1f} | {rep['computed'] / rep['seconds']:.1f} | "
                  f"{rep['before_merge_mb'] or float('nan'):.0f} | {rep['peak_mb']:.0f} |", flush=True)
        if not args.keep:
            shutil.rmtree(data)
            (args.root / f"photos-{args.n}.done").unlink()
    elif args.what == "model":
        print(f"\nfeatx's {args.backbone} model alone at {args.image_size} px, random uint8 batches "
              f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'featx default: 1')}):\n")
        print("| batch | peak RSS after the build (MB) | peak RSS after 3 batches (MB) | RSS after (MB) | images/s |")
        print("|---|---|---|---|---|")
        for b in [int(v) for v in args.batches.split(",")]:
            cmd = [sys.executable, __file__, "child", "--model-only", "--data", "-", "--cache", str(cache),
                   "--backbone", args.backbone, "--image-size", str(args.image_size), "--batch-size", str(b)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the measured run failed:\n{done.stderr[-3000:]}")
            rep = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {b} | {rep['built_mb']:.0f} | {rep['peak_mb']:.0f} | {rep['rss_mb']:.0f} | "
                  f"{rep['images_per_second']:.1f} |", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    else:
        held = f", AHEAD_IMAGES={args.ahead_images}" if args.ahead_images is not None else ""
        print(f"\nfeatx.extract((x, y), backbone={args.backbone!r}, weights='none', image_size=32){held}:\n")
        print("| rows | seconds | peak RSS before the merge (MB) | peak RSS (MB) |\n|---|---|---|---|")
        for n in [int(s) for s in args.sizes.split(",")]:
            rep = measure(f"arrays:{n}", cache, args.backbone, 32, ahead_images=args.ahead_images)
            print(f"| {n} | {rep['seconds']:.1f} | {rep['before_merge_mb'] or float('nan'):.0f} | "
                  f"{rep['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
