"""Export benchmark: `featx export` of N x D synthetic rows, seconds and peak RSS per format.

The rows are written through the cache's own API, as `featx extract` writes
them: shards of 2,048 rows under the extraction's lock, then one compaction
(what a run with more than 32 shards does), and a dataset view. Each export
then runs in a fresh process, which reports its wall time and peak RSS
(``ru_maxrss``), so the numbers are the export's alone. ``--rows`` several
values show whether memory grows with the row count.

Usage::

    python benchmarks/export.py                                # 100,000 x 2,048, parquet arrow npz
    python benchmarks/export.py --rows 25000 100000 --formats parquet
    python benchmarks/export.py --work /work/scratch/NAME      # where the cache and files go (deleted after)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Peak RSS is the process's VmHWM: ru_maxrss would count the parent's peak, which a
# forked child inherits across exec.
PEAK = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024"
CHILD = r"""
import json, sys, time
import featx
t = time.perf_counter()
res = featx.export(sys.argv[1], data=sys.argv[2], cache_dir=sys.argv[3], format=sys.argv[4])
print(json.dumps({"seconds": time.perf_counter() - t, "rows": res.rows, "bytes": res.size_bytes, "peak_rss_mib": %s}))
""" % PEAK

# The cache's part alone: every row read in the export's chunks, nothing written.
READ_ONLY = r"""
import json, sys, time
from featx.cache import Cache
from featx.features import find_view
from featx.tables import CHUNK_BYTES
cache = Cache(sys.argv[2])
view = find_view(cache, sys.argv[1])
ext = cache.get_extraction(view.extraction)
shas = list(cache.read_view(view)["sha256"])
rows = CHUNK_BYTES // (4 * int(ext.meta["feature_width"]))
t = time.perf_counter()
for lo in range(0, len(shas), rows):
    ext.read(shas[lo:lo + rows])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mib": %s}))
""" % PEAK

BASELINE = r"""
import json
import featx, pyarrow.parquet
print(json.dumps({"peak_rss_mib": %s}))
""" % PEAK


def fill(cache_dir: Path, rows: int, width: int, seed: int = 0) -> str:
    """Write ``rows`` synthetic feature rows and their view through the cache API; returns the view's source."""
    import numpy as np

    from featx.cache import Cache
    from featx.extraction import spec_for

    backbone = {2048: "resnet50", 512: "vgg16", 1280: "efficientnetb0"}.get(width, "resnet50")
    spec = spec_for(backbone, weights="none", image_size=32, cache_dir=cache_dir)
    cache = Cache(cache_dir)
    ext = cache.extraction(spec, feature_width=width, create=True)
    rng = np.random.default_rng(seed)
    shas = [f"{i:064x}" for i in range(rows)]
    paths = [f"/data/img/{i:08d}.jpg" for i in range(rows)]
    labels = [f"class{i % 10}" for i in range(rows)]
    with ext.lock():
        for lo in range(0, rows, 2048):
            hi = min(rows, lo + 2048)
            feats = rng.random((hi - lo, width), dtype=np.float32)
            ext.write_shard(feats, shas[lo:hi], paths[lo:hi], labels[lo:hi])
        ext.compact()
    source = f"bench:synthetic-{rows}x{width}"
    cache.write_view(ext, source=source, layout="files", class_names=[f"class{i}" for i in range(10)], paths=paths,
                     shas=shas, labels=np.arange(rows) % 10, splits=["train"] * rows)
    return source


def child(code: str, *args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--formats", nargs="+", default=["parquet", "arrow", "npz"])
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder [default: a temporary one].")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featx-export-", dir=args.work))
    try:
        base = child(BASELINE)["peak_rss_mib"]
        print(f"baseline: `import featx, pyarrow.parquet` peak RSS {base:.0f} MiB")
        print("| rows | width | format | seconds | rows/s | file MiB | peak RSS MiB |")
        print("|---:|---:|---|---:|---:|---:|---:|")
        for rows in args.rows:
            cache = work / f"cache-{rows}"
            t = time.perf_counter()
            source = fill(cache, rows, args.width)
            print(f"(filled {rows} x {args.width} in {time.perf_counter() - t:.1f}s)", file=sys.stderr)
            r = child(READ_ONLY, source, cache)
            print(f"| {rows:,} | {args.width:,} | (cache reads only) | {r['seconds']:.1f} | {rows / r['seconds']:,.0f} "
                  f"| | {r['peak_rss_mib']:,.0f} |", flush=True)
            for fmt in args.formats:
                out = work / f"out-{rows}.{fmt}"
                r = child(CHILD, out, source, cache, fmt)
                print(f"| {rows:,} | {args.width:,} | {fmt} | {r['seconds']:.1f} | {rows / r['seconds']:,.0f} | "
                      f"{r['bytes'] / 2**20:,.0f} | {r['peak_rss_mib']:,.0f} |", flush=True)
                out.unlink()
            shutil.rmtree(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
