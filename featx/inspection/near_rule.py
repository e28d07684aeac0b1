"""When two distinct images are near duplicates: a cosine threshold, or a mutual nearest neighbour far nearer than the next."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InspectError


@dataclass(frozen=True)
class NearRule:
    """When two distinct images are near duplicates.

    A pair is near when either holds:

    1. **cosine**: their cosine similarity (standardised, L2-normalised
       features) is at or above ``threshold``; sure, whatever the data;
    2. **neighbourhood** (``adaptive``): they are each other's nearest
       neighbour, at least as similar as the median image is to its own
       nearest neighbour, and much nearer to each other than to anything
       else. "Much nearer" is Lowe's ratio test on distances, d1 / d2, the
       distance to the partner over the distance to the next neighbour
       (copies of the same photo, or images already found by rule 1, are
       skipped as the next neighbour), and it adapts to the embedding: the
       ratio must be at most ``max_ratio`` and an outlier among all images'
       ratios, ``z`` robust standard deviations (1.4826 MAD of the log
       ratio) below their median.

    A fixed cosine misses copies that a backbone's features move more (a
    mirror image, a crop, colour jitter): on hymenoptera with the VGG16 HED
    weights at 128 px, 90% crops score 0.63 to 0.96 and distinct photos up
    to 0.92. Such copies are still their original's mutual nearest
    neighbour with a ratio of at most 0.72, where mutually nearest distinct
    photos have 0.79 or more (docs/inspect.md).

    Parameters
    ----------
    threshold : float
        Cosine at or above which a pair is near (rule 1).
    adaptive : bool
        Also apply rule 2.
    max_ratio : float
        Largest distance ratio d1 / d2 of rule 2. Lowe's 0.8 let one pair of
        distinct photos through on hymenoptera (an ant and a bee, cosine
        0.70, ratio 0.79); 0.75 none, with the same recall of planted copies.
    z : float
        How many robust standard deviations below the median log ratio.
    """

    threshold: float = 0.95
    adaptive: bool = True
    max_ratio: float = 0.75
    z: float = 4.0

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise InspectError(f"near_threshold must be in (0, 1]. Received: near_threshold={self.threshold!r}")
        if not 0 < self.max_ratio < 1 or self.z < 0:
            raise InspectError(f"NearRule needs 0 < max_ratio < 1 and z >= 0. "
                               f"Received: max_ratio={self.max_ratio!r}, z={self.z!r}")

    def describe(self) -> str:
        if not self.adaptive:
            return f"cosine >= {self.threshold:g}"
        return (f"cosine >= {self.threshold:g}, or mutual nearest neighbours with distance ratio "
                f"<= min({self.max_ratio:g}, {self.z:g} robust SD under the median)")


def neighbourhood_pairs(nbrs: np.ndarray, sims: np.ndarray, rule: NearRule) -> tuple[list, dict]:
    """Rule 2 of :class:`NearRule` on each row's nearest neighbours (most similar first).

    Returns ``([(i, j, ratio), ...], stats)`` with ``i < j``; ``stats`` holds
    the medians and the ratio cut the data gave.
    """
    n = len(nbrs)
    stats = {"nn_similarity_median": None, "log_ratio_median": None, "log_ratio_mad": None, "ratio_cut": None}
    if n < 3 or nbrs.shape[1] < 2:
        return [], stats
    # Partners at or above the cosine threshold are already near: the
    # neighbourhood starts after them (a photo and its copy share neighbours).
    below = sims < rule.threshold
    first = np.argmax(below, axis=1)
    has1 = below.any(axis=1)
    rest = below.copy()
    rest[np.arange(n), first] = False
    second = np.argmax(rest, axis=1)
    has2 = has1 & rest.any(axis=1)
    r = np.arange(n)
    nn = np.where(has1, nbrs[r, first], -1)
    s1 = np.where(has1, sims[r, first], np.nan)
    s2 = np.where(has2, sims[r, second], np.nan)
    ok = has2 & (s1 < 1)
    if ok.sum() < 3:
        return [], stats
    log_ratio = 0.5 * (np.log1p(-np.minimum(s1[ok], 1 - 1e-7)) - np.log1p(-np.minimum(s2[ok], 1 - 1e-7)))
    med = float(np.median(log_ratio))
    mad = 1.4826 * float(np.median(np.abs(log_ratio - med)))
    floor = float(np.median(s1[has1]))
    cut = float(min(rule.max_ratio, np.exp(med - rule.z * mad)))
    stats = {"nn_similarity_median": round(floor, 5), "log_ratio_median": round(med, 5),
             "log_ratio_mad": round(mad, 5), "ratio_cut": round(cut, 5)}
    out = []
    for i in np.flatnonzero(has2 & (s1 >= floor)):
        j = nn[i]
        if j <= i and nn[j] == i and has2[j]:
            continue  # each mutual pair once, from its smaller row
        if nn[j] != i or not has2[j]:
            continue
        ratio = float(np.sqrt((1 - s1[i]) / max(1 - max(s2[i], s2[j]), 1e-12)))
        if ratio <= cut:
            out.append((int(min(i, j)), int(max(i, j)), ratio))
    return out, stats
