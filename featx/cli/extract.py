"""`featx extract`: run a backbone over images once and cache their features."""

from __future__ import annotations

import click

from ..extraction.options import ExtractOptions
from . import show
from .group import cli
from .types import (COUNT, IMAGE_SIZE, IMAGE_SIZES, POSITIVE_INT, RAY_WORKERS_DEFAULT, SEED, WORKERS_DEFAULT, Taps,
                    cache_dir_option)


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("-b", "--backbone", default="resnet50", show_default=True, help="Backbone name (see `featx backbones`).")
@click.option(
    "-w", "--weights", default="imagenet", show_default=True,
    help="'imagenet' (Keras download), 'none' (seeded random) or PATH to a Keras weights file.",
)
@click.option("--image-size", type=IMAGE_SIZE,
              help=f"Square input size in px, {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} [default: the backbone's native size].")
@click.option("--pooling", type=click.Choice(ExtractOptions.CHOICES["pooling"]), default=ExtractOptions.pooling,
              show_default=True, help="Global pooling of every tap: average, maximum, both side by side (avg,max), "
                                      "or generalised mean (gem, p=3); docs/accuracy.md.")
@click.option("--cut-blocks", type=COUNT, default=0, show_default=True, help="Tap the backbone K named blocks before its end.")
@click.option("--taps", type=Taps(),
              help="Several taps from one forward pass, e.g. 0,1,2 (the output and the ends of the 1 and 2 blocks "
                   "before it), each cached as its own extraction; `fit-head --head auto` searches them all.")
@click.option("--batch-size", type=POSITIVE_INT, help="Images per forward pass [default: 128 on a GPU; on a CPU 256 at 32 px or less, 64 up to 64 px, 32 up to 90 px, 16 above].")
@click.option("--workers", type=POSITIVE_INT,
              help=f"Threads reading and decoding images [default: {WORKERS_DEFAULT}]; with --engine ray, embedding "
                   f"actors [default: {RAY_WORKERS_DEFAULT}].")
@click.option(
    "--precision", type=click.Choice(ExtractOptions.CHOICES["precision"]), default=ExtractOptions.precision,
    show_default=True,
    help="auto: mixed float16 on a GPU, float32 on a CPU.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of random weights (--weights none).")
@click.option("--store", type=click.Choice(ExtractOptions.CHOICES["store"]), default=ExtractOptions.store,
              show_default=True,
              help="dtype of the cached rows: float16 halves the disk (reads return float32); another extraction.")
@click.option("--tta", type=click.Choice(ExtractOptions.CHOICES["tta"]), default=ExtractOptions.tta, show_default=True,
              help="flip: each feature is the mean over the image and its mirror (one pass of a doubled batch); "
                   "another extraction.")
@click.option("--decode", type=click.Choice(ExtractOptions.CHOICES["decode"]), default=ExtractOptions.decode,
              show_default=True,
              help="Where JPEGs are decoded: gpu with nvImageCodec (pip install \"featx[gpu-decode]\"; the batch "
                   "stays on the device), cpu with Pillow, auto: the GPU where it can; the rows are the same "
                   "extraction either way (docs/gpu.md).")
@click.option("--strict", is_flag=True, help="Stop at the first bad image instead of skipping it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(ExtractOptions.CHOICES["engine"]), default=ExtractOptions.engine,
              show_default=True,
              help="Compute missing images here, or on a Ray cluster (pip install \"featx[ray]\"; shared cache root).")
@click.option("--address", help="--engine ray: 'auto', ray://HOST:10001 [default: $RAY_ADDRESS, else Ray on this machine].")
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="--engine ray: GPUs per embedding actor (1: one actor per GPU of this machine or cluster; 0.5: two per GPU; 0: CPU actors).")
@cache_dir_option
@click.pass_obj
def extract(obj, data, backbone, weights, image_size, pooling, cut_blocks, taps, batch_size, workers, precision, seed,
            store, tta, decode, strict, quiet, **engine):
    """Run a headless backbone over DATA once and cache pooled features.

    DATA is a folder of class folders, a folder with train/ val/ test/ split
    folders, a CSV with columns path,label[,split], a folder of unlabeled
    images, or image files; or arrays: an .npz file with x_train, y_train,
    x_test, y_test (x_val, y_val), an .npy file, or keras:cifar10 (cifar100,
    mnist, fashion_mnist) through keras.datasets. Images already cached (same bytes, same settings)
    are not recomputed; bad images are skipped and listed.

    \b
    Examples:
      featx extract --backbone resnet50 data/
      featx extract -b vgg16 --weights vgg16_notop.weights.h5 --image-size 128 data/
      featx extract -b efficientnetb0 --cut-blocks 3 labels.csv
      featx extract -b vgg16 --taps 0,1,2 data/ && featx fit-head --head auto
      featx extract --engine ray data/
      featx extract --engine ray --num-gpus-per-worker 1 data/   (every GPU of this machine, one actor each)
      featx extract --engine ray --address auto --num-gpus-per-worker 1 /mnt/shared/data/   (a GPU cluster)
      featx extract -b mobilenetv2 --image-size 96 data.npz
    """
    from ..extraction import extract as run

    source = data[0] if len(data) == 1 else list(data)
    result = run(
        source, backbone, weights=weights, image_size=image_size, pooling=pooling, cut_blocks=cut_blocks,
        taps=taps, batch_size=batch_size, cache_dir=obj["cache_dir"], strict=strict, workers=workers,
        precision=precision, seed=seed, progress=not quiet, store=store, tta=tta, decode=decode, **engine,
    )
    for path, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    show.report_ignored(result.ignored)
    click.echo(result.summary())
