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

from ..lazy import lazy_names

# Loaded on first use, so that the CLI can read FinetuneOptions' choices
# (``featx --help``) without importing scikit-learn or Keras.
_LAZY = {
    "SEED_KINDS": "build", "build_end_to_end": "build", "parity_check": "build",
    "load_pixels": "data", "random_resized_crop": "data",
    "FinetuneInterrupted": "interrupt",
    "make_optimizer": "optim",
    "AUGMENTATIONS": "options", "FinetuneError": "options", "FinetuneOptions": "options", "parse_augment": "options",
    "predict_images": "predict",
    "seed_head": "rows",
    "FinetuneResult": "train", "finetune": "train",
    "check_unfreeze": "unfreeze", "layer_table": "unfreeze", "param_counts": "unfreeze", "set_trainable": "unfreeze",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)
