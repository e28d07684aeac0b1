"""The leaderboard of every head kind on every extraction of a dataset: what :func:`featx.compare` runs."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import Cache
from .features import find_view, make_splits
from .fitting import BOARD_COLUMNS, check_labeled, dataset_parts, label_names
from .options import CompareOptions
from .outputs import results_dir


@dataclass
class Leaderboard:
    """Ranked trials of the head search (the table ``fit-head --head auto`` prints too)."""

    rows: list[dict]
    csv_path: Path | None = None
    protocol: str = "val"

    def table(self) -> str:
        from .selection import leaderboard_table

        columns = BOARD_COLUMNS[self.protocol] + (["test_acc"] if any("test_acc" in r for r in self.rows) else [])
        return leaderboard_table(self.rows, columns)


def compare_with(opts: CompareOptions, log=None) -> Leaderboard:
    """Score every head kind of ``opts`` on every feature set of its dataset and write the CSV (see :func:`featx.compare`)."""
    from .fusion import fuse, labels
    from .selection import cv_protocol, feature_set_names, search, val_protocol

    cache = Cache(opts.cache_dir)
    source = find_view(cache, opts.data).source
    parts = dataset_parts(cache, source)
    feats, _, widths = fuse(parts)
    check_labeled(feats)
    names, seed = feats.class_names, opts.seed
    kind = opts.selection if opts.selection != "auto" else ("val" if "val" in feats.splits else "cv")
    test = feats.only("test") if "test" in feats.splits else None
    if kind == "val":
        sp = make_splits(feats, opts.val_split, seed)
        X = np.concatenate([sp.train.X, sp.val.X])
        y = np.concatenate([label_names(sp.train, names), label_names(sp.val, names)])
        protocol = val_protocol(len(sp.train), len(sp.val), seed)
    else:
        train = feats.only("train")
        X, y = train.X, label_names(train, names)
        protocol = cv_protocol(train.y, names, opts.folds, seed)
    labels_ = labels(parts)
    offsets = np.cumsum([0] + widths)
    sets = {}
    for combo in feature_set_names(labels_):
        cols = [j for n in combo for j in range(offsets[labels_.index(n)], offsets[labels_.index(n) + 1])]
        sets["+".join(combo)] = cols
    trials = search({k: X[:, c] for k, c in sets.items()}, y, protocol, kinds=list(opts.heads), base={"seed": seed},
                    budget_s=float("inf"), finalists=len(sets) * 3, log=log)
    rows = []
    for t in trials:
        row = t.row(kind)
        if t.estimator is not None and test is not None:
            row["test_acc"] = round(float((t.estimator.predict(test.X[:, sets[t.features]])
                                           == label_names(test, names)).mean()), 4)
        rows.append(row)
    path = Path(opts.out) if opts.out else results_dir("head", opts.home) / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return Leaderboard(rows, path, kind)


__all__ = ["Leaderboard", "compare_with"]
