"""The saved head folder (docs/head-format.md): what every kind writes and reads besides its own model file.

A folder holds ``manifest.json`` (kind, classes, width, parameters and the
caller's record of the extraction), the kind's model (``model.keras``,
``logreg.npz`` or ``lightgbm.txt`` with ``pca.npz``) and, for
``normalise="standard"``, ``norm.npz``. Nothing here is a pickle and
loading runs no code from the files. The bytes written are those of featx
0.1's flat ``heads.py`` (tests/data/saved_heads holds heads it saved).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import HeadError

# Every file a head folder may hold: saving removes them all first, so a
# folder reused for another kind of head keeps nothing of the old one.
HEAD_FILES = ("manifest.json", "model.keras", "history.json", "logreg.npz", "lightgbm.txt", "pca.npz", "norm.npz",
              "metrics.json", "confusion.png", "curves.png")


def jsonable(params: dict) -> dict:
    """Hyper-parameters as the manifest records them (tuples as lists, anything odd as its repr)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, (tuple, list)):
            v = list(v)
        elif isinstance(v, np.generic):
            v = v.item()
        elif not isinstance(v, (str, int, float, bool, dict, type(None))):
            v = repr(v)
        out[k] = v
    return out


def known_params(cls, params: dict) -> dict:
    """The recorded parameters that ``cls`` still takes (``hidden`` back to a tuple)."""
    names = cls().get_params()
    out = {k: v for k, v in params.items() if k in names}
    if "hidden" in out and isinstance(out["hidden"], list):
        out["hidden"] = tuple(out["hidden"])
    return out


def write_folder(head, directory: str | os.PathLike, manifest: dict | None) -> tuple[Path, dict]:
    """Write a fitted ``head`` into ``directory``: stale files out, its model, ``norm.npz``, ``manifest.json``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in HEAD_FILES:
        (d / name).unlink(missing_ok=True)
    head._save_model(d)
    if getattr(head, "norm_stats_", None):
        np.savez(d / "norm.npz", **head.norm_stats_)
    man = dict(manifest or {})
    man.update(
        kind=head.kind,
        classes=[str(c) for c in head.classes_],
        feature_width=int(head.n_features_in_),
        params=jsonable(head.get_params()),
    )
    man.setdefault("created", time.time())
    (d / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))
    return d, man


def read_manifest(directory: str | os.PathLike) -> dict:
    d = Path(directory)
    try:
        return json.loads((d / "manifest.json").read_text())
    except FileNotFoundError:
        raise HeadError(f"{d} is not a featx head: no manifest.json. Heads are written by `featx fit-head`.") from None
    except ValueError as exc:
        raise HeadError(f"{d}/manifest.json is not valid JSON: {exc}") from None


def read_folder(cls, d: Path, man: dict):
    """A ``cls`` head from its folder: parameters, the kind's model, the normalisation and the fitted attributes."""
    try:
        head = cls(**known_params(cls, man.get("params", {})))
        head._load_model(d)
    except (OSError, KeyError, ValueError) as exc:
        raise HeadError(f"Cannot load the {man.get('kind')} head in {d}: {exc}") from None
    head.norm_stats_ = {}
    if (d / "norm.npz").exists():
        with np.load(d / "norm.npz", allow_pickle=False) as z:
            head.norm_stats_ = {k: z[k] for k in z.files}
    if head.normalise == "standard" and not head.norm_stats_:
        raise HeadError(f"Cannot load the {man.get('kind')} head in {d}: normalise='standard' but norm.npz is missing.")
    head.classes_ = np.array(man["classes"], dtype=object)
    head.n_features_in_ = int(man["feature_width"])
    head.manifest_ = man
    return head
