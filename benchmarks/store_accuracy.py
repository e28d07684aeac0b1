"""Accuracy of a logistic-regression head on float32 rows and on float16 rows.

Reads extractions already in the cache (make them with `featx extract`, e.g.
VGG16 with the offline HED weights, hymenoptera at 64 px and intel6 at 150 px),
fits featx's LogisticHead on the train split (C by 3-fold cross-validation on
train) and scores the other split. The float16 rows are the float32 rows
rounded to float16, which is exactly what `--store float16` stores (the model
computes in float32 either way); where a `--store float16` extraction of the
same data is in the cache, the script checks that its rows are these.

Usage:
  python benchmarks/store_accuracy.py --cache-dir DIR DATA[:EVAL_SPLIT] ...
e.g.
  python benchmarks/store_accuracy.py --cache-dir c ../shared/datasets/hymenoptera:val ../shared/datasets/intel6:test
"""

import argparse
import warnings
from pathlib import Path

import numpy as np

import featx
from featx.cache import Cache
from featx.heads import LogisticHead


def score(X_train, y_train, X_eval, y_eval) -> float:
    head = LogisticHead(seed=0).fit(X_train, y_train)
    return float(np.mean(head.predict(X_eval) == y_eval))


def main() -> None:
    warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notes about its next defaults
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("data", nargs="+", help="DATA[:EVAL_SPLIT] (default split: val)")
    args = ap.parse_args()
    cache = Cache(args.cache_dir)
    print(f"{'data':<14} {'extraction':<40} {'eval':<5} {'n':>5} {'float32':>8} {'float16':>8} {'diff':>7}")
    for item in args.data:
        data, _, split = item.partition(":")
        split = split or "val"
        views = [v for v in cache.views() if v.source == str(Path(data).resolve()) or v.source == data]
        for view in views:
            ext = cache.get_extraction(view.extraction)
            if ext.spec.store != "float32":
                continue
            f = featx.load_features(data, cache_dir=cache.root, extraction=ext.name)
            half = f.X.astype(np.float16).astype(np.float32)
            twin = [v for v in views if v.extraction != ext.name
                    and cache.get_extraction(v.extraction).spec == ext.spec.with_store("float16")]
            if twin:  # what --store float16 really stored
                g = featx.load_features(data, cache_dir=cache.root, extraction=twin[0].extraction)
                assert list(g.sha256) == list(f.sha256) and np.array_equal(g.X, half), "stored float16 rows differ"
            tr, ev = f.split == "train", f.split == split
            a = score(f.X[tr], f.y[tr], f.X[ev], f.y[ev])
            b = score(half[tr], f.y[tr], half[ev], f.y[ev])
            checked = " (float16 rows checked against --store float16)" if twin else ""
            print(f"{Path(data).name:<14} {ext.name:<40} {split:<5} {ev.sum():>5} {100 * a:>7.2f}% {100 * b:>7.2f}% "
                  f"{100 * (b - a):>+6.2f}{checked}")


if __name__ == "__main__":
    main()
