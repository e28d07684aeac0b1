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

:func:`select` (:mod:`.grid`) scores one head kind's configurations by a
protocol; :func:`search` (:mod:`.auto`) runs the ``--head auto`` search:
head kind x feature set x normalisation, by the same protocol, in two stages
(see its docstring).

- :mod:`.protocols`: the protocols, early-stopping splits, subsamples and the manifest's ``selection`` record;
- :mod:`.trials`: one configuration fitted and scored by a protocol (:class:`Trial`, :func:`evaluate`);
- :mod:`.grid`: a kind's grid of configurations, under a time budget (:func:`select`);
- :mod:`.auto`: the ``--head auto`` search and the leaderboard.
"""

from .auto import AUTO_NORMS, feature_set_names, leaderboard_table, search
from .grid import CV_BUDGETS, DENSE_BUDGET_S, DENSE_GRID, grid_for, select
from .protocols import (
    DEFAULT_FOLDS,
    EARLY_STOP_FRACTION,
    EARLY_STOP_MAX_ROWS,
    EARLY_STOPPING_KINDS,
    SCALE_ROWS,
    SELECT_ROWS,
    Protocol,
    cv_protocol,
    early_stopping_split,
    heads_split_record,
    stratified_subsample,
    val_protocol,
)
from .trials import Trial, evaluate, fit_for_scoring, refit_counts

__all__ = [
    "AUTO_NORMS", "CV_BUDGETS", "DEFAULT_FOLDS", "DENSE_BUDGET_S", "DENSE_GRID", "EARLY_STOPPING_KINDS",
    "EARLY_STOP_FRACTION", "EARLY_STOP_MAX_ROWS", "SCALE_ROWS", "SELECT_ROWS", "Protocol", "Trial", "cv_protocol",
    "early_stopping_split", "evaluate", "feature_set_names", "fit_for_scoring", "grid_for", "heads_split_record",
    "leaderboard_table", "refit_counts", "search", "select", "stratified_subsample", "val_protocol",
]
