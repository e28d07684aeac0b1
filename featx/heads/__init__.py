"""Heads: classifiers trained on cached features, as scikit-learn estimators.

- :class:`DenseHead` (:mod:`.dense`): Keras Normalization -> [Dense -> BatchNorm -> ReLU -> Dropout]* -> softmax;
- :class:`LogisticHead` (:mod:`.logreg`): standardised features, scikit-learn logistic regression;
- :class:`LightGBMHead` (:mod:`.lightgbm`): gradient-boosted trees with early stopping.

Each follows the estimator contract of :mod:`.base` (``fit`` returns self,
learned attributes end in ``_``, ``classes_``) and saves to a directory that
never holds a pickle: Keras ``.keras``, NPZ arrays, LightGBM's own text
model (:mod:`.storage`, docs/head-format.md). Loading runs no code from the
files. :mod:`.registry` makes and loads heads by kind name.

``KINDS`` costs no import: the CLI takes its ``--head`` choices from it.
Everything else loads on first use, so ``from featx.heads import KINDS``
imports neither scikit-learn nor Keras.
"""

from ..lazy import lazy_names

# The head kinds, in the registry's order (featx.heads.registry.HEADS; tested).
KINDS = ("dense", "logreg", "lightgbm")

_LAZY = {
    "_Head": "base", "_class_weights": "base", "_SHARED_CONSTRAINTS": "base", "align_proba": "base",
    "one_blas_thread": "base",
    "HEAD_FILES": "storage", "read_manifest": "storage",
    "DenseHead": "dense", "MIN_DELTA": "dense", "_best_epoch": "dense",
    "LogisticHead": "logreg", "C_GRID": "logreg", "CHUNKED_SOLVER_VALUES": "logreg", "WARM_START_ROWS": "logreg",
    "LightGBMHead": "lightgbm", "PCA_FIT_ROWS": "lightgbm",
    "HEADS": "registry", "head_class": "registry", "make_head": "registry", "load_head": "registry",
}
_MODULES = ("base", "storage", "dense", "logreg", "lightgbm", "registry")

__all__ = sorted(["KINDS", *(n for n in _LAZY if not n.startswith("_"))])


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY, _MODULES)
