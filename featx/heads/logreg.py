"""The logistic head: scikit-learn's logistic regression on standardised features, C chosen when not given.

Past ``CHUNKED_SOLVER_VALUES`` values it solves the same objective with
L-BFGS over float32 chunks of the rows, so no standardised copy is made.
"""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path

import numpy as np

from .. import features
from ..normalise import column_moments, row_pieces
from ..params import Interval
from .base import _SHARED_CONSTRAINTS, _class_weights, _Head, one_blas_thread

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# From this many values (rows x width) the logistic head solves with L-BFGS over float32
# chunks of X, warm-started from scikit-learn's fit on WARM_START_ROWS rows. Below it,
# scikit-learn fits a standardised float64 copy and holds about two more: 90,000 x 2,048
# rows (0.74 GB) peaked at 3.9 GB that way; 1M x 2,048 would need over 40 GB.
CHUNKED_SOLVER_VALUES = 50_000_000
WARM_START_ROWS = 20_000


class LogisticHead(_Head):
    """Logistic regression on standardised features.

    Parameters
    ----------
    C : float, optional
        Inverse regularisation strength. When None it is chosen from
        ``C_GRID`` on the eval set (or by 3-fold cross-validation without one).
    max_iter : int
    class_weight : None, "balanced" or dict
    seed : int
    normalise : {"none", "standard", "l2", "sqrt-l2"}
        Applied before the head's own standardisation.

    Attributes
    ----------
    mean_, scale_ : ndarray (D,)
        The standardisation.
    coef_ : ndarray (1 or C, D)
    intercept_ : ndarray (1 or C,)
    C_ : float
        The regularisation used.
    """

    kind = "logreg"
    _parameter_constraints = {
        **_SHARED_CONSTRAINTS,
        "C": [Interval(Real, 0, None, closed="neither"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, C=None, max_iter=2000, class_weight=None, seed=0, normalise="none"):
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.seed = seed
        self.normalise = normalise

    def _model(self, C):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.max_iter, class_weight=self.class_weight, random_state=self.seed)

    def fit(self, X, y, eval_set=None):
        with one_blas_thread():
            return self._fit(X, y, eval_set)

    def _fit(self, X, y, eval_set):
        X, y_idx = self._encode(X, y)
        val = self._eval(eval_set)
        mean, var, _ = column_moments(row_pieces(X))
        self.mean_, self.scale_ = mean, np.sqrt(var)
        self.scale_[self.scale_ < 1e-12] = 1.0
        if X.size >= CHUNKED_SOLVER_VALUES and len(X) > WARM_START_ROWS:
            return self._fit_large(X, y_idx, val)
        Xs = (X - self.mean_) / self.scale_
        C = self._choose_C(Xs, y_idx, val)
        m = self._model(C).fit(Xs, y_idx)
        self.C_ = C
        self.n_iter_ = m.n_iter_
        self.coef_ = m.coef_.astype(np.float64)
        self.intercept_ = m.intercept_.astype(np.float64)
        return self

    def _choose_C(self, Xs, y_idx, val):
        """The given C; else the best of C_GRID on the eval set, else by 3-fold CV (on standardised rows)."""
        if self.C is not None:
            return float(self.C)
        if val is not None:
            Xv = (val[0] - self.mean_) / self.scale_
            scores = []
            for c in C_GRID:
                m = self._model(c).fit(Xs, y_idx)
                proba = m.predict_proba(Xv)
                ll = -np.mean(np.log(np.clip(proba[np.arange(len(val[1])), val[1]], 1e-12, None)))
                scores.append((-(m.predict(Xv) == val[1]).mean(), ll, c))
            return min(scores)[2]
        from sklearn.linear_model import LogisticRegressionCV

        n_min = np.bincount(y_idx).min()
        if n_min < 2:
            return 1.0
        cv = LogisticRegressionCV(Cs=list(C_GRID), cv=min(3, max(2, n_min)), max_iter=self.max_iter,
                                  class_weight=self.class_weight, random_state=self.seed, **_cv_explicit())
        return float(np.atleast_1d(cv.fit(Xs, y_idx).C_)[0])

    def _fit_large(self, X, y_idx, val):
        """The same model on ``CHUNKED_SOLVER_VALUES`` values or more, without a standardised copy of X.

        L-BFGS on scikit-learn's objective (mean log-loss, weighted by class,
        plus ``||W||^2 / (2 C n)``), with the standardisation folded into the
        weights so that X is only read, in ``features.CHUNK_ROWS`` pieces, as float32.
        It starts from scikit-learn's fit on a stratified subsample (with C
        scaled so that the penalty per row is the same), so few full passes
        are needed. Without a C, C is chosen on that subsample (on the eval
        set when there is one).
        """
        from scipy.optimize import minimize

        rng = np.random.default_rng(self.seed)
        sub = np.sort(rng.choice(len(X), size=min(len(X), WARM_START_ROWS), replace=False))
        Xs_sub = (X[sub] - self.mean_) / self.scale_
        n, k = len(X), len(self.classes_)
        C = self._choose_C(Xs_sub, y_idx[sub], val)  # at the subsample's size
        warm = self._model(C * n / len(sub)).fit(Xs_sub, y_idx[sub])
        del Xs_sub
        cw = _class_weights(y_idx, k, self.class_weight)
        sw = np.ones(n) if cw is None else np.array([cw[i] for i in range(k)])[y_idx]
        total = sw.sum()
        binary = k == 2
        width = 1 if binary else k
        Y = (y_idx == 1).astype(np.float64)[:, None] if binary else np.eye(k)[y_idx]
        D = X.shape[1]
        m32, inv_s = self.mean_.astype(np.float32), (1.0 / self.scale_)
        chunk = features.CHUNK_ROWS

        def loss_grad(theta):
            W, b = theta[:D * width].reshape(D, width), theta[D * width:]
            Wx = (W * inv_s[:, None]).astype(np.float32)  # weights on raw X
            c = b - (self.mean_ * inv_s) @ W
            loss, gX, gsum = 0.0, np.zeros((D, width)), np.zeros(width)
            for start in range(0, n, chunk):
                xc = X[start:start + chunk]
                z = (xc @ Wx).astype(np.float64) + c
                yc, wc = Y[start:start + chunk], sw[start:start + chunk]
                if binary:
                    p = 1.0 / (1.0 + np.exp(-z))
                    loss += float(wc @ (np.logaddexp(0.0, z[:, 0]) - yc[:, 0] * z[:, 0]))
                else:
                    zmax = z.max(axis=1, keepdims=True)
                    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
                    p = np.exp(z - lse[:, None])
                    loss += float(wc @ (lse - (yc * z).sum(axis=1)))
                g = (p - yc) * wc[:, None]
                gX += xc.T @ g.astype(np.float32)
                gsum += g.sum(axis=0)
            gW = (gX - np.outer(m32, gsum)) * inv_s[:, None] + W / C
            value = (loss + 0.5 * float((W ** 2).sum()) / C) / total
            return value, np.concatenate([gW.ravel(), gsum]) / total

        coef = warm.coef_.T if not binary else warm.coef_.T[:, :1]
        theta0 = np.concatenate([coef.ravel(), warm.intercept_[:width]])
        res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter), "gtol": 1e-4, "ftol": 64 * np.finfo(float).eps})
        W = res.x[:D * width].reshape(D, width)
        self.C_ = C
        self.n_iter_ = np.array([res.nit])
        self.coef_ = W.T.astype(np.float64)
        self.intercept_ = res.x[D * width:].astype(np.float64)
        return self

    def decision_function(self, X):
        return self._by_chunks(X, self._decision)

    def _decision(self, X):
        z = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        return z[:, 0] if z.shape[1] == 1 else z

    def _proba(self, X):
        z = self._decision(X)
        if z.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-z))
            return np.column_stack([1 - p, p])
        from scipy.special import softmax

        return softmax(z, axis=1)

    def _save_model(self, d: Path):
        np.savez(d / "logreg.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_, intercept=self.intercept_,
                 classes=np.array([str(c) for c in self.classes_]), C=np.array(self.C_))

    def _load_model(self, d: Path):
        with np.load(d / "logreg.npz", allow_pickle=False) as z:
            self.mean_, self.scale_ = z["mean"], z["scale"]
            self.coef_, self.intercept_ = z["coef"], z["intercept"]
            self.C_ = float(z["C"])


def _cv_explicit() -> dict:
    """LogisticRegressionCV's settings whose defaults scikit-learn is changing, given explicitly.

    Accuracy picks C, as it always has here (1.11 moves the default to log
    loss); an L2 penalty, which 1.8+ spells ``l1_ratios=(0,)``; and the new
    fitted attributes where they exist (``C_`` is read either way). Without
    them scikit-learn 1.9 prints three FutureWarnings on every fit.
    """
    from sklearn.linear_model import LogisticRegressionCV

    defaults = LogisticRegressionCV().get_params()
    explicit = {"scoring": "accuracy"}
    if defaults.get("penalty") == "deprecated":  # 1.8+: the penalty is set through l1_ratios
        explicit["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in defaults:
        explicit["use_legacy_attributes"] = False
    return explicit
