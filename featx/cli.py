"""The ``featx`` command line: a thin shell over the Python API.

Each command parses its options, calls one public function and prints what
it returns. Any :class:`~featx.errors.FeatxError` becomes a one-line message
and exit status 1; no traceback for user mistakes.
"""

from __future__ import annotations

import json
import os
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
        from .backbones import get_backbone

        get_backbone(pattern)  # raises with the closest names
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
@click.option("--batch-size", type=int, help="Images per forward pass [default: 64 on a CPU, 128 on a GPU].")
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


# --------------------------------------------------------------------------- heads


def _hidden(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected widths like 256 or 512,128; got {value!r}") from None
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"expected positive widths like 256 or 512,128; got {value!r}")
    return widths


@cli.command("fit-head")
@click.option("--head", "kind", type=click.Choice(["dense", "logreg", "lightgbm"]), default="dense", show_default=True,
              help="dense: Keras Dense+BN+Dropout; logreg: logistic regression; lightgbm: boosted trees.")
@click.option("--data", type=click.Path(), help="Dataset folder/CSV given to extract [default: the latest extraction].")
@click.option("-b", "--backbone", help="Use the latest extraction with this backbone.")
@click.option("--extraction", help="An extraction name or prefix from `featx cache list`.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: heads/<backbone>-<head>-<time>].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-split", type=float, default=0.2, show_default=True,
              help="Validation fraction of train when the data has no val split (stratified).")
@click.option("--refit-all", is_flag=True, help="Refit the chosen configuration on train+val at the end.")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weigh classes inversely to their frequency.")
@click.option("--top-k", type=int, default=5, show_default=True, help="k of the reported top-k accuracy.")
@click.option("--hidden", default="256", show_default=True, help="dense: hidden widths, e.g. 256 or 512,128.")
@click.option("--dropout", type=float, default=0.5, show_default=True, help="dense: dropout after each hidden layer.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "rmsprop"]), default="adam", show_default=True,
              help="dense: optimizer.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="dense: learning rate.")
@click.option("--epochs", type=int, default=60, show_default=True,
              help="dense: maximum epochs (EarlyStopping restores the best).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="dense: batch size.")
@click.option("--C", "C", type=float, help="logreg: inverse regularisation [default: chosen on validation].")
@click.option("--n-estimators", type=int, default=1000, show_default=True,
              help="lightgbm: maximum trees (early stopping on validation).")
@click.option("--num-leaves", type=int, default=15, show_default=True, help="lightgbm: leaves per tree.")
@click.option("-v", "--verbose", is_flag=True, help="dense: show Keras' per-epoch output.")
@click.pass_obj
def fit_head(obj, kind, data, backbone, extraction, out, seed, val_split, refit_all, class_weight, top_k, hidden,
             dropout, optimizer, lr, epochs, batch_size, C, n_estimators, num_leaves, verbose):
    """Train a classifier head on cached features, in seconds.

    With no --data/--backbone/--extraction it uses the most recent
    `featx extract`. Splits: the data's own train/val/test, else a stratified
    validation split of train. Prints accuracy, top-k, macro-F1, per-class
    precision/recall and the confusion matrix; saves the head (no pickle),
    metrics.json, confusion.png and, for dense, curves.png.

    \b
    Examples:
      featx fit-head --head dense
      featx fit-head --head dense --hidden 512,128 --dropout 0.3 --lr 3e-4
      featx fit-head --head logreg --data data/ --backbone resnet50
      featx fit-head --head lightgbm --refit-all --class-weight balanced
    """
    from .api import fit_head as run

    params = {
        "dense": dict(hidden=_hidden(hidden), dropout=dropout, optimizer=optimizer, lr=lr, epochs=epochs,
                      batch_size=batch_size, verbose=1 if verbose else 0),
        "logreg": dict(C=C),
        "lightgbm": dict(n_estimators=n_estimators, num_leaves=num_leaves),
    }[kind]
    result = run(kind, data=data, backbone=backbone, extraction=extraction, cache_dir=obj["cache_dir"], out=out,
                 seed=seed, val_split=val_split, refit_all=refit_all, class_weight=class_weight, top_k=top_k, **params)
    click.echo(f"features: {result.features}")
    click.echo(f"head: {kind}" + (" (refit on train+val)" if refit_all else ""))
    click.echo(result.report)
    click.echo(f"saved to {result.directory}")


@cli.command()
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--head", type=click.Path(file_okay=False), help="A head folder [default: the latest fitted head].")
@click.option("--model", type=click.Path(), help="A fine-tuned model: its folder or model.keras (from `featx finetune`).")
@click.option("--imagenet", is_flag=True, help="ImageNet labels from the backbone's full classifier.")
@click.option("-b", "--backbone", default="inceptionv3", show_default=True, help="With --imagenet: the backbone.")
@click.option("-k", "--top-k", type=int, default=1, show_default=True, help="Labels and probabilities per image.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a CSV here instead of printing it.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def predict(obj, data, head, model, imagenet, backbone, top_k, out, batch_size, quiet):
    """Label images with a fitted head (or a fine-tuned model, or ImageNet).

    DATA is image files, folders or a CSV. Images are extracted through the
    cache with the head's own backbone and settings, so already-seen images
    cost nothing. Output: CSV rows path,label_1,prob_1,...,label_k,prob_k.

    \b
    Examples:
      featx predict new_images/
      featx predict --head heads/resnet50-dense-20261122-101500 -k 3 --out preds.csv photos/
      featx predict --model models/resnet50-finetune-20261122-110000 new_images/
      featx predict --imagenet --backbone inceptionv3 -k 5 photo.jpg
    """
    from . import api

    if sum(bool(x) for x in (head, model, imagenet)) > 1:
        raise FeatxError("Pass at most one of --head, --model and --imagenet.")
    source = data[0] if len(data) == 1 else list(data)
    if imagenet:
        preds = api.predict_imagenet(source, backbone, top_k=top_k, batch_size=batch_size)
    elif model:
        from .finetuning import predict_images

        preds = predict_images(model, source, top_k=top_k, batch_size=batch_size)
    else:
        preds = api.predict(source, head=head, cache_dir=obj["cache_dir"], batch_size=batch_size, progress=not quiet)
    for path, reason in preds.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if out:
        api.Predictions.to_csv(preds, out, top_k)
        click.echo(f"wrote {len(preds.paths)} predictions to {out}", err=True)
    else:
        api.Predictions.to_csv(preds, sys.stdout, top_k)


@cli.command()
@click.option("--data", type=click.Path(), help="The dataset [default: the one extracted most recently].")
@click.option("--heads", default="dense,logreg,lightgbm", show_default=True, help="Comma-separated head kinds.")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV path [default: heads/compare-<time>.csv].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-split", type=float, default=0.2, show_default=True)
@click.pass_obj
def compare(obj, data, heads, out, seed, val_split):
    """Leaderboard: every cached extraction of a dataset x every head kind.

    Extract the same data with several backbones, sizes or --cut-blocks
    first; compare then fits each head with defaults on each and ranks them
    by validation accuracy (table on screen, CSV on disk).

    \b
    Example:
      featx extract -b resnet50 data/ && featx extract -b efficientnetb0 data/
      featx compare
    """
    from .api import compare as run

    board = run(data, cache_dir=obj["cache_dir"], heads=[h.strip() for h in heads.split(",") if h.strip()],
                out=out, seed=seed, val_split=val_split, log=lambda m: click.echo(m, err=True))
    click.echo(board.table())
    click.echo(f"wrote {board.csv_path}")


# --------------------------------------------------------------------------- finetune


def _unfreeze(value):
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number of layers or 'all'; got {value!r}") from None


@cli.command()
@click.option("--head", type=click.Path(file_okay=False), help="A dense or logreg head [default: the latest fitted head].")
@click.option("--unfreeze", help="Unfreeze the backbone's last N layers, or 'all'.")
@click.option("--unfreeze-blocks", type=int, help="Unfreeze the backbone's last K named blocks (e.g. 1 = conv5_block3).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True, help="Learning rate (keep it low).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "rmsprop"]), default="adam", show_default=True)
@click.option("--augment", help="Training-only augmentation: flip,rotate[=0.05],zoom[=0.1],shift[=0.1],contrast[=0.1].")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weigh classes inversely to their frequency.")
@click.option("--patience", type=int, default=3, show_default=True, help="EarlyStopping patience on validation loss.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: models/<backbone>-finetune-<time>].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-export", is_flag=True, help="Skip the SavedModel export for serving.")
@click.pass_obj
def finetune(obj, head, unfreeze, unfreeze_blocks, epochs, batch_size, lr, optimizer, augment, class_weight, patience,
             out, seed, no_export):
    """Fine-tune backbone + trained head end to end (phase two).

    Rebuilds the extraction's exact backbone with the head on top, checks
    that it reproduces the head's probabilities on validation images, then
    trains with a low learning rate. BatchNorm layers stay in inference mode.
    The best validation epoch is kept, never worse than the head you started
    from. Writes model.keras (loads in safe mode without featx), saved_model/,
    metrics.json (before/after) and curves.png.

    \b
    Examples:
      featx finetune --unfreeze 60
      featx finetune --unfreeze-blocks 1 --epochs 5 --augment flip,rotate=0.1
      featx finetune --head heads/resnet50-dense-20261122-101500 --unfreeze all --lr 1e-6
    """
    from .finetuning import finetune as run

    res = run(head, unfreeze=_unfreeze(unfreeze), unfreeze_blocks=unfreeze_blocks, cache_dir=obj["cache_dir"], out=out,
              epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, augment=augment,
              class_weight=class_weight, patience=patience, seed=seed, export=not no_export,
              log=lambda m: click.echo(m, err=True))
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


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="featx")
    except BrokenPipeError:
        # The reader went away (`featx predict ... | head`): not an error.
        # Point stdout at devnull so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
