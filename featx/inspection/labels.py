"""Likely label errors: out-of-fold probabilities of a logistic regression, flagged by confident learning."""

from __future__ import annotations

import numpy as np

from ..features import Features
from . import limits
from .report import rel_path


def logreg(seed: int):
    from sklearn.linear_model import LogisticRegression

    # C is modest on purpose: a few hundred standardised components and
    # labels that may be wrong; strong fits would memorise the errors.
    return LogisticRegression(C=0.2, max_iter=300, random_state=seed)


def out_of_fold_proba(Z: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0,
                      max_fit: int | None = None) -> np.ndarray:
    """Probabilities for each row from a logistic regression that never saw it (stratified K-fold).

    With ``max_fit``, each fold's model is trained on at most that many of
    the other folds' rows (a stratified random draw); every row is still scored.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    proba = np.zeros((len(y), n_classes))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        if max_fit and len(tr) > max_fit:
            tr = stratified_draw(tr, y[tr], max_fit, seed)
        m = logreg(seed).fit(Z[tr], y[tr])
        proba[np.ix_(te, m.classes_)] = m.predict_proba(Z[te])
    return proba


def stratified_draw(rows: np.ndarray, y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` of ``rows``, drawn at random in proportion to their classes (each class kept)."""
    from sklearn.model_selection import train_test_split

    if size >= len(rows):
        return rows
    try:
        take, _ = train_test_split(rows, train_size=size, random_state=seed, stratify=y)
    except ValueError:  # a class too small to stratify
        take = np.random.default_rng(seed).choice(rows, size, replace=False)
    return np.sort(take)


def _cleanlab():
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        return None
    return cleanlab


def label_issue_scores(labels: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Confident learning: (flagged mask, label quality score, method) for each row.

    The score is the self-confidence, the out-of-fold probability of the
    given label (low = suspect). A row is flagged when some other class
    clears that class's threshold (the mean probability its own images give
    it) and beats the given one: cleanlab's ``filter_by="confident_learning"``,
    which is used when installed.
    """
    cl = _cleanlab()
    if cl is not None:
        flagged = cl.filter.find_label_issues(labels, proba, filter_by="confident_learning", n_jobs=1)
        score = cl.rank.get_label_quality_scores(labels, proba, method="self_confidence")
        return np.asarray(flagged, bool), np.asarray(score, float), "cleanlab confident learning"
    k = proba.shape[1]
    score = proba[np.arange(len(labels)), labels]
    thresholds = np.array([proba[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = proba >= thresholds - 1e-6
    confident = np.where(above, proba, -1.0).argmax(axis=1)
    flagged = above.any(axis=1) & (confident != labels)
    return flagged, score, "confident learning (self-confidence)"


def find_label_issues(f: Features, Z: np.ndarray, *, folds: int = 5, seed: int = 0, notes: list | None = None,
                      max_fit: int | None = None):
    """Likely label errors among the labelled rows; returns (section, OOF probabilities, ranking)."""
    rows = np.flatnonzero(f.y >= 0)
    y = f.y[rows]
    max_fit = limits.LABEL_FIT_ROWS if max_fit is None else max_fit
    proba = out_of_fold_proba(Z[rows], y, len(f.class_names), folds, seed, max_fit=max_fit)
    used = min(folds, int(np.bincount(y)[np.unique(y)].min()))
    notes = notes if notes is not None else []
    if used < folds:
        notes.append(f"label checks used {used} folds: the smallest class has only {used} labelled images")
    fitted = int(len(rows) * (used - 1) / used)
    if max_fit and fitted > max_fit:
        notes.append(f"label checks: each of the {used} fold models trained on {max_fit} of the {fitted} rows "
                     f"of the other folds (a stratified random draw); all {len(rows)} labelled images scored")
    flagged, score, method = label_issue_scores(y, proba)
    suggested = proba.argmax(axis=1)
    order = np.lexsort((np.arange(len(y)), score))  # most suspect first
    suspects = [
        {"path": str(f.paths[rows[i]]), "rel": rel_path(f, str(f.paths[rows[i]])), "split": str(f.split[rows[i]]),
         "given": f.class_names[y[i]], "suggested": f.class_names[suggested[i]], "score": round(float(score[i]), 5),
         "row": int(rows[i])}
        for i in order if flagged[i]
    ]
    section = {
        "method": method, "folds": used, "n_labeled": int(len(rows)), "n_flagged": len(suspects),
        "fit_rows_per_fold": min(fitted, max_fit) if max_fit else fitted,
        "oof_accuracy": float((suggested == y).mean()), "suspects": suspects, "top": suspects[:20],
    }
    oof = np.full((len(f), len(f.class_names)), np.nan)
    oof[rows] = proba
    return section, oof, rows[order]
