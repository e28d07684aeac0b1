"""Images: decoding any common format to RGB uint8, with simplejpeg/Pillow parity.

:func:`read_image` decodes any common format to RGB uint8, applying the EXIF (or XMP)
orientation, and raises :class:`~featx.errors.BadImage` with a short reason
for anything it cannot decode. With the ``fast`` extra (simplejpeg), JPEGs are
decoded by libjpeg-turbo outside the GIL, at the DCT scale Pillow would pick,
giving the same pixels; everything else goes through Pillow.
"""

from __future__ import annotations

import functools
import io
import operator
import os
import re
import warnings

import numpy as np

from .errors import BadImage, DecoderUnavailable

MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
# featx's own decoding code (read_image and its helpers). A file that failed to
# decode is remembered as bad under this number (see featx.cache.memo): bump it with
# any fix that may decode files read_image refused before, so they are retried.
DECODER_VERSION = 2

# Pillow warns (DecompressionBombWarning) on opening an image over its limit,
# before read_image refuses that image with a reason the caller reports; the
# warning would only repeat that on the terminal. Filtered once here, by its
# message, because warnings.catch_warnings() around each decode is not
# thread-safe; Pillow's DecompressionBombError and read_image's own check
# are unaffected.
warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", category=RuntimeWarning)


_RESAMPLE = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")  # PIL.Image.Resampling, lower case
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# EXIF orientation -> PIL.Image.Transpose member, as in ImageOps.exif_transpose.
_EXIF_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
    6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90",
}


def _target_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(width, height) for Pillow from ``size`` given as n or (height, width)."""
    if size is None:
        return None
    try:
        h, w = (operator.index(size),) * 2 if not isinstance(size, (tuple, list)) else map(operator.index, size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or (height, width). Received: size={size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive. Received: size={size!r}")
    return w, h


def _read_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        # An int would be taken by open() as a file descriptor and closed.
        raise TypeError(f"read_image reads a path or bytes. Received: {type(source).__name__}")
    try:
        with open(source, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise BadImage(f"unreadable: {exc.strerror or exc}") from None


def _to_rgb(img):
    """Any Pillow mode to RGB: transparency over white, 16-bit and float scaled to 8-bit."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB" and not img.has_transparency_data:
        return img
    if mode.startswith("I"):
        # 16-bit data (I;16*, or I as 16-bit TIFFs and PNGs used to open):
        # v / 257 maps 0..65535 onto 0..255 exactly; clipping would saturate.
        arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((arr + 128) // 257).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0  # floats in [0, 1] are the usual convention
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).convert("RGB")
    if img.has_transparency_data:
        # Composite, not convert: dropping alpha would show whatever colour
        # the transparent pixels happen to hold (often black).
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _bomb_pixels(exc: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return f"decompression bomb ({m.group(1)} pixels)" if m else "decompression bomb"


def read_image(
    source: str | os.PathLike | bytes,
    size: int | tuple[int, int] | None = None,
    *,
    resample: str = "bilinear",
    decoder: str = "auto",
) -> np.ndarray:
    """Decode an image to RGB uint8, optionally squashed to ``size``.

    Thread-safe: it touches no global Pillow or warnings state.

    Parameters
    ----------
    source : path or bytes
        JPEG, PNG, BMP, GIF (first frame), WebP or TIFF.
    size : int or (height, width), optional
        Output size; the image is resized to exactly this (no crop). Large
        JPEGs are first decoded at a reduced DCT scale, never below ``size``.
    resample : {"bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"}
        Pillow filter; bilinear and the others antialias when shrinking.
    decoder : {"auto", "pillow"}
        ``auto`` decodes colour and grayscale JPEGs with simplejpeg when it is
        installed (``pip install featx[fast]``): the same pixels as Pillow,
        with the GIL released while decoding, so threads scale. ``pillow``
        always uses Pillow.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        EXIF (or XMP) orientation applied; transparency composited onto white;
        16-bit images scaled to 8-bit.

    Raises
    ------
    BadImage
        With a short reason: "empty file", "not an image", "truncated image",
        "unreadable: ...", "decompression bomb (W x H pixels)", "cannot decode: ...".
        :class:`~featx.errors.DecoderUnavailable` (a BadImage) when the fault is
        this process's, not the file's: a codec Pillow was built without, an
        ImportError, a MemoryError ("cannot decode here: ...").

    Examples
    --------
    >>> read_image("ant.jpg", 224).shape                         # doctest: +SKIP
    (224, 224, 3)
    """
    target = _target_size(size)
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(_RESAMPLE)}. Received: resample={resample!r}")
    if decoder not in ("auto", "pillow"):
        raise ValueError(f"decoder must be 'auto' or 'pillow'. Received: decoder={decoder!r}")
    data = _read_bytes(source)
    if not data:
        raise BadImage("empty file")
    turbo = _simplejpeg() if decoder == "auto" and data[:2] == b"\xff\xd8" else None
    if turbo is not None:
        out = _read_jpeg_turbo(turbo, data, target, resample)
        if out is not None:
            return out
    out = _read_pillow(data, target, resample)
    if out.ndim != 3 or out.shape[2] != 3:
        raise BadImage(f"cannot decode: unexpected shape {out.shape}")
    return out


def _read_pillow(data: bytes, target: tuple[int, int] | None, resample: str) -> np.ndarray:
    """Decode ``data`` with Pillow; every failure becomes a :class:`BadImage` with a short reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return _pillow_pixels(img, target, resample)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only where warnings are errors.
        raise BadImage(_bomb_pixels(exc)) from None
    except (ImportError, MemoryError) as exc:
        raise DecoderUnavailable(f"cannot decode here: {type(exc).__name__}: {exc}"[:200]) from None
    except Exception as exc:  # a decoder bug must not end an extraction of millions of files
        msg = " ".join(str(exc).split())
        if isinstance(exc, OSError) and msg.endswith("not available"):  # Pillow built without this codec
            raise DecoderUnavailable(f"cannot decode here: {msg[:160]}") from None
        if isinstance(exc, EOFError) or "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise BadImage("truncated image") from None
        raise BadImage(f"cannot decode: {type(exc).__name__}: {msg[:160]}") from None


def _pillow_pixels(img, target: tuple[int, int] | None, resample: str) -> np.ndarray:
    """An opened Pillow image as oriented RGB uint8 of ``target`` (width, height) size."""
    from PIL import Image

    # Checked here, before any pixel is decoded. Pillow's own check in
    # open() only warns below twice its limit, and turning that warning
    # into an error would need warnings.catch_warnings(), which swaps
    # process-global filters and is not thread-safe.
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise BadImage(f"decompression bomb ({width} x {height} pixels)")
    if target is not None and img.format == "JPEG":
        img.draft("RGB", _stored_size(target, _orientation(img)))
    img.load()
    # After load: a PNG's eXIf chunk may follow its pixel data.
    method = _EXIF_TRANSPOSE.get(_orientation(img))
    # ImageOps.exif_transpose's mapping, without its rewrite of the
    # EXIF bytes, which can fail on odd EXIF and is not needed here.
    rgb = _to_rgb(img if method is None else img.transpose(Image.Transpose[method]))
    if target is not None and rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling[resample.upper()])
    # np.array, not asarray: Pillow's buffer would give a read-only array.
    return np.array(rgb, dtype=np.uint8)


def _orientation(img) -> int | None:
    """The EXIF orientation tag, or None when absent or unreadable.

    A corrupt EXIF block costs only the orientation, not the image: viewers
    show such files too.
    """
    try:
        return img.getexif().get(0x0112)
    except Exception:
        return None


def _stored_size(target: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    """The draft size in stored pixels, before the EXIF rotation."""
    return target[::-1] if orientation in _ROTATED else target


@functools.cache
def _simplejpeg():
    """The simplejpeg module (the ``fast`` extra), or None when it is not installed
    or does not decode as this Pillow does.

    The cache key does not name the decoder, so the two must give the same
    pixels bit for bit. Each bundles its own libjpeg-turbo; builds whose
    IDCT or upsampling differ are caught here, once per process, on a small
    JPEG at full and reduced DCT scale, and then Pillow decodes every file.
    """
    try:
        import simplejpeg
    except ImportError:
        return None
    from PIL import Image

    probe = np.add.outer(np.arange(48), np.arange(64) * 3).astype(np.uint8)
    rgb = np.stack([probe, probe[::-1], probe.T[:48, :48].repeat(2, 1)[:, :64] ^ probe], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=75)
    data = buf.getvalue()
    try:
        agree = all(
            np.array_equal(_read_jpeg_turbo(simplejpeg, data, target, "bilinear"),
                           read_image(data, None if target is None else target[::-1], decoder="pillow"))
            for target in (None, (32, 24))
        )
    except Exception:
        agree = False
    return simplejpeg if agree else None


def _read_jpeg_turbo(turbo, data: bytes, target: tuple[int, int] | None, resample: str) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo exactly as :func:`read_image` does with Pillow.

    Same DCT scale as Pillow's ``draft`` (the largest of 1/8, 1/4, 1/2 that
    keeps the image at least the target size), same EXIF transpose, same
    resize: Pillow bundles libjpeg-turbo too, so the pixels are identical.
    The difference is that simplejpeg parses the headers in C and releases
    the GIL for the whole decode. Returns None where Pillow should decide
    (CMYK and other colour spaces, anything simplejpeg rejects): Pillow then
    decodes the image or names what is wrong with it.
    """
    from PIL import Image

    try:
        height, width, colorspace, _ = turbo.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    if colorspace not in ("YCbCr", "Gray") or width * height > MAX_PIXELS:
        return None  # Pillow raises the decompression-bomb error with its usual wording
    try:
        orientation = jpeg_orientation(data)
    except BadImage:
        return None
    scale = 1
    if target is not None:
        scale = dct_scale((width, height), _stored_size(target, orientation))
    shape = (-(-height // scale), -(-width // scale))
    try:
        arr = turbo.decode_jpeg(data, colorspace="RGB", min_height=shape[0], min_width=shape[1])
    except (ValueError, RuntimeError):
        return None
    if arr.shape[:2] != shape:  # another scale than Pillow's would give other pixels
        return None
    method = _EXIF_TRANSPOSE.get(orientation)
    if method is None and (target is None or (arr.shape[1], arr.shape[0]) == target):
        return arr
    img = Image.fromarray(arr)
    if method is not None:
        img = img.transpose(Image.Transpose[method])
    if target is not None and img.size != target:
        img = img.resize(target, Image.Resampling[resample.upper()])
    return np.array(img, dtype=np.uint8)


def dct_scale(stored: tuple[int, int], draft: tuple[int, int]) -> int:
    """The DCT scale Pillow's ``draft`` decodes a JPEG of ``stored`` (width, height) pixels at for a
    ``draft`` size: the largest of 8, 4, 2 that keeps it at least that size, else 1."""
    fits = min(stored[0] // draft[0], stored[1] // draft[1])  # as in PIL.JpegImagePlugin.JpegImageFile.draft
    return next((a for a in (8, 4, 2) if fits >= a), 1)


def jpeg_orientation(data: bytes) -> int | None:
    """The EXIF (or XMP) orientation Pillow reads from a JPEG, without decoding its pixels.

    None when the file has none. Only files with an APP1 segment are opened
    with Pillow (header only); raises :class:`BadImage` when Pillow cannot
    parse that header, so that the caller lets Pillow decide about the file.
    """
    from PIL import Image

    if not _jpeg_may_be_oriented(data):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _orientation(img)
    except Exception:
        raise BadImage("cannot read the JPEG header") from None


def _jpeg_may_be_oriented(data: bytes) -> bool:
    """Whether a JPEG holds an APP1 segment (Exif or XMP) before its first scan.

    Pillow reads the orientation from either (XMP's ``tiff:Orientation``
    when there is no Exif one), so a file with any APP1 segment has its
    orientation read by Pillow. Walks the marker segments (a few hops;
    ``bytes.find`` over the header would cost more than hashing the file).
    An odd layout answers True, which only means Pillow reads the orientation.
    """
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return True
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return False
        if marker == 0xE1:
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return True
