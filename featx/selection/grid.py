"""A head kind's grid of configurations, scored by one protocol under a time budget (:func:`select`)."""

from __future__ import annotations

import itertools
import time
from typing import Sequence

import numpy as np

from ..heads.base import one_blas_thread
from ..heads.logreg import C_GRID
from ..normalise import normalise, normaliser_stats
from .protocols import Protocol
from .trials import Trial, _short, evaluate

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
        return _select_logreg(X, y, protocol, fixed, features, log)
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
    best = _best([t for t in trials if t.scores])
    best.holdout = holdout
    best.holdout_note = trials[0].note if holdout is not None else ""
    return best, trials


def _select_logreg(X, y, protocol: Protocol, fixed: dict, features: str, log) -> tuple[Trial, list[Trial]]:
    """:func:`select` for the logistic head's C: every C of the grid on one warm-started path per pair."""
    t = time.perf_counter()
    grid = grid_for("logreg", fixed)
    with one_blas_thread():
        per_c = _logreg_path(X, y, protocol, [g["C"] for g in grid], fixed)
    seconds = (time.perf_counter() - t) / len(grid)
    trials = [Trial("logreg", g, features, scores=sc, seconds=seconds, chosen={"C": g["C"]})
              for g, sc in zip(grid, per_c)]
    best = _best(trials)
    if log:
        for tr in trials:
            log(f"  logreg C={tr.params['C']} {fixed.get('normalise', 'none')}: {tr.score_text}")
    if protocol.kind == "val":
        best.estimator = evaluate("logreg", X, y, protocol, best.params, features, keep_estimator=True).estimator
    return best, trials


def _best(trials: list[Trial]) -> Trial:
    """The best mean score; a tie goes to the trial tried first."""
    return max(trials, key=lambda t: (round(t.mean, 10), -trials.index(t)))
