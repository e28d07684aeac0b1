"""Probability calibration: expected calibration error and temperature scaling.

Temperature scaling (Guo et al., 2017) divides a classifier's logits by one
scalar ``T`` fitted on held-out data: ``T > 1`` softens over-confident
probabilities, ``T < 1`` sharpens timid ones. The predicted class never
changes, so accuracy is untouched; only how far the probabilities can be
trusted is. Probabilities are accepted in place of logits (their logarithms
are logits up to a per-row constant, which softmax ignores).
"""

from __future__ import annotations

import numpy as np

from .errors import CalibrationError

_EPS = 1e-12


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _is_proba(a: np.ndarray) -> bool:
    return bool(a.min() >= 0 and np.allclose(a.sum(axis=1), 1.0, atol=1e-3))


def _as_logits(proba_or_logits) -> np.ndarray:
    a = np.asarray(proba_or_logits, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2 or len(a) == 0:
        raise CalibrationError(f"Expected an (n_samples, n_classes >= 2) array. Received: shape={a.shape}")
    return np.log(np.clip(a, _EPS, None)) if _is_proba(a) else a


def _check_y(y, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).ravel()
    if len(y) != n:
        raise CalibrationError(f"Got {n} probability rows but {len(y)} labels.")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise CalibrationError(f"Labels must be class indices in [0, {n_classes}). Received: {y.min()}..{y.max()}")
    return y


def apply_temperature(proba_or_logits, T: float) -> np.ndarray:
    """Probabilities with temperature ``T`` applied: ``softmax(logits / T)``.

    Examples
    --------
    >>> apply_temperature([[0.9, 0.1]], 2.0).round(3)
    array([[0.75, 0.25]])
    """
    if not np.isfinite(T) or T <= 0:
        raise CalibrationError(f"The temperature must be a positive number. Received: T={T!r}")
    return _softmax(_as_logits(proba_or_logits) / float(T))


def fit_temperature(proba_or_logits, y) -> float:
    """The temperature that minimises the negative log-likelihood of ``y``.

    Parameters
    ----------
    proba_or_logits : array, shape (n_samples, n_classes)
        Held-out probabilities (rows summing to 1) or logits.
    y : array of int, shape (n_samples,)
        True class indices.

    Returns
    -------
    float
        ``T`` in [0.05, 20]; 1.0 means the probabilities were already calibrated.
    """
    from scipy.optimize import minimize_scalar

    z = _as_logits(proba_or_logits)
    y = _check_y(y, len(z), z.shape[1])
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[rows, y]))

    # Searching log T keeps the bracket symmetric around T = 1.
    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def reliability_bins(proba, y, bins: int = 15) -> dict:
    """Per-bin confidence, accuracy and counts of the top-label prediction (equal-width bins)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise CalibrationError(f"Expected an (n_samples, n_classes) array of probabilities. Received: shape={p.shape}")
    y = _check_y(y, len(p), p.shape[1])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, conf, minlength=bins) / count
        accuracy = np.bincount(which, correct, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def expected_calibration_error(proba, y, bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence.

    The average over ``bins`` equal-width confidence bins of
    ``|accuracy - mean confidence|``, weighted by the share of samples in the bin.

    Examples
    --------
    >>> expected_calibration_error([[0.9, 0.1], [0.9, 0.1]], [0, 1])
    0.4
    """
    b = reliability_bins(proba, y, bins)
    used = b["count"] > 0
    gap = np.abs(b["accuracy"][used] - b["confidence"][used])
    return round(float(np.sum(gap * b["count"][used]) / b["count"].sum()), 12)


__all__ = ["apply_temperature", "fit_temperature", "expected_calibration_error", "reliability_bins", "CalibrationError"]
