"""``keras:NAME``: the image datasets of ``keras.datasets``, downloaded by Keras into its cache."""

from __future__ import annotations

import contextlib
import re
import sys

from ..errors import DataError
from ..runtime import keras_cache_dir
from .checks import ArrayError

KERAS_DATASETS = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "cifar100": None,
    "mnist": None,
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def load_keras_dataset(which: str, log) -> dict:
    if which not in KERAS_DATASETS:
        raise ArrayError(f"Unknown Keras dataset {which!r}. Choose from "
                         f"{', '.join('keras:' + k for k in KERAS_DATASETS)}.")
    from ..runtime import import_keras

    keras = import_keras()
    # Keras announces downloads on stdout, which belongs to featx's own output.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, which).load_data()
        except Exception as exc:
            # keras.utils.get_file names the URL it failed on ("URL fetch failure on <url>: ...").
            url = re.search(r"https?://\S+?(?=[:\s]|$)", str(exc))
            if url:
                raise DataError(
                    f"keras:{which} could not be downloaded (no network?). Keras fetches {url.group(0)} into "
                    f"{keras_cache_dir('datasets')}: download it there, or run this where there is a network."
                ) from None
            raise DataError(f"keras:{which} could not be loaded: {str(exc).splitlines()[0][:200]}") from None
    if log:
        log(f"keras:{which}: x_train {x_tr.shape} {x_tr.dtype}, y_train; x_test {x_te.shape} {x_te.dtype}, y_test")
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}
