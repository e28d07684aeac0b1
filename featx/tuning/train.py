"""Phase two, in order: resolve the start, rebuild, check parity, warm up, unfreeze, train, score, save.

Each step is a function of its own; :func:`finetune` reads as the list of
them. What the run was asked is one :class:`~featx.tuning.options.FinetuneOptions`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..heads import HEADS, load_head, read_manifest
from ..runtime import import_keras
from ..spec import specs_of_manifest
from .build import PARITY_SAMPLE, _parity_sample, build_end_to_end, parity_check
from .data import _Batches, load_pixels
from .interrupt import _interrupted, _StopOnCtrlC
from .optim import make_optimizer
from .options import FinetuneError, FinetuneOptions, default_unfreeze_blocks, size_band
from .rows import proba_in_order, seed_head, start_from, write_rows
from .unfreeze import (available_blocks, check_unfreeze, describe_unfrozen, layer_table, lr_scales, param_counts,
                       set_trainable)


@dataclass
class FinetuneResult:
    directory: Path
    model: object
    metrics: dict
    layer_table: str = ""
    trainable_params: int = 0
    frozen_params: int = 0
    parity_max_diff: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """What the steps share: the options, the rows, the model and what has been said."""

    opts: FinetuneOptions
    directory: Path
    start: object
    log: object
    home: object = None
    keras: object = None
    strategy: object = None
    model: object = None
    base: object = None
    spec: object = None
    read: object = None
    native: tuple | None = None
    classes: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    val: tuple = ()  # (pixels, labels, unreadable)
    unreadable: dict = field(default_factory=dict)
    after_val: dict = field(default_factory=dict)

    def scope(self):
        """The distribution strategy's scope (several GPUs, TensorFlow), else nothing."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()


def finetune(
    head: str | os.PathLike | None = None,
    *,
    unfreeze: int | str | None = None,
    unfreeze_blocks: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-5,
    lr_decay: float = FinetuneOptions.DEFAULT_LR_DECAY,
    optimizer: str = "adam",
    augment: str | Sequence[str] | None = None,
    class_weight: str | None = None,
    patience: int = 3,
    warmup_epochs: int | None = None,
    seed: int = 0,
    export: bool = True,
    workers: int | None = None,
    weights: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
    data=None,
    options: FinetuneOptions | None = None,
    log=print,
) -> FinetuneResult:
    """Fine-tune backbone + head end to end, starting from a fitted head.

    Parameters
    ----------
    head : path, optional
        Any head ``fit-head`` writes (dense, logreg, LightGBM; fused,
        earlier-tap, normalised); the latest head by default. A LightGBM head
        starts from a logreg softmax fitted on the same features and rows.
    unfreeze, unfreeze_blocks, epochs, batch_size, lr, lr_decay, optimizer, augment,
    class_weight, patience, warmup_epochs, seed, export, workers
        The run's settings, see :class:`FinetuneOptions`; or pass ``options``.
        Every value is checked before the backbone is built or an image read.
    weights : path, optional
        The new place of a moved weights file (its sha256 must match).
    home : path, optional
        The featx home: where ``heads/latest`` is read and ``models/`` written.
    data : arrays, optional
        For a head fitted on arrays recorded under a name: the same arrays
        (``(x, y)``, dict of splits), checked row by row against the cached
        keys. The model then takes uint8 arrays at their own size.

    Returns
    -------
    FinetuneResult
    """
    from ..outputs import default_dir, resolve_result, results_dir

    opts = options or FinetuneOptions(
        unfreeze=unfreeze, unfreeze_blocks=unfreeze_blocks, epochs=epochs, batch_size=batch_size, lr=lr,
        lr_decay=lr_decay, optimizer=optimizer, augment=augment, class_weight=class_weight, patience=patience,
        warmup_epochs=warmup_epochs, seed=seed, export=export, workers=workers)
    head_dir = resolve_result("head", head, home) if head else seed_head(home)
    man = read_manifest(head_dir)
    if man.get("kind") not in HEADS:
        raise FinetuneError(f"{head_dir} is a {man.get('kind')} head; fine-tuning starts from one of "
                            f"{', '.join(HEADS)}.")
    specs = specs_of_manifest(man, where=f"Head {head_dir}")
    check_unfreeze(specs, opts.unfreeze, opts.unfreeze_blocks)
    log(f"head: {head_dir}")
    directory = Path(out) if out else default_dir(results_dir("model", home), specs[0].backbone, "finetune")
    start = start_from(head_dir, man, cache_dir, directory, log)
    run = _Run(opts, directory, start, log, home=home, spec=specs[0], classes=list(man["classes"]),
               notes=list(start.notes))
    unfreeze_blocks, chosen = _unfreeze_setting(opts, specs, len(start.splits.train))
    if start.features.view.layout == "arrays":
        from ..arrays import row_reader

        run.read, run.native = row_reader(data, start.features.view.source, start.features.paths,
                                          start.features.sha256)
    run.keras = import_keras()
    run.strategy = _strategy(run.keras)
    augment = opts.augment_for(len(start.splits.train))
    diff = _rebuild(run, augment, weights)
    before = _load_validation(run)
    directory.mkdir(parents=True, exist_ok=True)
    if start.head_dir != head_dir:  # rows chosen here, not by the data's split: listed
        write_rows(directory / "validation.csv", start.splits.val, run.classes)
    log(f"augmentation: {_augment_line(augment, opts, len(start.splits.train))}")
    hist, train_s, n_unfrozen, table, counts, start_weights = _train(run, unfreeze_blocks, chosen, augment)
    best_epoch = _keep_best(run, hist, before, start_weights)
    after, before = _score(run, before)
    _save(run, head_dir, man)
    metrics = _write_metrics(run, hist, best_epoch, {
        "head": str(head_dir), "start_head": str(start.head_dir), "backbone": run.spec.backbone,
        "unfreeze": opts.unfreeze, "unfreeze_blocks": unfreeze_blocks, "unfreeze_default": opts.unfreeze_by_default,
        "lr": opts.lr, "lr_decay": opts.lr_decay, "augment": augment, "unfrozen_backbone_layers": n_unfrozen,
        "trainable_params": counts[0], "non_trainable_params": counts[1], "train_seconds": train_s,
        "parity_max_diff": diff, "before": before, "after": after})
    return FinetuneResult(directory, run.model, metrics, table, counts[0], counts[1], diff, run.notes)


def _write_metrics(run: _Run, hist, best_epoch: int, record: dict) -> dict:
    """metrics.json (the record, the epochs, the Keras history, notes) and curves.png."""
    from ..metrics import plot_curves

    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    metrics = {**record, "epochs_run": len(history.get("loss", [])), "best_epoch": best_epoch, "history": history,
               "unreadable": run.unreadable, "notes": run.notes}
    (run.directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(history, run.directory / "curves.png", f"{run.spec.backbone}: fine-tuning", best_epoch=best_epoch)
    return metrics


def _unfreeze_setting(opts: FinetuneOptions, specs, n_train: int) -> tuple[int | None, str]:
    """The blocks to unfreeze (None with ``--unfreeze``) and, when chosen by data size, why."""
    if not opts.unfreeze_by_default:
        return opts.unfreeze_blocks, ""
    k = default_unfreeze_blocks(n_train)
    most = available_blocks(specs)
    if most is not None:
        k = min(k, most)
    return k, f"for {n_train:,} training images ({size_band(n_train)}: docs/finetune.md)"


def _augment_line(augment: dict, opts: FinetuneOptions, n_train: int) -> str:
    what = ",".join(f"{k}={v:g}" for k, v in augment.items()) or "none"
    if opts.augment is None:
        return f"{what} (the default for {size_band(n_train)} training images; change it with --augment)"
    return what


def _rebuild(run: _Run, augment: dict, weights) -> float:
    """The end-to-end model from the start head, under the distribution strategy; parity-checked."""
    sp = run.start.splits
    with run.scope():
        run.model, run.base, _ = build_end_to_end(run.start.head_dir, augment, run.opts.seed, weights=weights,
                                                  native=run.native)
        rows = _parity_sample(sp.val.y, PARITY_SAMPLE)
        run.log(f"parity check on {len(rows)} validation images from {len(np.unique(sp.val.y[rows]))} classes...")
        diff = parity_check(run.model, run.base, run.start.head_dir, sp, run.spec.input_size, run.spec.precision,
                            sample=PARITY_SAMPLE, read=run.read)
    run.log(f"parity ok: features match the cache to {diff:.2e} of their scale")
    return diff


def _load_validation(run: _Run) -> dict:
    """Decode the validation rows once; the start model's metrics on them."""
    from ..metrics import classification_metrics

    sp = run.start.splits
    pixels, kept, bad = load_pixels(list(sp.val.paths), run.spec.input_size, run.opts.workers, run.read)
    if not kept:
        raise FinetuneError(f"None of the {len(sp.val)} validation images can be read now (first: {bad[0][1]}).")
    run.val = (pixels, sp.val.y[kept], bad)
    run.log(f"validation: {_rows_note(len(kept), bad)}")
    proba = run.model.predict(pixels, batch_size=run.opts.batch_size, verbose=0)
    return {"val": classification_metrics(run.val[1], proba, run.classes)}


def _compile(run: _Run, scales: dict | None = None) -> None:
    keras, opts = run.keras, run.opts
    with run.scope():
        opt = make_optimizer(keras, opts.optimizer, opts.lr, run.spec.precision, scales)
        run.model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _train(run: _Run, unfreeze_blocks, chosen: str, augment: dict):
    """Warm up the head alone when it needs it, then train with the chosen blocks unfrozen."""
    from ..heads import _class_weights

    keras, opts, sp = run.keras, run.opts, run.start.splits
    warmup = opts.warmup_epochs if opts.warmup_epochs is not None else (0 if run.start.same_rows else 1)
    if opts.warmup_epochs is None and warmup == 0:
        run.log("warm-up: skipped, the head was fitted on exactly these training rows")
    train_ds = _Batches(list(sp.train.paths), sp.train.y, run.spec.input_size, opts.batch_size, True, opts.seed,
                        opts.workers, run.read, run.native, crop=augment.get("crop", 0.0))
    fit = dict(validation_data=run.val[:2], class_weight=_class_weights(sp.train.y, len(run.classes),
                                                                        opts.class_weight), verbose=2, shuffle=False)
    hist, stopping, t = None, None, time.perf_counter()
    with _StopOnCtrlC() as ctrl_c:
        try:
            start_weights = run.model.get_weights()  # the head it starts from, before any warm-up
            if warmup:
                run.log(f"warm-up: the head alone for {warmup} epoch(s), the backbone frozen...")
                set_trainable(run.model, run.base, run.spec.backbone)
                _compile(run)
                run.model.fit(train_ds, epochs=warmup, callbacks=[ctrl_c.callback(keras)], **fit)
            n_unfrozen, table, counts, scales = _unfreeze(run, unfreeze_blocks, chosen)
            _compile(run, scales)
            callbacks, stopping = _callbacks(run)
            run.log(f"training on {len(sp.train)} images, {len(train_ds)} batches an epoch, up to {opts.epochs} "
                    "epochs...")
            t = time.perf_counter()
            if not ctrl_c.requested:  # the batches are shuffled by the seed, not by Keras
                hist = run.model.fit(train_ds, epochs=opts.epochs, callbacks=[*callbacks, ctrl_c.callback(keras)],
                                     **fit)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C; leaving the except block frees the traceback that holds Keras' iterator
        finally:
            train_ds.close()  # the decode threads stop before anything else
    if hist is None or ctrl_c.requested:
        raise _interrupted(run.directory)
    hist.best_epoch_ = stopping.best_epoch + 1 if len(hist.history.get("loss", [])) else 0
    if train_ds.skipped:
        first = next(iter(train_ds.skipped.items()))
        run.notes.append(f"{len(train_ds.skipped)} training images could not be read and were left out of their "
                         "batches" + (f" ({train_ds.empty_batches} batches had none and were skipped)"
                                      if train_ds.empty_batches else "") + f" (first: {first[0]}: {first[1]})")
    run.unreadable = {"val": len(run.val[2]), "test": 0, "train": len(train_ds.skipped)}
    return hist, time.perf_counter() - t, n_unfrozen, table, counts, start_weights


def _unfreeze(run: _Run, unfreeze_blocks, chosen: str):
    opts = run.opts
    n_unfrozen = set_trainable(run.model, run.base, run.spec.backbone, opts.unfreeze, unfreeze_blocks)
    table = layer_table(run.base)
    counts = param_counts(run.model)
    run.log(f"unfroze: {describe_unfrozen(run.base, run.spec.backbone, opts.unfreeze, unfreeze_blocks, n_unfrozen, chosen)}")
    scales = lr_scales(run.model, run.base, run.spec.backbone, opts.lr_decay)
    if scales:
        lowest = min(scales.values())
        run.log(f"learning rates: {opts.lr:g} for the head and the top block, x{opts.lr_decay:g} a block below it "
                f"(down to {opts.lr * lowest:.3g}); change it with lr_decay")
    return n_unfrozen, table, counts, scales


def _callbacks(run: _Run):
    keras, opts = run.keras, run.opts
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=opts.patience, restore_best_weights=True)
    return [
        stopping,
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, opts.patience // 2),
                                          min_lr=opts.lr / 100),
        keras.callbacks.ModelCheckpoint(str(run.directory / "best.keras"), monitor="val_loss", save_best_only=True),
    ], stopping


def _keep_best(run: _Run, hist, before: dict, start_weights) -> int:
    """The best validation-loss epoch (restored by EarlyStopping), or the start if it scores lower."""
    from ..metrics import classification_metrics

    pixels, y_val, _ = run.val
    run.after_val = classification_metrics(y_val, run.model.predict(pixels, batch_size=run.opts.batch_size,
                                                                     verbose=0), run.classes)
    best_epoch = hist.best_epoch_
    if run.after_val["accuracy"] < before["val"]["accuracy"]:
        run.model.set_weights(start_weights)
        run.after_val = before["val"]
        best_epoch = 0
        run.notes.append("fine-tuning did not beat the head on validation; kept the starting weights")
    (run.directory / "best.keras").unlink(missing_ok=True)
    return best_epoch


def _score(run: _Run, before: dict) -> tuple[dict, dict]:
    """Test before and after, on the same readable rows."""
    from ..metrics import classification_metrics

    sp = run.start.splits
    after = {"val": run.after_val}
    if sp.test is None or not len(sp.test):
        return after, before
    pixels, kept, bad = load_pixels(list(sp.test.paths), run.spec.input_size, run.opts.workers, run.read)
    run.log(f"test: {_rows_note(len(kept), bad)}")
    run.unreadable["test"] = len(bad)
    if kept:
        y = sp.test.y[kept]
        after["test"] = classification_metrics(y, run.model.predict(pixels, batch_size=run.opts.batch_size,
                                                                    verbose=0), run.classes)
        before["test"] = classification_metrics(
            y, proba_in_order(load_head(run.start.head_dir), sp.test.X[kept], run.classes), run.classes)
    if bad:
        run.notes.append(f"test: {_rows_note(len(kept), bad)}")
    return after, before


def _save(run: _Run, head_dir: Path, man: dict) -> None:
    """model.keras (a stock optimizer, so it loads without featx), saved_model/, manifest.json, the latest pointer."""
    from ..outputs import set_latest

    directory, spec = run.directory, run.spec
    _compile(run)  # the discriminative optimizer is featx's class: not in the saved model
    run.model.save(directory / "model.keras")
    if run.opts.export:
        try:
            run.model.export(str(directory / "saved_model"), verbose=False)
        except Exception as exc:  # export needs TensorFlow; the .keras model is the primary artifact
            run.notes.append(f"SavedModel export skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    manifest = {**man, "kind": "end-to-end", "head": str(head_dir.resolve()), "input_size": spec.input_size,
                "input": "RGB uint8 pixels, squashed to input_size x input_size (bilinear)"}
    if run.native:
        manifest["input"] = f"uint8 arrays of shape {tuple(run.native)}, resized inside to input_size (bilinear)"
        manifest["input_shape"] = list(run.native)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    set_latest("model", directory, run.home)


def _rows_note(n: int, bad: list) -> str:
    if not bad:
        return f"{n} images"
    return (f"{n} images ({len(bad)} cannot be read now and are left out of both the before and after figures; "
            f"first: {bad[0][0]})")


def _strategy(keras):
    """All visible GPUs through tf.distribute when there are several (TensorFlow backend)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None
