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
HOME_ENV = "FEATX_HOME"
_WHAT = {"head": DEFAULT_HEADS_DIR, "model": DEFAULT_MODELS_DIR}


def text_table(rows, headers) -> str:
    """Rows as a plain text table under a dashed header line (every table featx prints)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """Where heads/ and models/ go: ``home``, else ``$FEATX_HOME``, else the current directory."""
    return Path(home if home is not None else (os.environ.get(HOME_ENV) or "."))


def results_dir(what: str, home: str | os.PathLike | None = None) -> Path:
    """``<home>/heads`` or ``<home>/models``."""
    return home_dir(home) / _WHAT[what]


def default_dir(root: str | os.PathLike, backbone: str, kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = Path(root) / f"{backbone}-{kind}-{stamp}"
    i = 1
    while d.exists():
        i += 1
        d = Path(root) / f"{backbone}-{kind}-{stamp}-{i}"
    return d


def set_latest(what: str, directory: str | os.PathLike, home: str | os.PathLike | None = None,
               kind: str | None = None) -> None:
    """Point ``<home>/heads/latest`` (or ``models/latest``) at ``directory``.

    One pointer per kind of result, under the featx home wherever the result
    was written (``--out`` included), holding a path relative to the
    pointer's folder so a moved or copied project keeps working. Heads also
    get ``latest-<kind>`` (``latest-dense``...), which ``finetune`` reads.
    """
    root = results_dir(what, home)
    root.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(Path(directory).resolve(), root.resolve()).encode() + b"\n"
    atomic_write_bytes(root / "latest", target)
    if kind:
        atomic_write_bytes(root / f"latest-{kind}", target)


def read_latest(what: str, home: str | os.PathLike | None = None, kind: str | None = None) -> Path | None:
    """The folder a ``latest`` pointer names (None when there is no pointer)."""
    root = results_dir(what, home)
    try:
        text = (root / (f"latest-{kind}" if kind else "latest")).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return Path(os.path.normpath(root / text))


def latest_dir(what: str = "head", home: str | os.PathLike | None = None) -> Path:
    """The head (or model) folder written most recently under the featx home."""
    path = read_latest(what, home)
    root = results_dir(what, home)
    if path is None:
        cmd = "featx fit-head" if what == "head" else "featx finetune"
        raise HeadError(f"No {what} has been saved under {root.parent.resolve()} yet (no {root / 'latest'}). "
                        f"Run `{cmd}` first, or pass --{what} DIR.")
    if not (path / "manifest.json").exists():
        raise HeadError(f"The latest {what} {path} no longer exists. Run the command again or pass --{what} DIR.")
    return path


def latest_head(home: str | os.PathLike | None = None) -> Path:
    """The head folder written most recently by ``fit_head`` under the featx home."""
    return latest_dir("head", home)


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


