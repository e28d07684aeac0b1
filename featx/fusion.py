"""Fusion: several extractions of the same images, joined row by row.

Two extractions of one dataset (two backbones, two taps of one backbone)
hold a row per image; fusing them concatenates each image's feature vectors
in the order given. Rows are matched by image content (sha256) and path, so
duplicate files at two paths stay two rows. An image missing from any one
extraction is left out and named.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import HeadError
from .features import Features


def feature_label(f: Features) -> str:
    """A short name for an extraction in reports: ``vgg16-150px``, ``vgg16-150px-cut1``, ``vgg16-150px-gem-flip``.

    Every option that changes what a row holds, beyond the default average
    pooling and no TTA, is in the name, so two feature sets never read the same.
    """
    s = f.settings
    pooling = "" if s.pooling == "avg" else "-" + s.pooling.replace(",", "")
    flip = "-flip" if getattr(s, "tta", "none") == "flip" else ""
    return f"{s.backbone}-{s.input_size}px{pooling}" + (f"-cut{s.cut_blocks}" if s.cut_blocks else "") + flip


def labels(parts: Sequence[Features]) -> list[str]:
    """Unique labels for extractions (the extraction name where two would read the same)."""
    out = [feature_label(p) for p in parts]
    return [p.extraction.name if out.count(lab) > 1 else lab for p, lab in zip(parts, out)]


def fuse(parts: Sequence[Features]) -> tuple[Features, list[str], list[int]]:
    """Join extractions of one dataset row by row and concatenate their features.

    Returns
    -------
    features : Features
        Rows present in every part, in the first part's order; ``X`` is the
        parts' features side by side; ``extraction`` and ``view`` are the first part's.
    left_out : list of str
        Paths of images missing from at least one part.
    widths : list of int
        The feature width of each part, in order.
    """
    if not parts:
        raise HeadError("Fusion needs at least one extraction.")
    first = parts[0]
    for p in parts[1:]:
        if p.view.source != first.view.source:
            raise HeadError(
                f"Cannot fuse extractions of different datasets: {first.extraction.name} is of {first.view.source}, "
                f"{p.extraction.name} of {p.view.source}. Extract the same data with each, and pass --data to pick it."
            )
        if p.class_names != first.class_names:
            raise HeadError(f"Cannot fuse {first.extraction.name} and {p.extraction.name}: their classes differ "
                            f"({first.class_names} vs {p.class_names}).")
    keys = [list(zip(p.sha256.tolist(), p.paths.tolist())) for p in parts]
    common = set(keys[0]).intersection(*map(set, keys[1:]))
    union = set().union(*map(set, keys))
    left_out = sorted(path for _, path in union - common)
    rows = [i for i, k in enumerate(keys[0]) if k in common]
    blocks = [first.X[rows]]
    for p, pk in zip(parts[1:], keys[1:]):
        index = {k: i for i, k in enumerate(pk)}
        blocks.append(p.X[[index[keys[0][i]] for i in rows]])
    base = first.subset(np.asarray(rows, dtype=np.int64))
    fused = Features(np.concatenate(blocks, axis=1), base.y, base.paths, base.sha256, base.split,
                     base.class_names, base.extraction, base.view)
    return fused, left_out, [p.X.shape[1] for p in parts]
