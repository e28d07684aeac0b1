"""Arrays benchmark: featx on a CIFAR-shaped array vs the same images as PNG files vs plain Keras.

Each way runs in its own process over the same N x 32 x 32 x 3 synthetic
uint8 images, resized to the backbone's input size, and reports wall
seconds, images/s and the process's peak RSS:

1. featx on the array held in memory (``featx.extract((x, y), ...)``);
2. featx on the same array in an ``np.savez`` file (memory-mapped);
3. featx warm re-run on the array (every row cached);
4. featx on the same images written as PNG files (class folders);
5. plain Keras: ``Input -> Resizing (bilinear) -> preprocess -> backbone``
   and ``model.predict(x)`` on the whole array.

``--memory-n`` then extracts that many rows from an ``.npz`` at 32 px
(no resize) and from an in-memory array, to show that the input is
never copied: peak RSS against the input's size.

Usage::

    python benchmarks/extract_arrays.py                        # 10k images, mobilenetv2 at 96 px
    python benchmarks/extract_arrays.py --n 2000 --memory-n ""  # quicker
    python benchmarks/extract_arrays.py --skip-compare --memory-n 6000,60000   # memory only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def synthetic(n: int, seed: int = 0):
    """CIFAR-shaped uint8 images with a class-dependent colour, 10 classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    base = rng.integers(0, 256, (10, 1, 1, 3))
    x = np.clip(base[y] + rng.integers(-60, 60, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return x, y


def child(args) -> dict:
    """One measured way, run in its own process."""
    import numpy as np

    import featx
    from featx.cache import Extraction

    # The peak before the end-of-run shard merge, which holds the computed
    # features (N x width float32) twice whatever the input was.
    before_merge = []
    merge = Extraction.compact

    def compact(self, *a, **k):
        before_merge.append(_vm_hwm_mb())
        return merge(self, *a, **k)

    Extraction.compact = compact
    opts = dict(backbone=args.backbone, weights="none", image_size=args.image_size, batch_size=args.batch_size,
                cache_dir=args.cache, progress=False)
    t = time.perf_counter()
    if args.way in ("array", "warm"):
        with np.load(args.npz) as f:
            x, y = f["x_train"], f["y_train"]  # read into memory
        t = time.perf_counter()
        res = featx.extract((x, y), **opts)
        n = res.total
    elif args.way == "npz":
        n = featx.extract(args.npz, **opts).total
    elif args.way == "png":
        n = featx.extract(args.png, **opts).total
    else:  # plain Keras
        from featx import backbones as B
        from featx.runtime import import_keras

        keras = import_keras()
        with np.load(args.npz) as f:
            x = f["x_train"]
        t = time.perf_counter()
        bb = B.get_backbone(args.backbone)
        base = B.build_backbone(bb, B.resolve_weights("none"), args.image_size, pooling="avg")
        inp = keras.Input((32, 32, 3))
        z = keras.layers.Resizing(args.image_size, args.image_size, interpolation="bilinear")(inp)
        z = getattr(keras.applications, bb.module).preprocess_input(z)
        model = keras.Model(inp, base(z))
        model.predict(x, batch_size=args.batch_size, verbose=0)
        n = len(x)
    seconds = time.perf_counter() - t
    return {"n": n, "seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "before_merge_mb": before_merge[0] if before_merge else None}


def _vm_hwm_mb() -> float | None:
    """Peak RSS so far (Linux /proc), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(args, way: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", way, "--backbone", args.backbone, "--image-size",
           str(extra.get("image_size", args.image_size)), "--batch-size", str(args.batch_size),
           "--npz", str(extra.get("npz", args.npz)), "--png", str(args.png), "--cache", str(extra["cache"])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{way} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_pngs(x, y, root: Path) -> None:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memory-n", default="60000", help="comma-separated row counts for the memory runs ('' skips)")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for hidden in ("--npz", "--png", "--cache"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.way = args.child
        print(json.dumps(child(args)))
        return

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="featx-arrays-bench-"))
    try:
        rows = []
        if not args.skip_compare:
            x, y = synthetic(args.n)
            args.npz, args.png = work / "x.npz", work / "png"
            np.savez(args.npz, x_train=x, y_train=y)
            write_pngs(x, y, args.png)
            for label, way, cache in [
                ("plain Keras (Resizing layer + model.predict(x))", "keras", work / "c0"),
                ("featx on the array (in memory)", "array", work / "c1"),
                ("featx on the array again (warm)", "warm", work / "c1"),
                ("featx on the .npz (memory-mapped)", "npz", work / "c2"),
                ("featx on the same images as PNG files", "png", work / "c3"),
            ]:
                r = measure(args, way, cache=cache)
                rows.append((label, r))
                print(f"{label}: {r}", file=sys.stderr)
            plain = rows[0][1]["seconds"]
            print(f"\n{args.n} x 32 x 32 x 3 uint8, {args.backbone} at {args.image_size} px, batch {args.batch_size}\n")
            print("| way | images | seconds | images/s | vs plain Keras | peak RSS (MB) |")
            print("|---|---|---|---|---|---|")
            for label, r in rows:
                print(f"| {label} | {r['n']} | {r['seconds']:.2f} | {r['n'] / r['seconds']:.1f} | "
                      f"{plain / r['seconds']:.2f}x | {r['rss_mb']:.0f} |")
        sizes = [int(s) for s in args.memory_n.split(",") if s.strip()]
        if sizes:
            print(f"\nPeak memory, {args.backbone} at 32 px (no resize):\n")
            print("| rows | input (MB) | way | seconds | peak RSS before the final shard merge (MB) | peak RSS (MB) |")
            print("|---|---|---|---|---|---|")
        for n in sizes:
            x, y = synthetic(n, seed=1)
            npz = work / f"m{n}.npz"
            np.savez(npz, x_train=x, y_train=y)
            del x, y
            args.png = work / "none"
            for way, label in (("npz", ".npz, memory-mapped"), ("array", "array in memory")):
                r = measure(args, way, cache=work / f"m{n}-{way}", npz=npz, image_size=32)
                merge = f"{r['before_merge_mb']:.0f}" if r["before_merge_mb"] else "-"
                print(f"| {n} | {n * 32 * 32 * 3 / 2**20:.0f} | {label} | {r['seconds']:.1f} | {merge} | {r['rss_mb']:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
