"""Datasets: finding labelled images on disk, in folders, CSV files and lists.

Layouts understood by :func:`discover`:

- ``classes``: a folder of class folders;
- ``splits``: a folder with ``train/``, ``val/`` (or ``validation/``), ``test/``
  split folders (any case), each holding class folders (a val or test split
  may hold only some of the classes);
- ``csv``: a CSV file with columns ``path,label[,split]`` (paths relative to it);
- ``unlabeled``: a folder of images with no class folders;
- ``files``: image files and folders given explicitly (unlabeled).

An image is recognised by its extension (:data:`IMAGE_EXTENSIONS`), except in
a CSV, where every listed file is taken: the list is explicit. Decoding the
images is :mod:`featx.decode`'s concern.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, FeatxWarning

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
SPLIT_ORDER = ("train", "val", "test")


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
