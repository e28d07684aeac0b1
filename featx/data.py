"""Datasets and images: finding labelled images on disk and decoding them.

Layouts understood by :func:`discover`:

- ``classes``: a folder of class folders;
- ``splits``: a folder with ``train/``, ``val/`` (or ``validation/``), ``test/``
  split folders, each holding class folders;
- ``csv``: a CSV file with columns ``path,label[,split]`` (paths relative to it);
- ``unlabeled``: a folder of images with no class folders;
- ``files``: image files and folders given explicitly (unlabeled).

:func:`read_image` decodes any common format to RGB uint8, applying EXIF
orientation, and raises :class:`~featx.errors.BadImage` with a short reason
for anything it cannot decode.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BadImage, DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
SPLIT_ORDER = ("train", "val", "test")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset."""

    path: str  # absolute, normalised
    label: str | None  # canonical class name; None when unlabeled
    split: str  # "train" | "val" | "test"; "" when unlabeled


@dataclass
class Dataset:
    """The images of a dataset, their labels and splits, and what was left out."""

    source: str
    layout: str
    items: list[ImageItem]
    class_names: list[str]
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        present = {it.split for it in self.items}
        return [s for s in (*SPLIT_ORDER, "") if s in present]

    def labels_index(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.array([index[it.label] if it.label is not None else -1 for it in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)


def is_image(path: str | os.PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_images(folder: Path, ignored: list, follow_symlinks: bool = True) -> list[str]:
    """Image paths under ``folder`` (recursively, sorted), skipping hidden entries.

    Plain strings, not Path objects: on a million files pathlib's parsing
    would dominate a warm re-run.
    """
    found = []
    join, splitext = os.path.join, os.path.splitext
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=follow_symlinks):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name):
                continue
            if splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(join(dirpath, name))
            else:
                ignored.append((join(dirpath, name), "not an image extension"))
    return found


def discover(source: str | os.PathLike | Sequence, *, follow_symlinks: bool = True) -> Dataset:
    """Find the images, labels and splits of a dataset.

    Parameters
    ----------
    source : path or list of paths
        A folder (class folders, split folders, or loose images), a CSV
        file ``path,label[,split]``, an image file, or a list of image files
        and folders.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        When the source does not exist, holds no images, has a malformed
        CSV, or class sets that differ between splits.
    """
    if isinstance(source, (list, tuple)):
        return _from_files([Path(s) for s in source], follow_symlinks)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data path does not exist: {path}")
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _from_csv(path)
        if is_image(path):
            return _from_files([path], follow_symlinks)
        raise DataError(f"{path} is neither an image, a CSV file nor a folder.")
    return _from_folder(path, follow_symlinks)


def _from_files(paths: list[Path], follow_symlinks: bool) -> Dataset:
    ignored: list = []
    images: list[Path] = []
    for p in paths:
        p = p.expanduser()
        if not p.exists():
            raise DataError(f"Data path does not exist: {p}")
        if p.is_dir():
            images += _walk_images(p.resolve(), ignored, follow_symlinks)
        elif is_image(p):
            images.append(p.resolve())
        else:
            ignored.append((str(p), "not an image extension"))
    if not images:
        raise DataError(f"No images among {', '.join(map(str, paths[:3]))}{'...' if len(paths) > 3 else ''}.")
    seen, items = set(), []
    for p in images:
        if str(p) not in seen:
            seen.add(str(p))
            items.append(ImageItem(str(p), None, ""))
    return Dataset("<files>" if len(paths) != 1 else str(paths[0].resolve()), "files", items, [], ignored)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name))


def _from_folder(root: Path, follow_symlinks: bool) -> Dataset:
    ignored: list = []
    subdirs = _class_dirs(root)
    split_dirs = {d: SPLIT_ALIASES[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_ALIASES}
    loose = [root / n for n in sorted(os.listdir(root)) if not _hidden(n) and (root / n).is_file()]

    if split_dirs:
        if len(set(split_dirs.values())) != len(split_dirs):
            raise DataError(f"{root} has two folders for the same split: {', '.join(d.name for d in split_dirs)}.")
        for d in subdirs:
            if d not in split_dirs:
                ignored.append((str(d), "folder beside the split folders"))
        per_split = {}
        for d, split in split_dirs.items():
            per_split[split] = _scan_classes(d, ignored, follow_symlinks)
        layout = "splits"
    else:
        class_ignored: list = []
        classes = _scan_classes(root, class_ignored, follow_symlinks) if subdirs else {}
        if not classes:
            images = _walk_images(root, ignored, follow_symlinks)
            if not images:
                raise DataError(f"No images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}).")
            return Dataset(str(root), "unlabeled", [ImageItem(p, None, "") for p in images], [], ignored)
        ignored += class_ignored
        per_split = {"train": classes}
        layout = "classes"

    if layout == "splits":
        for p in loose:
            ignored.append((str(p), "file beside the split folders" if is_image(p) else "not an image extension"))
    return _assemble(str(root), layout, per_split, ignored)


def _scan_classes(folder: Path, ignored: list, follow_symlinks: bool) -> dict[str, list[str]]:
    """Class name -> images; folders differing only by case are one class."""
    classes: dict[str, list[Path]] = {}
    spelling: dict[str, str] = {}
    for d in _class_dirs(folder):
        images = _walk_images(d, ignored, follow_symlinks)
        if not images:
            ignored.append((str(d), "empty class folder"))
            continue
        name = spelling.setdefault(d.name.casefold(), d.name)
        classes.setdefault(name, []).extend(images)
    for p in folder.iterdir():
        if p.is_file() and not _hidden(p.name):
            ignored.append((str(p), "file beside the class folders"))
    return classes


def _assemble(source: str, layout: str, per_split: dict[str, dict[str, list]], ignored: list) -> Dataset:
    """Match class names across splits (case-insensitively) and build the items."""
    order = [s for s in SPLIT_ORDER if s in per_split]
    canonical: dict[str, str] = {}
    for split in order:
        for name in per_split[split]:
            canonical.setdefault(name.casefold(), name)
    if not canonical:
        raise DataError(f"No images found in {source}.")
    reference = {n.casefold() for n in per_split[order[0]]}
    problems = []
    for split in order[1:]:
        have = {n.casefold() for n in per_split[split]}
        lacks = sorted(canonical[n] for n in reference - have)
        extra = sorted(canonical[n] for n in have - reference)
        if lacks:
            problems.append(f"{split} lacks {', '.join(map(repr, lacks))}")
        if extra:
            problems.append(f"{split} has extra {', '.join(map(repr, extra))}")
    if problems:
        raise DataError(f"Class sets differ between splits in {source}: {'; '.join(problems)} (compared with {order[0]}).")
    items = []
    for split in order:
        for name, paths in per_split[split].items():
            label = canonical[name.casefold()]
            items += [ImageItem(str(p), label, split) for p in paths]
    items.sort(key=lambda it: (SPLIT_ORDER.index(it.split), it.path))
    return Dataset(source, layout, items, sorted(set(canonical.values())), ignored)


def _from_csv(path: Path) -> Dataset:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            fields = [f.strip().lower() for f in (rows and rows[0].keys() or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read CSV {path}: {exc}") from None
    if not rows:
        raise DataError(f"CSV {path} has no rows (expected a header path,label[,split]).")
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in rows]
    if "path" not in fields:
        raise DataError(f"CSV {path} needs a 'path' column (header path,label[,split]); found: {', '.join(fields)}.")
    labelled = "label" in fields
    if labelled:
        empty = [i + 2 for i, r in enumerate(rows) if not r.get("label")]
        if empty:
            raise DataError(f"CSV {path} has rows with an empty label (lines {', '.join(map(str, empty[:5]))}).")
    base = path.parent
    ignored: list = []
    seen: set = set()
    per_split: dict[str, dict[str, list]] = {}
    unlabeled = []
    for i, r in enumerate(rows):
        p = Path(r["path"]).expanduser()
        p = (p if p.is_absolute() else base / p).resolve()
        if str(p) in seen:
            ignored.append((str(p), "duplicate row"))
            continue
        seen.add(str(p))
        if not p.is_file():
            ignored.append((str(p), "file not found"))
            continue
        split_raw = r.get("split", "") or "train"
        split = SPLIT_ALIASES.get(split_raw.lower())
        if split is None:
            raise DataError(f"CSV {path} line {i + 2}: unknown split {split_raw!r} (use train, val or test).")
        if labelled:
            per_split.setdefault(split, {}).setdefault(r["label"], []).append(p)
        else:
            unlabeled.append(p)
    if not seen - {p for p, _ in ignored} and not per_split and not unlabeled:
        raise DataError(f"None of the {len(rows)} files listed in {path} exist (paths are relative to the CSV).")
    if not labelled:
        return Dataset(str(path), "csv", [ImageItem(str(p), None, "") for p in unlabeled], [], ignored)
    # Within a split, labels differing only by case are one class.
    merged = {}
    for split, classes in per_split.items():
        m: dict[str, list] = {}
        spelling: dict[str, str] = {}
        for name, paths in classes.items():
            m.setdefault(spelling.setdefault(name.casefold(), name), []).extend(paths)
        merged[split] = m
    return _assemble(str(path), "csv", merged, ignored)


# --------------------------------------------------------------------------- images


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_rgb(img):
    """Any Pillow mode to RGB; transparency over white, 16-bit scaled down."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / (top / 255.0), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 if hi <= 1.0 and lo >= 0.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def read_image(
    source: str | os.PathLike | bytes,
    size: int | tuple[int, int] | None = None,
    *,
    resample: str = "bilinear",
) -> np.ndarray:
    """Decode an image to RGB uint8, optionally squashed to ``size``.

    Parameters
    ----------
    source : path or bytes
    size : int or (height, width), optional
        Output size; the image is resized to exactly this (no crop), with
        Pillow's antialiasing bilinear filter. Large JPEGs are decoded at a
        reduced DCT scale first (never below ``size``).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)

    Raises
    ------
    BadImage
        With a short reason: "empty file", "not an image", "truncated image",
        "unreadable: ...", "decompression bomb (W x H pixels)", "cannot decode: ...".
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except IsADirectoryError:
            raise BadImage("unreadable: is a directory") from None
        except OSError as exc:
            raise BadImage(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise BadImage("empty file")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[resample]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise BadImage(f"decompression bomb ({img.size[0]} x {img.size[1]} pixels)")
            if size is not None and img.format == "JPEG":
                img.draft("RGB", (w, h))
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if size is not None and img.size != (w, h):
                img = img.resize((w, h), filt)
            out = np.asarray(img, dtype=np.uint8)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg or "broken data stream" in msg or isinstance(exc, EOFError):
            raise BadImage("truncated image") from None
        raise BadImage(f"cannot decode: {type(exc).__name__}: {msg[:120]}") from None
    except Exception as exc:  # a decoder bug must not end an extraction of millions of files
        raise BadImage(f"cannot decode: {type(exc).__name__}: {str(exc)[:120]}") from None
    if out.ndim != 3 or out.shape[2] != 3:
        raise BadImage(f"cannot decode: unexpected shape {out.shape}")
    return out
