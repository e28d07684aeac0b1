"""The numbers that decide what ``featx inspect`` computes exactly and what it approximates or subsamples.

Everything is decided by row counts; every departure from exact
computation is written in the report's notes (docs/inspect.md, "Scaling").
Modules read these through the module (``limits.BLOCK_ROWS``), so that a
test can lower them with ``monkeypatch.setattr(limits, ...)``.
"""

NEAR_THRESHOLD = 0.95
"""Cosine similarity of standardised, L2-normalised features at or above which two images are surely near duplicates.

Measured with the VGG16 HED weights at 128 px on hymenoptera: half-size and
quality-60 copies score 0.99 to 1.0, distinct photos up to 0.96. Copies that
the features move more (mirror images, crops, colour jitter) are found by the
neighbourhood rule of :class:`NearRule` instead (docs/inspect.md)."""

BRUTE_FORCE_LIMIT = 20_000
"""Distinct images up to which near duplicates are searched exactly, on all dimensions (n^2 x width
multiply-adds: 8e11 at 20,000 x 2,048). Past it, an approximate index over principal components."""
INDEX_CELL_ROWS = 512
INDEX_PROBES = 8
"""The approximate index (:func:`featx.inspection.index.knn`): cells of about ``INDEX_CELL_ROWS`` rows
whatever n is; each row is compared with the rows of its ``INDEX_PROBES`` nearest cells (4,096 rows;
the search costs the same per image at any n). At 100k rows of 256 components this finds the true
nearest neighbour 93.7% of the time, where faiss IVF-HNSW found it 85.7% of the time for 6.5 times the
CPU; fewer probes or half the components lost 6 to 8 points for little CPU (docs/inspect.md)."""
RESCORE_MARGIN = 0.05
BLOCK_ROWS = 16_384
"""Rows read from the cache at a time past ``IN_MEMORY_ROWS`` (128 MB at 2,048 wide)."""
IN_MEMORY_ROWS = 50_000
"""Views up to this many rows are loaded whole; larger ones are read in blocks of ``BLOCK_ROWS``."""
PCA_FIT_ROWS = 20_000
"""Rows the shared projection is fitted on; larger data is projected in blocks."""
LABEL_FIT_ROWS = 50_000
"""Rows each K-fold model of the label checks is trained on, at most (every labelled row is still scored)."""
BUDGET_FIT_ROWS = 20_000
BUDGET_EVAL_ROWS = 20_000
"""The budget curve trains on at most ``BUDGET_FIT_ROWS`` rows (all classes) and scores on at most
``BUDGET_EVAL_ROWS``; the head's calibration is scored on at most ``BUDGET_EVAL_ROWS`` held-out rows."""
MAX_NEAR_PAIRS = 10_000
MIN_PER_CLASS = 3
MAP_MAX_POINTS = 20_000
PCA_DIMS = 256
BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
LEAKY = ("train-val", "train-test")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "": 3}
DEFAULT_INSPECT_DIR = "inspect"
DUPLICATE_COLUMNS = ("kind", "rule", "similarity", "ratio", "cross_split", "label_conflict", "path_a", "split_a",
                     "label_a", "path_b", "split_b", "label_b")

NEIGHBOURS = 10
"""Neighbours kept per image for the neighbourhood rule (and per query of the approximate index)."""
