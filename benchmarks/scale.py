"""The cache's storage at scale: writing, merging, opening and reading N x 2,048 rows.

Writes synthetic rows the way an extraction flushes them (many small runs,
each a few flushes of a few hundred rows, through the real Extraction API:
lock, write_shard, settle), then measures each step in a process of its own,
so that its peak RSS is its own:

  baseline        importing featx.cache, h5py and numpy (what every step starts from)
  write tiered    N rows in 147 runs, size-tiered merging as it goes
  write flat      the same N rows in 147 shards, never merged (the layout of a
                  cache written before tiered merging)
  open            listing and opening every shard (a fresh process)
  read 10k        10,000 random rows (warm page cache: read once, then timed)
  incremental     a run adding 2,000 rows: look them up, write 4 flushes, settle
                  (onto the big tiered extraction, then onto an empty cache)
  compact         `featx cache compact` on the 147 flat shards (the CLI, in a subprocess)
  read all        every row in one array, as load_features does (only up to 3 GB)

With --chain, every step of issue 17 runs on ONE cache instead, each in a
process of its own, with wall seconds, CPU seconds and peak RSS: class-structured
rows and a dataset view written in 147 runs with tiered merging
(benchmarks/scale_heads.py's generator), an incremental run, reading 10k random
rows, `featx cache compact`, opening, reading 10k again, then scale_heads.py's
steps (load_features, load_features lazy, each head, auto) and `featx inspect`.

Usage:
  python benchmarks/scale.py --rows 100000,300000 [--cache-dir DIR] [--keep]
  python benchmarks/scale.py --chain --rows 100000 --cache-dir /work/scratch/scale/chain

The data goes under --cache-dir (default: a temporary folder), one cache per
layout, and is deleted at the end unless --keep.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = 147
FLUSH_ROWS = 512
WIDTH = 2048
ADD = 2000


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _rows(lo: int, hi: int, width: int) -> np.ndarray:
    """Rows lo..hi: random, but column 0 holds the row's number (checked by the reads)."""
    x = np.random.default_rng(lo).random((hi - lo, width), dtype=np.float32)
    x[:, 0] = np.arange(lo, hi)
    return x


def _extraction(cache_dir: Path, width: int, create: bool = False, layout: str = "storage"):
    from featx.cache import Cache
    from featx.spec import ExtractionSpec

    if layout == "chain":
        sys.path.insert(0, str(HERE))
        import scale_heads

        return Cache(cache_dir).ensure().extraction(scale_heads.spec(), width, create=create)
    spec = ExtractionSpec(backbone="resnet50", weights="random:seed=0:tensorflow", input_size=224,
                          preprocessing="caffe", pooling="avg", tap="output", cut_blocks=0, precision="float32",
                          weights_source="none")
    return Cache(cache_dir).ensure().extraction(spec, width, create=create)


def _run(ext, lo: int, hi: int, width: int, flush: int = FLUSH_ROWS) -> int:
    """One extraction run adding rows lo..hi: look the keys up, write flushes, settle. Returns rows computed."""
    shas = [_sha(i) for i in range(lo, hi)]
    with ext.lock():
        known = ext.known()
        todo = [i for i, s in zip(range(lo, hi), shas) if s not in known]
        for a in range(0, len(todo), flush):
            part = todo[a : a + flush]
            ext.write_shard(_rows(part[0], part[0] + len(part), width), [_sha(i) for i in part],
                            [f"/data/img{i}.jpg" for i in part], [f"c{i % 10}" for i in part])
        ext.settle()
    return len(todo)


# --------------------------------------------------------------------------- steps (each in its own process)


def step(name: str, cache_dir: Path, rows: int, width: int, layout: str = "storage") -> dict:
    import featx.cache.merge as M
    import featx.cache.shards as S

    out: dict = {}
    if name == "baseline":
        S.h5()
        return out
    if name in ("write-tiered", "write-flat", "write-chain"):
        rewritten = [0]
        real = M.merge_shards

        def counting(path, extraction, shards, store, replaces):
            rewritten[0] += sum(s.n for s in shards)
            return real(path, extraction, shards, store, replaces)

        M.merge_shards = counting
        if name == "write-chain":
            sys.path.insert(0, str(HERE))
            import scale_heads

            scale_heads.generate(cache_dir, rows, width, 10, runs=RUNS, flush_rows=FLUSH_ROWS)
            out["shards"] = len(_extraction(cache_dir, width, layout=layout).shards())
            out["rewritten"] = rewritten[0]
            return out
        ext = _extraction(cache_dir, width, create=True)
        bounds = np.linspace(0, rows, RUNS + 1).astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if name == "write-tiered":
                _run(ext, int(lo), int(hi), width)
            else:  # one shard per run, never merged
                ext.write_shard(_rows(lo, hi, width), [_sha(i) for i in range(lo, hi)],
                                [f"/data/img{i}.jpg" for i in range(lo, hi)], [f"c{i % 10}" for i in range(lo, hi)])
        out["shards"] = len(ext.shards())
        out["rewritten"] = rewritten[0]
        return out
    ext = _extraction(cache_dir, width, layout=layout)
    if name == "open":
        out["shards"] = len(ext.shards())
        out["rows"] = ext.rows()
        return out
    if name == "read-10k":
        pick = np.random.default_rng(1).choice(rows, min(10_000, rows), replace=False)
        if layout == "chain":  # the view's rows (not the incremental run's)
            from featx.features import load_features

            shas = load_features(cache_dir=cache_dir, lazy=True).sha256[pick].tolist()
        else:
            shas = [_sha(int(i)) for i in pick]
        first = ext.read(shas)  # warms the page cache
        t, c = time.perf_counter(), time.process_time()
        fresh = _extraction(cache_dir, width, layout=layout)
        out["shards"] = len(fresh.shards())  # opens them
        t1, c1 = time.perf_counter(), time.process_time()
        x = fresh.read(shas)
        out["open_s"], out["warm_s"] = t1 - t, time.perf_counter() - t1
        out["open_cpu_s"], out["warm_cpu_s"] = c1 - c, time.process_time() - c1
        assert np.array_equal(x, first) and (layout == "chain" or np.array_equal(x[:, 0], pick)), "wrong rows read"
        return out
    if name == "incremental":
        out["computed"] = _run(ext if ext is not None else _extraction(cache_dir, width, create=True),
                               rows, rows + ADD, width)
        e = _extraction(cache_dir, width, layout=layout)
        out["shards"] = len(e.shards())
        return out
    if name == "read-all":
        shas = [_sha(i) for i in range(rows)]
        x = ext.read(shas)
        assert np.array_equal(x[:, 0], np.arange(rows)), "wrong rows read"
        out["bytes"] = x.nbytes
        return out
    raise SystemExit(f"unknown step {name}")


def _child_usage(args: list[str], env: dict | None = None) -> tuple[float, float, float, str]:
    """Run a child Python; (seconds, its peak RSS in MB, its CPU seconds, its stdout). wait4 gives the
    child's own rusage."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    out_file = tempfile.TemporaryFile(mode="w+")
    err_file = tempfile.TemporaryFile(mode="w+")
    t = time.perf_counter()
    pid = subprocess.Popen(args, stdout=out_file, stderr=err_file, env=env).pid
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t
    out_file.seek(0)
    err_file.seek(0)
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{err_file.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, out_file.read()


def _child(args: list[str]) -> tuple[float, float, str]:
    seconds, rss, _, out = _child_usage(args)
    return seconds, rss, out


def _step(name: str, cache_dir: Path, rows: int, width: int) -> tuple[float, float, dict]:
    s, rss, out = _child([sys.executable, __file__, "--step", name, "--cache-dir", str(cache_dir),
                          "--rows", str(rows), "--width", str(width)])
    return s, rss, json.loads(out.strip().splitlines()[-1])


def bench(rows: int, root: Path, width: int, keep: bool = False, flat_layout: bool = True) -> list[tuple]:
    tiered, flat, empty = root / f"tiered-{rows}", root / f"flat-{rows}", root / f"empty-{rows}"
    for d in (tiered, flat, empty):
        shutil.rmtree(d, ignore_errors=True)
    table = []

    def add(label, seconds, rss, note=""):
        table.append((rows, label, seconds, rss, note))
        print(f"  {rows:>9,}  {label:<34} {seconds:8.2f} s  {rss:7.0f} MB  {note}", flush=True)

    s, rss, _ = _step("baseline", empty, rows, width)
    add("baseline (imports)", s, rss)
    s, rss, o = _step("write-tiered", tiered, rows, width)
    add(f"write {RUNS} runs, tiered merging", s, rss, f"{o['shards']} shards; {o['rewritten'] / rows:.2f} rewrites/row")
    s, rss, o = _step("open", tiered, rows, width)
    add("open (tiered)", s, rss, f"{o['shards']} shards")
    s, rss, o = _step("read-10k", tiered, rows, width)
    add("read 10k random (tiered)", o["warm_s"], rss, f"warm; opening {o['shards']} shards: {o['open_s']:.2f} s")
    s, rss, o = _step("incremental", tiered, rows, width)
    add(f"incremental +{ADD:,} (onto tiered)", s, rss, f"{o['shards']} shards after")
    s, rss, o = _step("incremental", empty, 0, width)
    add(f"incremental +{ADD:,} (empty cache)", s, rss)
    if not keep:
        shutil.rmtree(tiered, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    if not flat_layout:
        return table
    s, rss, o = _step("write-flat", flat, rows, width)
    add(f"write {RUNS} shards, never merged", s, rss, f"{o['shards']} shards")
    s, rss, o = _step("read-10k", flat, rows, width)
    add(f"read 10k random ({RUNS} shards)", o["warm_s"], rss, f"warm; opening {o['shards']} shards: {o['open_s']:.2f} s")
    s, rss, out = _child([sys.executable, "-m", "featx.cli", "--cache-dir", str(flat), "cache", "compact"])
    add(f"featx cache compact ({RUNS} shards)", s, rss, out.strip().splitlines()[-1].split(": ")[-1])
    s, rss, o = _step("open", flat, rows, width)
    add("open (merged)", s, rss, f"{o['shards']} shards")
    s, rss, o = _step("read-10k", flat, rows, width)
    add("read 10k random (merged)", o["warm_s"], rss, f"warm; opening {o['shards']} shard: {o['open_s']:.2f} s")
    if rows * width * 4 <= 3 * 2**30:
        s, rss, o = _step("read-all", flat, rows, width)
        add("read all rows (load_features)", s, rss, f"{o['bytes'] / 2**30:.2f} GiB array")
    s, rss, o = _step("incremental", flat, rows, width)
    add(f"incremental +{ADD:,} (onto merged)", s, rss, f"{o['shards']} shards after")
    if not keep:
        shutil.rmtree(flat, ignore_errors=True)
    return table


HEAD_STEPS = ("load", "load-lazy", "logreg", "lightgbm", "dense", "auto")


def chain(rows: int, root: Path, width: int, heads: dict, steps: list, keep: bool = False) -> list[dict]:
    """Every step of issue 17 on one cache, each in its own process: write, incremental, read, merge,
    open, read, load_features, the heads (scale_heads.py's steps) and featx inspect."""
    sys.path.insert(0, str(HERE))
    import scale_heads

    cache = root / f"chain-{rows}"
    shutil.rmtree(cache, ignore_errors=True)
    table = []

    def add(label, seconds, cpu, rss_mb, note=""):
        table.append({"rows": rows, "step": label, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1),
                      "peak_rss_mb": round(rss_mb), "note": note})
        print(f"| {rows:,} | {label} | {seconds:.1f} | {cpu:.1f} | {rss_mb / 1024:.2f} | {note} |", flush=True)

    def storage(name, n=rows):
        s, rss, cpu, out = _child_usage([sys.executable, __file__, "--step", name, "--cache-dir", str(cache),
                                         "--rows", str(n), "--width", str(width), "--layout", "chain"])
        return s, cpu, rss, json.loads(out.strip().splitlines()[-1])

    print("| rows | step | wall s | CPU s | peak RSS GB | notes |\n|---:|---|---:|---:|---:|---|", flush=True)
    try:
        s, cpu, rss, o = storage("write-chain")
        add(f"write {RUNS} runs, tiered merging", s, cpu, rss,
            f"{o['shards']} shards; {o['rewritten'] / rows:.2f} rewrites/row")
        s, cpu, rss, o = storage("incremental")
        add(f"incremental run +{ADD:,}", s, cpu, rss, f"{o['shards']} shards after")
        for merged in (False, True):
            if merged:
                s, rss, cpu, out = _child_usage([sys.executable, "-m", "featx.cli", "--cache-dir", str(cache),
                                                 "cache", "compact"])
                add("merge (`featx cache compact`)", s, cpu, rss, out.strip().splitlines()[-1].split(": ")[-1])
                s, cpu, rss, o = storage("open")
                add("open (merged)", s, cpu, rss, f"{o['shards']} shard")
            s, cpu, rss, o = storage("read-10k")
            add(f"read 10k random rows ({'merged' if merged else 'tiered'})", o["warm_s"], o["warm_cpu_s"], rss,
                f"warm; opening {o['shards']} shards first: {o['open_s']:.2f} s ({o['open_cpu_s']:.2f} CPU s)")
        for name in [s for s in steps if s in HEAD_STEPS]:  # in the order given
            r = scale_heads.measure(name, cache, root / f"chain-{rows}-{name}", heads)
            note = r.get("error") or "; ".join(str(r[k]) for k in ("test_acc", "note") if r.get(k) not in (None, ""))
            add(name if name.startswith("load") else f"fit-head {name}", r["seconds"], r["cpu_s"],
                (r["peak_rss_gb"] or 0) * 1024, ("test acc " if "test_acc" in r else "") + note)
        if "inspect" in steps:
            import scale_inspect

            cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "featx.cli", "--cache-dir", str(cache), "inspect",
                   "--out", str(root / f"chain-{rows}-inspect"), "--seeds", "3"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "FEATX_HOME": str(root), "PYTHONPATH": str(HERE.parent)})
            if proc.returncode != 0:
                raise SystemExit(f"featx inspect failed:\n{proc.stderr[-3000:]}")
            add("featx inspect", time.perf_counter() - t, scale_inspect.cpu_seconds(proc.stderr),
                scale_inspect.peak_rss_mb(proc.stderr))
    finally:
        for name in (*HEAD_STEPS, "inspect"):
            shutil.rmtree(root / f"chain-{rows}-{name}", ignore_errors=True)
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="100000,300000", help="comma-separated row counts")
    ap.add_argument("--width", type=int, default=WIDTH)
    ap.add_argument("--cache-dir", type=Path, help="where the caches go [default: a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the data (default: deleted at the end)")
    ap.add_argument("--no-flat", action="store_true", help="skip the 147 never-merged shards, their compact and reads")
    ap.add_argument("--chain", action="store_true", help="every step of issue 17 on one cache (see above)")
    ap.add_argument("--chain-steps", default=",".join((*HEAD_STEPS, "inspect")),
                    help="which of the heads and inspect steps --chain runs after the storage steps")
    ap.add_argument("--dense-epochs", type=int, default=2, help="--chain: scale_heads.py's dense step")
    ap.add_argument("--time-budget", type=float, default=60.0, help="--chain: scale_heads.py's auto step")
    ap.add_argument("--folds", type=int, default=3, help="--chain: CV folds of the heads' selection")
    ap.add_argument("--json", type=Path, help="--chain: append each step's result as a JSON line here")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="storage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.cache_dir, int(args.rows), args.width, args.layout)))
        return
    if args.chain:
        root = args.cache_dir or Path(tempfile.mkdtemp(prefix="featx-scale-"))
        root.mkdir(parents=True, exist_ok=True)
        heads = {"dense_epochs": args.dense_epochs, "dense_batch": 1024, "time_budget": args.time_budget,
                 "folds": args.folds}
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}; {' '.join(sys.argv)}", flush=True)
        for n in (int(x) for x in args.rows.split(",")):
            for row in chain(n, root, args.width, heads, args.chain_steps.split(","), args.keep):
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
        print(f"# load {os.getloadavg()[0]:.1f} at the end", flush=True)
        return
    root = args.cache_dir or Path(tempfile.mkdtemp(prefix="featx-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"featx storage at scale: width {args.width}, data under {root}")
    print(f"  {'rows':>9}  {'step':<34} {'time':>10}  {'peak RSS':>10}  notes")
    try:
        for n in (int(x) for x in args.rows.split(",")):
            bench(n, root / "run", args.width, args.keep, not args.no_flat)
    finally:
        if not args.keep:
            shutil.rmtree(root / "run", ignore_errors=True)
            if args.cache_dir is None:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
