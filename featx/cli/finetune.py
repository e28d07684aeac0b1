"""`featx finetune`: backbone and head trained end to end (phase two)."""

from __future__ import annotations

import sys

import click

from .group import cli
from .types import (COUNT, POSITIVE_FLOAT, POSITIVE_INT, SEED, Augmentations, LayersOrAll, cache_dir_option, home_option,
                    resolved)


@cli.command()
@click.option("--head", metavar="HEAD",
              help="A dense or logreg head: its folder, heads/latest, 'latest' or 'latest-dense' "
                   "[default: the latest dense or logreg head].")
@click.option("--unfreeze", type=LayersOrAll(),
              help="Unfreeze the backbone's last N layers with weights (BatchNorm excluded), or 'all'.")
@click.option("--unfreeze-blocks", type=POSITIVE_INT,
              help="Unfreeze the backbone's last K named blocks (1 = block5 on VGG16, conv5_block3 on ResNet50) "
                   "[default: 1, when neither option is given].")
@click.option("--epochs", type=POSITIVE_INT, default=10, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=1e-5, show_default=True, help="Learning rate (keep it low).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "rmsprop"]), default="adam", show_default=True)
@click.option("--augment", type=Augmentations(),
              help="Training-only augmentation: flip,rotate[=0.05],zoom[=0.1],shift[=0.1],contrast[=0.1]; "
                   "strengths in (0, 1].")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weigh classes inversely to their frequency.")
@click.option("--patience", type=COUNT, default=3, show_default=True, help="EarlyStopping patience on validation loss.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: models/<backbone>-finetune-<time>].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-export", is_flag=True, help="Skip the SavedModel export for serving.")
@click.option("-w", "--weights", type=click.Path(dir_okay=False),
              help="New place of a moved weights file (checked against the recorded sha256).")
@cache_dir_option
@home_option
@click.pass_obj
def finetune(obj, head, unfreeze, unfreeze_blocks, epochs, batch_size, lr, optimizer, augment, class_weight, patience,
             out, seed, no_export, weights):
    """Fine-tune backbone + trained head end to end (phase two).

    Rebuilds the extraction's exact backbone with the head on top, checks
    that it reproduces the head's probabilities on validation images, then
    trains with a low learning rate. By default the backbone's last block
    trains with the head (docs/finetune.md). BatchNorm layers stay in
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
    from ..finetuning import FinetuneInterrupted, finetune as run

    try:
        res = run(resolved(obj, "head", head), unfreeze=unfreeze, unfreeze_blocks=unfreeze_blocks, cache_dir=obj["cache_dir"], out=out,
                  epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, augment=augment,
                  class_weight=class_weight, patience=patience, seed=seed, export=not no_export, weights=weights,
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
