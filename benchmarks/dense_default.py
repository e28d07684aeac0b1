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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import numpy as np

    from featx.selection import cv_protocol
    from heads import default_dense  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

    rng = np.random.default_rng(0)
    n, d, k = 10000, 2048, 10
    centers = rng.normal(size=(k, d)).astype("float32")
    y_idx = rng.integers(0, k, n)
    X = np.maximum(centers[y_idx] * 0.15 + rng.normal(size=(n, d)), 0).astype("float32")
    names = [f"c{i}" for i in range(k)]
    y = np.array(names)[y_idx]
    head, secs, how = default_dense(X[:8000], y[:8000], cv_protocol(y_idx[:8000], names, 5, 0), 0)
    print(f"| dense, fit-head defaults, no val split ({how}) | {secs:.1f} | {(head.predict(X[8000:]) == y[8000:]).mean():.4f} |")


if __name__ == "__main__":
    main()
