"""Heads at scale: load_features and each head on N x 2,048 cached rows, seconds and peak RSS per step.

A synthetic extraction of N rows (class-structured Gaussian rows, so the
heads learn something; 90% train, 10% test) is written through the real cache
API in shards of 10,000 rows, the way extraction flushes, with one dataset
view. Each step then runs in its own Python process under ``/usr/bin/time -v``,
so its peak RSS is its own; its CPU seconds (user + system) are printed beside
the wall time, since on a shared machine the wall time mostly measures the others:

- ``load``: ``featx.load_features()`` (the whole matrix in memory);
- ``load-lazy``: ``load_features(lazy=True)`` (the index only);
- ``logreg``, ``lightgbm``: ``fit_head`` with the default selection;
- ``dense``: ``fit_head("dense")`` with one configuration given (``--dense-epochs``,
  ``--dense-batch``), streamed from the cache;
- ``auto``: ``fit_head("auto")`` with ``--time-budget``.

Usage::

    python benchmarks/scale_heads.py --rows 100000,300000
    python benchmarks/scale_heads.py --rows 1000000 --steps load-lazy,logreg,lightgbm,dense,auto
    python benchmarks/scale_heads.py --rows 100000 --cache-dir /work/scratch/scale-heads/c100k --keep

Without ``--keep`` each size's data is deleted after its steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("load", "load-lazy", "logreg", "lightgbm", "dense", "auto")
SHARD_ROWS = 10_000


def spec():
    """The extraction the synthetic rows belong to (benchmarks/scale.py opens it too)."""
    from featx.spec import ExtractionSpec

    return ExtractionSpec(backbone="resnet50", weights="synthetic-scale", input_size=224, preprocessing="caffe",
                          pooling="avg", tap="output", cut_blocks=0, precision="float32")


def generate(root: Path, n: int, width: int, classes: int, seed: int = 0, runs: int | None = None,
             flush_rows: int = 512) -> None:
    """N rows through the cache API, and a dataset view (train 90%, test 10%).

    In shards of SHARD_ROWS; or, with ``runs``, the way extraction writes them: that many runs, each
    holding the lock and writing flushes of ``flush_rows`` rows, then settling (size-tiered merging).
    """
    import numpy as np

    from featx.cache import Cache

    rng = np.random.default_rng(seed)
    # Class means 0.05 apart per dimension over 2,048 dimensions: separable, not trivially.
    centers = rng.normal(0, 0.05, (classes, width)).astype(np.float32)
    y = rng.integers(0, classes, n)
    names = [f"class{c:02d}" for c in range(classes)]
    paths = [f"/synthetic/{names[y[i]]}/{i}.jpg" for i in range(n)]
    shas = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    cache = Cache(root)
    ext = cache.extraction(spec(), width, create=True)

    def write(lo: int, hi: int) -> None:
        rows = np.arange(lo, hi)
        X = centers[y[rows]] + rng.normal(0, 1, (len(rows), width)).astype(np.float32)
        ext.write_shard(X, [shas[i] for i in rows], [paths[i] for i in rows], [names[y[i]] for i in rows])

    if runs is None:
        for start in range(0, n, SHARD_ROWS):
            write(start, min(n, start + SHARD_ROWS))
    else:
        bounds = np.linspace(0, n, runs + 1).astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            with ext.lock():
                for a in range(lo, hi, flush_rows):
                    write(a, min(hi, a + flush_rows))
                ext.settle()
    split = np.where(rng.random(n) < 0.9, "train", "test")
    cache.write_view(ext, "/synthetic", "splits", names, paths, shas, y, list(split))


def run_step(step: str, cache_dir: str, out: str, args: dict) -> dict:
    """One step, in this (child) process; returns what it measured besides time and memory."""
    import numpy as np

    from featx import api
    from featx.features import load_features

    if step in ("load", "load-lazy"):
        f = load_features(cache_dir=cache_dir, lazy=step == "load-lazy")
        return {"rows": len(f), "note": f"X {type(f.X).__name__} {f.X.shape}"}
    kw = {}
    if step == "dense":
        kw = dict(epochs=args["dense_epochs"], batch_size=args["dense_batch"], hidden=(256,), dropout=0.5, lr=1e-3)
    if step == "auto":
        kw = dict(time_budget=args["time_budget"])
    lines = []
    res = api.fit_head("auto" if step == "auto" else step, cache_dir=cache_dir, out=out, home=Path(out).parent,
                       log=lines.append,
                       folds=args["folds"], **kw)
    sel = res.metrics["selection"]
    test = res.metrics["splits"].get("test", {})
    board = [f"{r['head']}:{r.get('cv_acc', r.get('val_acc'))}" for r in res.metrics["leaderboard"]][:6]
    return {"head": res.metrics["head"], "test_acc": round(float(test.get("accuracy", np.nan)), 4),
            "note": sel.get("subsample") or "", "board": board if step == "auto" else None,
            "report": res.report.splitlines()[0]}


def measure(step: str, cache_dir: Path, out: Path, args: dict) -> dict:
    """A step under /usr/bin/time -v: wall time, and the peak RSS of that child process alone."""
    code = ("import json, sys; sys.path.insert(0, {here!r}); import scale_heads as S; "
            "print('RESULT ' + json.dumps(S.run_step({step!r}, {cache!r}, {out!r}, json.loads({args!r}))))").format(
        here=str(Path(__file__).resolve().parent), step=step, cache=str(cache_dir), out=str(out), args=json.dumps(args))
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    peak_kb = next((int(line.split(":")[1]) for line in proc.stderr.splitlines()
                    if "Maximum resident set size" in line), None)
    cpu = sum(float(line.split(":")[1]) for line in proc.stderr.splitlines()
              if line.strip().startswith(("User time (seconds)", "System time (seconds)")))
    result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    row = {"step": step, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1),
           "peak_rss_gb": None if peak_kb is None else round(peak_kb / 2**20, 2)}
    if result is None:
        errs = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("\t", "I0000", "W0000"))]
        row["error"] = (errs or ["?"])[-1][:300]
        return row
    return {**row, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,300000", help="comma-separated row counts")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--cache-dir", type=Path, help="reuse (or create and keep) this cache; one --rows value")
    ap.add_argument("--scratch", type=Path, default=Path("/work/scratch/scale-heads"))
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--dense-epochs", type=int, default=3)
    ap.add_argument("--dense-batch", type=int, default=1024)
    ap.add_argument("--time-budget", type=float, default=120.0)
    ap.add_argument("--folds", type=int, default=3, help="K of the CV on the selection subsample (fit-head: 5)")
    ap.add_argument("--json", type=Path, help="append each result as a JSON line here")
    a = ap.parse_args()
    steps = [s for s in a.steps.split(",") if s]
    bad = sorted(set(steps) - set(STEPS))
    if bad:
        ap.error(f"unknown steps {bad}; choose from {', '.join(STEPS)}")
    sizes = [int(r) for r in a.rows.split(",")]
    if a.cache_dir and len(sizes) != 1:
        ap.error("--cache-dir takes one --rows value")
    args = {"dense_epochs": a.dense_epochs, "dense_batch": a.dense_batch, "time_budget": a.time_budget,
            "folds": a.folds}
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} cores; "
          f"{' '.join(sys.argv)}", flush=True)
    for n in sizes:
        root = a.cache_dir or a.scratch / f"cache-{n}"
        made = not (root / "datasets").exists()
        if made:
            t = time.perf_counter()
            generate(root, n, a.width, a.classes)
            print(f"{n:>9,} generate {time.perf_counter() - t:8.1f} s  (not a step: writing the synthetic data)",
                  flush=True)
        try:
            for step in steps:
                row = measure(step, root, a.scratch / f"heads-{n}-{step}", args)
                row["rows"] = n
                print(f"{n:>9,} {step:<10} {row['seconds']:8.1f} s wall {row['cpu_s']:8.1f} s cpu  "
                      f"peak {row['peak_rss_gb']} GB  "
                      + "  ".join(f"{k}={v}" for k, v in row.items()
                                  if k not in ("step", "seconds", "cpu_s", "peak_rss_gb", "rows") and v not in (None, "")),
                      flush=True)
                if a.json:
                    with open(a.json, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
        finally:
            for step in steps:
                shutil.rmtree(a.scratch / f"heads-{n}-{step}", ignore_errors=True)
            if made and not a.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
