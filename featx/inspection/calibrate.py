"""Calibration: the expected calibration error of a head (or of the out-of-fold probabilities), and the temperature that fixes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import HeadError
from ..features import Features
from . import limits


def _eval_rows(f: Features, prefer_test: bool = True) -> tuple[np.ndarray, str]:
    for s in (("test", "val") if prefer_test else ("val", "test")):
        rows = np.flatnonzero((f.split == s) & (f.y >= 0))
        if len(rows):
            return rows, s
    return np.zeros(0, int), ""


def _head_proba(f: Features, head, notes: list, home=None) -> tuple[np.ndarray, np.ndarray, str, str, float | None] | None:
    """The head's probabilities on test (or a real val split), if a usable head is there."""
    from ..heads import align_proba, load_head, read_manifest
    from ..outputs import latest_head

    if head is False:
        return None
    if head is None:
        try:
            head = latest_head(home)
        except HeadError:
            return None
    head = Path(head)
    man = read_manifest(head)
    if man.get("extraction") != f.extraction.name:
        notes.append(f"calibration: head {head} was fitted on {man.get('extraction')}, not {f.extraction.name}; "
                     "using out-of-fold probabilities")
        return None
    if man.get("kind") == "dense":
        notes.append(f"calibration: {head} is a dense (Keras) head and inspect builds no Keras model; "
                     "using out-of-fold probabilities")
        return None
    rows, where = _eval_rows(f)
    if where == "val" and man.get("val_from") != "val split":
        rows, where = np.zeros(0, int), ""
    if not len(rows):
        notes.append(f"calibration: no held-out split to score head {head} on; using out-of-fold probabilities")
        return None
    if len(rows) > limits.BUDGET_EVAL_ROWS:
        notes.append(f"calibration: head {head.name} scored on {limits.BUDGET_EVAL_ROWS} of {len(rows)} {where} images, "
                     "drawn at random")
        rows = np.sort(np.random.default_rng(0).choice(rows, limits.BUDGET_EVAL_ROWS, replace=False))
    est = load_head(head)
    proba = align_proba(est, est.predict_proba(np.asarray(f.X[rows], dtype=np.float32)), f.class_names)
    return rows, proba, f"head {head.name}", where, man.get("temperature")


def check_calibration(f: Features, oof: np.ndarray, head=None, notes: list | None = None, home=None):
    """ECE of a head on held-out rows (or of the out-of-fold probabilities), and the temperature that fixes it."""
    from ..calibration import apply_temperature, expected_calibration_error, fit_temperature

    notes = notes if notes is not None else []
    got = _head_proba(f, head, notes, home)
    stored_t = None
    if got is None:
        rows = np.flatnonzero(f.y >= 0)
        proba, source, where = oof[rows], "out-of-fold logistic regression", "all labelled images"
    else:
        rows, proba, source, where, stored_t = got
        if stored_t:
            proba = apply_temperature(proba, stored_t)
            source += f" (its temperature {stored_t:.3g} applied)"
    y = f.y[rows]
    T = fit_temperature(proba, y)
    after = apply_temperature(proba, T)
    section = {
        "source": source, "evaluated_on": where, "n": int(len(rows)), "bins": 15,
        "ece": expected_calibration_error(proba, y), "temperature": T,
        "ece_after": expected_calibration_error(after, y), "head_temperature": stored_t,
        "accuracy": float((proba.argmax(axis=1) == y).mean()),
        "note": "the temperature is fitted on the same rows it is scored on; `featx fit-head --calibrate` fits it on val",
    }
    return section, (proba, after, y)
