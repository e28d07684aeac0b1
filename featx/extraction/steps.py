"""The steps both engines run: prepare one image, pad a batch, show progress.

The local engine (:mod:`featx.extraction.engines.local`) runs them in its
threads; the Ray engine (:mod:`featx.extraction.engines.ray`) runs the same
functions in its decoding tasks and actors, so a bad file is skipped with the
same reason and a batch is padded to the same shapes wherever it is computed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..arrays import ArrayItem
from ..datasets import ImageItem
from ..decode import read_image
from ..errors import BadImage, DecoderUnavailable

# A shard is flushed every FLUSH_SECONDS of computing (or FLUSH_ROWS rows):
# that bounds what a killed run loses. FEATX_FLUSH_SECONDS overrides it.
FLUSH_SECONDS = float(os.environ.get("FEATX_FLUSH_SECONDS", 2.0))
FLUSH_ROWS = 2048
# Where a run's time goes (ExtractResult.stage_seconds), in pipeline order.
STAGES = ("read", "hash", "decode", "stack", "model", "write")


@dataclass
class Prepared:
    """One image read, hashed and (unless its hash is known) decoded."""

    item: ImageItem
    stat: tuple[int, int] | None
    sha: str | None
    pixels: np.ndarray | None
    status: str  # "compute" | "cached" | "bad"
    reason: str = ""
    data: bytes | None = None  # the file, kept (pixels None) when its decoding was deferred


def prepare_image(item: ImageItem, size: int, cached, bad: dict, clock: list[float] | None = None,
                  defer: Callable[[bytes], bool] | None = None) -> Prepared:
    """Read, hash and (unless the hash is in ``cached`` or ``bad``) decode one image to ``size`` px.

    ``clock``, when given, receives the seconds spent reading, hashing and
    decoding (added to its items 0, 1 and 2). ``defer``, when given, picks
    the files not to decode here: they are returned with their bytes in
    ``data`` and no pixels, for a batch decoder
    (:mod:`featx.extraction.gpu_decode`), which hands the ones it cannot
    decode back to :func:`decode_into`.
    """
    if isinstance(item, ArrayItem):  # keyed by its pixels: no file to read
        sha, pixels = item.load(size, skip=cached)
        return Prepared(item, None, sha, pixels, "cached" if pixels is None else "compute")
    t0 = time.perf_counter()
    try:
        # stat before reading: a file edited in between keeps its old mtime
        # in the memo, so the next run hashes it again.
        st = os.stat(item.path)
        with open(item.path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc.strerror}"
        return Prepared(item, None, None, None, "bad", reason)
    stat = (st.st_size, st.st_mtime_ns)
    t1 = time.perf_counter()
    sha = hashlib.sha256(data).hexdigest()
    t2 = time.perf_counter()
    clock = clock if clock is not None else [0.0, 0.0, 0.0]
    clock[0] += t1 - t0
    clock[1] += t2 - t1
    if sha in cached:
        return Prepared(item, stat, sha, None, "cached")
    if sha in bad:
        return Prepared(item, stat, sha, None, "bad", bad[sha])
    prep = Prepared(item, stat, sha, None, "compute")
    try:
        if defer is not None and defer(data):
            prep.data = data
        else:
            decode_into(prep, data, size)
    finally:
        clock[2] += time.perf_counter() - t2
    return prep


def decode_into(prep: Prepared, data: bytes, size: int) -> Prepared:
    """``prep`` with its pixels decoded from ``data`` on the CPU, or marked bad with the reason."""
    try:
        prep.pixels = read_image(data, size)
    except DecoderUnavailable as exc:  # this process's fault, not the file's: no sha, so not remembered
        prep.sha, prep.status, prep.reason = None, "bad", str(exc)
    except BadImage as exc:
        prep.status, prep.reason = "bad", str(exc)
    return prep


def padded_rows(n: int, batch_size: int, on_gpu: bool) -> int:
    """Rows to run for a batch of ``n``: the full batch on a GPU (padding is
    nearly free there and a new shape costs a compile), else the next
    multiple of 8 (on a CPU every padded row costs as much as a real one;
    JAX compiles each of these few shapes once, TensorFlow none)."""
    return batch_size if on_gpu else min(batch_size, -(-n // 8) * 8)


def pad_batch(x: np.ndarray, batch_size: int, on_gpu: bool) -> np.ndarray:
    """``x`` with zero rows appended up to :func:`padded_rows` (few distinct shapes keep the compiled graphs)."""
    n = len(x)
    padded = padded_rows(n, batch_size, on_gpu)
    if n < padded:
        x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
    return x


def progress_bar(total: int | None, enabled: bool, desc: str):
    """The run's progress bar on stderr (images/s, ETA); a silent one when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
                disable=not enabled)


def stopped_message(written: int, total: int | None) -> str:
    """The line a stopped run prints: what it kept in the cache."""
    of = f" of {total:,}" if total is not None else ""
    return (f"featx: stopped after writing {written:,}{of} rows to the cache; "
            f"{'those stay' if written != 1 else 'it stays'} cached and the next run computes only the rest.")
