"""Extraction benchmark: featx vs the plain Keras way, warm re-runs, growth, memory.

Measures, in one run, on the same backbone, weights and input size:

1. plain Keras: ``keras.utils.image_dataset_from_directory`` + ``model.predict``
   on each batch (the notebook way), images/s;
2. featx cold extraction into an empty cache, images/s;
3. featx warm re-run over the same data (target: < 2% of cold);
4. featx after adding 10% new images (target: < 15% of cold);
5. peak memory (RSS) of a featx extraction subprocess over N synthetic
   images, for growing N (target: flat).

Usage::

    python benchmarks/extract.py                      # hymenoptera, VGG16 HED weights, 128 px
    python benchmarks/extract.py --backbone mobilenetv2 --weights none --image-size 96
    python benchmarks/extract.py --memory-sizes 1000,20000 --skip-compare
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import parser  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

PLAIN_NAME = ["image_dataset_from_directory"]


def plain_keras(data: Path, backbone: str, weights, size: int, batch: int, precision="float32") -> tuple[int, float]:
    """The notebook way: a tf.data directory loader and model.predict per batch."""
    from featx import backbones as B
    from featx.runtime import import_keras

    keras = import_keras()
    bb = B.get_backbone(backbone)
    if precision == "mixed":
        keras.config.set_dtype_policy("mixed_float16")
    model = B.build_backbone(bb, B.resolve_weights(weights), size, pooling="avg")
    keras.config.set_dtype_policy("float32")
    preprocess = getattr(keras.applications, bb.module).preprocess_input
    try:
        import tensorflow  # noqa: F401  (image_dataset_from_directory needs tf.data)
    except ImportError:
        PLAIN_NAME[0] = "PIL loop"
        return plain_loop(data, model, preprocess, size, batch)
    t = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(
        data, image_size=(size, size), batch_size=batch, shuffle=False, verbose=False
    )
    n = 0
    for x, _ in ds:
        model.predict(preprocess(x), verbose=0)
        n += int(x.shape[0])
    return n, time.perf_counter() - t


def plain_loop(data: Path, model, preprocess, size: int, batch: int) -> tuple[int, float]:
    """The notebook way without tf.data (JAX backend): load a batch, predict it."""
    import numpy as np
    from PIL import Image

    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    t = time.perf_counter()
    for i in range(0, len(files), batch):
        x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), "float32")
                      for f in files[i:i + batch]])
        model.predict(preprocess(x), verbose=0)
    return len(files), time.perf_counter() - t


def featx_extract(data, cache: Path, backbone, weights, size, batch, precision="float32"):
    import featx

    t = time.perf_counter()
    res = featx.extract(data, backbone, weights=weights, image_size=size, batch_size=batch, cache_dir=cache,
                        progress=False, precision=precision, log=lambda m: None)
    return res, time.perf_counter() - t


def copy_tree(src: Path, dst: Path, keep: float, seed: int = 0) -> list[Path]:
    """Copy a dataset, holding back a fraction of its images; returns the held-back ones."""
    rng = random.Random(seed)
    held = []
    for p in sorted(src.rglob("*")):
        if p.is_file():
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if rng.random() < keep:
                shutil.copy2(p, target)
            else:
                held.append(p)
    return held


def synthetic(root: Path, n: int, size: int = 64) -> Path:
    """N random JPEGs of size x size px in 10 class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(cls / f"{i:06d}.jpg", quality=85)
    return root


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run a command in a child process; return (peak RSS in MB, seconds)."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--memory-sizes", default="1000,20000", help="synthetic image counts for the memory test ('' to skip)")
    ap.add_argument("--memory-backbone", default="mobilenetv2")
    ap.add_argument("--memory-image-size", type=int, default=64)
    ap.add_argument("--skip-compare", action="store_true", help="only the memory test")
    ap.add_argument("--synthetic", type=int, default=0, help="instead of --data, N synthetic JPEGs of --synthetic-px")
    ap.add_argument("--synthetic-px", type=int, default=400)
    ap.add_argument("--precision", default="float32", choices=["auto", "float32", "mixed"])
    args = ap.parse_args(argv)

    rows = []
    work = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        if args.synthetic:
            args.data = synthetic(work / "synthetic-data", args.synthetic, args.synthetic_px)
        if not args.skip_compare:
            common = (args.backbone, args.weights, args.image_size, args.batch_size, args.precision)
            # Warm the page cache and the framework once so neither side pays for it.
            plain_keras(args.data, *common)
            n, plain_s = plain_keras(args.data, *common)
            res, cold_s = featx_extract(args.data, work / "cache-a", *common)
            warm, warm_s = featx_extract(args.data, work / "cache-a", *common)
            base = work / "grow"
            held = copy_tree(args.data, base, keep=1 / 1.1)
            featx_extract(base, work / "cache-b", *common)
            for p in held:
                target = base / p.relative_to(args.data)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, target)
            grown, grow_s = featx_extract(base, work / "cache-b", *common)
            rows += [
                (f"plain Keras ({PLAIN_NAME[0]} + predict/batch)", n, plain_s, n / plain_s, "1.00x"),
                ("featx cold extraction", res.total, cold_s, res.total / cold_s, f"{plain_s / cold_s * res.total / n:.2f}x"),
                ("featx warm re-run", warm.total, warm_s, warm.total / warm_s, f"{100 * warm_s / cold_s:.1f}% of cold"),
                (f"featx +{len(held)} new images ({grown.computed} computed)", grown.total, grow_s,
                 grown.total / grow_s, f"{100 * grow_s / cold_s:.1f}% of cold"),
            ]
            from featx.runtime import backend_name

            print(f"\nbackend={backend_name()} precision={args.precision} "
                  f"backbone={args.backbone} weights={Path(args.weights).name} size={args.image_size} "
                  f"batch={args.batch_size} data={args.data} ({res.total} files, {len(res.skipped)} skipped by featx)")
            print("\n| run | images | seconds | images/s | vs plain / cold |\n|---|---|---|---|---|")
            for name, k, s, rate, rel in rows:
                print(f"| {name} | {k} | {s:.2f} | {rate:.1f} | {rel} |")

        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        if sizes:
            print(f"\nPeak memory of `featx extract` (subprocess, {args.memory_backbone}, weights none, "
                  f"{args.memory_image_size} px, synthetic 64 px JPEGs):\n")
            print("| images | peak RSS (MB) | seconds |\n|---|---|---|")
            for k in sizes:
                data = synthetic(work / f"syn{k}", k)
                cmd = [sys.executable, "-m", "featx.cli", "--cache-dir", str(work / f"mem{k}"), "extract", "-q",
                       "-b", args.memory_backbone, "--weights", "none", "--image-size", str(args.memory_image_size),
                       "--precision", "float32", str(data)]
                mb, s = peak_rss_mb(cmd)
                print(f"| {k} | {mb:.0f} | {s:.1f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
