"""The ``--head auto`` search: head kind x feature set x normalisation, in two stages, and its leaderboard."""

from __future__ import annotations

import itertools
import time
from typing import Sequence

import numpy as np

from .grid import select
from .protocols import Protocol
from .trials import Trial, _short, evaluate

# Normalisations worth trying per head kind: the logistic and dense heads
# standardise internally, so "standard" would repeat "none" for them.
AUTO_NORMS = {"logreg": ("none", "l2", "sqrt-l2"), "dense": ("none", "sqrt-l2"), "lightgbm": ("none", "sqrt-l2")}


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
    from ..outputs import text_table

    return text_table([[r.get(c, "") for c in columns] for r in rows], columns)
