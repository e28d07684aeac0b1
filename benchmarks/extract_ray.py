"""The Ray engine next to the local one, on the same data and settings.

Rows, each into its own empty cache unless said otherwise:

1. starting Ray on this machine (``ray.init``), once;
2. featx local engine, cold, and featx ``engine="ray"``, cold (Ray already
   started: decode tasks, one embedding actor per 4 CPUs unless --workers,
   its start and model build included), alternating, --repeat times;
3. the Ray engine, warm re-run (nothing goes to Ray);
4. both engines after adding 10% new images (the Ray engine's fixed cost per run).

On one machine Ray can only add overhead (process start, a framework import
per actor, pixels through the object store); this measures how much. Ray
pays off when the cluster has more devices than one machine.

Usage::

    python benchmarks/extract_ray.py                   # hymenoptera, VGG16 HED weights, 128 px
    python benchmarks/extract_ray.py --weights none --image-size 64 --workers 2
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import parser  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from extract import copy_tree  # noqa: E402


def timed(data, cache, args, **kw):
    import featx

    t = time.perf_counter()
    res = featx.extract(data, args.backbone, weights=args.weights, image_size=args.image_size,
                        batch_size=args.batch_size, cache_dir=cache, progress=False, precision="float32",
                        log=lambda m: None, **kw)
    return res, time.perf_counter() - t


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, help="Ray embedding actors [default: one per 4 CPUs]")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs given to the local Ray instance")
    ap.add_argument("--repeat", type=int, default=2, help="cold runs of each engine, alternating")
    args = ap.parse_args(argv)

    import ray

    work = Path(tempfile.mkdtemp(prefix="featx-bench-ray-"))
    rows = []
    try:
        # Workers import featx from the same place as this process.
        root = str(Path(__file__).resolve().parents[1])
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        t = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        rows.append((f"ray.init (local, {args.num_cpus} CPUs)", 0, 0, time.perf_counter() - t))

        # Cold runs alternate, so that a change in the load of a shared machine hits both engines.
        remote = dict(engine="ray", workers=args.workers)
        for i in range(args.repeat):
            local, local_s = timed(args.data, work / f"local{i}", args)
            rows.append(("featx local engine, cold", local.total, local.computed, local_s))
            cold, cold_s = timed(args.data, work / f"ray{i}", args, **remote)
            rows.append(("featx --engine ray, cold", cold.total, cold.computed, cold_s))
        warm, warm_s = timed(args.data, work / "ray0", args, **remote)
        rows.append(("featx --engine ray, warm re-run", warm.total, warm.computed, warm_s))

        base = work / "grow"
        held = copy_tree(args.data, base, keep=1 / 1.1)
        timed(base, work / "local-grow", args)
        timed(base, work / "ray-grow", args, **remote)
        for p in held:
            target = base / p.relative_to(args.data)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        grown, grow_s = timed(base, work / "local-grow", args)
        rows.append((f"featx local engine, +{len(held)} new images", grown.total, grown.computed, grow_s))
        grown, grow_s = timed(base, work / "ray-grow", args, **remote)
        rows.append((f"featx --engine ray, +{len(held)} new images", grown.total, grown.computed, grow_s))

        import featx

        a = featx.load_features(args.data, cache_dir=work / "local0")
        b = featx.load_features(args.data, cache_dir=work / "ray0")
        same = list(a.sha256) == list(b.sha256)
        diff = float(abs(a.X - b.X).max()) if same else float("nan")

        print(f"\nbackbone={args.backbone} weights={Path(args.weights).name} size={args.image_size} "
              f"batch={args.batch_size} data={args.data} ({local.total} files, {len(local.skipped)} skipped); "
              f"ray {ray.__version__}, {os.cpu_count()} CPUs; same rows: {same}, max |local - ray| = {diff:.2g}")
        print("\n| run | images | computed | seconds | computed img/s |\n|---|---|---|---|---|")
        for name, n, computed, s in rows:
            rate = f"{computed / s:.1f}" if computed else ""
            print(f"| {name} | {n or ''} | {computed if n else ''} | {s:.2f} | {rate} |")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
