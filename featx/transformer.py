"""``featx.FeatureExtractor``: a scikit-learn transformer from images to cached backbone features.

>>> from sklearn.pipeline import make_pipeline
>>> from sklearn.linear_model import LogisticRegression
>>> pipe = make_pipeline(featx.FeatureExtractor(backbone="resnet50"), LogisticRegression(max_iter=2000))  # doctest: +SKIP
>>> GridSearchCV(pipe, {"logisticregression__C": [0.1, 1, 10]}, cv=5).fit(paths, labels)  # doctest: +SKIP

``transform`` runs :func:`featx.extract` on the images it is given and
reads their rows back from the featx cache, keyed by content exactly as
``featx extract`` keys them: the sha256 of a file's bytes, or of an array
row's pixels. So the folds of a grid search, a second search, and a
``featx extract`` of the same files all share one set of features; an image
that is already cached is never decoded and, when nothing is missing, no
model is built and no framework is imported. A file edited in place has new
bytes, so a new key, and is computed again.

The estimator stores only its parameters: the model is built inside
``transform`` when some image is not cached yet, so ``clone`` and ``pickle``
never touch a model.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .errors import BadImage, CacheError, FeatxValueError
from .params import Options, check_params

ON_BAD = ("raise", "nan")
# Normalisations that work row by row: a "standard" z-score would have to be
# learned in fit, which this transformer does not need (put a StandardScaler after it).
ROW_NORMALISATIONS = ("none", "l2", "sqrt-l2")


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Pooled backbone features of images, as a stateless scikit-learn transformer.

    Parameters
    ----------
    backbone : str, default="resnet50"
        Registry name (``featx backbones`` lists them).
    weights : "imagenet", "none" or path, default="imagenet"
        As in :func:`featx.extract`.
    image_size : int, optional
        Square input size; the backbone's native size by default.
    pooling : {"avg", "max"}, default="avg"
    cut_blocks : int, default=0
        Tap the backbone this many named blocks before its end.
    taps : list of int, optional
        Several taps from one forward pass; their features are concatenated
        in the order given (``get_feature_names_out`` says which is which).
    normalise : {"none", "l2", "sqrt-l2"}, default="none"
        Row-wise normalisation of the features (of each tap's block
        separately). A per-feature z-score is learned from data: put a
        ``StandardScaler`` after this transformer instead.
    batch_size, workers, precision, seed : optional
        As in :func:`featx.extract`.
    cache_dir : path, optional
        Cache root; ``$FEATX_CACHE_DIR`` or ``./cache`` (read at transform time).
    progress : bool, default=True
        Show a progress bar while images are computed (nothing is shown
        when every image is cached).
    on_bad : {"raise", "nan"}, default="raise"
        An image that cannot be read (missing, truncated, not an image):
        ``"raise"`` raises :class:`~featx.errors.BadImage` naming the bad
        files, after the good ones are cached; ``"nan"`` returns a row of
        NaN for each, so the rows stay aligned with ``y`` (drop them, or
        impute with ``SimpleImputer``). Rows are never silently dropped.

    Notes
    -----
    ``X`` is one of:

    - image paths: a list, a 1-D array, a pandas or Polars Series, or a
      one-column DataFrame (a ``ColumnTransformer`` column);
    - a uint8 image array ``(n, h, w, 3)`` or ``(n, h, w)`` (other integer
      and float arrays as :mod:`featx.arrays` reads them);
    - a list of PIL images, of any sizes.

    The output is a float32 array ``(n, d)``, one row per input in order
    (``set_output(transform="pandas")`` or ``"polars"`` for a data frame).
    ``fit`` learns nothing and returns ``self``.

    Examples
    --------
    >>> fx = featx.FeatureExtractor(backbone="mobilenetv3small", image_size=96)   # doctest: +SKIP
    >>> fx.fit_transform(["a.jpg", "b.png"]).shape                                # doctest: +SKIP
    (2, 576)
    >>> fx.get_feature_names_out()[:2]                                            # doctest: +SKIP
    array(['mobilenetv3small_0', 'mobilenetv3small_1'], dtype=object)
    """

    _parameter_constraints = {
        "on_bad": [Options(ON_BAD)],
        "normalise": [Options(ROW_NORMALISATIONS)],
    }

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        weights: str | os.PathLike | None = "imagenet",
        image_size: int | None = None,
        pooling: str = "avg",
        cut_blocks: int = 0,
        taps: Sequence[int] | None = None,
        normalise: str = "none",
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str = "auto",
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        on_bad: str = "raise",
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.pooling = pooling
        self.cut_blocks = cut_blocks
        self.taps = taps
        self.normalise = normalise
        self.batch_size = batch_size
        self.workers = workers
        self.precision = precision
        self.seed = seed
        self.cache_dir = cache_dir
        self.progress = progress
        self.on_bad = on_bad

    # -- the estimator contract
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.string = True  # image paths
        tags.input_tags.three_d_array = True  # (n, h, w) grayscale images
        tags.transformer_tags.preserves_dtype = []  # float32 out, whatever comes in
        return tags

    def fit(self, X, y=None):
        """Check the parameters; nothing is learned and ``X`` is not read (``transform`` reads it).

        Returns
        -------
        self
        """
        self._check_params()
        return self

    def transform(self, X) -> np.ndarray:
        """Features of the images ``X``: float32, shape ``(n, d)``, from the cache where present."""
        self._check_params()
        kind, data, n = _read_input(X)
        from .extraction import extract

        opts = dict(
            backbone=self.backbone, weights=self.weights, image_size=self.image_size, pooling=self.pooling,
            cut_blocks=self.cut_blocks, taps=self.taps, batch_size=self.batch_size, workers=self.workers,
            precision=self.precision, seed=self.seed, cache_dir=self.cache_dir, progress=self.progress,
            strict=False, record=False,
        )
        bad: dict[str, str] = {}
        if kind == "paths":
            keys = [os.path.realpath(os.path.expanduser(p)) for p in data]
            good = []
            for p in dict.fromkeys(keys):
                if os.path.isfile(p):
                    good.append(p)
                else:
                    bad[p] = "a folder, not an image file" if os.path.isdir(p) else "file not found"
            result = extract(_files_dataset(good), **opts) if good else None
        else:
            keys = [str(i) for i in range(n)]
            result = extract(_pil_dataset(data) if kind == "pil" else data, **opts)
        if result is not None:
            bad.update(result.skipped)
        sha_of = dict(zip(result.paths, result.sha256)) if result is not None else {}
        missing = [i for i, k in enumerate(keys) if k not in sha_of]
        if missing and self.on_bad == "raise":
            first = keys[missing[0]]
            raise BadImage(
                f"FeatureExtractor could not read {len(missing)} of {n} images (first: {first}: "
                f"{bad.get(first, 'not read')}); the others are cached. Fix or drop them, or pass on_bad='nan' "
                "for NaN rows."
            )
        skip = set(missing)
        found = [i for i in range(n) if i not in skip]
        shas = [sha_of[keys[i]] for i in found]
        blocks = []
        extractions = result.extractions if result is not None else []
        for width, ext in zip(self._widths(extractions), extractions or [None] * len(self._cuts())):
            out = np.full((n, width), np.nan, dtype=np.float32)
            if shas:
                unique = list(dict.fromkeys(shas))
                rows = ext.read(unique)
                where = {s: j for j, s in enumerate(unique)}
                out[found] = rows[[where[s] for s in shas]]
            blocks.append(self._normalised(out))
        return blocks[0] if len(blocks) == 1 else np.hstack(blocks)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """``<backbone>_<i>``, and ``<backbone>_cut<K>_<i>`` for a tap K blocks before the end.

        A cut's width is read from its cached extraction, so for a cut it is
        known once ``transform`` has run (the backbone's own output's width
        is in the registry).
        """
        from .backbones import get_backbone

        name = get_backbone(self.backbone).name
        names = []
        for cut, width in zip(self._cuts(), self._widths()):
            prefix = name if cut == 0 else f"{name}_cut{cut}"
            names += [f"{prefix}_{i}" for i in range(width)]
        return np.asarray(names, dtype=object)

    # -- helpers
    def _check_params(self) -> None:
        """The transformer's own parameters; the extraction's are checked by :func:`featx.extract`."""
        if self.normalise == "standard":
            raise FeatxValueError("The 'normalise' parameter of FeatureExtractor must be one of "
                                  f"{ROW_NORMALISATIONS}: a z-score is learned from data, so put a StandardScaler "
                                  "after the extractor. Got 'standard' instead.")
        check_params(self._parameter_constraints, self.get_params(deep=False), type(self).__name__)

    def _cuts(self) -> list[int]:
        return [int(t) for t in self.taps] if self.taps is not None else [int(self.cut_blocks)]

    def _widths(self, extractions=()) -> list[int]:
        """Each tap's feature width: from the extractions at hand, the cache, or the registry."""
        from .backbones import get_backbone
        from .cache import Cache
        from .spec import resolve_spec

        widths = []
        cache = Cache(self.cache_dir)
        for i, cut in enumerate(self._cuts()):
            ext = extractions[i] if i < len(extractions) else None
            if ext is None:
                spec = resolve_spec(cache, self.backbone, self.weights, self.image_size, self.pooling, cut,
                                    self.precision, self.seed)[0]
                ext = cache.extraction(spec)
            width = ext.meta.get("feature_width") if ext is not None else None
            if width is None and cut == 0:
                width = get_backbone(self.backbone).feature_width
            if width is None:
                raise CacheError(f"The width of {self.backbone}'s tap cut_blocks={cut} is known once one image has "
                                 "been extracted through it; transform a readable image first.")
            widths.append(int(width))
        return widths

    def _normalised(self, X: np.ndarray) -> np.ndarray:
        if self.normalise == "none":
            return X
        from .normalise import normalise

        return normalise(X, self.normalise)


# --------------------------------------------------------------------------- inputs


def _read_input(X) -> tuple[str, object, int]:
    """("paths", list of str, n), ("arrays", image array, n) or ("pil", list of PIL images, n)."""
    if hasattr(X, "columns") and hasattr(X, "shape") and len(X.shape) == 2:  # a pandas or Polars DataFrame
        if X.shape[1] != 1:
            raise FeatxValueError(f"FeatureExtractor takes one column of image paths; the DataFrame has "
                                  f"{X.shape[1]} columns.")
        X = X.to_numpy()[:, 0]
    elif hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # a pandas or Polars Series
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype.kind in "iuf":
        if X.ndim not in (3, 4):
            raise FeatxValueError(
                "FeatureExtractor takes images: paths, a uint8 array (n, h, w, 3) or (n, h, w), or PIL images. "
                f"Received: a numeric array of shape {X.shape}."
            )
        if len(X) == 0:
            raise FeatxValueError(f"FeatureExtractor got 0 images. Received: shape={X.shape}")
        return "arrays", X, len(X)
    if isinstance(X, np.ndarray):
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise FeatxValueError(f"FeatureExtractor takes a 1-D sequence of image paths. Received: shape={X.shape}")
        items = X.tolist()
    elif isinstance(X, (list, tuple)):
        items = list(X)
    else:
        raise FeatxValueError(
            "FeatureExtractor takes image paths (list, array, Series), a uint8 image array or a list of PIL images. "
            f"Received: {type(X).__name__}."
        )
    if not items:
        raise FeatxValueError("FeatureExtractor got 0 images.")
    if all(isinstance(x, (str, os.PathLike)) for x in items):
        return "paths", [os.fspath(x) for x in items], len(items)
    if all(_is_pil(x) for x in items):
        return "pil", items, len(items)
    if all(isinstance(x, np.ndarray) for x in items):  # a list of same-shaped image arrays
        return "arrays", np.stack(items), len(items)
    kinds = sorted({type(x).__name__ for x in items})
    raise FeatxValueError(f"FeatureExtractor takes image paths or PIL images, one kind per call. Received: {', '.join(kinds)}.")


def _is_pil(x) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert") and hasattr(x, "mode")


def _files_dataset(paths: list[str]):
    from .datasets import Dataset, ImageItem

    return Dataset("<files>", "files", [ImageItem(p, None, "") for p in paths], [])


def _pil_dataset(images: list):
    """Each PIL image as an array row keyed by its pixels (grayscale kept as one channel)."""
    from .arrays.rows import LAYOUT, ArrayItem, Rows
    from .datasets import Dataset

    items = []
    for i, img in enumerate(images):
        pixels = np.asarray(img.convert("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"), dtype=np.uint8)
        items.append(ArrayItem(str(i), None, "", Rows(pixels[None], None), 0))
    return Dataset("<arrays>", LAYOUT, items, [])


__all__ = ["FeatureExtractor"]
