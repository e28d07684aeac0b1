"""`featx fit-head` and `featx compare`: heads on cached features, one options object each."""

from __future__ import annotations

import click

from ..normalise import NORMALISATIONS
from ..options import CompareOptions, FitHeadOptions
from .group import cli
from .types import DROPOUT, POSITIVE_FLOAT, POSITIVE_INT, HeadKinds, Widths, cache_dir_option, home_option, option_type

FIT, COMPARE = FitHeadOptions, CompareOptions  # whose fields give the options their types


@cli.command("fit-head")
@click.option("--head", "kind", type=option_type(FIT, "head"), default="dense",
              show_default=True,
              help="dense: Keras Dense+BN+Dropout; logreg: logistic regression; lightgbm: boosted trees; "
                   "auto: search head x extraction(s) x normalisation and keep the best.")
@click.option("--data", type=click.Path(), help="Dataset folder/CSV given to extract [default: the latest extraction].")
@click.option("-b", "--backbone", help="Use the latest extraction with this backbone; a,b fuses several.")
@click.option("--extraction", multiple=True,
              help="An extraction name or prefix from `featx cache list`; repeat it to fuse extractions.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: heads/<backbone>-<head>-<time>].")
@click.option("--seed", type=option_type(FIT, "seed"), default=0, show_default=True)
@click.option("--selection", type=option_type(FIT, "selection"), default="auto", show_default=True,
              help="Choose hyper-parameters by K-fold CV on train (then refit on all of train) or on the val "
                   "split; auto: val when the data has one, else cv.")
@click.option("--folds", type=option_type(FIT, "folds"), default=5, show_default=True, help="K of the cross-validation.")
@click.option("--val-split", type=option_type(FIT, "val_split"), default=0.2, show_default=True,
              help="With --selection val on data without a val split: the stratified fraction of train held out.")
@click.option("--refit-all", is_flag=True, help="With a val split: refit the chosen configuration on train+val.")
@click.option("--normalise", type=click.Choice(NORMALISATIONS),
              help="Feature normalisation before the head [default: none; searched by --head auto].")
@click.option("--time-budget", type=option_type(FIT, "time_budget"),
              help="Seconds the search may take [default: 90 for auto, where the logreg screen always completes; "
                   "20 for dense, where data too large for K folds + refit in 2 budgets is chosen on fold 1].")
@click.option("--auto-heads", type=HeadKinds(), default="logreg,lightgbm,dense", show_default=True,
              help="auto: the head kinds to try, comma-separated.")
@click.option("--class-weight", type=option_type(FIT, "class_weight"), help="Weigh classes inversely to their frequency.")
@click.option("--top-k", type=option_type(FIT, "top_k"), default=5, show_default=True, help="k of the reported top-k accuracy.")
@click.option("--calibrate", is_flag=True,
              help="Fit a temperature on the val split; predict then applies it (ECE before/after in metrics.json).")
@click.option("--hidden", type=Widths(), help="dense: hidden widths, e.g. 256 or 512,128 [default: searched, 256 first].")
@click.option("--dropout", type=DROPOUT, help="dense: dropout after each hidden layer [default: searched, 0.5 first].")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "rmsprop"]), default="adam", show_default=True,
              help="dense: optimizer.")
@click.option("--lr", type=POSITIVE_FLOAT, help="dense: learning rate [default: searched, 1e-3 first].")
@click.option("--epochs", type=POSITIVE_INT, default=60, show_default=True,
              help="dense: maximum epochs (EarlyStopping restores the best).")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True, help="dense: batch size.")
@click.option("--C", "C", type=POSITIVE_FLOAT, help="logreg: inverse regularisation [default: chosen by the selection].")
@click.option("--n-estimators", type=POSITIVE_INT, help="lightgbm: trees [default: early-stopped, up to 1000].")
@click.option("--num-leaves", type=click.IntRange(2, 131072), default=15, show_default=True,
              help="lightgbm: leaves per tree.")
@click.option("-v", "--verbose", is_flag=True, help="dense: show Keras' per-epoch output (so does featx --verbose).")
@cache_dir_option
@home_option
@click.pass_obj
def fit_head(obj, kind, data, backbone, extraction, out, seed, selection, folds, val_split, refit_all, normalise,
             time_budget, auto_heads, class_weight, top_k, calibrate, hidden, dropout, optimizer, lr, epochs, batch_size,
             C, n_estimators, num_leaves, verbose):
    """Train a classifier head on cached features, in seconds.

    With no --data/--backbone/--extraction it uses the most recent
    `featx extract`. Hyper-parameters not given are chosen by 5-fold CV on
    train (then refit on all of train), or on the data's val split when it
    has one. Prints accuracy, top-k, macro-F1, per-class precision/recall and
    the confusion matrix; saves the head (no pickle), metrics.json,
    confusion.png and, for dense, curves.png.

    \b
    Examples:
      featx fit-head --head dense
      featx fit-head --head dense --hidden 512,128 --dropout 0.3 --lr 3e-4
      featx fit-head --head logreg --data data/ --backbone resnet50 --normalise sqrt-l2
      featx fit-head --head logreg --extraction vgg16-150px-avg-aaaa --extraction vgg16-150px-avg-bbbb
      featx fit-head --head auto
    """
    from ..fitting import fit_with

    params = {
        "dense": dict(hidden=hidden, dropout=dropout, optimizer=optimizer, lr=lr,
                      epochs=epochs, batch_size=batch_size, verbose=1 if verbose or obj.get("verbose") else 0),
        "logreg": dict(C=C),
        "lightgbm": dict(n_estimators=n_estimators, num_leaves=num_leaves),
        "auto": {},
    }[kind]
    params = {k: v for k, v in params.items() if v is not None}
    if normalise and kind != "auto":
        params["normalise"] = normalise
    options = FitHeadOptions(
        head=kind, data=data, backbone=backbone, extraction=list(extraction) or None, cache_dir=obj["cache_dir"],
        out=out, seed=seed, selection=selection, folds=folds, val_split=val_split, refit_all=refit_all,
        class_weight=class_weight, top_k=top_k, time_budget=time_budget, auto_heads=auto_heads, home=obj["home"],
        calibrate=calibrate, params=params)
    result = fit_with(options, log=lambda m: click.echo(m, err=True))
    click.echo(f"features: {result.features}")
    if result.leaderboard:
        click.echo(result.leaderboard)
    click.echo(f"head: {result.metrics['head']}" + (" (refit on train+val)" if result.metrics["refit_all"] else ""))
    click.echo(result.report)
    if calibrate:
        c = result.metrics["calibration"]
        click.echo(f"calibration: temperature {c['temperature']:.3f}, "
                   f"val ECE {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f}")
    click.echo(f"saved to {result.directory}")


@cli.command()
@click.option("--data", type=click.Path(), help="The dataset [default: the one extracted most recently].")
@click.option("--heads", type=HeadKinds(), default="dense,logreg,lightgbm", show_default=True,
              help="Comma-separated head kinds.")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV path [default: heads/compare-<time>.csv].")
@click.option("--seed", type=option_type(COMPARE, "seed"), default=0, show_default=True)
@click.option("--selection", type=option_type(COMPARE, "selection"), default="auto", show_default=True,
              help="Score by K-fold CV on train or on the val split; auto: val when the data has one.")
@click.option("--folds", type=option_type(COMPARE, "folds"), default=5, show_default=True)
@click.option("--val-split", type=option_type(COMPARE, "val_split"), default=0.2, show_default=True)
@cache_dir_option
@home_option
@click.pass_obj
def compare(obj, data, heads, out, seed, selection, folds, val_split):
    """Leaderboard: every cached extraction of a dataset (and fusion) x head kind x normalisation.

    Extract the same data with several backbones, sizes or --cut-blocks
    first; compare scores each head on each by the selection protocol
    (5-fold CV on train, or the val split) and prints the table that
    `fit-head --head auto` prints (CSV on disk).

    \b
    Example:
      featx extract -b resnet50 data/ && featx extract -b efficientnetb0 data/
      featx compare
    """
    from ..comparing import compare_with

    options = CompareOptions(data=data, cache_dir=obj["cache_dir"], heads=heads, out=out, seed=seed, selection=selection,
                             folds=folds, val_split=val_split, home=obj["home"])
    board = compare_with(options, log=lambda m: click.echo(m, err=True))
    click.echo(board.table())
    click.echo(f"wrote {board.csv_path}")
