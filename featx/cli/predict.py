"""`featx predict`: label images with a head, a fine-tuned model or ImageNet's classifier."""

from __future__ import annotations

import sys

import click

from ..errors import FeatxError
from .group import cli
from ..options import PredictOptions
from .types import HEAD_HELP, MODEL_HELP, POSITIVE_INT, cache_dir_option, home_option, option_type, resolved


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--head", metavar="HEAD", help=HEAD_HELP)
@click.option("--model", metavar="MODEL", help=MODEL_HELP)
@click.option("--imagenet", is_flag=True, help="ImageNet labels from the backbone's full classifier.")
@click.option("-b", "--backbone", default="inceptionv3", show_default=True, help="With --imagenet: the backbone.")
@click.option("-k", "--top-k", type=POSITIVE_INT, default=1, show_default=True, help="Labels and probabilities per image.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a CSV here instead of printing it.")
@click.option("--batch-size", type=option_type(PredictOptions, "batch_size"), default=32, show_default=True)
@click.option("-w", "--weights", type=click.Path(dir_okay=False),
              help="New place of a moved weights file (checked against the recorded sha256); "
                   "only images not cached yet need it.")
@click.option("--split", help="Only this split (train, val, test) of an .npz file or keras:NAME.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@cache_dir_option
@home_option
@click.pass_obj
def predict(obj, data, head, model, imagenet, backbone, top_k, out, batch_size, weights, split, quiet):
    """Label images with a fitted head (or a fine-tuned model, or ImageNet).

    DATA is image files, folders or a CSV, or an .npz file or keras:NAME
    (then the path column is the row index, see --split). Images are
    extracted through the cache with the head's own backbone and settings,
    so already-seen images cost nothing. Output: CSV rows
    path,label_1,prob_1,...,label_k,prob_k.

    \b
    Examples:
      featx predict new_images/
      featx predict --head heads/resnet50-dense-20261122-101500 -k 3 --out preds.csv photos/
      featx predict --model models/resnet50-finetune-20261122-110000 new_images/
      featx predict --model latest new_images/
      featx predict --head latest-logreg new_images/
      featx predict --head heads/latest new_images/
      featx predict --imagenet --backbone inceptionv3 -k 5 photo.jpg
    """
    from ..outputs import Predictions
    from ..predicting import predict_imagenet, predict_with

    if sum(bool(x) for x in (head, model, imagenet)) > 1:
        raise FeatxError("Pass at most one of --head, --model and --imagenet.")
    head, model = resolved(obj, "head", head), resolved(obj, "model", model)
    source = data[0] if len(data) == 1 else list(data)
    if imagenet:
        preds = predict_imagenet(source, backbone, top_k=top_k, batch_size=batch_size)
    elif model:
        from ..tuning import predict_images

        preds = predict_images(model, source, top_k=top_k, batch_size=batch_size, split=split)
    else:
        preds = predict_with(PredictOptions(data=source, head=head, cache_dir=obj["cache_dir"], batch_size=batch_size,
                                            progress=not quiet, weights=weights, split=split, home=obj["home"]))
    if not imagenet:
        click.echo(f"{'model' if model else 'head'}: {preds.source}", err=True)
    for path, reason in preds.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if out:
        Predictions.to_csv(preds, out, top_k)
        click.echo(f"wrote {len(preds.paths)} predictions to {out}", err=True)
    else:
        Predictions.to_csv(preds, sys.stdout, top_k)
