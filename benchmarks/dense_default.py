"""The default dense head's selection on 10,000 x 2,048 non-negative (ReLU-like) synthetic features.

The set the 276 s figure (5-fold CV + refit, before the budgeted selection)
was measured on: 10 classes, centres scaled by 0.15, features clipped at 0
like pooled ReLU activations; 8,000 train rows, 2,000 held out. Prints the
selection time, how it chose, and the held-out accuracy.

Usage::

    python benchmarks/dense_default.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import numpy as np

    from featx.heads import make_head
    from featx.selection import cv_protocol, select

    rng = np.random.default_rng(0)
    n, d, k = 10000, 2048, 10
    centers = rng.normal(size=(k, d)).astype("float32")
    y_idx = rng.integers(0, k, n)
    X = np.maximum(centers[y_idx] * 0.15 + rng.normal(size=(n, d)), 0).astype("float32")
    names = [f"c{i}" for i in range(k)]
    y = np.array(names)[y_idx]
    protocol = cv_protocol(y_idx[:8000], names, 5, 0)
    t = time.perf_counter()
    best, _ = select("dense", X[:8000], y[:8000], protocol, {"seed": 0}, holdout_ok=True)
    est = best.estimator if best.holdout is not None else (
        make_head("dense", **{"seed": 0, **best.params, **best.chosen}).fit(X[:8000], y[:8000]))
    secs = time.perf_counter() - t
    how = best.holdout_note or "5-fold CV + refit"
    acc = (est.predict(X[8000:]) == y[8000:]).mean()
    print(f"| dense, fit-head defaults, no val split ({how}) | {secs:.1f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
