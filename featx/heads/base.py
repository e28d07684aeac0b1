"""The estimator contract every head shares: checks, label encoding, normalisation, chunked predict, save.

A head is a scikit-learn classifier (``fit`` returns self, learned
attributes end in ``_``, ``classes_``). A kind (:mod:`.logreg`,
:mod:`.dense`, :mod:`.lightgbm`) adds its ``_parameter_constraints``,
``fit``, ``_proba`` and the two halves of its model file,
``_save_model(folder)`` and ``_load_model(folder)``; the rest of the
folder is :mod:`.storage`'s.
"""

from __future__ import annotations

import os
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import HeadError, HeadParamError
from .. import features
from ..features import CachedRows, array_chunks
from ..normalise import NORMALISATIONS, normalise, normalise_in_place, normaliser_stats
from ..params import Interval, Options, check_params
from .storage import write_folder

_SHARED_CONSTRAINTS = {
    "class_weight": [None, Options({"balanced"}), dict],
    "seed": [Interval(Integral, 0, None, closed="left")],
    "normalise": [Options(set(NORMALISATIONS))],
}


def one_blas_thread():
    """Run numpy/scipy linear algebra on one thread, as the LightGBM head does by default.

    OpenBLAS threads spin while they wait for each other; where other
    processes share the cores, a logistic fit on 720 x 512 features took 0.35 s
    of CPU on one thread and 11.6 s (135 s wall) on two.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _class_weights(y_idx: np.ndarray, n_classes: int, class_weight) -> dict[int, float] | None:
    if class_weight is None:
        return None
    if class_weight == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(y_idx)
        weights = compute_class_weight("balanced", classes=present, y=y_idx) * len(present) / n_classes
        out = dict.fromkeys(range(n_classes), 0.0)  # a class absent from these rows weighs nothing
        out.update({int(c): float(w) for c, w in zip(present, weights)})
        return out
    if isinstance(class_weight, dict):
        return {int(k): float(v) for k, v in class_weight.items()}
    raise HeadError(f"class_weight must be None, 'balanced' or a dict. Received: class_weight={class_weight!r}")


class _Head(ClassifierMixin, BaseEstimator):
    """Shared plumbing: label encoding, validation, predict from predict_proba."""

    kind = ""
    _parameter_constraints: dict = {}

    def _check_params(self):
        """Check every parameter against ``_parameter_constraints`` (scikit-learn's declarative style)."""
        check_params(self._parameter_constraints, self.get_params(deep=False), type(self).__name__, HeadParamError)

    def _encode(self, X, y, stream: bool = False):
        """Validate parameters and data, encode labels, learn and apply the normalisation.

        ``X`` may be :class:`~featx.features.CachedRows` (rows on disk). With
        ``stream`` they stay there (the statistics are gathered chunk by
        chunk and the rows come back as they are); otherwise they are read
        into one float32 array that the head owns and normalises in place,
        so a million rows cost their own size and no copy on top.
        """
        self._check_params()
        if isinstance(X, CachedRows):
            if stream:
                y = np.asarray(y)
                if len(y) != len(X):
                    raise ValueError(f"X has {len(X)} rows but y has {len(y)}.")
                self.n_features_in_ = X.shape[1]
                y_idx = self._classes(y)
                self.norm_stats_ = normaliser_stats(None, self.normalise, chunks=(c for _, c in X.chunks()))
                return X, y_idx
            X = X.read()
            X, y = validate_data(self, X, y, dtype=np.float32)
            y_idx = self._classes(y)
            self.norm_stats_ = normaliser_stats(X, self.normalise)
            return normalise_in_place(X, self.normalise, self.norm_stats_), y_idx
        X, y = validate_data(self, X, y, dtype=np.float32)
        y_idx = self._classes(y)
        self.norm_stats_ = normaliser_stats(X, self.normalise)
        return normalise(X, self.normalise, self.norm_stats_), y_idx

    def _classes(self, y) -> np.ndarray:
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise HeadError(
                f"{type(self).__name__} needs at least 2 classes to learn from; got one class: {self.classes_.tolist()}."
            )
        return y_idx

    def _eval(self, eval_set):
        if eval_set is None:
            return None
        Xv, yv = eval_set
        if isinstance(Xv, CachedRows):
            Xv = Xv.read()
        Xv = normalise(validate_data(self, Xv, reset=False, dtype=np.float32), self.normalise, self.norm_stats_)
        index = {c: i for i, c in enumerate(self.classes_)}
        unknown = sorted({str(v) for v in np.asarray(yv).tolist() if v not in index})
        if unknown:
            raise HeadError(f"Validation labels {unknown} do not occur in the training data.")
        return Xv, np.array([index[v] for v in np.asarray(yv).tolist()])

    def predict(self, X):
        proba = self.predict_proba(X)  # checks fitting first
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_proba(self, X):
        return self._by_chunks(X, self._proba)

    def _by_chunks(self, X, fn):
        """``fn`` of the validated, normalised rows, ``features.CHUNK_ROWS`` at a time (rows on disk: chunk by chunk).

        ``X`` may be a :class:`featx.Features` (what ``load_features``
        returns): the head then checks that they come from the extraction it
        was fitted on, which a width check alone cannot tell (two backbones,
        sizes or weights often give the same width).
        """
        check_is_fitted(self, "classes_")
        if hasattr(X, "extraction") and hasattr(X, "X"):
            self._check_extraction(X)
            X = X.X
        if not isinstance(X, (CachedRows, np.ndarray)) or len(X) <= features.CHUNK_ROWS:  # lists, frames: in one piece
            return fn(self._check_X(X))
        out = None
        for pos, rows in array_chunks(X):
            part = fn(self._check_X(rows))
            if out is None:
                out = np.empty((len(X), *part.shape[1:]), dtype=part.dtype)
            out[pos] = part
        return out

    def _check_X(self, X):
        """Validated and normalised features (an array), ready for the model."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return normalise(X, self.normalise, getattr(self, "norm_stats_", None))

    def _check_extraction(self, feats) -> None:
        man = getattr(self, "manifest_", None) or {}
        expected = [e.get("name") for e in man.get("extractions") or []] or [man.get("extraction")]
        got = feats.extraction.name
        if expected[0] and got != expected[0]:
            raise HeadError(
                f"{type(self).__name__} was fitted on features of extraction {expected[0]}, but these are of {got} "
                "(another backbone, size, tap or weights). Refit the head on them, or load the features it was "
                "fitted on."
            )

    def save(self, directory: str | os.PathLike, manifest: dict | None = None) -> Path:
        """Write the head (and ``manifest.json``) into ``directory``.

        Files of an earlier head in the same folder are removed first, so
        nothing stale (a projection, a normalisation) is loaded with this one.
        """
        check_is_fitted(self, "classes_")
        d, self.manifest_ = write_folder(self, directory, manifest)
        return d


def align_proba(est, proba: np.ndarray, names) -> np.ndarray:
    """Columns in class_names order (a class absent from train gets zeros)."""
    cols = {str(c): i for i, c in enumerate(est.classes_)}
    out = np.zeros((len(proba), len(names)))
    for j, name in enumerate(names):
        if name in cols:
            out[:, j] = proba[:, cols[name]]
    return out
