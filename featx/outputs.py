"""Where results go: output folders, the `latest` pointers, prediction tables."""

from __future__ import annotations

import csv
import itertools
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import atomic_write_bytes
from .heads import KINDS  # costs no import of head code
from .errors import FeatxWarning, HeadError

DEFAULT_HEADS_DIR = "heads"
DEFAULT_MODELS_DIR = "models"
HOME_ENV = "FEATX_HOME"
_WHAT = {"head": DEFAULT_HEADS_DIR, "model": DEFAULT_MODELS_DIR}
MODEL_KIND = "end-to-end"  # the manifest kind of a fine-tuned model; heads carry their head kind
_OTHER_KIND = {"head": MODEL_KIND, "model": "featx"}  # what a models/ (heads/) folder holds, for the message


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
    """Create and return a new folder ``<root>/<backbone>-<kind>-<time>`` (``-2``, ``-3``... when taken).

    The folder is made with ``mkdir(exist_ok=False)``, so two runs started in
    the same second never share (and empty) one folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in itertools.count(1):
        d = root / (f"{backbone}-{kind}-{stamp}" + (f"-{i}" if i > 1 else ""))
        try:
            d.mkdir()
        except FileExistsError:
            continue
        return d
    raise AssertionError("unreachable")


def set_latest(what: str, directory: str | os.PathLike, home: str | os.PathLike | None = None,
               kind: str | None = None) -> None:
    """Point ``<home>/heads/latest`` (or ``models/latest``) at ``directory``.

    One pointer per kind of result, under the featx home wherever the result
    was written (``--out`` outside the home included: the newest result is
    the one ``latest`` names), holding a path relative to the pointer's
    folder so a moved or copied project keeps working. Heads also get
    ``latest-<kind>`` (``latest-dense``...), which ``finetune`` reads.
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
    return _read_pointer(root / (f"latest-{kind}" if kind else "latest"))


def _read_pointer(pointer: Path) -> Path | None:
    try:
        text = pointer.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadError(f"Cannot read the pointer {pointer}: {exc}") from None
    if not text or "\n" in text:
        raise HeadError(f"{pointer} is not a featx `latest` pointer (one line naming a folder).")
    return Path(os.path.normpath(pointer.parent / text))


def _manifest_kind(folder: Path) -> str | None:
    """The ``kind`` in ``folder/manifest.json``; None when it is missing or unreadable."""
    try:
        return json.loads((folder / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _is_kind(what: str, kind: str | None, want: str | None = None) -> bool:
    if kind is None:
        return False
    if what == "model":
        return kind == MODEL_KIND
    return kind != MODEL_KIND and (want is None or kind == want)


def _newest(what: str, root: Path, want: str | None = None) -> Path | None:
    """The newest folder under ``root`` whose manifest is readable and of the right kind."""
    found = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return None
    for d in entries:
        if d.is_dir() and _is_kind(what, _manifest_kind(d), want):
            try:
                found.append(((d / "manifest.json").stat().st_mtime, d.name, d))
            except OSError:  # removed meanwhile
                continue
    return max(found)[2] if found else None


def latest_dir(what: str = "head", home: str | os.PathLike | None = None, kind: str | None = None) -> Path:
    """The head (or model) folder written most recently under the featx home.

    Reads ``<home>/heads/latest`` (``latest-<kind>`` with ``kind``). A pointer
    whose folder is gone is skipped with a warning naming the folder used
    instead: the newest one under ``heads/`` (``models/``) with a readable
    manifest of the right kind. It is never followed into a missing folder.
    """
    root = results_dir(what, home)
    return _follow(what, root / (f"latest-{kind}" if kind else "latest"), kind)


def _follow(what: str, pointer: Path, kind: str | None = None) -> Path:
    """The folder ``pointer`` names, or, when that is gone, the newest one beside the pointer (warned)."""
    root = pointer.parent
    path = _read_pointer(pointer)
    if path is not None and _is_kind(what, _manifest_kind(path), kind):
        return path
    instead = _newest(what, root, kind)
    label = f"{kind} {what}" if kind else what
    cmd = "featx fit-head" if what == "head" else "featx finetune"
    if path is None and instead is None:
        where = root.parent.resolve()
        raise HeadError(f"No {label} has been saved under {where} yet (no {pointer}). "
                        f"Run `{cmd}` first, or pass --{what} DIR.")
    if path is None:
        gone = f"there is no {pointer}"
    elif not path.exists():
        gone = f"{pointer} points to {path}, which no longer exists"
    else:
        gone = f"{pointer} points to {path}, which holds no readable {label}"
    if instead is None:
        raise HeadError(f"{gone[0].upper()}{gone[1:]}, and no other {label} is under {root}. "
                        f"Pass --{what} DIR, or fit a new one with `{cmd}`.")
    warnings.warn(FeatxWarning(f"{gone}; using {instead}, the newest {label} under {root}."), stacklevel=3)
    return instead


def latest_head(home: str | os.PathLike | None = None) -> Path:
    """The head folder written most recently by ``fit_head`` under the featx home."""
    return latest_dir("head", home)


def resolve_result(what: str, value: str | os.PathLike | None = None,
                   home: str | os.PathLike | None = None) -> Path:
    """The head (``what="head"``) or fine-tuned model (``"model"``) folder that ``value`` names.

    ``value`` may be None or ``"latest"`` (the newest under the featx home),
    ``"latest-<kind>"`` (``latest-logreg``: the newest head of that kind), a
    pointer file (``heads/latest``), a result folder, a file inside one
    (``model.keras``, ``manifest.json``), or a ``heads/`` or ``models/``
    folder (its ``latest``). A value naming the other kind of result is
    refused with a message saying which option takes it.
    """
    option = f"--{what}"
    if value is None or str(value) == "":
        return latest_dir(what, home)
    text = str(value)
    path = Path(text).expanduser()
    if not path.exists() and os.sep not in text and (text == "latest" or text.startswith("latest-")):
        kind = text[len("latest-"):] if text != "latest" else None
        if kind is not None and what == "model":
            raise HeadError(f"Fine-tuned models have one pointer, latest; {text!r} is not one. "
                            "Pass --model latest or --model DIR.")
        if kind is not None and kind not in KINDS:
            raise HeadError(f"{text!r} names no kind of head: use latest, or latest-KIND with KIND among "
                            f"{', '.join(KINDS)}.")
        return latest_dir(what, home, kind)
    if not path.exists():
        raise HeadError(f"{option} {text}: no such file or folder.")
    folder = path
    if path.is_file() and not (path.name == "latest" or path.name.startswith("latest-")):
        folder = path.parent  # model.keras, manifest.json, logreg.npz...
    elif path.is_file():
        other = "model" if what == "head" else "head"
        if path.parent.resolve() == results_dir(other, home).resolve() or path.parent.name == _WHAT[other]:
            target = _read_pointer(path)
            _refuse_other(what, text, (target and _manifest_kind(target)) or _OTHER_KIND[what])
        folder = _follow(what, path, _pointer_kind(path))  # heads/latest, heads/latest-logreg, models/latest
    elif not (path / "manifest.json").exists() and (path / "latest").is_file():
        if path.name == _WHAT["model" if what == "head" else "head"]:
            _refuse_other(what, text, _OTHER_KIND[what])
        folder = _follow(what, path / "latest")  # a heads/ or models/ folder: its newest result
    kind = _manifest_kind(folder)
    _refuse_other(what, text, kind)
    if kind is None:
        made_by = "featx fit-head" if what == "head" else "featx finetune"
        why = "no manifest.json" if not (folder / "manifest.json").exists() else "an unreadable manifest.json"
        raise HeadError(f"{text} is not a featx {what} ({folder} has {why}). {what.capitalize()}s are written by "
                        f"`{made_by}`; pass a folder it wrote, {option} latest or {_WHAT[what]}/latest.")
    return folder


def _refuse_other(what: str, text: str, kind: str | None) -> None:
    """Refuse a head given to --model or a model given to --head, naming the option that takes it."""
    if what == "head" and kind == MODEL_KIND:
        raise HeadError(f"{text} is a fine-tuned model (from `featx finetune`), not a head: use --model {text}.")
    if what == "model" and kind is not None and kind != MODEL_KIND:
        raise HeadError(f"{text} is a {kind} head (from `featx fit-head`), not a fine-tuned model: use --head {text}, "
                        f"or `featx finetune --head {text}` to make a model from it.")


def _pointer_kind(pointer: Path) -> str | None:
    return pointer.name[len("latest-"):] if pointer.name.startswith("latest-") else None


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


