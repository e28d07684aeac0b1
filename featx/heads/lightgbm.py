"""The LightGBM head: gradient-boosted trees on a PCA projection of wide features, early-stopped."""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from .. import features
from ..features import CachedRows
from ..normalise import normalise, normalise_in_place
from ..params import Interval
from .base import _SHARED_CONSTRAINTS, _Head, one_blas_thread

# The LightGBM head's projection is learnt on at most this many rows.
PCA_FIT_ROWS = 50_000
# From this many fit rows (the refit at scale; selection fits a 20,000-row subsample) LightGBM uses every core.
THREADED_FIT_ROWS = 50_000
# Each tree is grown on a random bag of at most this many rows (80% of the rows below 250,000).
BAG_ROWS = 200_000


class LightGBMHead(_Head):
    """LightGBM gradient-boosted trees, with early stopping on the eval set.

    Defaults suit dense embeddings: hundreds to thousands of weak,
    correlated features. Wider features are first projected on their
    ``pca_components`` principal components (trees split single features,
    and a few hundred components carry most of an embedding's variance, so
    this is both faster and usually no less accurate); each tree then sees a
    random 30% of them, with 63 histogram bins and shallow trees.

    ``n_jobs=None`` is one thread below ``THREADED_FIT_ROWS`` fit rows, as
    in scikit-learn, and every core (``os.cpu_count()``) from there, for
    the fit and for the head's predictions: at scale only the refit on every
    train row is that big. LightGBM's OpenMP threads wait for each other at
    every split, and when other processes share the cores a descheduled
    thread stalls the rest (on 2 shared cores a 10k x 256 fit took 5 s on
    one thread and 37-100 s on two), while the others spin: set
    ``OMP_WAIT_POLICY=PASSIVE`` there, or pass ``n_jobs=1``.

    Each tree sees a random 80% of the rows, and at most ``BAG_ROWS`` rows
    (LightGBM's bagging): on 900,000 rows the trees are grown on bags of
    200,000, a fraction of the cost. Smaller bags cost accuracy (at 100k,
    bags of 18,000 rows lost 0.55 points against 80%; docs/scale.md).

    ``X`` may be :class:`~featx.features.CachedRows`: the projection is then
    learnt on a sample of rows read from disk and applied chunk by chunk,
    so the float32 rows are never all in memory, only their projection.

    ``n_estimators=None`` is at most 1000 trees with early stopping on an
    eval set, 300 without one; a number given is used as is (a refit with
    the early-stopped count builds exactly that many trees).

    Attributes
    ----------
    booster_ : lightgbm.Booster
    best_iteration_ : int
    pca_mean_, pca_components_ : ndarray or None
        The projection, when one was used.
    """

    kind = "lightgbm"
    _parameter_constraints = {
        **_SHARED_CONSTRAINTS,
        "n_estimators": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "num_leaves": [Interval(Integral, 2, None, closed="left")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "min_child_samples": [Interval(Integral, 1, None, closed="left")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "early_stopping_rounds": [Interval(Integral, 1, None, closed="left")],
        "pca_components": [Interval(Integral, 0, None, closed="left"), None],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, n_estimators=None, learning_rate=0.1, num_leaves=15, colsample_bytree=0.3,
                 min_child_samples=10, reg_lambda=1.0, early_stopping_rounds=30, pca_components=256,
                 class_weight=None, seed=0, n_jobs=None, normalise="none"):
        self.pca_components = pca_components
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.colsample_bytree = colsample_bytree
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.class_weight = class_weight
        self.seed = seed
        self.n_jobs = n_jobs
        self.normalise = normalise

    def fit(self, X, y, eval_set=None):
        with one_blas_thread():  # the projection's SVD
            return self._fit(X, y, eval_set)

    def _fit(self, X, y, eval_set):
        import lightgbm as lgb

        X, y_idx = self._encode(X, y, stream=isinstance(X, CachedRows))
        val = self._eval(eval_set)
        self._fit_projection(X)
        X = self._project_fit_rows(X)
        if val is not None:
            val = (self._project(val[0]), val[1])
        self.n_threads_ = self.n_jobs or ((os.cpu_count() or 1) if len(X) >= THREADED_FIT_ROWS else 1)
        clf = lgb.LGBMClassifier(
            n_estimators=self.n_estimators or (1000 if val is not None else 300),
            learning_rate=self.learning_rate, num_leaves=self.num_leaves, colsample_bytree=self.colsample_bytree,
            subsample=min(0.8, BAG_ROWS / len(X)), subsample_freq=1, reg_lambda=self.reg_lambda,
            # On a few dozen rows the default leaf size forbids every split
            # and the model predicts a constant; scale it down there.
            min_child_samples=max(1, min(self.min_child_samples, len(X) // 4)),
            min_data_in_bin=1 if len(X) < 100 else 3, max_bin=63, force_col_wise=True,
            class_weight=self.class_weight, random_state=self.seed, n_jobs=self.n_threads_,
            verbose=-1,
        )
        callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)] if val is not None else None
        if val is not None:
            clf.fit(X, y_idx, eval_X=(val[0],), eval_y=(val[1],), callbacks=callbacks)
        else:
            clf.fit(X, y_idx)
        self.booster_ = clf.booster_
        self.best_iteration_ = int(clf.best_iteration_ or clf.booster_.current_iteration())
        return self

    def _fit_projection(self, X) -> None:
        """Learn the PCA projection (``pca_mean_``, ``pca_components_``), or None where the rows are narrow."""
        self.pca_mean_ = self.pca_components_ = None
        k = self.pca_components
        if not (k and X.shape[1] > k and X.shape[0] > k):
            return
        from sklearn.decomposition import PCA

        # The projection is learnt on at most PCA_FIT_ROWS rows: PCA centres a copy of what it is given,
        # which at 1M x 2,048 would be a second 8 GB; 50,000 rows pin 256 components down as well.
        fit_rows = X
        if len(X) > PCA_FIT_ROWS:
            rng = np.random.default_rng(self.seed)
            fit_rows = X[np.sort(rng.choice(len(X), PCA_FIT_ROWS, replace=False))]
        if isinstance(X, CachedRows):
            fit_rows = normalise(np.asarray(fit_rows), self.normalise, self.norm_stats_)
        pca = PCA(k, svd_solver="randomized", random_state=self.seed).fit(fit_rows)
        self.pca_mean_, self.pca_components_ = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)

    def _project_fit_rows(self, X) -> np.ndarray:
        """The fit rows, projected; rows on disk are read, normalised and projected a chunk at a time."""
        if not isinstance(X, CachedRows):
            return self._project(X)
        if self.pca_components_ is None:
            return normalise_in_place(X.read(), self.normalise, self.norm_stats_)
        out = np.empty((len(X), len(self.pca_components_)), dtype=np.float32)
        for pos, rows in X.chunks():
            out[pos] = self._project(normalise(rows, self.normalise, self.norm_stats_))
        return out

    def _project(self, X):
        if getattr(self, "pca_components_", None) is None:
            return X
        out = np.empty((len(X), len(self.pca_components_)), dtype=np.float32)
        shift = self.pca_mean_ @ self.pca_components_.T  # (X - mean) @ P.T without a centred copy of X
        chunk = features.CHUNK_ROWS
        for start in range(0, len(X), chunk):
            out[start:start + chunk] = X[start:start + chunk] @ self.pca_components_.T - shift
        return out

    def _proba(self, X):
        X = self._project(X)
        threads = getattr(self, "n_threads_", None) or self.n_jobs or 1
        p = np.asarray(self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=threads),
                       dtype=np.float64)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    def _save_model(self, d: Path):
        self.booster_.save_model(str(d / "lightgbm.txt"), num_iteration=self.best_iteration_)
        if self.pca_components_ is not None:
            np.savez(d / "pca.npz", mean=self.pca_mean_, components=self.pca_components_)

    def _load_model(self, d: Path):
        import lightgbm as lgb

        self.booster_ = lgb.Booster(model_file=str(d / "lightgbm.txt"))
        self.best_iteration_ = self.booster_.current_iteration()
        self.pca_mean_ = self.pca_components_ = None
        if (d / "pca.npz").exists():
            with np.load(d / "pca.npz", allow_pickle=False) as z:
                self.pca_mean_, self.pca_components_ = z["mean"], z["components"]
