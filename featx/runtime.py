"""What this process runs on: the Keras backend, GPUs, compute precision.

These answers are needed before a model is built (they are part of cache
keys), so they are read without importing Keras or TensorFlow whenever
possible: a warm re-run must not pay for a framework import.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .errors import FeatxError

PRECISIONS = ("auto", "float32", "mixed")


def backend_name() -> str:
    """The Keras backend this process will use, as Keras itself decides it."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        return json.loads(Path(home, "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def keras_cache_dir(subdir: str) -> str:
    """The folder ``keras.utils.get_file`` downloads into (its documented default):
    ``$KERAS_HOME/<subdir>``, ``~/.keras/<subdir>`` without it, ``/tmp/.keras`` where that is read-only."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, subdir)


def visible_gpus(environ=os.environ, present: int | None = None) -> list[str]:
    """The GPUs CUDA would give this process: ``CUDA_VISIBLE_DEVICES`` read as CUDA reads it.

    ``present`` is the number of GPUs the driver lists (``/proc/driver/nvidia/gpus``;
    read there when not given), so no framework is imported. CUDA stops at the
    first entry that names no GPU (an index past the last one, ``-1``), so an
    index Ray took from GPUs declared but absent hides every GPU after it, and
    an empty ``CUDA_VISIBLE_DEVICES`` hides them all.
    """
    if present is None:
        try:
            present = len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
        except OSError:
            present = 0
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [str(i) for i in range(present)]
    seen = []
    for entry in (e.strip() for e in value.split(",")):
        named = entry.isdigit() and int(entry) < present or entry.startswith(("GPU-", "MIG-")) and present > 0
        if not named:
            break
        seen.append(entry)
    return seen


def gpu_available(environ=os.environ, present: int | None = None) -> bool:
    """Whether CUDA would give this process an NVIDIA GPU (:func:`visible_gpus` is not empty)."""
    return bool(visible_gpus(environ, present))


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise FeatxError(f"precision must be one of {PRECISIONS}. Received: precision={precision!r}")


def resolve_precision(precision: str = "auto") -> str:
    """``auto`` means mixed float16 on a GPU and float32 on a CPU."""
    check_precision(precision)
    if precision == "auto":
        return "mixed" if gpu_available() else "float32"
    return precision


def quiet_frameworks() -> None:
    """Silence TensorFlow's C++ start-up chatter before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def fast_cpu_kernels() -> None:
    """Turn on TensorFlow's oneDNN CPU kernels before it is imported, unless the user chose.

    TensorFlow enables them by default only on CPUs with AVX-512 VNNI, BF16
    or AMX. On the others (any AVX2 CPU, AMD's included) its own kernels
    run instead: on a 2-core AVX2 EPYC, VGG16 at 128 px took 66 ms per image
    with them and 52 ms with oneDNN, ResNet50 21 against 17 ms; a dense head
    fitted as fast either way. ``TF_ENABLE_ONEDNN_OPTS=0`` keeps TensorFlow's
    own choice. Results differ from the other kernels' only by float
    round-off.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


@contextlib.contextmanager
def stderr_to_devnull():
    """Point file descriptor 2 at /dev/null (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """Import Keras without TensorFlow's start-up log lines.

    TensorFlow 2.21 prints absl/oneDNN/CUDA notices from C++ before its log
    level settings apply, so no environment variable silences them; they go
    to /dev/null for the duration of the import only (FEATX_VERBOSE=1 keeps
    them). Python errors raised by the import are unaffected.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    quiet_frameworks()
    fast_cpu_kernels()
    if backend_name() == "tensorflow" and "tensorflow" not in sys.modules and not os.environ.get("FEATX_VERBOSE"):
        try:
            with stderr_to_devnull():
                import tensorflow  # noqa: F401
        except ImportError:
            pass  # let the keras import below report it
    import keras

    if not os.environ.get("FEATX_VERBOSE"):
        # TensorFlow's Python logger warns about retracing when many small
        # models are fitted in turn (the head search): noise, not a problem.
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras
