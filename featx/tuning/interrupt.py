"""Ctrl-C during fine-tuning: stop after the batch, close the decode threads, keep the best epoch."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path


class _StopOnCtrlC:
    """Ctrl-C during ``fit`` stops training after the current batch, through Keras' own flags.

    A KeyboardInterrupt raised wherever the main thread happens to be (in a
    callback, between two TensorFlow calls) leaves Keras' iterators and
    TensorFlow's data threads mid-call, to be torn down at exit. Here the
    first Ctrl-C only asks to stop: ``fit`` ends the batch, validates that
    epoch and returns normally, having closed its own iterators, and the
    caller then raises. The request is read from
    the Python handler and, should that run late, from the byte that the
    C-level handler writes to a wakeup pipe (``signal.set_wakeup_fd``),
    which any thread that receives the signal writes. A second Ctrl-C raises
    at once. Only in the main thread (elsewhere Python allows no handler).
    """

    def __init__(self):
        self.requested = False
        self._saved = None

    def __enter__(self):
        import signal

        if threading.current_thread() is not threading.main_thread():
            return self
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._saved = (signal.signal(signal.SIGINT, self._handle), signal.set_wakeup_fd(self._w, warn_on_full_buffer=False))
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def poll(self) -> bool:
        import signal

        if not self.requested and self._saved is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                if bytes([int(signal.SIGINT)]) in os.read(self._r, 256):
                    self.requested = True
        return self.requested

    def callback(self, keras):
        guard = self

        class StopOnCtrlC(keras.callbacks.Callback):
            def _check(self, *args, **kwargs):
                if guard.poll() and not self.model.stop_training:
                    self.model.stop_training = True
                    print("\nCtrl-C: stopping after this batch (Ctrl-C again to stop at once)", file=sys.stderr,
                          flush=True)

            on_train_batch_end = on_epoch_begin = _check

        return StopOnCtrlC()

    def __exit__(self, *exc):
        import signal

        if self._saved is not None:
            handler, fd = self._saved
            signal.signal(signal.SIGINT, handler)
            signal.set_wakeup_fd(fd)
            os.close(self._r)
            os.close(self._w)
            self._saved = None
        return False


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised once the decode threads have stopped; ``str()`` says what was kept."""


def _interrupted(directory: Path) -> FinetuneInterrupted:
    import gc

    gc.collect()  # Keras' iterator over the batches (and TensorFlow's threads behind it) go now, not at exit
    if (directory / "best.keras").exists():
        return FinetuneInterrupted(f"no model was saved; the best epoch so far is {directory / 'best.keras'}")
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty: nothing of this run to keep
    return FinetuneInterrupted("no model was saved")
