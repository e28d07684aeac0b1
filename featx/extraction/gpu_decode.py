"""JPEG decoding on the GPU with nvImageCodec (the ``gpu-decode`` extra), for ``decode="gpu"|"auto"``.

The local engine's decoding threads read and hash every file as before; the
JPEGs this module takes (:meth:`GpuDecoder.takes`: colour or grayscale, no
EXIF rotation, under Pillow's pixel limit) are not decoded on the CPU but
kept as bytes, and each thread decodes its chunk of them in one
``Decoder.decode(list_of_bytes)`` call. The decoded images stay on the
device: they reach the framework through DLPack (``jax.dlpack``,
``tf.experimental.dlpack``), are resized there with Keras's antialiased
bilinear resize (Pillow's filter, which featx uses on the CPU) and handed to
the model as uint8 with no copy back to the host. Whatever nvImageCodec
cannot decode (a truncated file, a format it does not know) goes through
:func:`featx.extraction.steps.decode_into`, so a skipped file is skipped with
Pillow's reason and a mixed folder works.

How pixels are made is not part of the extraction's key: rows from either
path are interchangeable. On the CPU the two agree to 1 grey level on
nearly every pixel where no DCT scaling is involved (docs/gpu.md gives the
measured tolerance); Pillow decodes a JPEG of twice the input size or more
at a reduced DCT scale, nvImageCodec at full size, and such files differ by
a few levels more.

``FEATX_NVIMGCODEC_CPU=1`` runs the same code path on nvImageCodec's CPU
backend (libjpeg-turbo) without a GPU: what the tests do. DLPack is then
not used (nvImageCodec's DLPack export needs the CUDA runtime), so the
hand-over to the framework is only exercised on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading

import numpy as np

from ..decode import MAX_PIXELS, dct_scale, jpeg_orientation
from ..errors import BadImage, DataError
from ..runtime import backend_name, gpu_available, stderr_to_devnull

INSTALL = 'pip install "featx[gpu-decode]"'
CPU_BACKEND_ENV = "FEATX_NVIMGCODEC_CPU"


def cpu_backend() -> bool:
    """Whether nvImageCodec runs on its CPU backend (``FEATX_NVIMGCODEC_CPU=1``: tests, no GPU)."""
    return os.environ.get(CPU_BACKEND_ENV, "") == "1"


def missing() -> str | None:
    """What GPU decoding lacks in this process, found without importing anything heavy; None when nothing."""
    try:
        found = importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"nvImageCodec is not installed ({INSTALL})"
    if not cpu_backend() and not gpu_available():
        return "no NVIDIA GPU is visible to this process (use --decode cpu or auto)"
    return None


def require() -> None:
    """Raise the one-line error of ``decode="gpu"`` where GPU decoding cannot run."""
    why = missing()
    if why:
        raise DataError(f"--decode gpu: {why}.")


def _backend_missing() -> str | None:
    """Why the Keras backend cannot take a decoded batch on the GPU (imports the framework); None when it can."""
    if cpu_backend():
        return None
    backend = backend_name()
    try:
        if backend == "jax":
            import jax

            on_gpu = any(d.platform == "gpu" for d in jax.devices())
        elif backend == "tensorflow":
            from ..runtime import import_keras

            import_keras()
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            for gpu in gpus:  # TensorFlow would take nearly all the memory: leave nvImageCodec room
                with contextlib.suppress(RuntimeError, ValueError):  # the model may have started the GPU already
                    tf.config.experimental.set_memory_growth(gpu, True)
            on_gpu = bool(gpus)
        else:
            return f"featx hands decoded batches to the jax and tensorflow backends only, not {backend}"
    except Exception as exc:  # a broken CUDA install is a reason, not a crash
        return f"the {backend} backend cannot use the GPU ({type(exc).__name__}: {exc})"[:200]
    return None if on_gpu else f"the {backend} backend sees no GPU"


def _nvimgcodec():
    """The nvImageCodec module, imported without its notes about the codecs it lacks (nvJPEG2000, nvTIFF)."""
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")  # its per-file warnings: featx reports bad files itself
    if os.environ.get("FEATX_VERBOSE"):
        from nvidia import nvimgcodec
    else:
        with stderr_to_devnull():
            from nvidia import nvimgcodec
    return nvimgcodec


class GpuDecoder:
    """One run's GPU decoding: whether it is used, and each decoding thread's nvImageCodec decoder.

    Parameters
    ----------
    mode : {"auto", "gpu"}
        ``gpu`` raises :class:`~featx.errors.DataError` when GPU decoding
        cannot run; ``auto`` then leaves every file to the CPU, silently.
    size : int
        The model's input size: images are resized to ``size`` x ``size``.
    """

    def __init__(self, mode: str, size: int):
        self.mode, self.size = mode, size
        self._lock = threading.Lock()
        self._active: bool | None = None
        self._local = threading.local()
        self.decoded = 0  # images decoded by nvImageCodec (the others went through the CPU)

    def active(self) -> bool:
        """Whether this run decodes on the GPU; decided once, at the first chunk to decode."""
        with self._lock:
            if self._active is None:
                why = missing() or _backend_missing()
                if why and self.mode == "gpu":
                    raise DataError(f"--decode gpu: {why}.")
                self._active = why is None
                if self._active:
                    nv = self._nv = _nvimgcodec()
                    self._params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB,
                                                   sample_format=nv.SampleFormat.I_RGB)
        return self._active

    def takes(self, data: bytes) -> bool:
        """Whether nvImageCodec decodes this file as Pillow would: a colour or grayscale JPEG,
        not rotated by its EXIF, under the decompression-bomb limit. The others (CMYK, PNG,
        GIF, rotated photos...) are decoded on the CPU."""
        if data[:2] != b"\xff\xd8":
            return False
        try:
            stream = self._nv.CodeStream(data)
            if stream.codec_name != "jpeg" or stream.num_channels not in (1, 3):
                return False
            if stream.width * stream.height > MAX_PIXELS:
                return False
            return jpeg_orientation(data) in (None, 1)
        except (RuntimeError, BadImage):
            return False

    def decode(self, preps: list) -> None:
        """Decode the deferred files of ``preps`` (those with ``data``) into device pixels, in one call;
        the ones nvImageCodec cannot decode through the CPU (they may turn out bad there)."""
        from .steps import decode_into

        todo = [p for p in preps if p.data is not None]
        if not todo:
            return
        try:
            images = self._decoder().decode([p.data for p in todo], params=self._params)
        except RuntimeError as exc:  # the library's, not a file's (a bad file is a None in the list)
            if self.mode == "gpu":
                raise DataError(f"--decode gpu: nvImageCodec failed: {' '.join(str(exc).split())}"[:300]) from None
            images = [None] * len(todo)  # auto: the CPU decodes this chunk
        done = 0
        for prep, image in zip(todo, images):
            data, prep.data = prep.data, None
            if image is None:  # nvImageCodec could not: Pillow decides, with its own reason
                decode_into(prep, data, self.size)
                continue
            prep.pixels = self._resized(self._tensor(image))
            done += 1
        with self._lock:  # decoding threads count together
            self.decoded += done

    def _decoder(self):
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            nv = self._nv
            where = ({"device_id": nv.NVIMGCODEC_DEVICE_CPU_ONLY, "backends": [nv.Backend(nv.BackendKind.CPU_ONLY)]}
                     if cpu_backend() else {})
            # One decoder per decoding thread, each with one CPU thread of its own: featx's
            # workers already are the parallelism.
            decoder = self._local.decoder = nv.Decoder(max_num_cpu_threads=1, **where)
        return decoder

    def _tensor(self, image):
        """A decoded image as the backend's tensor: DLPack for device memory (no copy), NumPy for host memory."""
        if image.buffer_kind == self._nv.ImageBufferKind.STRIDED_HOST:
            return np.asarray(image)
        backend = backend_name()
        if backend == "jax":
            import jax.dlpack

            return jax.dlpack.from_dlpack(image)
        import tensorflow as tf

        return tf.experimental.dlpack.from_dlpack(image.to_dlpack())

    def _resized(self, x):
        """``x`` (H, W, 3 uint8) at the input size, uint8, on the device it is on."""
        from ..runtime import import_keras

        if tuple(x.shape[:2]) == (self.size, self.size):
            return import_keras().ops.convert_to_tensor(x)
        return _resizer(self.size, backend_name())(x)


@functools.cache
def _resizer(size: int, backend: str):
    """:func:`resize_uint8` at ``size``; on JAX compiled once per image shape for the process, where
    op-by-op it would compile every op for every new shape."""
    resize = functools.partial(resize_uint8, size=size)
    if backend == "jax":
        import jax

        resize = jax.jit(resize)
    return resize


def resize_uint8(x, size: int):
    """``x`` (H, W, C uint8) resized to ``size`` x ``size`` as featx does on the CPU, in Keras ops.

    Keras's antialiased bilinear resize is Pillow's ``BILINEAR`` (a triangle filter widened when
    shrinking). Where Pillow would decode the JPEG at a reduced DCT scale first, blocks of that
    size are averaged first.
    """
    from ..runtime import import_keras

    ops = import_keras().ops
    y = ops.cast(x, "float32")
    scale = dct_scale((int(x.shape[1]), int(x.shape[0])), (size, size))
    if scale > 1:
        y = _block_mean(ops, y, scale)
    if tuple(y.shape[:2]) != (size, size):
        y = ops.image.resize(y[None], (size, size), interpolation="bilinear", antialias=True)[0]
    return ops.cast(ops.clip(ops.round(y), 0, 255), "uint8")


def _block_mean(ops, y, scale: int):
    """``y`` (H, W, C) shrunk ``scale`` times by averaging ``scale`` x ``scale`` blocks, as a JPEG decoded at a
    reduced DCT scale nearly is; edge rows and columns repeated up to a whole block, as libjpeg's output
    size rounds up."""
    height, width = int(y.shape[0]), int(y.shape[1])
    pad_h, pad_w = -height % scale, -width % scale
    if pad_h or pad_w:
        y = ops.pad(y, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    h, w = (height + pad_h) // scale, (width + pad_w) // scale
    return ops.mean(ops.reshape(y, (h, scale, w, scale, -1)), axis=(1, 3))


def stack(pixels: list, padded: int):
    """One batch from ``pixels`` (device tensors and NumPy arrays mixed), zero rows up to ``padded``."""
    from ..runtime import import_keras

    ops = import_keras().ops
    x = ops.stack([ops.convert_to_tensor(p) for p in pixels])
    if padded > len(pixels):
        x = ops.concatenate([x, ops.zeros((padded - len(pixels), *x.shape[1:]), dtype="uint8")])
    return x

