"""Pixels for fine-tuning: decoded as extraction decoded them, in featx's own threads.

:func:`load_pixels` decodes a list of images at once (validation, test,
the parity sample); :class:`_Batches` feeds training, a batch or two ahead,
shuffled per epoch, with the random-resized crop applied here (it needs no
Keras layer, so the saved model holds only stock layers).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Sequence

import numpy as np

from ..decode import read_image
from ..errors import BadImage
from ..runtime import import_keras
from .options import CROP_RATIO


def load_pixels(paths: Sequence[str], size: int, workers: int | None = None, read=None) -> tuple[np.ndarray, list[int], list]:
    """Decode images exactly as extraction does, in threads; returns (pixels, kept indices, skipped).

    ``read`` reads one row by its path instead (array rows, :func:`featx.arrays.row_reader`).
    On an interrupt the decodes not started are cancelled, not waited for.
    """
    out, kept, skipped = [], [], []
    read = read or (lambda p: _try_read(p, size))
    pool = cf.ThreadPoolExecutor(workers or min(16, max(2, os.cpu_count() or 2)), thread_name_prefix="featx-decode")
    try:
        for i, (path, res) in enumerate(zip(paths, pool.map(read, paths))):
            if isinstance(res, str):
                skipped.append((path, res))
            else:
                out.append(res)
                kept.append(i)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    pixels = np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)
    return pixels, kept, skipped


def _try_read(path, size):
    try:
        return read_image(path, size)
    except BadImage as exc:
        return str(exc)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float] = CROP_RATIO) -> np.ndarray:
    """A crop of ``scale`` of the area at an aspect ratio in ``ratio``, resized back (bilinear).

    The area fraction is uniform in ``scale`` and the ratio log-uniform in
    ``ratio`` (torchvision's recipe); a box that does not fit is clipped to
    the image. Grayscale (H, W, 1) and colour images keep their shape and dtype.
    """
    from PIL import Image

    h, w = image.shape[:2]
    area = h * w * rng.uniform(*scale)
    aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
    ch = int(min(h, max(1, round(np.sqrt(area / aspect)))))
    cw = int(min(w, max(1, round(np.sqrt(area * aspect)))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    box = image[top:top + ch, left:left + cw]
    if (ch, cw) == (h, w):
        return image.copy()
    squeeze = box.ndim == 3 and box.shape[2] == 1
    pil = Image.fromarray(box[..., 0] if squeeze else box)
    out = np.asarray(pil.resize((w, h), Image.BILINEAR))
    return out[..., None] if squeeze else out


class _Batches:
    """A keras.utils.PyDataset of (uint8 pixels, labels), decoded in threads, shuffled per epoch.

    The threads are featx's own and only decode (no framework call):
    ``prefetch`` batches ahead of the one asked for decode on the pool while
    the model trains, so Keras needs no worker threads of its own
    (``workers=1``). :meth:`close` cancels what is pending and joins the
    pool, so that nothing runs on after training stops, Ctrl-C included.

    An image that cannot be read is left out of its batch and listed in
    ``skipped``; a batch in which none can be read is an empty batch (no
    rows, no loss, no gradient) and counted in ``empty_batches``.

    ``crop`` (the strength of a random-resized crop, 0 for none) crops each
    training image, drawn from the same seeded generator as the shuffling.
    """

    def __new__(cls, *args, **kwargs):
        keras = import_keras()

        class Batches(keras.utils.PyDataset):
            def __init__(self, paths, labels, size, batch_size, shuffle, seed, workers, read=None, shape=None,
                         prefetch=2, crop=0.0):
                super().__init__(workers=1, use_multiprocessing=False)
                self.paths, self.labels = list(paths), np.asarray(labels)
                self.batch_size, self.shuffle, self.prefetch = batch_size, shuffle, prefetch
                self.shape = tuple(shape) if shape else (size, size, 3)
                self.read = read or (lambda p: _try_read(p, size))
                self.rng = np.random.default_rng(seed)
                self.seed_, self.epoch = int(seed), 0
                self.order = np.arange(len(self.paths))
                self.pool = cf.ThreadPoolExecutor(workers or min(16, max(2, os.cpu_count() or 2)),
                                                  thread_name_prefix="featx-batches")
                self.pending: dict[int, list] = {}
                self.lock = threading.Lock()
                self.closed = False
                self.skipped: dict[str, str] = {}
                self.empty_batches = 0
                self.crop = float(crop)
                if shuffle:
                    self.rng.shuffle(self.order)

            def __len__(self):
                return int(np.ceil(len(self.paths) / self.batch_size))

            def _submit(self, i):
                if i not in self.pending and 0 <= i < len(self):
                    idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
                    self.pending[i] = [(j, self.pool.submit(self.read, self.paths[j])) for j in idx]

            def __getitem__(self, i):
                with self.lock:
                    if self.closed:
                        return self._empty()
                    for k in range(i, i + 1 + self.prefetch):
                        self._submit(k)
                    jobs = self.pending.pop(i)
                good, rows = [], []
                for j, job in jobs:
                    image = job.result()
                    if isinstance(image, str):
                        self.skipped.setdefault(self.paths[j], image)
                    else:
                        good.append(image)
                        rows.append(j)
                if not good:
                    self.empty_batches += 1
                    return self._empty()
                if self.crop:
                    rng = np.random.default_rng([self.seed_, self.epoch, i])
                    good = [random_resized_crop(g, rng, (1.0 - self.crop, 1.0)) for g in good]
                return np.stack(good), self.labels[rows]

            def _empty(self):
                return np.zeros((0, *self.shape), np.uint8), self.labels[:0]

            def on_epoch_end(self):
                with self.lock:  # decodes made for the old order are of no use now
                    for jobs in self.pending.values():
                        for _, job in jobs:
                            job.cancel()
                    self.pending.clear()
                    self.epoch += 1
                    if self.shuffle:
                        self.rng.shuffle(self.order)

            def close(self):
                with self.lock:
                    self.closed = True
                    self.pending.clear()
                self.pool.shutdown(wait=True, cancel_futures=True)

        return Batches(*args, **kwargs)
