"""`featx inspect`: leakage, label errors, label budget and calibration, from the cache alone."""

from __future__ import annotations

import click

from .group import cli
from .types import SEED, cache_dir_option, home_option, resolved


@cli.command()
@click.option("--data", type=click.Path(), help="Dataset folder/CSV given to extract [default: the latest extraction].")
@click.option("-b", "--backbone", help="Use the latest extraction with this backbone.")
@click.option("--extraction", help="An extraction name or prefix from `featx cache list`.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: inspect/<backbone>-<time> in the featx home].")
@click.option("--head", metavar="HEAD",
              help="Head whose calibration to check, named as for `featx predict --head` "
                   "[default: the latest head, if fitted on these features].")
@click.option("--near-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Cosine similarity (standardised, L2-normalised features) at which images are near duplicates.")
@click.option("--near-rule", type=click.Choice(["adaptive", "fixed"]), default="adaptive", show_default=True,
              help="adaptive: also mutual nearest neighbours far nearer to each other than to the next image "
                   "(docs/inspect.md); fixed: the cosine threshold only.")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True,
              help="K of the stratified K-fold behind the label checks.")
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True,
              help="Random draws per point of the label-budget curve.")
@click.option("--map", "embedding", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
              help="2-D map; umap needs umap-learn.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@cache_dir_option
@home_option
@click.pass_obj
def inspect(obj, data, backbone, extraction, out, head, near_threshold, near_rule, folds, seeds, embedding, seed):
    """Check cached features: leakage, label errors, label budget, calibration.

    Works from the feature cache alone, in seconds: exact (sha256) and near
    (cosine) duplicates within and across splits, likely label errors from
    out-of-fold logistic regression, accuracy against labelled images per
    class, calibration error with the temperature that fixes it, and a 2-D
    map. Writes report.json, PNGs and CSVs of the flagged images.

    \b
    Examples:
      featx inspect
      featx inspect --data data/ --near-threshold 0.98 --out checks/
    """
    from ..inspection import inspect as run

    head = resolved(obj, "head", head)
    report = run(data, backbone=backbone, extraction=extraction, cache_dir=obj["cache_dir"], out=out, head=head,
                 near_threshold=near_threshold, near_rule=near_rule, folds=folds, seeds=seeds, embedding=embedding, seed=seed,
                 log=lambda m: click.echo(m, err=True), home=obj["home"])
    click.echo(report.summary())
    click.echo(f"wrote {report.directory}: {', '.join(p.name for p in report.files)}")
