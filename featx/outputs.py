"""Where results go: output folders, the `latest` pointers, prediction tables."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import atomic_write_bytes
from .errors import HeadError

DEFAULT_HEADS_DIR = "heads"
DEFAULT_MODELS_DIR = "models"


def default_dir(root: str, backbone: str, kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = Path(root) / f"{backbone}-{kind}-{stamp}"
    i = 1
    while d.exists():
        i += 1
        d = Path(root) / f"{backbone}-{kind}-{stamp}-{i}"
    return d


def set_latest(root, directory: Path) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(root) / "latest", str(Path(directory).resolve()).encode() + b"\n")


def latest_dir(root: str | os.PathLike = DEFAULT_HEADS_DIR, what: str = "head") -> Path:
    """The folder written most recently under ``root`` (``root/latest`` names it)."""
    try:
        path = Path(Path(root, "latest").read_text().strip())
    except FileNotFoundError:
        raise HeadError(f"No {what} has been fitted yet (no {Path(root, 'latest')}). Run `featx fit-head` first.") from None
    if not (path / "manifest.json").exists():
        raise HeadError(f"The latest {what} {path} no longer exists. Run the command again or pass --head DIR.")
    return path


def latest_head(root: str | os.PathLike = DEFAULT_HEADS_DIR) -> Path:
    """The head folder written most recently by ``fit_head``."""
    return latest_dir(root, "head")


@dataclass
class Predictions:
    """Class probabilities for a set of images."""

    paths: list[str]
    probabilities: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        k = max(1, min(k, len(self.class_names)))
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.class_names[j], float(self.probabilities[i, j])) for j in row] for i, row in enumerate(order)]

    def to_csv(self, path_or_file, k: int = 5) -> None:
        """``path,label_1,prob_1,...,label_k,prob_k``; one row per image."""
        k = max(1, min(k, len(self.class_names)))
        own = isinstance(path_or_file, (str, os.PathLike))
        fh = open(path_or_file, "w", newline="") if own else path_or_file
        try:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["path"] + [c for i in range(1, k + 1) for c in (f"label_{i}", f"prob_{i}")])
            for path, row in zip(self.paths, self.top(k)):
                w.writerow([path] + [v for label, p in row for v in (label, f"{p:.6f}")])
        finally:
            if own:
                fh.close()


