"""Where selection scores come from: CV folds or a val split, the early-stopping split, subsamples, the record.

A :class:`Protocol` is a list of (fit rows, score rows) pairs over the
training matrix; ``fit-head`` records which one chose a head in the
manifest's ``selection`` entry (:func:`heads_split_record`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import HeadError

DEFAULT_FOLDS = 5

# The share of each fit set held out to stop the dense and LightGBM heads early,
# and its cap: 20,000 rows measure the validation loss well enough, and a larger
# set would only slow each epoch down at a million rows.
EARLY_STOP_FRACTION = 0.1
EARLY_STOP_MAX_ROWS = 20_000
EARLY_STOPPING_KINDS = ("dense", "lightgbm")

# From this many training rows `fit-head` selects on a stratified subsample of
# SELECT_ROWS of them (CV or val scores, the auto search), then refits the chosen
# configuration on every row: K folds x a grid of fits on a million rows would not
# finish. What the row count moves most, epochs and trees, is early-stopped again in
# the refit; C is taken as chosen at the subsample's size (not checked at scale).
SCALE_ROWS = 50_000
SELECT_ROWS = 20_000


def stratified_subsample(y_idx: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of about ``size`` rows, each class in proportion (at least 2 rows of each, where it has them)."""
    y_idx = np.asarray(y_idx)
    if len(y_idx) <= size:
        return np.arange(len(y_idx))
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y_idx):
        rows = np.flatnonzero(y_idx == c)
        take = min(len(rows), max(2, int(round(size * len(rows) / len(y_idx)))))
        out.append(rng.choice(rows, take, replace=False))
    return np.sort(np.concatenate(out))


# Normalisations worth trying per head kind: the logistic and dense heads

@dataclass
class Protocol:
    """Where selection scores come from: (fit rows, score rows) pairs of one matrix.

    Attributes
    ----------
    kind : {"cv", "val"}
    pairs : list of (ndarray, ndarray)
        Row indices to fit on and to score on.
    seed : int
    """

    kind: str
    pairs: list
    seed: int = 0

    @property
    def folds(self) -> int | None:
        return len(self.pairs) if self.kind == "cv" else None

    def describe(self) -> str:
        return f"{self.folds}-fold CV on train" if self.kind == "cv" else "the validation split"


def cv_protocol(y_idx: np.ndarray, class_names: Sequence[str], folds: int = DEFAULT_FOLDS, seed: int = 0) -> Protocol:
    """Stratified K folds; K is lowered to the smallest class's size (at least 2).

    Raises
    ------
    HeadError
        When a class has fewer than 2 training images: it cannot be both
        fitted and scored.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise HeadError(f"Cross-validation needs at least 2 folds. Received: folds={folds}")
    counts = np.bincount(y_idx, minlength=len(class_names))
    present = counts[counts > 0]
    small = [class_names[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        raise HeadError(
            f"Cross-validation needs at least 2 training images per class; {', '.join(small[:5])} "
            f"{'has' if len(small) == 1 else 'have'} 1. Add images, or provide a val/ split (--selection val)."
        )
    k = int(min(folds, present.min()))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return Protocol("cv", list(skf.split(np.zeros(len(y_idx)), y_idx)), seed)


def val_protocol(n_train: int, n_val: int, seed: int = 0) -> Protocol:
    """One pair: the first ``n_train`` rows are fitted, the next ``n_val`` scored."""
    return Protocol("val", [(np.arange(n_train), np.arange(n_train, n_train + n_val))], seed)


def early_stopping_split(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions in ``y`` to fit on and to stop early on, or None when there are too few rows.

    A stratified ``EARLY_STOP_FRACTION`` (at most ``EARLY_STOP_MAX_ROWS``,
    at least one row per class) is held out; a class with a single row
    stays in the fit part. Fewer than two rows per class and the head is
    fitted without early stopping (fixed epochs or trees).
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    classes, y_idx = np.unique(y, return_inverse=True)
    n_stop = min(max(int(round(EARLY_STOP_FRACTION * len(y))), len(classes)), EARLY_STOP_MAX_ROWS)
    counts = np.bincount(y_idx)
    if len(y) - n_stop < 2 * len(classes) or (counts >= 2).sum() < 2:
        return None
    pos = np.arange(len(y))
    alone = np.isin(y_idx, np.flatnonzero(counts < 2))  # single rows cannot be stratified: fitted on
    fit, stop = train_test_split(pos[~alone], test_size=n_stop, random_state=seed, stratify=y_idx[~alone])
    return np.sort(np.concatenate([fit, pos[alone]])), np.sort(stop)


def heads_split_record(
    protocol: str,
    *,
    train_sha256: Sequence[str],
    val_sha256: Sequence[str] | None = None,
    folds: int | None = None,
    seed: int = 0,
    val_split: float | None = None,
    refit_all: bool = False,
) -> dict:
    """The manifest's ``selection`` record: which rows a head was fitted and validated on.

    Parameters
    ----------
    protocol : {"cv", "val"}
    train_sha256 : the sha256 of the training rows (the CV folds are drawn from them)
    val_sha256 : the validation rows' sha256, when a val split was used
    folds, seed : the CV folds (``StratifiedKFold(folds, shuffle=True, random_state=seed)``
        over the training rows in dataset order), or the seed of a stratified val split
    val_split : the fraction of train held out for validation when featx made the split, else None
    refit_all : whether the final head was refitted on train + val

    Returns
    -------
    dict
        ``protocol, folds, seed, val_split, refit_all, train_sha256_count,
        train_sha256_digest`` (sha256 of the sorted training hashes joined by
        newlines) and, with a val split, ``val_sha256`` (sorted).
    """
    train = sorted(str(s) for s in train_sha256)
    rec = {
        "protocol": protocol,
        "folds": folds,
        "seed": int(seed),
        "val_split": val_split,
        "refit_all": bool(refit_all),
        "train_sha256_count": len(train),
        "train_sha256_digest": hashlib.sha256("\n".join(train).encode()).hexdigest(),
    }
    if val_sha256 is not None:
        rec["val_sha256"] = sorted(str(s) for s in val_sha256)
    return rec
