"""The label budget: accuracy against labelled images per class, several random draws each."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..features import Features
from . import limits
from .labels import logreg, stratified_draw
from .limits import BUDGETS


def label_budget(f: Features, Z: np.ndarray, *, seeds: int = 3, seed: int = 0,
                 budgets: Sequence[int] = BUDGETS, notes: list | None = None,
                 max_fit: int | None = None, max_eval: int | None = None) -> dict:
    """Accuracy against labelled images per class, over ``seeds`` random draws per budget.

    Trained on train and scored on val + test; without those, on a stratified
    quarter held out of the labelled images. Past ``max_fit`` training rows
    (all classes together) the curve stops at the largest budget that fits,
    drawn from all of train; past ``max_eval`` it is scored on a stratified
    draw of the held-out rows. ``notes`` says when either happened.
    """
    max_fit = limits.BUDGET_FIT_ROWS if max_fit is None else max_fit
    max_eval = limits.BUDGET_EVAL_ROWS if max_eval is None else max_eval
    notes = notes if notes is not None else []
    labeled = f.y >= 0
    pool = np.flatnonzero(labeled & (f.split == "train"))
    held = np.flatnonzero(labeled & (f.split != "train"))
    where = "+".join(s for s in ("val", "test") if ((f.split == s) & labeled).any())
    if len(pool) == 0 or len(held) == 0 or len(np.unique(f.y[pool])) < 2:
        from sklearn.model_selection import train_test_split

        rows = np.flatnonzero(labeled)
        n_classes = len(np.unique(f.y[rows]))
        n_held = max(int(0.25 * len(rows)), n_classes)
        pool, held = train_test_split(rows, test_size=n_held, random_state=seed, stratify=f.y[rows])
        where = "a stratified 25% held out of the labelled images"
    n_held = len(held)
    if max_eval and len(held) > max_eval:
        held = stratified_draw(held, f.y[held], max_eval, seed)
    y_pool = f.y[pool]
    by_class = [pool[y_pool == c] for c in np.unique(y_pool)]
    largest = max(len(r) for r in by_class)
    cap = largest
    while max_fit and cap > 1 and sum(min(len(r), cap) for r in by_class) > max_fit:
        cap = max([b for b in budgets if b < cap] or [1])
    steps = [b for b in budgets if b < cap] + [cap]
    said = ([f"curve stops at {cap} images per class (at most {max_fit} training rows; the largest class has "
             f"{largest}), so its last point is not all of train"] if cap < largest else []) + \
        ([f"scored on {len(held)} of {n_held} held-out images (a stratified random draw)"] if len(held) < n_held else [])
    if said:
        notes.append("label budget: " + "; ".join(said))
    points, raw = [], []
    for b in steps:
        is_all = b == largest
        accs = []
        for s in range(1 if is_all else seeds):
            rng = np.random.default_rng(seed + 1000 * s + b)
            take = np.concatenate([r if len(r) <= b else rng.choice(r, b, replace=False) for r in by_class])
            m = logreg(seed).fit(Z[take], f.y[take])
            acc = float((m.predict(Z[held]) == f.y[held]).mean())
            accs.append(acc)
            raw.append({"per_class": b, "seed": s, "n_train": int(len(take)), "accuracy": round(acc, 5)})
        points.append({"per_class": b, "all": is_all, "n_train": int(sum(min(len(r), b) for r in by_class)),
                       "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                       "min": float(np.min(accs)), "max": float(np.max(accs))})
    return {"evaluated_on": where, "n_eval": int(len(held)), "n_held_out": int(n_held), "points": points, "runs": raw,
            "verdict": _budget_verdict(points)}


def _budget_verdict(points: list[dict]) -> str:
    last = points[-1]
    if len(points) < 2:
        return f"accuracy {last['mean']:.3f} with all {last['per_class']} images per class"
    prev = points[-2]
    gain = 100 * (last["mean"] - prev["mean"])
    head = (f"accuracy {prev['mean']:.3f} at {prev['per_class']} -> {last['mean']:.3f} at {last['per_class']} "
            f"images per class{' (all)' if last['all'] else ''}, {gain:+.1f} points")
    if gain >= 1.0:
        return head + ": still rising, more labels would probably help"
    return head + ": flat, more labels of the same kind are unlikely to help much"
