"""Phase two: rebuild backbone + trained head end to end and fine-tune it.

The modules, in the order a run uses them:

- :mod:`~featx.tuning.options`: :class:`FinetuneOptions`, the run's settings, checked once;
  the defaults that depend on the data size;
- :mod:`~featx.tuning.rows`: the rows to train and validate on, and the head to start from
  (refit when the head has seen the validation rows; a logreg softmax for a LightGBM head);
- :mod:`~featx.tuning.build`: the end-to-end model and the parity check against the cache;
- :mod:`~featx.tuning.unfreeze`: what trains, and each block's learning-rate scale;
- :mod:`~featx.tuning.optim`: the optimizer, with discriminative learning rates;
- :mod:`~featx.tuning.data`: decoding, the training batches, the random-resized crop;
- :mod:`~featx.tuning.train`: :func:`finetune`, the steps in order;
- :mod:`~featx.tuning.interrupt`: Ctrl-C stops after the batch;
- :mod:`~featx.tuning.predict`: :func:`predict_images` with a saved model.

The package is not called ``finetune`` so that ``featx.finetune`` stays the function.
"""

from .build import SEED_KINDS, build_end_to_end, parity_check
from .data import load_pixels, random_resized_crop
from .interrupt import FinetuneInterrupted
from .optim import make_optimizer
from .options import AUGMENTATIONS, FinetuneError, FinetuneOptions, parse_augment
from .predict import predict_images
from .rows import seed_head
from .train import FinetuneResult, finetune
from .unfreeze import check_unfreeze, layer_table, param_counts, set_trainable

__all__ = [
    "AUGMENTATIONS", "FinetuneError", "FinetuneInterrupted", "FinetuneOptions", "FinetuneResult", "SEED_KINDS",
    "build_end_to_end", "check_unfreeze", "finetune", "layer_table", "load_pixels", "make_optimizer", "param_counts",
    "parity_check", "parse_augment", "predict_images", "random_resized_crop", "seed_head", "set_trainable",
]
