"""Feature normalisation before a head: one numpy definition, one Keras twin.

Pooled CNN features are non-negative, heavy-tailed and of very different
norms from image to image; a head often does better on rescaled vectors.

- ``none``: the features as cached;
- ``standard``: per-feature z-score with train mean and standard deviation;
- ``l2``: each row divided by its Euclidean norm;
- ``sqrt-l2``: signed square root of each value (``sign(x) * sqrt(|x|)``,
  "power normalisation"), then ``l2``.

A head applies its normalisation inside ``predict_proba``, so whatever calls
the head (predict, compare, finetune's parity check) sees the same numbers.
:func:`keras_normalise` is the same map as Keras ops, for rebuilding a head
on top of a backbone.
"""

from __future__ import annotations

import numpy as np

NORMALISATIONS = ("none", "standard", "l2", "sqrt-l2")

# Rows of all zeros (a black image through ReLU features) stay zeros.
_EPS = 1e-12


def check_normalisation(kind: str) -> str:
    if kind not in NORMALISATIONS:
        from .errors import HeadParamError

        raise HeadParamError(f"normalise must be one of {', '.join(NORMALISATIONS)}. Received: normalise={kind!r}")
    return kind


# Rows per piece when statistics are gathered: float64 copies of this many rows, not of the matrix.
_STAT_ROWS = 8192


def column_moments(chunks) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-column mean and (population) variance over row pieces, in float64; and the row count.

    Pieces are merged with Chan et al.'s pairwise update, so memory holds one
    piece at a time whatever the number of rows.
    """
    n, mean, m2 = 0, None, None
    for c in chunks:
        c = np.asarray(c, dtype=np.float64)
        if not len(c):
            continue
        k, cm = len(c), c.mean(axis=0)
        cm2 = ((c - cm) ** 2).sum(axis=0)
        if mean is None:
            n, mean, m2 = k, cm, cm2
            continue
        delta = cm - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + cm2 + delta ** 2 * (n * k / total)
        n = total
    if mean is None:
        raise ValueError("column_moments needs at least one row")
    return mean, m2 / n, n


def row_pieces(X, rows: int = _STAT_ROWS):
    """Consecutive row slices of an array (views, no copies)."""
    for start in range(0, len(X), rows):
        yield X[start:start + rows]


def normaliser_stats(X: np.ndarray, kind: str, chunks=None) -> dict[str, np.ndarray]:
    """What ``kind`` learns from training rows: mean and scale for ``standard``, nothing otherwise.

    ``chunks``, an iterable of row pieces, replaces ``X`` for rows that are
    not in memory; either way the statistics are gathered piece by piece.
    """
    check_normalisation(kind)
    if kind != "standard":
        return {}
    mean, var, _ = column_moments(chunks if chunks is not None else row_pieces(np.asarray(X)))
    scale = np.sqrt(var)
    scale[scale < _EPS] = 1.0
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}


def normalise_in_place(X: np.ndarray, kind: str, stats: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """:func:`normalise` written over ``X`` (a float32 array the caller owns), piece by piece: no second copy."""
    if kind == "none":
        return X
    for piece in row_pieces(X):
        piece[...] = normalise(piece, kind, stats)
    return X


def normalise(X: np.ndarray, kind: str, stats: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Apply a normalisation to rows of features; float32 out.

    Parameters
    ----------
    X : ndarray (n, D)
    kind : {"none", "standard", "l2", "sqrt-l2"}
    stats : dict, optional
        From :func:`normaliser_stats` (``mean``, ``scale``); needed for ``standard``.

    Examples
    --------
    >>> normalise(np.array([[3.0, -4.0]]), "l2")
    array([[ 0.6, -0.8]], dtype=float32)
    """
    check_normalisation(kind)
    X = np.asarray(X, dtype=np.float32)
    if kind == "none":
        return X
    if kind == "standard":
        if not stats or "mean" not in stats:
            from .errors import HeadError

            raise HeadError("normalise='standard' needs the training mean and scale (stats from normaliser_stats).")
        return ((X - stats["mean"]) / stats["scale"]).astype(np.float32)
    if kind == "sqrt-l2":
        X = np.sign(X) * np.sqrt(np.abs(X))
    norm = np.sqrt(np.sum(X.astype(np.float64) ** 2, axis=1, keepdims=True))
    return (X / np.maximum(norm, _EPS)).astype(np.float32)


def keras_normalise(x, kind: str, stats: dict[str, np.ndarray] | None = None):
    """:func:`normalise` as Keras ops on a (batch, D) tensor, for an end-to-end model.

    ``standard`` becomes a stock ``Normalization`` layer (mean and variance
    given), the others Keras ops; a functional model using it saves and loads
    with ``safe_mode=True`` without featx.
    """
    from .runtime import import_keras

    keras = import_keras()
    ops = keras.ops
    check_normalisation(kind)
    if kind == "none":
        return x
    if kind == "standard":
        layer = keras.layers.Normalization(mean=stats["mean"], variance=np.square(stats["scale"]), name="head_standard")
        return layer(x)
    if kind == "sqrt-l2":
        # The same values as sign(x) * sqrt(|x|), with a finite gradient at 0: a channel that pools to
        # exactly 0 (dead after a ReLU) gave 0 * inf = NaN on JAX and wiped the weights while fine-tuning.
        x = ops.sign(x) * ops.sqrt(ops.maximum(ops.abs(x), _EPS))
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), _EPS * _EPS))
    return x / ops.maximum(norm, _EPS)
