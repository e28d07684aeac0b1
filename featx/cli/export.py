"""`featx export`: cached features as a Parquet, Arrow or NPZ file."""

from __future__ import annotations

import click

from .group import cli
from .types import cache_dir_option


@cli.command("export")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), help="Dataset folder/CSV given to extract [default: the latest extraction].")
@click.option("-b", "--backbone", help="Use the latest extraction with this backbone; a,b exports several side by side.")
@click.option("--extraction", multiple=True,
              help="An extraction name or prefix from `featx cache list`; repeat it for one embedding column each "
                   "(e.g. the taps of --taps 0,1,2).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Only the rows of this split.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "arrow", "npz"]),
              help="File format [default: from OUT's suffix (.parquet, .arrow/.feather, .npz), else parquet].")
@cache_dir_option
@click.pass_obj
def export(obj, out, data, backbone, extraction, split, fmt):
    """Write cached features to a Parquet, Arrow or NPZ file: one row per image.

    Columns: sha256, path, split, label, and embedding as a
    fixed_size_list<float32>[D] (one embedding_<tap> column per further
    extraction); the extraction's spec is in the file's metadata. Rows are
    streamed from the cache, so memory stays flat. See docs/export.md for
    DuckDB, pandas and Spark recipes.

    \b
    Examples:
      featx export features.parquet
      featx export train.parquet --data data/ --split train
      featx export taps.parquet --extraction vgg16-150px-avg-aaaa --extraction vgg16-150px-avg-cut1-bbbb
    """
    from ..tables import export as run

    result = run(out, data=data, backbone=backbone, extraction=list(extraction) or None, split=split, format=fmt,
                 cache_dir=obj["cache_dir"])
    click.echo(result.summary())
