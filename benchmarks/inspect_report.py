"""`featx inspect` benchmark: seconds per section, and label-error precision on real data.

1. Scale: 10,000 x 2,048 synthetic features (10 classes; train 8,000, val
   1,000, test 1,000), written into a temporary cache through the cache API,
   with planted problems: 5% of train labels flipped, 20 exact duplicates
   (one sha256 at a train and a test path) and 20 near duplicates (a train
   row copied into test with small noise). Prints the seconds of each section
   (target: under 60 s in all on 2 cores, PCA map) and what was found.
2. ``--hymenoptera``: extract ../shared/datasets/hymenoptera (VGG16 with the
   offline HED weights at 128 px, random weights if absent), flip 5% of the
   train labels at random and report precision at k (k = the number flipped)
   of the label-issue ranking, over several seeds of the flips.

Usage::

    python benchmarks/inspect_report.py                     # the 10k x 2,048 scale run
    python benchmarks/inspect_report.py --hymenoptera       # both
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where its name
# would shadow the standard library's `inspect` (numpy imports it): move the
# folder to the end, where `_common` is still found.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path.append(sys.path.pop(0))

import hashlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from _common import parser  # noqa: E402


def write_features(root: Path, X, y, splits, paths, class_names, shas=None, source="/synthetic/data"):
    """Rows written into a cache at ``root`` through the cache API; returns them as Features."""
    from featx.cache import Cache
    from featx.features import load_features
    from featx.spec import ExtractionSpec

    shas = list(shas) if shas is not None else [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    spec = ExtractionSpec(backbone="resnet50", weights="synthetic", input_size=224, preprocessing="caffe",
                                  pooling="avg", tap="output", cut_blocks=0, precision="float32")
    cache = Cache(root)
    ext = cache.extraction(spec, X.shape[1], create=True)
    first = {}
    for i, s in enumerate(shas):
        first.setdefault(s, i)
    rows = list(first.values())
    ext.write_shard(X[rows], [shas[i] for i in rows], [paths[i] for i in rows], [class_names[y[i]] for i in rows])
    cache.write_view(ext, source, "splits", class_names, paths, shas, y, splits)
    return load_features(cache_dir=root)


def synthetic(n=10_000, d=2048, k=10, seed=0, flip=0.05, exact=20, near=20):
    """Class clusters in d dimensions, post-ReLU like pooled activations, with planted problems."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    X = np.maximum(centers[y] * 0.6 + rng.normal(0, 1, (n, d)).astype(np.float32), 0)
    splits = np.array(["train"] * int(0.8 * n) + ["val"] * int(0.1 * n) + ["test"] * (n - int(0.8 * n) - int(0.1 * n)))
    true_y = y.copy()
    train = np.flatnonzero(splits == "train")
    flipped = rng.choice(train, int(flip * len(train)), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, k, len(flipped))) % k
    paths = [f"/synthetic/data/{s}/c{t}/{i}.jpg" for i, (s, t) in enumerate(zip(splits, true_y))]
    shas = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    test = np.flatnonzero(splits == "test")
    for a, b in zip(train[:exact], test[:exact]):  # the same file in train and test
        shas[b] = shas[a]
        X[b] = X[a]
    for a, b in zip(train[exact:exact + near], test[exact:exact + near]):
        X[b] = X[a] + rng.normal(0, 0.05, d).astype(np.float32)
    return X, y, splits, paths, shas, flipped


def scale_run(seeds: int):
    import featx

    X, y, splits, paths, shas, flipped = synthetic()
    with tempfile.TemporaryDirectory() as tmp:
        f = write_features(Path(tmp) / "cache", X, y, splits, paths, [f"c{i}" for i in range(10)], shas)
        t = time.perf_counter()
        rep = featx.inspect(f, out=Path(tmp) / "out", head=False, seeds=seeds)
        total = time.perf_counter() - t
    print(f"\n10,000 x 2,048 synthetic features, 10 classes, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| section | wall seconds | CPU seconds |\n|---|---|---|")
    for k, v in rep.timings.items():
        print(f"| {k} | {v:.1f} | {rep.cpu_seconds[k]:.1f} |")
    print(f"| **total** | **{total:.1f}** | **{sum(rep.cpu_seconds.values()):.1f}** |")
    d = rep.duplicates
    k = len(flipped)
    top = set(rep.suspect_ranking[:k].tolist())
    print(f"\nfound: {d['exact_groups']} exact groups, {len(d['near_pairs'])} near pairs "
          f"(planted 20 + 20), train-test {d['cross_split'].get('train-test')}")
    print(f"label issues: {rep.label_issues['n_flagged']} flagged, precision at k={k}: "
          f"{len(top & set(flipped.tolist())) / k:.3f} ({rep.label_issues['method']})")
    print(f"budget: {rep.budget['verdict']}")


def hymenoptera_run(args, flip_seeds: int):
    import featx

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        t = time.perf_counter()
        featx.extract(args.data, args.backbone, weights=args.weights, image_size=args.image_size, cache_dir=cache,
                      progress=False)
        print(f"\nextraction: {time.perf_counter() - t:.1f}s ({args.backbone}, {Path(args.weights).name}, "
              f"{args.image_size}px)")
        f = featx.load_features(cache_dir=cache)
        train = np.flatnonzero(f.split == "train")
        print("| flip seed | flipped | precision at k | flagged | flagged that were flipped | seconds |\n|---|---|---|---|---|---|")
        precisions = []
        for s in range(flip_seeds):
            rng = np.random.default_rng(s)
            flipped = rng.choice(train, round(0.05 * len(train)), replace=False)
            g = f.subset(np.arange(len(f)))
            g.y = g.y.copy()
            g.y[flipped] = 1 - g.y[flipped]
            t = time.perf_counter()
            rep = featx.inspect(g, out=False, head=False)
            k = len(flipped)
            hits = len(set(rep.suspect_ranking[:k].tolist()) & set(flipped.tolist()))
            flagged = {sp["row"] for sp in rep.label_issues["suspects"]}
            precisions.append(hits / k)
            print(f"| {s} | {k} | {hits / k:.3f} | {len(flagged)} | {len(flagged & set(flipped.tolist()))} | "
                  f"{time.perf_counter() - t:.1f} |")
        print(f"mean precision at k: {np.mean(precisions):.3f}; out-of-fold accuracy "
              f"{rep.label_issues['oof_accuracy']:.3f} (last seed)")


def main():
    ap = parser(__doc__)
    ap.add_argument("--seeds", type=int, default=3, help="Draws per point of the label-budget curve.")
    ap.add_argument("--hymenoptera", action="store_true", help="Also the planted label flips on hymenoptera.")
    ap.add_argument("--flip-seeds", type=int, default=5)
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args()
    if not args.skip_scale:
        scale_run(args.seeds)
    if args.hymenoptera:
        hymenoptera_run(args, args.flip_seeds)


if __name__ == "__main__":
    main()
