"""Model selection for heads: which hyper-parameters, features and normalisation.

Two protocols, one code path. A :class:`Protocol` is a list of (fit rows,
score rows) pairs over the training matrix:

- ``cv``: stratified K folds of train (K=5 by default, fewer when a class has
  fewer than K images, an error below 2). Each configuration is fitted K
  times and scored on the held-out fold; the best mean accuracy wins and is
  then refitted on all of train (scikit-learn's ``GridSearchCV(refit=True)``
  convention), with the early-stopped epochs or trees averaged over folds.
  No image is set aside for good.
- ``val``: one pair, train -> val (the data's own val split, or a stratified
  split of train). The winner is the model fitted on train, or with
  ``refit_all`` the same configuration refitted on train + val.

Dense and LightGBM heads stop early on an inner split of each pair's fit
rows (:func:`early_stopping_split`: 10% of them, stratified, at most
``EARLY_STOP_MAX_ROWS``), never on the rows they are scored on: a score that
also chose the epoch or the tree count would flatter them against the
logistic head, whose only choice (C) is the one every kind makes on the
score rows. With the ``val`` protocol ``fit-head`` then refits the chosen
configuration on all of train with the epochs or trees it stopped at. The normalisation statistics (``standard``) and
the logistic head's standardisation are learnt per fit, on fit rows only.

:func:`search` runs the ``--head auto`` search: head kind x feature set x
normalisation, by the same protocol, in two stages (see its docstring).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import HeadError
from .features import take_rows
from .heads import C_GRID, make_head, one_blas_thread
from .normalise import normalise, normaliser_stats

# The dense head's documented search, in the order it is tried (defaults first);
# configurations beyond the time budget are left out and named in the report.
DENSE_GRID = tuple(
    {"hidden": h, "dropout": d, "lr": lr}
    for h, d, lr in itertools.product([(256,), (512, 128)], [0.5, 0.3], [1e-3, 3e-4])
)
DENSE_BUDGET_S = 20.0
# The default selection runs the dense head's K folds + refit when fold 1
# shows they fit in this many budgets (40 s by default), else it chooses on fold 1.
CV_BUDGETS = 2
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
# standardise internally, so "standard" would repeat "none" for them.
AUTO_NORMS = {"logreg": ("none", "l2", "sqrt-l2"), "dense": ("none", "sqrt-l2"), "lightgbm": ("none", "sqrt-l2")}


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


def _logreg_path(X: np.ndarray, y: np.ndarray, protocol: Protocol, Cs: Sequence[float], params: dict) -> list[list]:
    """Accuracy per C per pair, fitting each pair's C values in increasing order, each from the last solution.

    The same models as ``LogisticHead(C=c, **params)`` (to the solver's
    tolerance), several times faster on wide features: a weakly regularised
    fit started from the strongly regularised one needs few iterations.
    """
    from sklearn.linear_model import LogisticRegression

    norm = params.get("normalise", "none")
    scores = [[] for _ in Cs]
    for fit_rows, score_rows in protocol.pairs:
        Xf, Xs = X[fit_rows], X[score_rows]
        stats = normaliser_stats(Xf, norm)
        Xf, Xs = normalise(Xf, norm, stats), normalise(Xs, norm, stats)
        mean, scale = Xf.mean(axis=0).astype(np.float64), Xf.std(axis=0).astype(np.float64)
        scale[scale < 1e-12] = 1.0
        Xf, Xs = (Xf - mean) / scale, (Xs - mean) / scale
        model = LogisticRegression(max_iter=params.get("max_iter", 2000), class_weight=params.get("class_weight"),
                                   random_state=params.get("seed", 0), warm_start=True)
        for i in np.argsort(Cs):
            model.set_params(C=Cs[i]).fit(Xf, y[fit_rows])
            scores[i].append(float((model.predict(Xs) == y[score_rows]).mean()))
    return scores


def grid_for(kind: str, fixed: dict) -> list[dict]:
    """Configurations to try: the search of ``kind`` over what ``fixed`` leaves open."""
    if kind == "logreg":
        grid = [{"C": c} for c in C_GRID]
    elif kind == "dense":
        grid = [dict(g) for g in DENSE_GRID]
    else:
        grid = [{}]
    out = []
    for g in grid:
        cfg = {**g, **{k: v for k, v in fixed.items() if v is not None}}
        if cfg not in out:
            out.append(cfg)
    return out


def select(kind: str, X: np.ndarray, y: np.ndarray, protocol: Protocol, fixed: dict, features: str = "",
           budget_s: float | None = None, log=None, holdout_ok: bool = False) -> tuple[Trial, list[Trial]]:
    """Score every configuration of :func:`grid_for` and return the best with all trials.

    Ties go to the configuration tried first (the defaults, the smallest C).
    The dense head's grid stops at ``budget_s`` (``DENSE_BUDGET_S`` by
    default); the configurations left out are returned marked as skipped.

    With ``holdout_ok`` (the default selection, not an explicit ``cv``), a
    dense head whose first fold shows that K folds and the refit would take
    more than ``CV_BUDGETS * budget_s`` is chosen on that fold instead: the fold's
    held-out rows become a validation split and the fold model is kept, as
    the ``val`` protocol does. ``best.holdout`` is then the (fit rows,
    validation rows) pair, else None.
    """
    if kind == "logreg" and fixed.get("C") is None:
        t = time.perf_counter()
        grid = grid_for(kind, fixed)
        with one_blas_thread():
            per_c = _logreg_path(X, y, protocol, [g["C"] for g in grid], fixed)
        seconds = (time.perf_counter() - t) / len(grid)
        trials = [Trial(kind, g, features, scores=sc, seconds=seconds, chosen={"C": g["C"]}) for g, sc in zip(grid, per_c)]
        best = max(trials, key=lambda tr: (round(tr.mean, 10), -trials.index(tr)))
        if log:
            for tr in trials:
                log(f"  logreg C={tr.params['C']} {fixed.get('normalise', 'none')}: {tr.score_text}")
        if protocol.kind == "val":
            best.estimator = evaluate(kind, X, y, protocol, best.params, features, keep_estimator=True).estimator
        return best, trials
    if budget_s is None and kind == "dense":
        budget_s = DENSE_BUDGET_S
    trials: list[Trial] = []
    grid = grid_for(kind, fixed)
    start = time.perf_counter()
    holdout, first = None, None
    if holdout_ok and kind == "dense" and protocol.kind == "cv" and budget_s is not None:
        # fold 1 of the defaults tells what the full CV and refit would cost
        first = evaluate(kind, X, y, Protocol("val", protocol.pairs[:1], protocol.seed), grid[0], features,
                         keep_estimator=True)
        projected = first.seconds * (len(protocol.pairs) + 1)
        if projected > CV_BUDGETS * budget_s:
            first.note = (f"fold 1 of {len(protocol.pairs)} only: CV + refit would take "
                          f"~{projected:.0f}s, over {CV_BUDGETS} x the {budget_s:.0f}s budget")
            holdout = protocol.pairs[0]
            protocol = Protocol("val", [holdout], protocol.seed)
    for i, cfg in enumerate(grid):
        if i == 0 and first is not None:  # fold 1 is fitted: kept as it is, or the CV goes on from it
            trial = first if holdout is not None else evaluate(kind, X, y, protocol, cfg, features, start=first)
        else:
            # the next fit is expected to cost what the last one fitted did (a skipped trial cost nothing)
            last = max((t.seconds for t in trials if t.scores), default=0.0)
            used = time.perf_counter() - start
            if trials and budget_s is not None and used + last > budget_s:
                trials.append(Trial(kind, cfg, features, skipped=f"time budget {budget_s:.0f}s: not fitted, {used:.0f}s "
                                                                 f"used and the last fit took {last:.0f}s"))
                continue
            deadline = start + budget_s if trials and budget_s is not None else None
            trial = evaluate(kind, X, y, protocol, cfg, features, keep_estimator=protocol.kind == "val",
                             deadline=deadline)
        trials.append(trial)
        if log:
            log(f"  {kind} {_short(cfg) or 'defaults'} {cfg.get('normalise', 'none')}: "
                f"{trial.score_text} ({trial.seconds:.1f}s)" + (f"; {trial.note}" if trial.note else ""))
    done = [t for t in trials if t.scores]
    best = max(done, key=lambda t: (round(t.mean, 10), -done.index(t)))
    best.holdout = holdout
    best.holdout_note = trials[0].note if holdout is not None else ""
    return best, trials


def search(
    feature_sets: dict[str, np.ndarray],
    y: np.ndarray,
    protocol: Protocol,
    kinds: Sequence[str] = ("logreg", "lightgbm", "dense"),
    base: dict | None = None,
    budget_s: float = 90.0,
    finalists: int = 2,
    log=None,
) -> list[Trial]:
    """The ``--head auto`` search; trials ranked best first.

    Stage 1 screens the logistic head (C searched) on every feature set x
    normalisation: it is cheap and a good guide to which features carry the
    signal. With K folds the screen uses the first fold only, and the
    ``finalists`` best pairs are then scored on all K (screen rows rank
    after fully scored ones and are never chosen). Stage 2 scores the other kinds (default hyper-parameters,
    early-stopped on an inner split of the fit rows) on the ``finalists``
    best feature set x normalisation pairs of stage 1, best pair first for
    every kind, until ``budget_s`` seconds from the start of the search.
    Stage 1 always completes, and so does each kind's first candidate (on
    the best pair), past the budget if need be, with a note saying so: a
    kind left out because others spent the budget would never be in the
    running. Other trials still running at the budget stop, and what is left
    out is listed as skipped. Every score comes from the same ``protocol``.
    """
    base = dict(base or {})
    start = time.perf_counter()
    trials: list[Trial] = []
    stage1 = []
    first = "logreg" if "logreg" in kinds else kinds[0]
    screen = Protocol(protocol.kind, protocol.pairs[:1], protocol.seed)
    for name, X in feature_sets.items():
        for norm in AUTO_NORMS[first]:
            best, tried = select(first, X, y, screen, {**base, "normalise": norm}, name)
            best.screen = len(protocol.pairs) > 1
            stage1.append(best)
            if log:
                log(f"{name} {first} {norm}: {best.mean:.4f} ({_short(best.chosen)}{', fold 1' if best.screen else ''})")
    ranked = sorted(stage1, key=lambda t: -t.mean)
    pairs = []
    for t in ranked:
        if (t.features, t.normalise) not in pairs:
            pairs.append((t.features, t.normalise))
    if len(protocol.pairs) > 1:  # the finalists of the screen, by the whole protocol
        for t in ranked[:finalists]:
            best, _ = select(first, feature_sets[t.features], y, protocol, {**base, "normalise": t.normalise}, t.features)
            trials.append(best)
            if log:
                log(f"{t.features} {first} {t.normalise}: {best.score_text} ({_short(best.chosen)})")
    trials += stage1
    # Pair-major order: every kind's candidate on the best pair before any kind's second.
    queue, done = [], set()
    for name, norm in pairs[:finalists]:
        for kind in (k for k in kinds if k != first):
            norm_k = norm if norm in AUTO_NORMS[kind] else "none"
            if (kind, name, norm_k) not in done:
                done.add((kind, name, norm_k))
                queue.append((kind, name, norm_k))
    scored_kinds = set()
    for kind, name, norm in queue:
        cfg = {**base, "normalise": norm}
        first_of_kind = kind not in scored_kinds
        used = time.perf_counter() - start
        if used > budget_s and not first_of_kind:
            trials.append(Trial(kind, cfg, name, skipped=f"time budget {budget_s:.0f}s: not fitted, {used:.0f}s used"))
            continue
        # A kind's first candidate is scored in full even past the budget: else a budget
        # spent by the screen and the kinds tried before it would crown them unopposed.
        trial = evaluate(kind, feature_sets[name], y, protocol, cfg, name, keep_estimator=protocol.kind == "val",
                         deadline=None if first_of_kind else start + budget_s)
        if first_of_kind and time.perf_counter() - start > budget_s:
            trial.note = f"past the {budget_s:.0f}s budget: each head kind is scored once"
        if trial.scores:
            scored_kinds.add(kind)
        trials.append(trial)
        if log and trial.scores:
            log(f"{name} {kind} {norm}: {trial.score_text} ({trial.seconds:.1f}s)")
    return sorted(trials, key=lambda t: (not t.scores, t.screen, -t.mean if t.scores else 0))


def feature_set_names(names: Sequence[str], max_sets: int = 16) -> list[tuple[str, ...]]:
    """Single extractions, then every combination of them in the given order (largest first cut off)."""
    sets = [(n,) for n in names]
    for r in range(2, len(names) + 1):
        for combo in itertools.combinations(names, r):
            if len(sets) < max_sets:
                sets.append(combo)
    return sets


def leaderboard_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain text table (``featx compare`` and ``fit-head --head auto`` print the same one)."""
    from .outputs import text_table

    return text_table([[r.get(c, "") for c in columns] for r in rows], columns)


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
