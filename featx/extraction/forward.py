"""The forward pass: the model call each backend runs best, and the batch size it runs at."""

from __future__ import annotations

import collections
import json
import os
import threading

import numpy as np

from ..runtime import backend_name

# A CPU batch's input pixels when no batch size is given above 32 px (64
# images of 64 px): its activations, not the model's weights, are most of
# a run's memory (see default_batch_size).
CPU_BATCH_PIXELS = 64 * 64 * 64


class Forward:
    """Runs batches through the model; ``dispatch`` returns before the result is ready where it can.

    On JAX a jitted stateless call returns as soon as the work is queued on
    the device, so the host prepares batch i+1 while the device computes
    batch i and ``fetch`` waits only for what is not done yet. On
    TensorFlow one ``tf.function`` traced for any batch length, at build
    time: ``predict_on_batch`` traced again for each new batch length, which
    cost seconds per shape (the short last batch of every run) and copied
    every result back to NumPy before returning. Other backends use
    ``predict_on_batch``.
    """

    def __init__(self, model):
        self.model = model
        self.dispatch = model.predict_on_batch
        backend = backend_name()
        if backend == "jax":
            import jax

            state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            call = jax.jit(lambda trainable, non_trainable, x: model.stateless_call(trainable, non_trainable, x)[0])
            self.dispatch = lambda x: call(*state, x)
        elif backend == "tensorflow":
            import tensorflow as tf

            spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)
            call = tf.function(lambda x: model(x, training=False), input_signature=[spec])
            call.get_concrete_function()  # trace now, while the bar says "building model"
            self.dispatch = call

    @staticmethod
    def fetch(out) -> np.ndarray:
        return np.asarray(out)


class Shelf:
    """Built forward passes kept for the next run of the same model in this process.

    Opt-in (``FEATX_KEEP_MODELS=N`` keeps up to N; 0, the default, keeps
    none), for a process that extracts many times with one backbone: a
    notebook calling ``featx.extract`` or ``FeatureExtractor.transform`` on
    new images, or the test suite. A model is keyed by everything that
    builds it (every spec's record, the weights with their sha256, the
    backend), is handed to one run at a time (``take`` removes it, ``put``
    returns it), and the least recently returned goes first.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._kept: collections.OrderedDict[str, Forward] = collections.OrderedDict()

    @staticmethod
    def capacity() -> int:
        try:
            return max(0, int(os.environ.get("FEATX_KEEP_MODELS", "0")))
        except ValueError:
            return 0

    @staticmethod
    def key(specs, weights, builders) -> str:
        """What builds the model: the backend, the weights, every spec, and the builder itself
        (a replaced builder, e.g. in a test, never gets another's model)."""
        return json.dumps([backend_name(), repr(weights), [s.record() for s in specs], [id(b) for b in builders]],
                          sort_keys=True, default=str)

    def take(self, key: str) -> Forward | None:
        with self._lock:
            return self._kept.pop(key, None)

    def put(self, key: str, forward: Forward) -> None:
        keep = self.capacity()
        with self._lock:
            self._kept.pop(key, None)
            if keep:
                self._kept[key] = forward
            while len(self._kept) > keep:
                self._kept.popitem(last=False)


SHELF = Shelf()


def default_batch_size(on_gpu: bool, image_size: int | None = None) -> int:
    """Images per forward pass when none is given: 128 on a GPU; on a CPU
    256 for inputs of 32 px or less, else as many as hold the pixels of 64
    images of 64 px, as a power of two from 16 to 64 (64 up to 64 px, 32
    up to 90 px, 16 from 91 px up).

    On a GPU a larger batch keeps the device busy while the host prepares
    the next. On a CPU each call has a fixed cost: with mobilenetv3small at
    32 px the model's CPU time per image is 0.25 ms at batch 32, 0.22 at 64
    and 0.17 at 256, on cores the decoders need. From 64 px up the model's
    own work dominates and a larger batch only costs memory: a batch's
    activations grow with its pixels, and VGG16 at 224 px peaked at 3.2 GB
    RSS at batch 64 against 1.6 GB at 16, for the same images/s
    (docs/memory.md).
    """
    if on_gpu:
        return 128
    size = image_size or 224
    if size <= 32:
        return 256
    fits = max(1, CPU_BATCH_PIXELS // (size * size))
    return min(64, max(16, 1 << (fits.bit_length() - 1)))


def persist_jax_compilations(folder) -> None:
    """Keep XLA's compiled model on disk beside the features (JAX backend only).

    An incremental run on a GPU otherwise spends most of its time
    recompiling the same model. A cache the user configured is left alone.
    """
    if backend_name() != "jax":
        return
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
