"""The map: a 2-D PCA (or UMAP) of at most ``MAP_MAX_POINTS`` images."""

from __future__ import annotations

import numpy as np

from . import limits


def import_umap():
    """umap-learn without its ParametricUMAP, whose import would load TensorFlow."""
    import sys

    blocked = "umap" not in sys.modules and "umap.parametric_umap" not in sys.modules
    if blocked:
        sys.modules["umap.parametric_umap"] = None  # umap's __init__ catches the ImportError
    try:
        import umap
    finally:
        if blocked and sys.modules.get("umap.parametric_umap", False) is None:
            del sys.modules["umap.parametric_umap"]
    return umap


def embed(Z: np.ndarray, method: str, seed: int, notes: list):
    rng = np.random.default_rng(seed)
    chosen = np.arange(len(Z)) if len(Z) <= limits.MAP_MAX_POINTS else np.sort(rng.choice(len(Z), limits.MAP_MAX_POINTS, replace=False))
    if len(Z) > limits.MAP_MAX_POINTS:
        notes.append(f"map: {limits.MAP_MAX_POINTS} of {len(Z)} images, drawn at random")
    sub = Z[chosen]
    if method == "umap":
        try:
            umap = import_umap()
            coords = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(sub)
            return coords, chosen, "umap"
        except ImportError:
            notes.append("map: umap-learn is not installed (pip install 'featx[inspect]'); showing PCA")
    if sub.shape[1] <= 2 or len(sub) < 3:
        coords = np.zeros((len(sub), 2))
        coords[:, :min(2, sub.shape[1])] = sub[:, :2]
        return coords, chosen, "pca"
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(sub), chosen, "pca"
