"""Extraction benchmark: featx vs the plain Keras ways, warm re-runs, growth, host scaling, memory.

Measures, in one run, on the same backbone, weights and input size:

1. plain Keras, per batch: ``image_dataset_from_directory`` and
   ``model.predict`` on each batch (the notebook way);
2. plain Keras, one call: ``model.predict(ds)`` over
   ``image_dataset_from_directory(...).map(preprocess).prefetch(AUTOTUNE)``,
   the strongest plain way (on JAX, without tf.data: a ``keras.utils.PyDataset``
   with worker threads and one ``predict`` call). Both run in a fresh Python
   with ``import keras`` and the framework's own defaults. Where TensorFlow
   leaves its oneDNN CPU kernels off by itself (CPUs without AVX-512
   VNNI/BF16 or AMX) and featx turns them on, the one-call way runs once
   more with ``TF_ENABLE_ONEDNN_OPTS=1``, so the table shows how much of the
   gap is that kernel choice alone;
3. featx cold extraction into an empty cache, warm re-run (target < 2% of
   cold), and after adding 10% new images (target < 15% of cold);
4. host scaling: featx with a model that costs almost nothing
   (mobilenetv3small, random weights, 32 px) over synthetic 500x375 JPEGs,
   against a single-threaded loop doing the same per-image work (read,
   sha256, Pillow decode with draft, resize); target >= 1.6x on 2 cores;
5. with ``--ceilings`` (default on a GPU): the model alone on uint8 batches
   already on the device, and featx's host pipeline alone (the model
   replaced by a stub) at the benchmark's input size;
6. peak memory (RSS) of a featx extraction subprocess over N synthetic
   images, for growing N (target: flat).

``--profile`` adds the per-stage time table of the featx runs (read, hash,
decode+resize, stack, model, write: thread-seconds, summed over workers).

Usage::

    python benchmarks/extract.py                      # CPU: hymenoptera, VGG16 HED weights, 128 px
    python benchmarks/extract.py --profile --memory-sizes ""
    KERAS_BACKEND=jax python benchmarks/extract.py --synthetic 4000 --synthetic-px 400 --backbone resnet50 \\
        --weights none --image-size 224 --batch-size 128 --precision mixed --ceilings --profile --memory-sizes ""
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import framework_env, make_jpegs, parser  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def _model_and_preprocess(backbone, weights, size, precision):
    import keras  # as a plain user does: the framework's own defaults, not featx's import_keras

    from featx import backbones as B

    bb = B.get_backbone(backbone)
    if precision == "mixed":
        keras.config.set_dtype_policy("mixed_float16")
    model = B.build_backbone(bb, B.resolve_weights(weights), size, pooling="avg")
    keras.config.set_dtype_policy("float32")
    return keras, model, getattr(keras.applications, bb.module).preprocess_input


def _has_tf_data() -> bool:
    """Whether the plain ways can use tf.data: TensorFlow is the backend (on JAX the
    preprocessing runs in Keras ops, which cannot run inside a tf.data map)."""
    from featx.runtime import backend_name

    if backend_name() != "tensorflow":
        return False
    try:
        import tensorflow  # noqa: F401  (image_dataset_from_directory needs tf.data)
    except ImportError:
        return False
    return True


def _image_files(data: Path) -> list[Path]:
    return sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".bmp"))


def plain_per_batch(data: Path, backbone, weights, size, batch, precision="float32") -> tuple[str, int, float]:
    """The notebook way: a tf.data directory loader and model.predict on each batch."""
    keras, model, preprocess = _model_and_preprocess(backbone, weights, size, precision)
    if not _has_tf_data():
        return ("PIL loop + predict/batch",) + plain_loop(data, model, preprocess, size, batch)
    t = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(
        data, image_size=(size, size), batch_size=batch, shuffle=False, verbose=False
    )
    n = 0
    for x, _ in ds:
        model.predict(preprocess(x), verbose=0)
        n += int(x.shape[0])
    return "image_dataset_from_directory + predict/batch", n, time.perf_counter() - t


def plain_one_call(data: Path, backbone, weights, size, batch, precision="float32") -> tuple[str, int, float]:
    """The strongest plain way: one predict() over a prefetching pipeline with preprocessing mapped in it."""
    keras, model, preprocess = _model_and_preprocess(backbone, weights, size, precision)
    if _has_tf_data():
        import tensorflow as tf

        t = time.perf_counter()
        ds = keras.utils.image_dataset_from_directory(
            data, image_size=(size, size), batch_size=batch, shuffle=False, verbose=False
        )
        ds = ds.map(lambda x, y: preprocess(x), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        n = len(model.predict(ds, verbose=0))
        return "image_dataset_from_directory.map.prefetch + one predict", n, time.perf_counter() - t
    import numpy as np
    from PIL import Image

    files = _image_files(data)

    class Folder(keras.utils.PyDataset):
        def __len__(self):
            return -(-len(files) // batch)

        def __getitem__(self, i):
            x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), "float32")
                          for f in files[i * batch:(i + 1) * batch]])
            return preprocess(x)

    t = time.perf_counter()
    n = len(model.predict(Folder(workers=os.cpu_count(), use_multiprocessing=False), verbose=0))
    return f"PyDataset ({os.cpu_count()} worker threads) + one predict", n, time.perf_counter() - t


def plain_loop(data: Path, model, preprocess, size: int, batch: int) -> tuple[int, float]:
    """The notebook way without tf.data (JAX backend): load a batch, predict it."""
    import numpy as np
    from PIL import Image

    files = _image_files(data)
    t = time.perf_counter()
    for i in range(0, len(files), batch):
        x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), "float32")
                      for f in files[i:i + batch]])
        model.predict(preprocess(x), verbose=0)
    return len(files), time.perf_counter() - t


PLAIN_WAYS = {"per-batch": plain_per_batch, "one-call": plain_one_call}


def plain_in_child(ways: list[str], args, batch: int, **env: str) -> tuple[bool | None, list[tuple[str, int, float]]]:
    """Run plain ways in a fresh Python (this script with --plain-run), so that the framework
    starts with its own defaults, or with ``env`` added. Returns whether TensorFlow ran its
    oneDNN kernels there (None on another backend) and [(name, images, seconds)]."""
    cmd = [sys.executable, __file__, "--plain-run", ",".join(ways), "--data", str(args.data), "--backbone",
           args.backbone, "--weights", str(args.weights), "--image-size", str(args.image_size), "--batch-size",
           str(batch), "--precision", args.precision]
    done = subprocess.run(cmd, env=framework_env(**env), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"plain Keras run failed:\n{done.stderr[-2000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith(("[", "{"))]
    return lines[0]["onednn"], [tuple(line) for line in lines[1:]]


def plain_run(ways: list[str], args) -> None:
    """The child of :func:`plain_in_child`: whether oneDNN is on, a warm-up batch, then
    each way; one JSON line each."""
    import numpy as np

    keras, model, preprocess = _model_and_preprocess(args.backbone, args.weights, args.image_size, args.precision)
    onednn = None
    if keras.backend.backend() == "tensorflow":  # on JAX Keras may import TensorFlow, but not run it
        from tensorflow.python.util import _pywrap_util_port as port

        onednn = port.IsMklEnabled()
    print(json.dumps({"onednn": onednn}), flush=True)
    model.predict(preprocess(np.zeros((args.batch_size, args.image_size, args.image_size, 3), "float32")), verbose=0)
    for way in ways:
        name, n, seconds = PLAIN_WAYS[way](args.data, args.backbone, args.weights, args.image_size, args.batch_size,
                                           args.precision)
        print(json.dumps([name, n, seconds]), flush=True)


def featx_extract(data, cache: Path, backbone, weights, size, batch, precision="float32", workers=None):
    import featx

    t = time.perf_counter()
    res = featx.extract(data, backbone, weights=weights, image_size=size, batch_size=batch, cache_dir=cache,
                        progress=False, precision=precision, workers=workers, log=lambda m: None)
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


def single_thread_rate(files: list[str], size: int = 32) -> float:
    """Images/s of one thread doing featx's per-image host work (host_scaling.py's loop), best of 3."""
    import numpy as np
    from PIL import Image

    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for f in files:
            with open(f, "rb") as fh:
                b = fh.read()
            hashlib.sha256(b).hexdigest()
            im = Image.open(io.BytesIO(b))
            im.draft("RGB", (size, size))
            np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        best = max(best, len(files) / (time.perf_counter() - t))
    return best


def host_scaling(work: Path, n: int, batch: int) -> tuple[float, float]:
    """(featx img/s, single-thread loop img/s) on N photo-like JPEGs.

    As in ../shared/bench/host_scaling.py: `featx extract` subprocesses, and
    featx's rate is that of an N-image run minus an N/10-image run (start-up
    and model build cancel out), best of 3.
    """
    data = make_jpegs(work / "host-data", n, "rolled")
    files = sorted(glob.glob(str(data / "*" / "*.jpg")))
    small = work / "host-small" / "s"
    small.mkdir(parents=True)
    for f in files[: n // 10]:
        os.link(f, small / Path(f).name)
    ref = single_thread_rate(files)
    featx_cli_seconds(small.parent, work / "host-warm", batch)  # load libraries from disk once
    best = 0.0
    for i in range(3):
        small_s = featx_cli_seconds(small.parent, work / f"host-s{i}", batch)
        full_s = featx_cli_seconds(data, work / f"host-{i}", batch)
        best = max(best, (n - n // 10) / max(full_s - small_s, 1e-3))
    return best, ref


def featx_cli_seconds(data: Path, cache: Path, batch: int | None) -> float:
    """Seconds of a `featx extract` subprocess (this checkout's code) with an almost free model."""
    cmd = [sys.executable, "-m", "featx.cli", "--cache-dir", str(cache), "extract", "-q", "--backbone",
           "mobilenetv3small", "--weights", "none", "--image-size", "32", str(data)]
    if batch:  # else featx's own default for 32 px
        cmd[-1:-1] = ["--batch-size", str(batch)]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"featx extract failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def model_ceiling(backbone, weights, size, batch, precision, seconds: float = 10.0) -> float:
    """Images/s of featx's feature model alone on a uint8 batch already on the device."""
    import numpy as np

    from featx import backbones as B
    from featx.runtime import backend_name

    E = importlib.import_module("featx.extraction")

    spec = E.spec_for(backbone, weights=weights, image_size=size, precision=precision)
    model = B.build_feature_model(spec)
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    if backend_name() == "jax":
        import jax

        forward = E.forward.Forward(model)
        x = jax.device_put(x)
        run, sync = forward.dispatch, lambda out: out.block_until_ready()
    elif backend_name() == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        run, sync = tf.function(lambda x: model(x, training=False)), lambda out: out.numpy()
    else:
        run, sync = model.predict_on_batch, lambda out: out
    sync(run(x))  # compile
    n, t = 0, time.perf_counter()
    out = None
    while time.perf_counter() - t < seconds:
        out = run(x)
        n += batch
    sync(out)
    return n / (time.perf_counter() - t)


def host_ceiling(data, cache: Path, backbone, weights, size, batch, precision) -> tuple[float, object]:
    """Images/s of featx's host pipeline alone: the real run with the model replaced by a stub."""
    import numpy as np

    from featx import backbones as B

    E = importlib.import_module("featx.extraction.engines.local")  # where the pipeline finds Forward
    width = B.get_backbone(backbone).feature_width

    class Stub:
        def __init__(self, model):
            pass

        def dispatch(self, x):
            return np.zeros((len(x), width), np.float32)

        fetch = staticmethod(np.asarray)

    real = E.Forward
    E.Forward = Stub
    try:
        res, _ = featx_extract(data, cache, backbone, weights, size, batch, precision)
    finally:
        E.Forward = real
    return res.computed / res.compute_seconds, res


def stage_table(title: str, res) -> None:
    n = max(res.computed, 1)
    wall = res.compute_seconds
    print(f"\nPer-stage time, {title}: {res.computed} images in {wall:.2f} s of pipeline wall time "
          "(thread-seconds; read, hash and decode summed over the worker threads):\n")
    print("| stage | seconds | ms/image | % of wall |\n|---|---|---|---|")
    for stage, s in res.stage_seconds.items():
        label = "decode+resize" if stage == "decode" else stage
        print(f"| {label} | {s:.2f} | {1e3 * s / n:.3f} | {100 * s / wall:.0f}% |")


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=None, help="featx and the plain ways [featx's default]")
    ap.add_argument("--memory-sizes", default="1000,20000", help="synthetic image counts for the memory test ('' to skip)")
    ap.add_argument("--memory-backbone", default="mobilenetv2")
    ap.add_argument("--memory-image-size", type=int, default=64)
    ap.add_argument("--skip-compare", action="store_true", help="only the memory test")
    ap.add_argument("--host-images", type=int, default=3000, help="photo-like JPEGs for host scaling (0 to skip)")
    ap.add_argument("--ceilings", action="store_true", default=None, help="model alone and host alone [on a GPU]")
    ap.add_argument("--profile", action="store_true", help="per-stage time tables of the featx runs")
    ap.add_argument("--synthetic", type=int, default=0, help="instead of --data, N synthetic JPEGs of --synthetic-px")
    ap.add_argument("--synthetic-px", type=int, default=400)
    ap.add_argument("--precision", default="float32", choices=["auto", "float32", "mixed"])
    ap.add_argument("--plain-run", help=argparse.SUPPRESS)  # internal: the plain ways' child process
    args = ap.parse_args(argv)
    if args.plain_run:
        return plain_run(args.plain_run.split(","), args)

    from featx.runtime import backend_name, gpu_available

    E = importlib.import_module("featx.extraction")
    batch = args.batch_size or E.default_batch_size(gpu_available(), args.image_size)
    ceilings = gpu_available() if args.ceilings is None else args.ceilings
    work = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        if args.synthetic:
            args.data = make_jpegs(work / "synthetic-data", args.synthetic, "noise", px=args.synthetic_px)
        if not args.skip_compare:
            common = (args.backbone, args.weights, args.image_size, batch, args.precision)
            for f in _image_files(args.data):  # the page cache, warm for every run
                f.read_bytes()
            # The plain ways in fresh processes with the framework's defaults;
            # featx's import turns oneDNN on (featx.runtime.fast_cpu_kernels).
            onednn, ((name_b, n, per_batch_s), (name_o, n_o, one_call_s)) = plain_in_child(
                ["per-batch", "one-call"], args, batch)
            kernels_differ = onednn is False  # TensorFlow left oneDNN off by itself, and featx turns it on
            if kernels_differ:  # how much of the gap is the kernel choice alone
                _, ((_, n_d, onednn_s),) = plain_in_child(["one-call"], args, batch, TF_ENABLE_ONEDNN_OPTS="1")
            from featx.runtime import import_keras

            import_keras()  # every featx run below starts with the framework imported, as the plain ways do
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
            rows = [
                (f"plain Keras ({name_b})", n, per_batch_s, f"{one_call_s / per_batch_s:.2f}x"),
                (f"plain Keras ({name_o})", n_o, one_call_s, "1.00x"),
            ]
            if kernels_differ:
                rows.append((f"plain Keras ({name_o}), TF_ENABLE_ONEDNN_OPTS=1", n_d, onednn_s,
                             f"{one_call_s / onednn_s * n_d / n_o:.2f}x"))
            rows += [
                ("featx cold extraction", res.total, cold_s, f"**{one_call_s / cold_s * res.total / n_o:.2f}x**"),
                ("featx warm re-run", warm.total, warm_s, f"{100 * warm_s / cold_s:.1f}% of cold"),
                (f"featx +{len(held)} new images ({grown.computed} computed)", grown.total, grow_s,
                 f"{100 * grow_s / cold_s:.1f}% of cold"),
            ]
            if ceilings:
                rate = model_ceiling(args.backbone, args.weights, args.image_size, batch, args.precision)
                rows.append(("ceiling: model alone, uint8 batches on the device", batch, batch / rate,
                             f"{rate / (n_o / one_call_s):.2f}x"))
                rate, host_res = host_ceiling(args.data, work / "cache-host", *common)
                rows.append(("ceiling: featx host pipeline alone (stub model)", host_res.computed,
                             host_res.compute_seconds, f"{rate / (n_o / one_call_s):.2f}x"))
            print(f"\nbackend={backend_name()} precision={args.precision} backbone={args.backbone} "
                  f"weights={Path(args.weights).name} size={args.image_size} batch={batch} cores={os.cpu_count()} "
                  f"data={args.data} ({res.total} files, {len(res.skipped)} skipped by featx)")
            print("\n| run | images | seconds | images/s | vs plain one-call / cold |\n|---|---|---|---|---|")
            for name, k, s, rel in rows:
                print(f"| {name} | {k} | {s:.2f} | {k / s:.1f} | {rel} |")
            if args.profile:
                stage_table("featx cold extraction", res)
                if ceilings:
                    stage_table("host pipeline alone", host_res)

        if args.host_images:
            rate, ref = host_scaling(work, args.host_images, args.batch_size)
            print(f"\nHost scaling: featx (mobilenetv3small, weights none, 32 px, batch {batch}) "
                  f"over {args.host_images} photo-like 500x375 JPEGs against one thread doing the same per-image "
                  f"work, {os.cpu_count()} cores (target >= 1.6x on 2):\n")
            print("| run | images/s | vs single thread |\n|---|---|---|")
            print(f"| single-thread loop (read, sha256, Pillow draft decode, resize) | {ref:.0f} | 1.00x |")
            print(f"| featx extract subprocess ({args.host_images}-image run minus {args.host_images // 10}-image run, best of 3) "
                  f"| {rate:.0f} | **{rate / ref:.2f}x** |")

        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        if sizes:
            print(f"\nPeak memory of `featx extract` (subprocess, {args.memory_backbone}, weights none, "
                  f"{args.memory_image_size} px, synthetic 64 px JPEGs):\n")
            print("| images | peak RSS (MB) | seconds |\n|---|---|---|")
            for k in sizes:
                data = make_jpegs(work / f"syn{k}", k, "noise")
                cmd = [sys.executable, "-m", "featx.cli", "--cache-dir", str(work / f"mem{k}"), "extract", "-q",
                       "-b", args.memory_backbone, "--weights", "none", "--image-size", str(args.memory_image_size),
                       "--precision", "float32", str(data)]
                mb, s = peak_rss_mb(cmd)
                print(f"| {k} | {mb:.0f} | {s:.1f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


if __name__ == "__main__":
    main()
