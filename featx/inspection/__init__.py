"""Data checks on cached features: leakage, label errors, label budget, calibration, a map.

``featx inspect`` answers, from the feature cache alone:

- **duplicates**: exact copies (same sha256) and near copies (:class:`NearRule`),
  within a split and across splits; a pair across train and val/test is leakage;
- **label issues**: images whose out-of-fold predicted probabilities
  (stratified K-fold logistic regression) disagree confidently with their
  label, ranked by self-confidence (confident learning; cleanlab when installed);
- **label budget**: accuracy against labelled images per class, several seeds;
- **calibration**: expected calibration error and a reliability diagram, with
  the temperature that would fix it;
- **map**: a 2-D embedding (PCA, or UMAP when asked and installed) by class and split.

No image is decoded except the thumbnails of the contact sheets, and no
Keras model is built: nothing here imports Keras or TensorFlow.

The package is named ``inspection``, not ``inspect``, so that importing it
never replaces the function ``featx.inspect``. One module per concern:
:mod:`.run` (the entry point), :mod:`.rows` (reading and the shared
projection), :mod:`.duplicates`, :mod:`.near_rule`, :mod:`.index` (the
approximate neighbour search), :mod:`.labels`, :mod:`.budget`,
:mod:`.calibrate`, :mod:`.embedding` (the map), :mod:`.report`,
:mod:`.files` and :mod:`.plots`; :mod:`.limits` holds the row counts that
decide what is exact and what is subsampled.
"""

from .budget import label_budget
from .calibrate import check_calibration
from .duplicates import find_duplicates, near_pairs, unit_rows
from .labels import find_label_issues, label_issue_scores, out_of_fold_proba
from .limits import NEAR_THRESHOLD
from .near_rule import NearRule
from .report import InspectReport
from .run import inspect

__all__ = ["inspect", "InspectReport", "NearRule", "find_duplicates", "near_pairs", "unit_rows", "out_of_fold_proba",
           "find_label_issues", "label_issue_scores", "label_budget", "check_calibration", "NEAR_THRESHOLD"]
