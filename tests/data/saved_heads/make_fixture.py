"""Writes the saved heads that tests/test_heads.py loads: one folder per kind, and inputs.npz.

Run once, with the featx that wrote the format being pinned (2026-11-27:
the flat ``featx/heads.py``, before the ``featx/heads/`` package):

    PYTHONPATH=$PWD python tests/data/saved_heads/make_fixture.py

Every later featx must load these folders and give the same probabilities
(``test_heads_saved_before_the_package_split_load_and_predict_the_same``).
"""

from pathlib import Path

import numpy as np

from featx.heads import make_head

HERE = Path(__file__).parent
# Small, but each kind's optional files appear: norm.npz (normalise="standard"), pca.npz (a projection).
KINDS = {
    "logreg": dict(C=0.5, normalise="standard", class_weight="balanced"),
    "lightgbm": dict(n_estimators=8, pca_components=4, normalise="l2"),
    "dense": dict(hidden=(4,), epochs=2, batch_size=16, normalise="sqrt-l2"),
}


def main():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[:, 0] += np.repeat([0.0, 3.0, 6.0], 20)
    y = np.repeat(["ant", "bee", "wasp"], 20)
    out = {"X": X}
    for kind, params in KINDS.items():
        head = make_head(kind, seed=0, **params).fit(X, y)
        head.save(HERE / kind, manifest={"extraction": "fixture", "created": 1764259200.0})
        out[f"proba_{kind}"] = head.predict_proba(X)
    np.savez(HERE / "inputs.npz", **out)


if __name__ == "__main__":
    main()
