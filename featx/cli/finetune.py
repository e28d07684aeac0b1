"""`featx finetune`: backbone and head trained end to end (phase two)."""

from __future__ import annotations

import sys

import click

from ..errors import FeatxError
from ..tuning.options import FinetuneOptions
from .group import cli
from .types import (COUNT, POSITIVE_FLOAT, POSITIVE_INT, SEED, Augmentations, LayersOrAll, cache_dir_option, home_option,
                    resolved)


@cli.command()
@click.option("--head", metavar="HEAD",
              help="Any head fit-head wrote (dense, logreg, lightgbm; fused or tapped): its folder, heads/latest, "
                   "'latest' or 'latest-<kind>' [default: the latest head]. A LightGBM head starts from a logreg "
                   "softmax fitted on the same rows.")
@click.option("--unfreeze", type=LayersOrAll(),
              help="Unfreeze the backbone's last N layers with weights (BatchNorm excluded), or 'all'.")
@click.option("--unfreeze-blocks", type=POSITIVE_INT,
              help="Unfreeze the backbone's last K named blocks (1 = block5 on VGG16, conv5_block3 on ResNet50) "
                   "[default: by training-set size: 1 under 1,000 images, 2 under 10,000, else 3].")
@click.option("--epochs", type=POSITIVE_INT, default=FinetuneOptions.epochs, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=FinetuneOptions.batch_size, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=FinetuneOptions.lr, show_default=True,
              help="Learning rate of the head and the top unfrozen block (keep it low).")
@click.option("--lr-decay", type=click.FloatRange(0, 1, min_open=True), default=FinetuneOptions.lr_decay,
              show_default=True, help="Discriminative rates: the k-th unfrozen block below the top trains at "
                                      "lr * lr-decay^k (1 = one rate for all).")
@click.option("--warmup-epochs", type=COUNT,
              help="Epochs training the head alone first [default: 1, or 0 when the head was fitted on exactly "
                   "the training rows].")
@click.option("--optimizer", type=click.Choice(FinetuneOptions.OPTIMIZERS), default=FinetuneOptions.optimizer,
              show_default=True)
@click.option("--augment", type=Augmentations(),
              help="Training-only augmentation: " + ",".join(
                  f"{k}[={v:g}]" if k != "flip" else k for k, v in FinetuneOptions.AUGMENT_DEFAULTS.items())
                   + "; strengths in (0, 1] (crop: up to 0.9), or none [default: by training-set size, "
                     "docs/finetune.md].")
@click.option("--class-weight", type=click.Choice(FinetuneOptions.CLASS_WEIGHTS),
              help="Weigh classes inversely to their frequency.")
@click.option("--patience", type=COUNT, default=FinetuneOptions.patience, show_default=True, help="EarlyStopping patience on validation loss.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: models/<backbone>-finetune-<time>].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-export", is_flag=True, help="Skip the SavedModel export for serving.")
@click.option("-w", "--weights", type=click.Path(dir_okay=False),
              help="New place of a moved weights file (checked against the recorded sha256).")
@cache_dir_option
@home_option
@click.pass_obj
def finetune(obj, head, unfreeze, unfreeze_blocks, epochs, batch_size, lr, lr_decay, warmup_epochs, optimizer, augment,
             class_weight, patience, out, seed, no_export, weights):
    """Fine-tune backbone + trained head end to end (phase two).

    Rebuilds the extraction's exact backbone with the head on top, checks
    that it reproduces the head's probabilities on validation images, then
    trains with a low learning rate, lower again for earlier blocks. How much
    of the backbone trains and which augmentation is used are chosen by the
    training-set size unless given (docs/finetune.md); the choice is printed. BatchNorm layers stay in
    inference mode. The best validation epoch is kept, never worse than the
    head you started from. Writes model.keras (loads in safe mode without
    featx), saved_model/, metrics.json (before/after) and curves.png.

    \b
    Examples:
      featx finetune
      featx finetune --unfreeze-blocks 2 --epochs 5 --augment flip,rotate=0.1
      featx finetune --unfreeze 6
      featx finetune --head heads/resnet50-dense-20261122-101500 --unfreeze all --lr 1e-6
    """
    from ..tuning import FinetuneInterrupted, finetune as run

    try:
        options = FinetuneOptions(unfreeze=unfreeze, unfreeze_blocks=unfreeze_blocks, epochs=epochs,
                                  batch_size=batch_size, lr=lr, lr_decay=lr_decay, optimizer=optimizer, augment=augment,
                                  class_weight=class_weight, patience=patience, warmup_epochs=warmup_epochs, seed=seed,
                                  export=not no_export)
    except FeatxError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        res = run(resolved(obj, "head", head), options=options, cache_dir=obj["cache_dir"], out=out, weights=weights,
                  log=lambda m: click.echo(m, err=True), home=obj["home"])
    except FinetuneInterrupted as exc:
        click.echo(f"\nInterrupted: {exc}.", err=True)
        sys.exit(130)
    click.echo("backbone layers:")
    click.echo(res.layer_table)
    click.echo(f"trainable params: {res.trainable_params:,}   non-trainable params: {res.frozen_params:,}")
    m = res.metrics
    for split in m["after"]:
        b, a = m["before"].get(split), m["after"][split]
        click.echo(f"{split:>5}: accuracy {b['accuracy']:.4f} (head) -> {a['accuracy']:.4f} (fine-tuned)" if b else
                   f"{split:>5}: accuracy {a['accuracy']:.4f}")
    for note in res.notes:
        click.echo(f"note: {note}")
    click.echo(f"train time: {m['train_seconds']:.1f}s; saved to {res.directory}")
    click.echo(f"label images with it: featx predict --model {res.directory} DATA "
               "(featx predict without --model uses the latest head)")
