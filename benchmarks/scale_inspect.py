"""`featx inspect` at scale: seconds and peak memory at 100k, 300k and 1M rows of width 2,048.

Builds a synthetic extraction through the real cache API, the way
``featx extract`` leaves one: shards of ``--shard-rows`` rows
(``Extraction.write_shard``) and one dataset view (``Cache.write_view``),
generated shard by shard, so that the builder never holds the matrix.
The rows are class-structured and post-ReLU like pooled activations
(10 classes; train 80%, val 10%, test 10%), with planted problems:

- exact duplicates: a train image's file at a second path, in test (one
  sha256 at two paths);
- near duplicates: a train row plus small noise, in test (a new sha256);
- label flips: 2% of train labels changed to another class.

Then it runs ``featx inspect`` in a child process (``/usr/bin/time -v`` for
its peak RSS) and prints the report's seconds per section, the peak RSS and
what was found of the planted problems. The scratch folder is deleted
afterwards unless ``--keep``.

Usage::

    python benchmarks/scale_inspect.py --rows 100000 300000
    python benchmarks/scale_inspect.py --rows 1000000 --scratch /work/scratch/inspect
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build(root: Path, n: int, width: int = 2048, classes: int = 10, shard_rows: int = 10_000, seed: int = 0,
          exact_every: int = 2_000, near_every: int = 2_000, flip: float = 0.02) -> dict:
    """A synthetic extraction of ``n`` rows at ``root/cache``; returns what was planted (view positions)."""
    from featx.cache import Cache
    from featx.spec import ExtractionSpec

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, width)).astype(np.float32)
    spec = ExtractionSpec(backbone="resnet50", weights="synthetic", input_size=224, preprocessing="caffe",
                          pooling="avg", tap="output", cut_blocks=0, precision="float32")
    cache = Cache(root / "cache")
    ext = cache.extraction(spec, width, create=True)
    names = [f"c{k}" for k in range(classes)]
    paths, shas, labels, splits = [], [], [], []
    planted = {"exact": [], "near": [], "flipped": []}
    for start in range(0, n, shard_rows):
        m = min(shard_rows, n - start)
        y = rng.integers(0, classes, m)
        X = np.maximum(0.6 * centers[y] + rng.normal(0, 1, (m, width)).astype(np.float32), 0)
        split = rng.choice(np.array(["train", "val", "test"]), m, p=[0.8, 0.1, 0.1])
        # Near copies: a train row of this shard plus a little noise, as the next row, in test.
        for a in range(0, m - 1, near_every):
            b = a + 1
            X[b] = X[a] + rng.normal(0, 0.05, width).astype(np.float32)
            y[b], split[a], split[b] = y[a], "train", "test"
            planted["near"].append((start + a, start + b))
        p = [f"/synthetic/data/{s}/c{c}/{start + i}.jpg" for i, (s, c) in enumerate(zip(split, y))]
        h = [hashlib.sha256(q.encode()).hexdigest() for q in p]
        ext.write_shard(X, h, p, [names[c] for c in y])
        paths += p
        shas += h
        labels.append(y)
        splits += split.tolist()
    labels = np.concatenate(labels)
    true = labels.copy()
    train = np.flatnonzero(np.array(splits) == "train")
    # Exact duplicates: the same file at a second path, in test, with another label half of the time.
    for k in range(0, len(train) - 1, exact_every):
        a = int(train[k])
        paths.append(paths[a].replace("/train/", "/test/dup-"))
        shas.append(shas[a])
        splits.append("test")
        labels = np.append(labels, labels[a] if k % 2 else (labels[a] + 1) % classes)
        true = np.append(true, true[a])
        planted["exact"].append((a, len(paths) - 1))
    flipped = rng.choice(train, int(flip * len(train)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    planted["flipped"] = flipped.tolist()
    cache.write_view(ext, "/synthetic/data", "splits", names, paths, shas, labels, splits)
    return planted


def peak_rss_mb(stderr: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_seconds(stderr: str) -> float:
    """User + system seconds of the child, from ``/usr/bin/time -v``."""
    got = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", stderr)
    return sum(map(float, got)) if got else float("nan")


class LoadSampler:
    """The 1-minute load average every 10 s while the block runs (the machine may be shared)."""

    def __enter__(self):
        import threading

        self.samples, self._stop = [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(10):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        s = self.samples
        return f"load average {min(s):.1f} to {max(s):.1f} (mean {sum(s) / len(s):.1f}, {len(s)} samples)"


def run(root: Path, n: int, args) -> dict:
    t = time.perf_counter()
    planted = build(root, n, args.width, shard_rows=args.shard_rows, seed=args.seed)
    built = time.perf_counter() - t
    out = root / "out"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "featx.cli", "--cache-dir", str(root / "cache"),
           "inspect", "--out", str(out), "--seeds", str(args.seeds)]
    env = {**os.environ, "FEATX_HOME": str(root), "PYTHONPATH": str(HERE.parent)}
    t = time.perf_counter()
    with LoadSampler() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"featx inspect failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rep = json.loads((out / "report.json").read_text())
    near = {frozenset((p["path_a"], p["path_b"])) for p in rep["duplicates"]["near_pairs"]}
    return {"n": n, "built": built, "wall": wall, "rss": peak_rss_mb(proc.stderr), "cpu": cpu_seconds(proc.stderr),
            "report": rep, "load": load.summary(),
            "planted": planted, "near_found": near, "stdout": proc.stdout}


def paths_of(root: Path) -> list[str]:
    from featx.features import find_view
    from featx.cache import Cache

    cache = Cache(root / "cache")
    return cache.read_view(find_view(cache))["path"].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, default=3, help="featx inspect --seeds (draws per budget point).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", type=Path, default=Path("/work/scratch/inspect"))
    ap.add_argument("--keep", action="store_true", help="Keep the synthetic cache.")
    args = ap.parse_args()
    rows = []
    for n in args.rows:
        root = args.scratch / f"scale-{n}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        try:
            r = run(root, n, args)
            paths = paths_of(root)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        rep, planted = r["report"], r["planted"]
        d = rep["duplicates"]
        exact_found = sum(frozenset((paths[a], paths[b])) in {frozenset((p["path_a"], p["path_b"]))
                                                               for p in d["exact_pairs"]} for a, b in planted["exact"])
        near_found = sum(frozenset((paths[a], paths[b])) in r["near_found"] for a, b in planted["near"])
        li = rep["label_issues"]
        flipped = {paths[i] for i in planted["flipped"]}
        flagged = [s["path"] for s in li["suspects"]]
        k = len(flipped)
        top_k = sum(p in flipped for p in flagged[:k])
        rows.append((n, r, exact_found, len(planted["exact"]), near_found, len(planted["near"]),
                     len(d["near_pairs"]) - near_found, top_k, k))
        print(r["stdout"])
        print(f"[{n} rows: built in {r['built']:.0f} s; featx inspect {r['wall']:.0f} s, {r['cpu']:.0f} CPU s, "
              f"peak RSS {r['rss']:.0f} MB; {r['load']} during featx inspect]", flush=True)
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; width {args.width}\n")
    sections = list(rows[0][1]["report"]["timings"])
    print("wall seconds per section, with the CPU seconds of the process in brackets "
          "(on shared cores, about what an idle core would take)\n")
    print("| rows | featx inspect, wall s | CPU s | peak RSS MB | " + " | ".join(sections) +
          " | exact found | near found | other near pairs | flipped labels in top k |")
    print("|---|---|---|---|" + "---|" * len(sections) + "---|---|---|---|")
    for n, r, ef, en, nf, nn, other, top_k, k in rows:
        t, c = r["report"]["timings"], r["report"]["cpu_seconds"]
        print(f"| {n:,} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['rss']:.0f} | "
              + " | ".join(f"{t.get(s, 0):.0f} ({c.get(s, 0):.0f})" for s in sections)
              + f" | {ef}/{en} | {nf}/{nn} | {other} | {top_k}/{k} |")
    for n, r, *_ in rows:
        print(f"\nat {n:,} rows: {r['load']} during featx inspect; near duplicates: {r['report']['duplicates']['method']}")
        print(f"notes at {n:,} rows:")
        for note in r["report"]["notes"]:
            print(f"  - {note}")


if __name__ == "__main__":
    main()
