"""Which rows fine-tuning trains and validates on, and the head it starts from.

Validation must be rows the starting head has not seen, or "before", early
stopping and the best epoch all choose on nothing (issue #22: a head refit
on all of train, validated on a split of train, read 0.994 from epoch 1).
So:

- a head validated on held-out rows (the data's val split, or its own
  stratified split of train) records them, and fine-tuning validates on
  exactly those rows and trains on the rest of train;
- a head chosen by cross-validation (refit on all of train) gives up its
  selection's held-out fold: fold 1 of the recorded ``StratifiedKFold``
  (same folds, seed and row order as ``fit-head``);
- a head refit on train + val gives up the val rows it recorded.

In the last two cases the head has seen those rows, so fine-tuning starts
from the same configuration refit on the training rows only (seconds, on
cached features), written to ``start-head/`` beside the model and said in
the log. A LightGBM head has no layer to start from: a logreg softmax is
fitted on the same cached features and training rows instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FeatxError, HeadError
from ..heads import load_head, make_head
from .build import SEED_KINDS
from .options import FinetuneError


@dataclass
class Start:
    """The head fine-tuning starts from and the rows it trains and validates on.

    ``same_rows`` says whether ``head_dir``'s head was fitted on exactly
    ``splits.train`` (then the head needs no warm-up).
    """

    head_dir: Path
    features: object
    splits: object
    same_rows: bool
    notes: list[str] = field(default_factory=list)


def head_features(man: dict, cache_dir):
    """The cached features the head was fitted on (fused in its order when it fused several)."""
    from ..features import load_features

    names = [e["name"] for e in man.get("extractions") or []] or [man["extraction"]]
    try:
        parts = [load_features(man.get("source"), cache_dir=cache_dir, extraction=n) for n in names]
    except FeatxError as exc:
        raise FinetuneError(f"The features the head was fitted on are not in the cache: {exc}") from None
    if len(parts) == 1:
        feats = parts[0]
    else:
        from ..fusion import fuse

        feats = fuse(parts)[0]
    classes = list(man["classes"])
    if feats.class_names != classes:
        raise HeadError(f"The cached dataset's classes {feats.class_names} differ from the head's {classes}.")
    return feats


def _split_rows(man: dict, cache_dir, seed: int | None = None):
    """Train and validation rows for fine-tuning, and whether the head has seen the validation rows.

    Returns ``(features, splits, seen)``: ``seen`` is "" when the head held
    the validation rows out, else why it has seen them.
    """
    from ..features import Splits, make_splits
    from ..selection import cv_protocol

    feats = head_features(man, cache_dir)
    selection = man.get("selection") or {}
    params = man.get("params") or {}
    if seed is None:
        seed = int(selection.get("seed", params.get("seed")) or 0)
    test = feats.only("test") if "test" in feats.splits else None
    val_sha = selection.get("val_sha256")
    if val_sha:
        is_val = np.isin(feats.sha256, np.asarray(val_sha, dtype=object))
        seen = "was refit on train+val" if man.get("refit_all") or selection.get("refit_all") else ""
        train_rows = np.isin(feats.split, ["train", "val"]) & ~is_val
        return feats, Splits(feats.subset(train_rows), feats.subset(is_val), test, made_val=False), seen
    if selection.get("protocol") == "cv" and selection.get("folds"):
        train = feats.only("train")
        try:
            fit, held = cv_protocol(train.y, feats.class_names, int(selection["folds"]), seed).pairs[0]
        except HeadError as exc:
            raise FinetuneError(f"Too little data to fine-tune with a validation split: {exc}") from None
        seen = f"was chosen by {selection['folds']}-fold cross-validation and refit on all of train"
        return feats, Splits(train.subset(fit), train.subset(held), test, made_val=True), seen
    # an older manifest without a selection record: a stratified split of train with the head's seed
    val_split = float(selection.get("val_split") or man.get("val_split") or 0.2)
    try:
        sp = make_splits(feats, val_split, seed)
    except HeadError as exc:
        raise FinetuneError(f"Too little data to fine-tune with a validation split: {exc}") from None
    return feats, sp, "records no held-out rows"


def _digest(sha256) -> str:
    return hashlib.sha256("\n".join(sorted(str(s) for s in sha256)).encode()).hexdigest()


def _names(rows, classes) -> np.ndarray:
    return np.asarray(classes, dtype=object)[rows.y]


def start_from(head_dir: Path, man: dict, cache_dir, out_dir: Path, log=print) -> Start:
    """The rows to fine-tune on, and the head to start from (refit when it has seen the validation rows)."""
    from ..selection import heads_split_record

    feats, sp, seen = _split_rows(man, cache_dir)
    classes = list(man["classes"])
    counts = np.bincount(sp.train.y, minlength=len(classes))
    if len(sp.val) < 2 or counts.min() < 2:
        raise FinetuneError(f"Too little data to fine-tune with a validation split: {len(sp.train)} training rows "
                            f"({min(counts)} in the smallest class, at least 2 needed) and {len(sp.val)} validation "
                            "rows (at least 2).")
    kind = man.get("kind")
    notes: list[str] = []
    if not seen and kind in SEED_KINDS:
        same = _digest(sp.train.sha256) == (man.get("selection") or {}).get("train_sha256_digest")
        return Start(head_dir, feats, sp, same, notes)
    params = dict(man.get("params") or {})
    if kind in SEED_KINDS:
        est = make_head(kind, **params)
        note = (f"the head {seen}, so it has seen every training row: fine-tuning validates on the "
                f"{len(sp.val)} rows of its selection's held-out {'fold 1' if sp.made_val else 'val split'} and starts "
                f"from the same {kind} configuration refit on the other {len(sp.train)} training rows")
    else:
        est = make_head("logreg", normalise=params.get("normalise", "none"), seed=int(params.get("seed") or 0),
                        class_weight=params.get("class_weight"))
        note = (f"a {kind} head has no layer to fine-tune: starting from a logreg softmax fitted on the same "
                f"cached features and {len(sp.train)} training rows")
        if seen:
            note += f" (the {kind} head {seen}; validating on its held-out {len(sp.val)} rows)"
    est.fit(np.asarray(sp.train.X), _names(sp.train, classes))
    record = heads_split_record("val", train_sha256=sp.train.sha256, val_sha256=sp.val.sha256,
                                seed=int(params.get("seed") or 0))
    keep = {k: v for k, v in man.items() if k not in ("kind", "params", "temperature", "created")}
    start_dir = est.save(out_dir / "start-head", {**keep, "selection": record, "refit_all": False,
                                                 "refit_from": str(head_dir)})
    truth = _names(sp.val, classes)
    val_acc = float(np.mean(np.asarray(est.predict(np.asarray(sp.val.X)), dtype=object) == truth))
    head_acc = float(np.mean(np.asarray(load_head(head_dir).predict(np.asarray(sp.val.X)), dtype=object) == truth))
    log(f"note: {note}; val accuracy {val_acc:.4f} (the {kind} head: {head_acc:.4f}"
        + (", on rows it has seen)" if seen else ")") + f"; written to {start_dir}")
    notes.append(note)
    return Start(start_dir, feats, sp, True, notes)


def seed_head(home=None) -> Path:
    """The head written most recently under the featx home (any kind: ``heads/latest``)."""
    from ..outputs import latest_head

    return latest_head(home)


def write_rows(path: Path, rows, classes) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label"])
        for p, y in zip(rows.paths, rows.y):
            w.writerow([p, classes[int(y)]])


def proba_in_order(est, X, classes):
    from ..heads import align_proba

    return align_proba(est, est.predict_proba(X), classes)
