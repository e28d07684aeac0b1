"""One configuration of a head, fitted on each pair of a protocol and scored on its held-out rows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..features import take_rows
from ..heads.registry import make_head
from .protocols import EARLY_STOPPING_KINDS, Protocol, early_stopping_split


def fit_for_scoring(kind: str, params: dict, X, y, fit_rows: np.ndarray, seed: int = 0):
    """A head fitted on ``fit_rows``; the early-stopping kinds stop on an inner split of them.

    ``X`` may be :class:`~featx.features.CachedRows`: the heads then read
    (or, the dense head, stream) only the rows they are given. Returns the
    estimator and the rows it stopped early on (None without).
    """
    inner = early_stopping_split(y[fit_rows], seed) if kind in EARLY_STOPPING_KINDS else None
    if inner is None:
        return make_head(kind, **params).fit(take_rows(X, fit_rows), y[fit_rows]), None
    fit, stop = fit_rows[inner[0]], fit_rows[inner[1]]
    return make_head(kind, **params).fit(take_rows(X, fit), y[fit], eval_set=(take_rows(X, stop), y[stop])), stop


@dataclass
class Trial:
    """One configuration scored by a protocol."""

    kind: str
    params: dict
    features: str = ""
    scores: list = field(default_factory=list)
    seconds: float = 0.0
    chosen: dict = field(default_factory=dict)
    skipped: str = ""
    estimator: object = None
    screen: bool = False
    holdout: tuple | None = None
    holdout_note: str = ""
    note: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.scores)) if len(self.scores) > 1 else 0.0

    @property
    def score_text(self) -> str:
        """``0.7059`` for a single score (a val split), ``0.7412 +- 0.0310`` over several (CV folds)."""
        return f"{self.mean:.4f}" + (f" +- {self.std:.4f}" if len(self.scores) > 1 else "")

    @property
    def normalise(self) -> str:
        return self.params.get("normalise", "none")

    def row(self, protocol: str = "cv") -> dict:
        """A leaderboard row; the score is ``cv_acc`` (and ``cv_std``) or ``val_acc``."""
        row = {"features": self.features, "normalise": self.normalise, "head": self.kind,
               "params": _short(self.chosen or self.params), f"{protocol}_acc": round(self.mean, 4) if self.scores else ""}
        if protocol == "cv":
            row["cv_std"] = round(self.std, 4) if len(self.scores) > 1 else ""
        fitted = self.scores or self.seconds  # a configuration skipped before any fit has no fit time
        row.update(fit_s=round(self.seconds, 2) if fitted else "", note=self.skipped or self.note or ("screen: fold 1 only" if self.screen else ""))
        return row


def _short(params: dict) -> str:
    keep = {k: v for k, v in params.items() if k in ("C", "hidden", "dropout", "lr", "epochs", "n_estimators")}
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in keep.items())


def refit_counts(ests: Sequence) -> dict:
    """The early-stopped size of a configuration, averaged over fits, to refit with."""
    kind = ests[0].kind
    if kind == "dense":
        return {"epochs": max(1, int(round(np.mean([e.best_epoch_ for e in ests]))))}
    if kind == "lightgbm":
        return {"n_estimators": max(1, int(round(np.mean([e.best_iteration_ for e in ests]))))}
    return {}


def evaluate(kind: str, X: np.ndarray, y: np.ndarray, protocol: Protocol, params: dict, features: str = "",
             keep_estimator: bool = False, deadline: float | None = None, start: Trial | None = None) -> Trial:
    """Fit ``kind(**params)`` on each pair's fit rows and score accuracy on its score rows.

    The dense and LightGBM heads stop early on an inner split of the fit
    rows (:func:`fit_for_scoring`), never on the score rows.

    Past ``deadline`` (a ``time.perf_counter()`` value) the remaining folds
    are not fitted and the trial comes back unscored, marked as skipped.
    ``start``, a trial of the same configuration on the first pair that kept
    its estimator, is continued from: that fit, score and time are reused.
    """
    trial = Trial(kind, dict(params), features)
    t = time.perf_counter() - (start.seconds if start else 0.0)
    ests = []
    if start is not None:
        trial.scores, ests = list(start.scores), [start.estimator]
    for fit_rows, score_rows in protocol.pairs[len(ests):]:
        if deadline is not None and ests and time.perf_counter() > deadline:
            trial.scores, trial.skipped = [], f"time budget (stopped after {len(ests)} of {len(protocol.pairs)} fits)"
            trial.seconds = time.perf_counter() - t
            return trial
        est, _ = fit_for_scoring(kind, params, X, y, np.asarray(fit_rows), protocol.seed)
        trial.scores.append(float((est.predict(X[score_rows]) == y[score_rows]).mean()))
        ests.append(est)
    trial.seconds = time.perf_counter() - t
    trial.chosen = {**{k: v for k, v in params.items() if k in ("C", "hidden", "dropout", "lr")}, **refit_counts(ests)}
    if keep_estimator and len(ests) == 1:
        trial.estimator = ests[0]
    return trial
