"""TensorFlow's own CPU kernels against oneDNN's, per backbone: the model alone.

featx turns TensorFlow's oneDNN kernels on before it imports TensorFlow
(``featx.runtime.fast_cpu_kernels``); TensorFlow itself does so only on CPUs
with AVX-512 VNNI/BF16 or AMX. This prints, for each backbone, the model's
wall and CPU time per image on a uint8 batch in memory (featx's feature
model, random weights, traced once), each setting in a fresh process.

Usage::

    python benchmarks/cpu_kernels.py
    python benchmarks/cpu_kernels.py --backbones vgg16:128,resnet50:224 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import framework_env  # benchmarks/ is on sys.path when run as a script

DEFAULT = "vgg16:128,resnet50:224,mobilenetv2:224,efficientnetb0:224,densenet121:224,inceptionv3:299,convnexttiny:224"


def measure(backbone: str, size: int, batch: int, seconds: float) -> dict:
    """The child: featx's feature model alone, ms of wall and CPU time per image."""
    import importlib

    import numpy as np

    from featx import backbones as B
    from featx.runtime import import_keras

    import_keras()
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port as port

    E = importlib.import_module("featx.extraction")
    spec = E.spec_for(backbone, weights=None, image_size=size, precision="float32")
    model = B.build_feature_model(spec)
    call = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    call(x).numpy()  # trace
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    while n < 2 * batch or time.perf_counter() - wall < seconds:
        call(x).numpy()
        n += batch
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"onednn": port.IsMklEnabled(), "wall_ms": 1e3 * wall / n, "cpu_ms": 1e3 * cpu / n}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default=DEFAULT, help="NAME:SIZE,... [%(default)s]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per model and setting")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        name, size = args.child.split(":")
        print(json.dumps(measure(name, int(size), args.batch_size, args.seconds)))
        return
    print(f"cores {os.cpu_count()}, batch {args.batch_size}, float32, random weights; ms per image\n")
    print("| backbone | px | TensorFlow's kernels: wall | CPU | oneDNN: wall | CPU | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for item in args.backbones.split(","):
        name, size = item.split(":")
        got = []
        for flag in ("0", "1"):
            cmd = [sys.executable, __file__, "--child", item, "--batch-size", str(args.batch_size),
                   "--seconds", str(args.seconds)]
            env = framework_env(TF_ENABLE_ONEDNN_OPTS=flag, TF_CPP_MIN_LOG_LEVEL="3")
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{item} failed:\n{done.stderr[-2000:]}")
            got.append(json.loads(done.stdout.splitlines()[-1]))
        off, on = got
        ms = [f"{v:.3g}" for v in (off["wall_ms"], off["cpu_ms"], on["wall_ms"], on["cpu_ms"])]
        print(f"| {name} | {size} | {' | '.join(ms)} | {off['wall_ms'] / on['wall_ms']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
