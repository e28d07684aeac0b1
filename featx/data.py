"""Datasets and images: finding labelled images on disk and decoding them.

Layouts understood by :func:`discover`:

- ``classes``: a folder of class folders;
- ``splits``: a folder with ``train/``, ``val/`` (or ``validation/``), ``test/``
  split folders (any case), each holding class folders (a val or test split
  may hold only some of the classes);
- ``csv``: a CSV file with columns ``path,label[,split]`` (paths relative to it);
- ``unlabeled``: a folder of images with no class folders;
- ``files``: image files and folders given explicitly (unlabeled).

An image is recognised by its extension (:data:`IMAGE_EXTENSIONS`), except in
a CSV, where every listed file is taken: the list is explicit.

:func:`read_image` decodes any common format to RGB uint8, applying the EXIF (or XMP)
orientation, and raises :class:`~featx.errors.BadImage` with a short reason
for anything it cannot decode. With the ``fast`` extra (simplejpeg), JPEGs are
decoded by libjpeg-turbo outside the GIL, at the DCT scale Pillow would pick,
giving the same pixels; everything else goes through Pillow.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import operator
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import BadImage, DataError, DecoderUnavailable, FeatxWarning

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
SPLIT_ORDER = ("train", "val", "test")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
# featx's own decoding code (read_image and its helpers). A file that failed to
# decode is remembered as bad under this number (see featx.memo): bump it with
# any fix that may decode files read_image refused before, so they are retried.
DECODER_VERSION = 2

# Pillow warns (DecompressionBombWarning) on opening an image over its limit,
# before read_image refuses that image with a reason the caller reports; the
# warning would only repeat that on the terminal. Filtered once here, by its
# message, because warnings.catch_warnings() around each decode is not
# thread-safe; Pillow's DecompressionBombError and read_image's own check
# are unaffected.
warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", category=RuntimeWarning)


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset.

    Attributes
    ----------
    path : str
        Absolute, normalised path of the image file.
    label : str or None
        Canonical class name; None for unlabeled data.
    split : str
        "train", "val" or "test" ("train" when the data has no splits);
        "" for unlabeled data.
    """

    path: str
    label: str | None
    split: str


@dataclass
class Dataset:
    """The images of a dataset, their labels and splits, and what was left out.

    Attributes
    ----------
    source : str
        Absolute path of the folder, CSV or image file; "<files>" for a list.
    layout : str
        "classes", "splits", "csv", "unlabeled" or "files".
    items : list of ImageItem
        Sorted by split (train, val, test), then path.
    class_names : list of str
        Sorted canonical class names of all splits together; empty when
        unlabeled. ``class_splits`` says which splits hold each.
    ignored : list of (path, reason)
        Files and folders not taken, with why.
    """

    source: str
    layout: str
    items: list[ImageItem]
    class_names: list[str]
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        """Splits present, in train, val, test order ("" last, for unlabeled items)."""
        present = {it.split for it in self.items}
        return [s for s in (*SPLIT_ORDER, "") if s in present]

    @property
    def class_splits(self) -> dict[str, list[str]]:
        """Each class name -> the splits that hold it, in train, val, test order.

        A val or test split holding only some of train's classes is normal.
        """
        held: dict[str, set[str]] = {name: set() for name in self.class_names}
        for it in self.items:
            if it.label is not None:
                held.setdefault(it.label, set()).add(it.split)
        return {name: [s for s in SPLIT_ORDER if s in splits] for name, splits in held.items()}

    def labels_index(self) -> np.ndarray:
        """Index of each item's label in ``class_names``; -1 for unlabeled items.

        Returns
        -------
        ndarray of int64, shape (len(items),)
        """
        index = {name: i for i, name in enumerate(self.class_names)}
        try:
            return np.array([-1 if it.label is None else index[it.label] for it in self.items], dtype=np.int64)
        except KeyError as exc:
            raise DataError(
                f"Label {exc.args[0]!r} of {self.source} is not among class_names {self.class_names}."
            ) from None

    def __len__(self) -> int:
        return len(self.items)


def is_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def _sorted_items(items: list[ImageItem]) -> list[ImageItem]:
    return sorted(items, key=lambda it: (_split_rank(it.split), it.path))


def _absolute(path: str | os.PathLike) -> str:
    # realpath, not abspath: the cache finds a dataset's views again by the
    # resolved path the user names (features.find_view).
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


# --------------------------------------------------------------------------- walking folders


def _list_dir(folder: str, ignored: list, follow_symlinks: bool) -> tuple[list[str], list[str]]:
    """Sorted non-hidden subfolders and regular files of ``folder``.

    Uses ``os.scandir``, whose entries mostly answer ``is_dir`` without a
    stat call: on a million files that is the cost of the walk.
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        ignored.append((folder, f"unreadable folder: {exc.strerror or exc}"))
        return [], []
    dirs, files = [], []
    for e in entries:
        if e.name.startswith("."):
            continue
        if not follow_symlinks and e.is_symlink():
            ignored.append((e.path, "symbolic link not followed"))
        elif e.is_symlink() and not os.path.exists(e.path):
            ignored.append((e.path, _missing(e.path)))
        elif e.is_dir():
            dirs.append(e.path)
        elif e.is_file():
            files.append(e.path)
        else:
            # FIFOs, sockets, devices: opening a FIFO would block forever.
            ignored.append((e.path, "not a regular file"))
    return dirs, files


def _walk_images(folder: str, ignored: list, follow_symlinks: bool) -> list[str]:
    """Image paths under ``folder``, recursively; other files go to ``ignored``."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        if follow_symlinks:
            # A link back to an ancestor would otherwise recurse forever.
            try:
                st = os.stat(current)
            except OSError as exc:
                ignored.append((current, f"unreadable folder: {exc.strerror or exc}"))
                continue
            if (st.st_dev, st.st_ino) in seen:
                ignored.append((current, "folder already scanned (symbolic link)"))
                continue
            seen.add((st.st_dev, st.st_ino))
        dirs, files = _list_dir(current, ignored, follow_symlinks)
        for f in files:
            if is_image(f):
                found.append(f)
            else:
                ignored.append((f, "not an image extension"))
        stack.extend(reversed(dirs))
    return found


def _scan_classes(folder: str, ignored: list, follow_symlinks: bool) -> tuple[dict[str, list[str]], int]:
    """Class name -> image paths for the class folders in ``folder``.

    Folders whose names differ only by case are one class, spelled as the
    first of them (in sorted order) that holds images. Also returns how many
    images lie loose beside the class folders (they are ignored).
    """
    dirs, files = _list_dir(folder, ignored, follow_symlinks)
    classes: dict[str, list[str]] = {}
    spelling: dict[str, str] = {}
    for d in dirs:
        images = _walk_images(d, ignored, follow_symlinks)
        if not images:
            ignored.append((d, "empty class folder"))
            continue
        name = spelling.setdefault(os.path.basename(d).casefold(), os.path.basename(d))
        classes.setdefault(name, []).extend(images)
    loose = 0
    for f in files:
        if is_image(f):
            loose += 1
            ignored.append((f, "image beside the class folders"))
        else:
            ignored.append((f, "not an image extension"))
    return classes, loose


def _no_images(folder: str) -> DataError:
    return DataError(f"No images found in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")


def _from_folder(root: str, follow_symlinks: bool) -> Dataset:
    ignored: list[tuple[str, str]] = []
    root_ignored: list[tuple[str, str]] = []  # _scan_classes records these itself
    dirs, files = _list_dir(root, root_ignored, follow_symlinks)
    split_dirs: dict[str, list[str]] = {}
    for d in dirs:
        split = SPLIT_ALIASES.get(os.path.basename(d).lower())
        if split:
            split_dirs.setdefault(split, []).append(d)

    if not split_dirs:
        classes, _ = _scan_classes(root, ignored, follow_symlinks)
        if classes:
            return _assemble(root, "classes", {"train": classes}, ignored)
        # No class folder holds an image: the images (if any) lie loose in root.
        ignored = []
        images = _walk_images(root, ignored, follow_symlinks)
        if not images:
            raise _no_images(root)
        return Dataset(root, "unlabeled", _sorted_items([ImageItem(p, None, "") for p in images]), [], ignored)

    ignored += root_ignored
    for split, found in split_dirs.items():
        if len(found) > 1:
            names = ", ".join(os.path.basename(d) for d in found)
            raise DataError(f"{root} has several folders for the {split} split ({names}); keep one.")
    for d in dirs:
        if SPLIT_ALIASES.get(os.path.basename(d).lower()) is None:
            ignored.append((d, "folder beside the split folders"))
    for f in files:
        ignored.append((f, "image beside the split folders" if is_image(f) else "not an image extension"))
    per_split: dict[str, dict[str, list[str]]] = {}
    for split in SPLIT_ORDER:
        if split not in split_dirs:
            continue
        folder = split_dirs[split][0]
        classes, loose = _scan_classes(folder, ignored, follow_symlinks)
        if classes:
            per_split[split] = classes
        elif loose:
            raise DataError(
                f"{folder} holds images but no class folders; every split needs class folders."
            )
        else:
            ignored.append((folder, "empty split folder"))
    if not per_split:
        raise _no_images(root)
    return _assemble(root, "splits", per_split, ignored)


def _assemble(source: str, layout: str, per_split: dict[str, dict[str, list[str]]], ignored: list) -> Dataset:
    """Match class names across splits (case-insensitively) and build the items.

    ``per_split`` maps split -> class name -> paths, with case variants
    already merged within each split. The classes are those of all splits
    together. A val or test split holding only some of train's classes is
    normal; one holding a class train lacks gets a warning, not an error:
    features do not depend on labels (a head fitted on train cannot predict
    that class, which is for fit-head to judge).
    """
    order = [s for s in SPLIT_ORDER if s in per_split]
    canonical: dict[str, str] = {}
    for split in order:
        for name in per_split[split]:
            canonical.setdefault(name.casefold(), name)
    if "train" in per_split:
        train = {n.casefold() for n in per_split["train"]}
        for split in order[1:]:
            extra = sorted(canonical[n] for n in {n.casefold() for n in per_split[split]} - train)
            if extra:
                warnings.warn(
                    f"{split} of {source} holds classes that train lacks: {', '.join(map(repr, extra))} "
                    "(a head fitted on train cannot predict them).",
                    FeatxWarning, stacklevel=4,
                )
    items = [
        ImageItem(p, canonical[name.casefold()], split)
        for split in order
        for name, paths in per_split[split].items()
        for p in paths
    ]
    return Dataset(source, layout, _sorted_items(items), sorted(set(canonical.values())), ignored)


def _missing(path: str) -> str:
    return "file not found (broken symbolic link)" if os.path.islink(path) else "file not found"


# --------------------------------------------------------------------------- lists and CSV files


def _from_files(entries: Sequence, follow_symlinks: bool, source: str) -> Dataset:
    if not entries:
        raise DataError("No data given: the list of image files and folders is empty.")
    ignored: list[tuple[str, str]] = []
    images: list[str] = []
    for entry in entries:
        p = _absolute(entry)
        if os.path.isdir(p):
            images += _walk_images(p, ignored, follow_symlinks)
        elif not os.path.exists(p):
            raise DataError(f"Data path does not exist: {entry}.")
        elif not is_image(p):
            ignored.append((p, "not an image extension"))
        elif not os.path.isfile(p):
            ignored.append((p, "not a regular file"))
        else:
            images.append(p)
    if not images:
        shown = ", ".join(map(str, entries[:3])) + (", ..." if len(entries) > 3 else "")
        raise DataError(f"No images among {shown} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    items = [ImageItem(p, None, "") for p in dict.fromkeys(images)]
    return Dataset(source, "files", _sorted_items(items), [], ignored)


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return f"line {shown}" if len(numbers) == 1 else f"lines {shown}{' and more' if len(numbers) > 5 else ''}"


def _from_csv(path: str) -> Dataset:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            # line_num, not a row count: a quoted field may span lines.
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DataError(f"Cannot read CSV {path}: {reason}.") from None
    columns = [c.strip().lower() for c in header or []]
    if "path" not in columns:
        found = ", ".join(repr(c) for c in columns) or "nothing"
        raise DataError(f"CSV {path} needs a 'path' column (header path,label[,split]); found {found}.")
    col = {name: columns.index(name) for name in ("path", "label", "split") if name in columns}
    if "label" not in col and len(columns) > 1:
        # "lable" or "class" would otherwise make a silently unlabeled dataset.
        warnings.warn(
            f"CSV {path} has no 'label' column, so its images are unlabeled; columns found: "
            f"{', '.join(repr(c) for c in columns)} (header path,label[,split]).",
            FeatxWarning, stacklevel=3,
        )

    def cell(row: list[str], name: str) -> str:
        i = col.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    labelled = "label" in col
    no_path = [n for n, row in rows if not cell(row, "path")]
    if no_path:
        raise DataError(f"CSV {path} has rows with an empty path ({_lines(no_path)}).")
    if labelled:
        no_label = [n for n, row in rows if not cell(row, "label")]
        if no_label:
            raise DataError(f"CSV {path} has rows with an empty label ({_lines(no_label)}).")

    base = os.path.dirname(path)
    ignored: list[tuple[str, str]] = []
    seen: set[str] = set()
    items: list[ImageItem] = []
    per_split: dict[str, dict[str, list[str]]] = {}
    spelling: dict[str, dict[str, str]] = {}
    for n, row in rows:
        p = os.path.normpath(os.path.join(base, os.path.expanduser(cell(row, "path"))))
        if p in seen:
            ignored.append((p, "duplicate row"))
            continue
        seen.add(p)
        if not os.path.isfile(p):
            ignored.append((p, _missing(p) if not os.path.exists(p) else "not a file"))
            continue
        if not labelled:
            items.append(ImageItem(p, None, ""))
            continue
        raw = cell(row, "split") or "train"
        split = SPLIT_ALIASES.get(raw.lower())
        if split is None:
            raise DataError(f"CSV {path} line {n}: unknown split {raw!r} (use train, val or test).")
        # Labels differing only by case are one class within a split too.
        label = spelling.setdefault(split, {}).setdefault(cell(row, "label").casefold(), cell(row, "label"))
        per_split.setdefault(split, {}).setdefault(label, []).append(p)
    if not items and not per_split:
        if not rows:
            raise DataError(f"CSV {path} lists no files.")
        raise DataError(
            f"None of the {len(rows)} files listed in {path} exist (relative paths are read from {base})."
        )
    if not labelled:
        return Dataset(path, "csv", _sorted_items(items), [], ignored)
    return _assemble(path, "csv", per_split, ignored)


def discover(source: str | os.PathLike | Sequence[str | os.PathLike], *, follow_symlinks: bool = True) -> Dataset:
    """Find the images, labels and splits of a dataset.

    Parameters
    ----------
    source : path or list of paths
        A folder of class folders; a folder of split folders (``train``,
        ``val``/``validation``, ``test``, any case) each holding class
        folders; a CSV file with header ``path,label[,split]`` (paths
        relative to its folder); a folder of loose images; an image file; or
        a list of image files and folders (unlabeled, scanned recursively).
    follow_symlinks : bool, default True
        Enter symbolically linked folders and take linked files. When False,
        links are left out and listed in ``ignored``.

    Returns
    -------
    Dataset
        Items sorted by split, then path; what was left out is in ``ignored``.

    Raises
    ------
    DataError
        When the source does not exist or holds no images, or a CSV is
        unreadable or malformed. Class sets that differ between splits are
        not an error: a val or test split holding a class that train lacks
        gets a :class:`~featx.errors.FeatxWarning`.

    Examples
    --------
    >>> ds = discover("data/")                                   # doctest: +SKIP
    >>> ds.layout, ds.class_names, ds.splits                     # doctest: +SKIP
    ('splits', ['ants', 'bees'], ['train', 'val'])
    """
    if isinstance(source, (list, tuple)):
        return _from_files(source, follow_symlinks, "<files>")
    path = _absolute(source)
    if os.path.isdir(path):
        return _from_folder(path, follow_symlinks)
    if not os.path.exists(path):
        raise DataError(f"Data path does not exist: {source}.")
    if path.lower().endswith(".csv"):
        return _from_csv(path)
    if is_image(path):
        return _from_files([path], follow_symlinks, path)
    raise DataError(f"{path} is neither a folder, a CSV file nor an image ({', '.join(sorted(IMAGE_EXTENSIONS))}).")


# --------------------------------------------------------------------------- images


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes.

    Parameters
    ----------
    path : path
        The file, read in 1 MiB chunks so memory stays flat on large files.

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    from PIL import Image, UnidentifiedImageError

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
    try:
        with Image.open(io.BytesIO(data)) as img:
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
            out = np.array(rgb, dtype=np.uint8)
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
    if out.ndim != 3 or out.shape[2] != 3:
        raise BadImage(f"cannot decode: unexpected shape {out.shape}")
    return out


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
    orientation = None
    if _jpeg_may_be_oriented(data):
        # Pillow parses the Exif and XMP (header only, no pixels) of the files that have them.
        try:
            with Image.open(io.BytesIO(data)) as img:
                orientation = _orientation(img)
        except Exception:
            return None
    scale = 1
    if target is not None:
        w, h = _stored_size(target, orientation)
        fits = min(width // w, height // h)  # as in PIL.JpegImagePlugin.JpegImageFile.draft
        scale = next((a for a in (8, 4, 2) if fits >= a), 1)
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
