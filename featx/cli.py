"""The ``featx`` command line: a thin shell over the Python API.

Each command parses its options, calls one public function and prints what
it returns. Any :class:`~featx.errors.FeatxError` becomes a one-line message
and exit status 1; no traceback for user mistakes.
"""

from __future__ import annotations

import json
import sys
import time

import click

from .errors import FeatxError
from .runtime import quiet_frameworks


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatxError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted. Features already written stay cached; run the command again to resume.", err=True)
            ctx.exit(130)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _table(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--cache-dir",
    envvar="FEATX_CACHE_DIR",
    default="cache",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Cache root for features, dataset views and the hash memo (env: FEATX_CACHE_DIR).",
)
@click.version_option(package_name="featx")
@click.pass_context
def cli(ctx, cache_dir):
    """Transfer learning on image folders, with the backbone run only once.

    \b
    1. featx extract --backbone resnet50 data/     cache pooled features
    2. featx fit-head --head dense                 train a head in seconds
    3. featx finetune --unfreeze 60                fine-tune end to end (optional)
       featx predict new_images/                   label new images

    Run `featx COMMAND --help` for each command's options.
    """
    ctx.obj = {"cache_dir": cache_dir}
    quiet_frameworks()


# --------------------------------------------------------------------------- backbones


@cli.command()
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
def backbones(pattern, as_json):
    """List the backbones featx can extract with (optionally matching PATTERN, e.g. 'efficient*')."""
    from .backbones import list_backbones

    found = list_backbones(pattern)
    if as_json:
        click.echo(json.dumps([b.to_dict() for b in found], indent=2))
        return
    if not found:
        raise FeatxError(f"No backbone matches {pattern!r}. Run `featx backbones` to list them all.")
    rows = [[b.name, b.input_size, b.feature_width, f"{b.params / 1e6:.1f}M", b.preprocessing] for b in found]
    click.echo(_table(rows, ["name", "input", "features", "params", "preprocessing"]))


# --------------------------------------------------------------------------- extract


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("-b", "--backbone", default="resnet50", show_default=True, help="Backbone name (see `featx backbones`).")
@click.option(
    "-w", "--weights", default="imagenet", show_default=True,
    help="'imagenet' (Keras download), 'none' (seeded random) or PATH to a Keras weights file.",
)
@click.option("--image-size", type=int, help="Square input size in px [default: the backbone's native size].")
@click.option("--pooling", type=click.Choice(["avg", "max"]), default="avg", show_default=True, help="Global pooling.")
@click.option("--cut-blocks", type=int, default=0, show_default=True, help="Tap the backbone K named blocks before its end.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, help="Threads reading and decoding images [default: CPU count].")
@click.option(
    "--precision", type=click.Choice(["auto", "float32", "mixed"]), default="auto", show_default=True,
    help="auto: mixed float16 on a GPU, float32 on a CPU.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights (--weights none).")
@click.option("--strict", is_flag=True, help="Stop at the first bad image instead of skipping it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def extract(obj, data, backbone, weights, image_size, pooling, cut_blocks, batch_size, workers, precision, seed, strict, quiet):
    """Run a headless backbone over DATA once and cache pooled features.

    DATA is a folder of class folders, a folder with train/ val/ test/ split
    folders, a CSV with columns path,label[,split], a folder of unlabeled
    images, or image files. Images already cached (same bytes, same settings)
    are not recomputed; bad images are skipped and listed.

    \b
    Examples:
      featx extract --backbone resnet50 data/
      featx extract -b vgg16 --weights vgg16_notop.weights.h5 --image-size 128 data/
      featx extract -b efficientnetb0 --cut-blocks 3 labels.csv
    """
    from .extract import extract as run

    source = data[0] if len(data) == 1 else list(data)
    result = run(
        source, backbone, weights=weights, image_size=image_size, pooling=pooling, cut_blocks=cut_blocks,
        batch_size=batch_size, cache_dir=obj["cache_dir"], strict=strict, workers=workers,
        precision=precision, seed=seed, progress=not quiet,
    )
    for path, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if result.ignored:
        click.echo(f"ignored {len(result.ignored)} files that are not images (first: {result.ignored[0][0]})", err=True)
    click.echo(result.summary())


# --------------------------------------------------------------------------- cache


@cli.group()
def cache():
    """Inspect and manage the feature cache."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records.")
@click.pass_obj
def cache_list(obj, as_json):
    """List cached extractions: backbone, settings, rows, size on disk, datasets."""
    from .cache import Cache

    c = Cache(obj["cache_dir"])
    views = c.views()
    records = []
    for e in c.extractions():
        s = e.settings
        records.append({
            "name": e.name, "backbone": s.backbone, "input_size": s.input_size, "pooling": s.pooling,
            "cut_blocks": s.cut_blocks, "weights": e.meta.get("weights_source", s.weights), "precision": s.precision,
            "rows": e.rows(), "shards": len(e.shards()), "bytes": e.size_bytes(),
            "datasets": [v.source for v in views if v.extraction == e.name],
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(e.meta.get("created", 0))),
        })
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo(f"No extractions in {c.root}.")
        return
    rows = [[r["name"], r["backbone"], r["input_size"], r["pooling"] + (f" cut{r['cut_blocks']}" if r["cut_blocks"] else ""),
             r["rows"], _human_bytes(r["bytes"]), ", ".join(r["datasets"]) or "-"] for r in records]
    click.echo(_table(rows, ["extraction", "backbone", "size", "pooling", "rows", "disk", "datasets"]))


@cache.command("rm")
@click.argument("names", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every extraction.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def cache_rm(obj, names, remove_all, yes):
    """Remove extractions (by name or unique prefix) and the dataset views that read them."""
    from .cache import Cache

    c = Cache(obj["cache_dir"])
    targets = c.extractions() if remove_all else [c.get_extraction(n) for n in names]
    if not targets:
        raise FeatxError("Name the extractions to remove (see `featx cache list`) or pass --all.")
    if not yes and sys.stdin.isatty():
        click.confirm(f"Remove {len(targets)} extraction(s) from {c.root}?", abort=True)
    for e in targets:
        views = c.remove_extraction(e)
        click.echo(f"removed {e.name} ({len(views)} dataset view(s))")


@cache.command("compact")
@click.pass_obj
def cache_compact(obj):
    """Merge each extraction's shards into one file (safe while others read)."""
    from .cache import Cache

    c = Cache(obj["cache_dir"])
    for e in c.extractions():
        with e.lock(on_wait=lambda: click.echo(f"waiting for the process extracting into {e.name}...", err=True)):
            merged = e.compact()
        click.echo(f"{e.name}: merged {merged} shards" if merged else f"{e.name}: already compact")


def main(argv=None):
    cli.main(args=argv, prog_name="featx")


if __name__ == "__main__":
    main()
