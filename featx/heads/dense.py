"""The dense head: Keras Normalization -> [Dense -> BatchNorm -> ReLU -> Dropout]* -> softmax, early-stopped."""

from __future__ import annotations

import json
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from .. import features
from ..features import CachedRows
from ..normalise import column_moments, normalise
from ..params import Interval, Items, Options
from .base import _SHARED_CONSTRAINTS, _class_weights, _Head

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
    (about ``features.CHUNK_ROWS`` rows); each epoch visits the blocks in a new random
    order and shuffles the rows within each block. One block is read at a
    time (one sequential read), so memory holds a block whatever the row
    count. The number of batches is the same every epoch, as Keras expects.
    """
    order = rows.storage_order()
    per_block = max(1, features.CHUNK_ROWS // batch)
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
        "hidden": [Items(Interval(Integral, 1, None, closed="left")), Interval(Integral, 1, None, closed="left")],
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

    def _build(self, X, n_classes, steps: int = 1, moments=None):
        from ..runtime import import_keras

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

    def _load_model(self, d: Path):
        from ..runtime import import_keras

        keras = import_keras()
        self.model_ = keras.saving.load_model(d / "model.keras", safe_mode=True, compile=False)
        hist = d / "history.json"
        self.history_ = json.loads(hist.read_text()) if hist.exists() else {}
