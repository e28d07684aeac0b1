"""Heads: classifiers trained on cached features, as scikit-learn estimators.

- :class:`DenseHead`: Keras Normalization -> [Dense -> BatchNorm -> ReLU -> Dropout]* -> softmax;
- :class:`LogisticHead`: standardised features, scikit-learn logistic regression;
- :class:`LightGBMHead`: gradient-boosted trees with early stopping.

Each follows the estimator contract (``fit`` returns self, learned
attributes end in ``_``, ``classes_``) and saves to a directory that never
holds a pickle: Keras ``.keras``, NPZ arrays, LightGBM's own text model (see
docs/head-format.md). Loading runs no code from the files.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import HeadError, HeadParamError
from .params import Interval, Options, check_params
from .features import CHUNK_ROWS, CachedRows, array_chunks
from .normalise import NORMALISATIONS, column_moments, normalise, normalise_in_place, normaliser_stats, row_pieces

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# From this many values (rows x width) the logistic head solves with L-BFGS over float32
# chunks of X, warm-started from scikit-learn's fit on WARM_START_ROWS rows. Below it,
# scikit-learn fits a standardised float64 copy and holds about two more: 90,000 x 2,048
# rows (0.74 GB) peaked at 3.9 GB that way; 1M x 2,048 would need over 40 GB.
CHUNKED_SOLVER_VALUES = 50_000_000
WARM_START_ROWS = 20_000
# The LightGBM head's projection is learnt on at most this many rows.
PCA_FIT_ROWS = 50_000

# Every file a head folder may hold: saving removes them all first, so a
# folder reused for another kind of head keeps nothing of the old one.
HEAD_FILES = ("manifest.json", "model.keras", "history.json", "logreg.npz", "lightgbm.txt", "pca.npz", "norm.npz",
              "metrics.json", "confusion.png", "curves.png")

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


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
        """``fn`` of the validated, normalised rows, CHUNK_ROWS at a time (rows on disk are read chunk by chunk).

        ``X`` may be a :class:`featx.Features` (what ``load_features``
        returns): the head then checks that they come from the extraction it
        was fitted on, which a width check alone cannot tell (two backbones,
        sizes or weights often give the same width).
        """
        check_is_fitted(self, "classes_")
        if hasattr(X, "extraction") and hasattr(X, "X"):
            self._check_extraction(X)
            X = X.X
        if not isinstance(X, (CachedRows, np.ndarray)) or len(X) <= CHUNK_ROWS:  # lists, frames: in one piece
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

    def _check_extraction(self, features) -> None:
        man = getattr(self, "manifest_", None) or {}
        expected = [e.get("name") for e in man.get("extractions") or []] or [man.get("extraction")]
        got = features.extraction.name
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
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in HEAD_FILES:
            (d / name).unlink(missing_ok=True)
        self._save_model(d)
        if getattr(self, "norm_stats_", None):
            np.savez(d / "norm.npz", **self.norm_stats_)
        man = dict(manifest or {})
        man.update(
            kind=self.kind,
            classes=[str(c) for c in self.classes_],
            feature_width=int(self.n_features_in_),
            params=_jsonable(self.get_params()),
        )
        man.setdefault("created", time.time())
        (d / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))
        self.manifest_ = man
        return d


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, (tuple, list)):
            v = list(v)
        elif isinstance(v, np.generic):
            v = v.item()
        elif not isinstance(v, (str, int, float, bool, dict, type(None))):
            v = repr(v)
        out[k] = v
    return out


# Loss improvements smaller than this do not reset EarlyStopping's patience: on
# nearly separable features the validation loss creeps down for dozens of
# epochs while the accuracy no longer moves (benchmarks/heads.py: a third of
# the epochs at 10k x 2,048, same accuracy).
MIN_DELTA = 1e-3


def _best_epoch(losses, min_delta: float) -> int:
    """The 1-based epoch EarlyStopping restores: the last that improved on the best by more than min_delta."""
    best, at = float("inf"), 0
    for i, loss in enumerate(losses):
        if loss < best - min_delta:
            best, at = loss, i
    return at + 1


def _row_batches(keras, rows: CachedRows, y_idx: np.ndarray, batch: int, prep, seed: int, class_weights=None):
    """A ``keras.utils.PyDataset`` of (x, y[, sample weight]) batches streamed from rows on disk.

    The rows, in storage order, are cut into blocks of whole batches
    (about CHUNK_ROWS rows); each epoch visits the blocks in a new random
    order and shuffles the rows within each block. One block is read at a
    time (one sequential read), so memory holds a block whatever the row
    count. The number of batches is the same every epoch, as Keras expects.
    """
    order = rows.storage_order()
    per_block = max(1, CHUNK_ROWS // batch)
    blocks = [order[i:i + per_block * batch] for i in range(0, len(order), per_block * batch)]
    cw = None if class_weights is None else np.array([class_weights[i] for i in range(len(class_weights))], np.float32)

    class RowBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self._block = (None, None, None)
            self.on_epoch_end()

        def on_epoch_end(self):
            self.plan = [(b, start) for b in self.rng.permutation(len(blocks))
                         for start in range(0, len(blocks[b]), batch)]
            self._block = (None, None, None)

        def __len__(self):
            return len(self.plan)

        def __getitem__(self, i):
            b, start = self.plan[i]
            if self._block[0] != b:
                pos = np.sort(blocks[b])
                shuffled = self.rng.permutation(len(pos))
                self._block = (b, prep(rows.read(pos))[shuffled], y_idx[pos][shuffled])
            _, x, y = self._block
            x, y = x[start:start + batch], y[start:start + batch]
            return (x, y) if cw is None else (x, y, cw[y])

    return RowBatches()


class DenseHead(_Head):
    """Keras Dense+BatchNorm+Dropout classifier on feature vectors.

    Parameters
    ----------
    hidden : tuple of int
        Widths of the hidden Dense layers (``(256,)`` or ``(512, 128)``).
    dropout : float
        Dropout after each hidden layer.
    optimizer : {"adam", "sgd", "rmsprop"}
    lr : float
        Learning rate.
    epochs, batch_size : int
    patience : int
        EarlyStopping patience (on validation loss when an eval set is given;
        improvements under ``MIN_DELTA`` = 0.001 do not count);
        the best epoch's weights are restored. ReduceLROnPlateau halves the
        rate after ``patience // 2`` flat epochs.
    class_weight : None, "balanced" or dict
    seed : int
    verbose : int
        Keras fit verbosity.
    normalise : {"none", "standard", "l2", "sqrt-l2"}
        Applied to the features before the model (see :mod:`featx.normalise`).

    Attributes
    ----------
    model_ : keras.Model
        ``Input(D) -> head_norm -> [head_dense_i -> head_bn_i -> head_relu_i
        -> head_dropout_i]* -> head_output`` (softmax).
    history_ : dict
        Per-epoch loss/accuracy (and val_ figures).
    best_epoch_ : int
    """

    kind = "dense"
    _parameter_constraints = {
        **_SHARED_CONSTRAINTS,
        "hidden": [tuple, list, Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [Options({"adam", "sgd", "rmsprop"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 0, None, closed="left")],
        "verbose": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, hidden=(256,), dropout=0.5, optimizer="adam", lr=1e-3, epochs=60, batch_size=32,
                 patience=10, class_weight=None, seed=0, verbose=0, normalise="none"):
        self.hidden = hidden
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.class_weight = class_weight
        self.seed = seed
        self.verbose = verbose
        self.normalise = normalise

    def _check_params(self):
        super()._check_params()
        widths = self.hidden if isinstance(self.hidden, (tuple, list)) else [self.hidden]
        if not widths or not all(isinstance(w, Integral) and w >= 1 for w in widths):
            raise HeadParamError(f"The 'hidden' parameter of DenseHead must be positive widths like (256,) or "
                                 f"(512, 128). Got {self.hidden!r} instead.")

    def _build(self, X, n_classes, steps: int = 1, moments=None):
        from .runtime import import_keras

        keras = import_keras()
        keras.utils.set_random_seed(self.seed)
        hidden = [int(h) for h in (self.hidden if isinstance(self.hidden, (tuple, list)) else [self.hidden])]
        inp = keras.Input((X.shape[1],), name="features")
        if moments is None:
            norm = keras.layers.Normalization(name="head_norm")
            norm.adapt(X)
        else:  # gathered chunk by chunk from rows on disk
            norm = keras.layers.Normalization(mean=moments[0], variance=moments[1], name="head_norm")
        x = norm(inp)
        for i, width in enumerate(hidden):
            x = keras.layers.Dense(width, name=f"head_dense_{i}")(x)
            x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
            x = keras.layers.Activation("relu", name=f"head_relu_{i}")(x)
            x = keras.layers.Dropout(self.dropout, name=f"head_dropout_{i}", seed=self.seed + i)(x)
        out = keras.layers.Dense(n_classes, activation="softmax", name="head_output", dtype="float32")(x)
        model = keras.Model(inp, out, name="featx_dense_head")
        opts = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
        if self.optimizer not in opts:
            raise HeadError(f"optimizer must be one of {sorted(opts)}. Received: optimizer={self.optimizer!r}")
        # Several steps per call of the compiled train function: the same updates,
        # with a fraction of the per-step dispatch (half the epoch time at batch 32).
        model.compile(optimizer=opts[self.optimizer](learning_rate=self.lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], steps_per_execution=max(1, min(32, steps // 4)))
        return model, keras

    def fit(self, X, y, eval_set=None):
        """Train; ``eval_set=(X_val, y_val)`` drives early stopping and LR schedule.

        ``X`` may be :class:`~featx.features.CachedRows`: the rows are then
        streamed from the cache by a ``keras.utils.PyDataset`` (blocks of
        whole batches read in storage order, the blocks and the rows within
        each shuffled every epoch), so memory holds a block, not the matrix.
        """
        stream = isinstance(X, CachedRows)
        X, y_idx = self._encode(X, y, stream=stream)
        val = self._eval(eval_set)
        batch = int(self.batch_size)
        n_classes = len(self.classes_)
        weights = _class_weights(y_idx, n_classes, self.class_weight)
        if stream:
            prep = lambda rows: normalise(rows, self.normalise, self.norm_stats_)  # noqa: E731
            mean, var, _ = column_moments(prep(c) for _, c in X.chunks())
            model, keras = self._build(X, n_classes, steps=-(-len(X) // batch), moments=(mean, var))
            data = _row_batches(keras, X, y_idx, batch, prep, self.seed, weights)
            fit_args = dict(x=data)
        else:
            model, keras = self._build(X, n_classes, steps=-(-len(X) // batch))
            fit_args = dict(x=X, y=y_idx, batch_size=batch, class_weight=weights, shuffle=True)
        monitor = "val_loss" if val is not None else "loss"
        callbacks = [
            keras.callbacks.EarlyStopping(monitor=monitor, patience=self.patience, min_delta=MIN_DELTA,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=max(1, self.patience // 2),
                                              min_lr=self.lr / 100),
        ]
        hist = model.fit(**fit_args, validation_data=val, epochs=int(self.epochs), callbacks=callbacks,
                         verbose=self.verbose)
        self.model_ = model
        self.history_ = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        losses = self.history_.get(monitor, [])
        self.best_epoch_ = _best_epoch(losses, MIN_DELTA) if losses else int(self.epochs)
        return self

    def _proba(self, X):
        return np.asarray(self.model_.predict(X, batch_size=1024, verbose=0), dtype=np.float64)

    def _save_model(self, d: Path):
        self.model_.save(d / "model.keras")
        (d / "history.json").write_text(json.dumps(self.history_))

    @classmethod
    def _load(cls, d: Path, man: dict):
        from .runtime import import_keras

        keras = import_keras()
        head = cls(**_known_params(cls, man.get("params", {})))
        head.model_ = keras.saving.load_model(d / "model.keras", safe_mode=True, compile=False)
        hist = d / "history.json"
        head.history_ = json.loads(hist.read_text()) if hist.exists() else {}
        return head


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
        weights so that X is only read, in CHUNK_ROWS pieces, as float32.
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

        def loss_grad(theta):
            W, b = theta[:D * width].reshape(D, width), theta[D * width:]
            Wx = (W * inv_s[:, None]).astype(np.float32)  # weights on raw X
            c = b - (self.mean_ * inv_s) @ W
            loss, gX, gsum = 0.0, np.zeros((D, width)), np.zeros(width)
            for start in range(0, n, CHUNK_ROWS):
                xc = X[start:start + CHUNK_ROWS]
                z = (xc @ Wx).astype(np.float64) + c
                yc, wc = Y[start:start + CHUNK_ROWS], sw[start:start + CHUNK_ROWS]
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
        return _softmax(z)

    def _save_model(self, d: Path):
        np.savez(d / "logreg.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_, intercept=self.intercept_,
                 classes=np.array([str(c) for c in self.classes_]), C=np.array(self.C_))

    @classmethod
    def _load(cls, d: Path, man: dict):
        head = cls(**_known_params(cls, man.get("params", {})))
        with np.load(d / "logreg.npz", allow_pickle=False) as z:
            head.mean_, head.scale_ = z["mean"], z["scale"]
            head.coef_, head.intercept_ = z["coef"], z["intercept"]
            head.C_ = float(z["C"])
        return head


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


class LightGBMHead(_Head):
    """LightGBM gradient-boosted trees, with early stopping on the eval set.

    Defaults suit dense embeddings: hundreds to thousands of weak,
    correlated features. Wider features are first projected on their
    ``pca_components`` principal components (trees split single features,
    and a few hundred components carry most of an embedding's variance, so
    this is both faster and usually no less accurate); each tree then sees a
    random 30% of them, with 63 histogram bins and shallow trees.

    ``n_jobs=None`` is one thread, as in scikit-learn. LightGBM's OpenMP
    threads wait for each other at every split, and when other processes
    share the cores a descheduled thread stalls the rest: on 2 shared cores a
    10k x 256 fit took 5 s on one thread and 37-100 s on two. Pass
    ``n_jobs=N`` on a machine of your own (``OMP_WAIT_POLICY=PASSIVE`` makes
    several threads safe, but slower, where cores are shared).

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

        X, y_idx = self._encode(X, y)
        val = self._eval(eval_set)
        self.pca_mean_ = self.pca_components_ = None
        k = self.pca_components
        if k and X.shape[1] > k and X.shape[0] > k:
            from sklearn.decomposition import PCA

            # The projection is learnt on at most PCA_FIT_ROWS rows: PCA centres a copy of what it is given,
            # which at 1M x 2,048 would be a second 8 GB; 50,000 rows pin 256 components down as well.
            fit_rows = X
            if len(X) > PCA_FIT_ROWS:
                rng = np.random.default_rng(self.seed)
                fit_rows = X[np.sort(rng.choice(len(X), PCA_FIT_ROWS, replace=False))]
            pca = PCA(k, svd_solver="randomized", random_state=self.seed).fit(fit_rows)
            del fit_rows
            self.pca_mean_, self.pca_components_ = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
        X = self._project(X)
        if val is not None:
            val = (self._project(val[0]), val[1])
        clf = lgb.LGBMClassifier(
            n_estimators=self.n_estimators or (1000 if val is not None else 300),
            learning_rate=self.learning_rate, num_leaves=self.num_leaves, colsample_bytree=self.colsample_bytree,
            subsample=0.8, subsample_freq=1, reg_lambda=self.reg_lambda,
            # On a few dozen rows the default leaf size forbids every split
            # and the model predicts a constant; scale it down there.
            min_child_samples=max(1, min(self.min_child_samples, len(X) // 4)),
            min_data_in_bin=1 if len(X) < 100 else 3, max_bin=63, force_col_wise=True,
            class_weight=self.class_weight, random_state=self.seed, n_jobs=self.n_jobs or 1,
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

    def _project(self, X):
        if getattr(self, "pca_components_", None) is None:
            return X
        out = np.empty((len(X), len(self.pca_components_)), dtype=np.float32)
        shift = self.pca_mean_ @ self.pca_components_.T  # (X - mean) @ P.T without a centred copy of X
        for start in range(0, len(X), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = X[start:start + CHUNK_ROWS] @ self.pca_components_.T - shift
        return out

    def _proba(self, X):
        X = self._project(X)
        p = np.asarray(self.booster_.predict(X, num_iteration=self.best_iteration_), dtype=np.float64)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    def _save_model(self, d: Path):
        self.booster_.save_model(str(d / "lightgbm.txt"), num_iteration=self.best_iteration_)
        if self.pca_components_ is not None:
            np.savez(d / "pca.npz", mean=self.pca_mean_, components=self.pca_components_)

    @classmethod
    def _load(cls, d: Path, man: dict):
        import lightgbm as lgb

        head = cls(**_known_params(cls, man.get("params", {})))
        head.booster_ = lgb.Booster(model_file=str(d / "lightgbm.txt"))
        head.best_iteration_ = head.booster_.current_iteration()
        head.pca_mean_ = head.pca_components_ = None
        if (d / "pca.npz").exists():
            with np.load(d / "pca.npz", allow_pickle=False) as z:
                head.pca_mean_, head.pca_components_ = z["mean"], z["components"]
        return head


HEADS: dict[str, type[_Head]] = {"dense": DenseHead, "logreg": LogisticHead, "lightgbm": LightGBMHead}


def _known_params(cls, params: dict) -> dict:
    names = cls().get_params()
    out = {k: v for k, v in params.items() if k in names}
    if "hidden" in out and isinstance(out["hidden"], list):
        out["hidden"] = tuple(out["hidden"])
    return out


def head_class(kind: str) -> type[_Head]:
    if kind in HEADS:
        return HEADS[kind]
    close = difflib.get_close_matches(str(kind), HEADS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise HeadError(f"Unknown head {kind!r}.{hint} Choose one of: {', '.join(HEADS)}.")


def make_head(kind: str, **params) -> _Head:
    """A head by kind name, with parameters checked against its signature."""
    cls = head_class(kind)
    allowed = cls().get_params()
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise HeadError(f"{cls.__name__} has no parameter {', '.join(bad)}. It takes: {', '.join(sorted(allowed))}.")
    return cls(**params)


def read_manifest(directory: str | os.PathLike) -> dict:
    d = Path(directory)
    try:
        return json.loads((d / "manifest.json").read_text())
    except FileNotFoundError:
        raise HeadError(f"{d} is not a featx head: no manifest.json. Heads are written by `featx fit-head`.") from None
    except ValueError as exc:
        raise HeadError(f"{d}/manifest.json is not valid JSON: {exc}") from None


def load_head(directory: str | os.PathLike) -> _Head:
    """Load a saved head; nothing in the directory is executed or unpickled."""
    d = Path(directory)
    man = read_manifest(d)
    cls = head_class(man.get("kind", "?"))
    try:
        head = cls._load(d, man)
    except (OSError, KeyError, ValueError) as exc:
        raise HeadError(f"Cannot load the {man.get('kind')} head in {d}: {exc}") from None
    head.norm_stats_ = {}
    if (d / "norm.npz").exists():
        with np.load(d / "norm.npz", allow_pickle=False) as z:
            head.norm_stats_ = {k: z[k] for k in z.files}
    if head.normalise == "standard" and not head.norm_stats_:
        raise HeadError(f"Cannot load the {man.get('kind')} head in {d}: normalise='standard' but norm.npz is missing.")
    head.classes_ = np.array(man["classes"], dtype=object)
    head.n_features_in_ = int(man["feature_width"])
    head.manifest_ = man
    return head


def align_proba(est, proba: np.ndarray, names) -> np.ndarray:
    """Columns in class_names order (a class absent from train gets zeros)."""
    cols = {str(c): i for i, c in enumerate(est.classes_)}
    out = np.zeros((len(proba), len(names)))
    for j, name in enumerate(names):
        if name in cols:
            out[:, j] = proba[:, cols[name]]
    return out
