"""featx: transfer learning on image datasets with cached backbone features.

Phase one runs a headless ``keras.applications`` backbone over a dataset once
and caches pooled features in HDF5; heads then train on them in seconds, and
phase two fine-tunes the end-to-end model when it pays.

>>> import featx
>>> result = featx.extract("data/", backbone="resnet50")     # doctest: +SKIP
>>> f = featx.load_features("data/")                          # doctest: +SKIP

Heavy modules (Keras, LightGBM) load on first use, so ``import featx`` is cheap.
"""

from .lazy import lazy_names

__version__ = "0.1.0"

_LAZY = {
    "FeatxError": "errors",
    "Backbone": "backbones",
    "get_backbone": "backbones",
    "list_backbones": "backbones",
    "Cache": "cache",
    "discover": "datasets",
    "read_image": "decode",
    "ExtractResult": "extraction",
    "Features": "features",
    "FeatureExtractor": "transformer",
    "load_features": "features",
    "DenseHead": "heads",
    "LogisticHead": "heads",
    "LightGBMHead": "heads",
    "load_head": "heads",
    "make_head": "heads",
    "latest_head": "outputs",
    "fit_head": "api",
    "export": "tables",
    "predict": "api",
    "predict_imagenet": "api",
    "compare": "api",
    "inspect": "inspection",
    "finetune": "tuning",
    "build_end_to_end": "tuning",
    "predict_images": "tuning",
}

# Bound eagerly, from the package named ``extraction`` so that no module
# shadows the function. (No framework is imported by this.)
from .extraction import extract  # noqa: E402,F401

__all__ = sorted([*_LAZY, "extract"])


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)
