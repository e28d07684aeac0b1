"""The ``featx`` command line: a thin shell over the Python API.

Each command parses its options, calls one public function and prints what
it returns. Any :class:`~featx.errors.FeatxError` becomes a one-line message
and exit status 1; no traceback for user mistakes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections import defaultdict

import click

from .errors import FeatxError, FeatxWarning
from .runtime import quiet_frameworks

# Kept in step with backbones.IMAGE_SIZE_RANGE and heads.HEADS (tested), so
# that parsing options imports neither.
IMAGE_SIZES = (32, 1024)
HEAD_KINDS = ("dense", "logreg", "lightgbm")
# The --workers defaults as extract.py and ray_engine.py decide them; README.md and docs/cli.md say the same (tested).
WORKERS_DEFAULT = "the CPU count, at least 2 and at most 16"
RAY_WORKERS_DEFAULT = "the cluster's GPUs / --num-gpus-per-worker, or one per 4 CPUs"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatxError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted. Features already written stay cached; run the command again to resume.", err=True)
            ctx.exit(130)


@contextlib.contextmanager
def _one_line_warnings():
    """featx's own warnings as one ``warning:`` line each; others as Python prints them."""
    python_shows = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if issubclass(category, FeatxWarning) or text.startswith("featx: "):
            click.echo(f"warning: {text.removeprefix('featx: ')}", err=True)
        else:
            python_shows(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _report_ignored(ignored: list[tuple[str, str]]) -> None:
    """One stderr line per reason files were left out, naming the first."""
    by_reason = defaultdict(list)
    for path, reason in ignored:
        by_reason[reason].append(path)
    for reason, paths in by_reason.items():
        n = len(paths)
        if reason == "not an image extension":
            what = f"{n} file{'s' * (n > 1)} that {'are' if n > 1 else 'is'} not an image"
        elif reason.startswith("file not found"):
            click.echo(f"missing: {n} file{'s' * (n > 1)} not found{reason[len('file not found'):]} "
                       f"(first: {paths[0]})", err=True)
            continue
        else:
            what = f"{n} item{'s' * (n > 1)}: {reason}"
        click.echo(f"ignored {what} (first: {paths[0]})", err=True)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _table(rows: list[list], headers: list[str]) -> str:
    from .outputs import text_table

    return text_table(rows, headers)


# --------------------------------------------------------------------------- option types
# Every value is checked where it enters: a bad one is click's usage error
# (exit 2) before anything is read, built or trained.


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (nan passes any comparison)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


POSITIVE_INT = click.IntRange(min=1)
COUNT = click.IntRange(min=0)
SEED = click.IntRange(0, 2**32 - 1)
IMAGE_SIZE = click.IntRange(*IMAGE_SIZES)
FRACTION = _FiniteFloat(0, 1, min_open=True, max_open=True)  # val split: both ends excluded
DROPOUT = _FiniteFloat(0, 1, max_open=True)
POSITIVE_FLOAT = _FiniteFloat(0, min_open=True)


class _IntList(click.ParamType):
    """Comma-separated integers -> a tuple; subclasses say what is valid and how to say so."""

    what = valid = example = ""
    minimum = 0
    distinct = False

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            ints = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"expected {self.what} like {self.example}; got {value!r}", param, ctx)
        if not ints or min(ints) < self.minimum or (self.distinct and len(set(ints)) != len(ints)):
            self.fail(f"expected {self.valid} like {self.example}; got {value!r}", param, ctx)
        return ints


class Widths(_IntList):
    """``--hidden 256`` or ``512,128``: positive hidden-layer widths -> a tuple of ints."""

    name = "W[,W...]"
    what, valid, example, minimum = "widths", "positive widths", "256 or 512,128", 1


class Taps(_IntList):
    """``--taps 0,1,2``: distinct block counts before the end -> a tuple of ints."""

    name = "K[,K...]"
    what, valid, example, distinct = "block counts", "distinct block counts >= 0", "0,1,2", True


class LayersOrAll(click.ParamType):
    """``--unfreeze 60`` or ``all`` -> a positive int or "all"."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return "all"
        try:
            n = int(text)
        except ValueError:
            self.fail(f"expected a number of layers or 'all'; got {value!r}", param, ctx)
        if n < 1:
            self.fail(f"expected at least 1 layer (or 'all'); got {value!r}", param, ctx)
        return n


class Augmentations(click.ParamType):
    """``--augment flip,zoom=0.1``, checked with featx.finetuning.parse_augment.

    Returns the canonical spec ("flip=1.0,zoom=0.1"), which parse_augment
    reads back to the same settings.
    """

    name = "SPEC"

    def convert(self, value, param, ctx):
        from .finetuning import parse_augment

        try:
            parsed = parse_augment(value)
        except FeatxError as exc:
            self.fail(str(exc), param, ctx)
        if not parsed:
            self.fail(f"expected augmentations like flip,rotate=0.1; got {value!r}", param, ctx)
        return ",".join(f"{k}={v!r}" for k, v in parsed.items())


class HeadKinds(click.ParamType):
    """``--heads dense,logreg`` -> a list of head kinds."""

    name = "KIND[,KIND...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        kinds = [h.strip() for h in str(value).split(",") if h.strip()]
        unknown = [h for h in kinds if h not in HEAD_KINDS]
        if not kinds or unknown:
            self.fail(f"expected head kinds among {', '.join(HEAD_KINDS)}; got {value!r}", param, ctx)
        return kinds


# --head and --model take a result folder, a file in one, a pointer (heads/latest), the word
# latest or latest-<kind>: featx.outputs.resolve_result reads them in the command, once the
# featx home (--home, which may come later on the line) is known.
HEAD_HELP = ("A head: its folder (from `featx fit-head`), the pointer heads/latest, 'latest' or 'latest-KIND' "
             "(latest-logreg) [default: the latest].")
MODEL_HELP = ("A fine-tuned model: its folder or model.keras (from `featx finetune`), the pointer models/latest, "
              "or 'latest'.")


def _resolved(obj: dict, what: str, value: str | None) -> str | None:
    """The folder a --head/--model value names (None stays None); a bad value is a usage error (exit 2)."""
    if value is None:
        return None
    from .errors import HeadError
    from .outputs import resolve_result

    try:
        return str(resolve_result(what, value, obj["home"]))
    except HeadError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'--{what}'") from None


# --------------------------------------------------------------------------- shared options


def _set_obj(key, transform=lambda v: v):
    def callback(ctx, param, value):
        if value is not None:
            ctx.ensure_object(dict)[key] = transform(value)
        return value

    return callback


def _home_path(value: str) -> str:
    return os.path.abspath(os.path.expanduser(value))


def cache_dir_option(command):
    """``--cache-dir`` on a subcommand: its value wins over the group's and FEATX_CACHE_DIR."""
    return click.option(
        "--cache-dir", type=click.Path(file_okay=False), expose_value=False, callback=_set_obj("cache_dir"),
        help="Cache root [default: featx --cache-dir, else FEATX_CACHE_DIR, else ./cache].",
    )(command)


def home_option(command):
    """``--home`` on a subcommand: its value wins over the group's and FEATX_HOME."""
    return click.option(
        "--home", type=click.Path(file_okay=False), expose_value=False, callback=_set_obj("home", _home_path),
        help="Where heads/ and models/ go [default: featx --home, else FEATX_HOME, else the current folder].",
    )(command)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--cache-dir",
    envvar="FEATX_CACHE_DIR",
    default="cache",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Cache root for features, dataset views and the hash memo (env: FEATX_CACHE_DIR).",
)
@click.option(
    "--home",
    envvar="FEATX_HOME",
    default=".",
    type=click.Path(file_okay=False),
    help="Folder for heads/ and models/ (env: FEATX_HOME) [default: the current folder].",
)
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's, Keras' and Ray's own log lines (quiet by default).")
@click.version_option(package_name="featx")
@click.pass_context
def cli(ctx, cache_dir, home, verbose):
    """Transfer learning on image folders, with the backbone run only once.

    \b
    featx extract --backbone resnet50 data/     cache pooled features (once)
    featx fit-head --head dense                 train a head in seconds
    featx predict new_images/                   label new images
    featx inspect                               leakage, label errors, label budget, calibration
    featx finetune                              fine-tune the last block too (optional)
    featx compare                               leaderboard: every head on every extraction
    featx export features.parquet               the cached features as Parquet, Arrow or NPZ
    featx backbones                             the backbones featx can use
    featx cache list                            what is cached (also: cache rm, cache compact)

    Run `featx COMMAND --help` for each command's options.
    """
    ctx.obj = {"cache_dir": cache_dir, "home": _home_path(home), "verbose": verbose}
    ctx.with_resource(_one_line_warnings())
    if verbose:
        os.environ["FEATX_VERBOSE"] = "1"  # read by runtime.import_keras and the Ray engine, here and in workers
    else:
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
@click.option("--image-size", type=IMAGE_SIZE,
              help=f"Square input size in px, {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} [default: the backbone's native size].")
@click.option("--pooling", type=click.Choice(["avg", "max"]), default="avg", show_default=True, help="Global pooling.")
@click.option("--cut-blocks", type=COUNT, default=0, show_default=True, help="Tap the backbone K named blocks before its end.")
@click.option("--taps", type=Taps(),
              help="Several taps from one forward pass, e.g. 0,1,2 (the output and the ends of the 1 and 2 blocks "
                   "before it), each cached as its own extraction; `fit-head --head auto` searches them all.")
@click.option("--batch-size", type=POSITIVE_INT, help="Images per forward pass [default: 128 on a GPU; on a CPU 256 at 32 px or less, 64 up to 64 px, 32 up to 90 px, 16 above].")
@click.option("--workers", type=POSITIVE_INT,
              help=f"Threads reading and decoding images [default: {WORKERS_DEFAULT}]; with --engine ray, embedding "
                   f"actors [default: {RAY_WORKERS_DEFAULT}].")
@click.option(
    "--precision", type=click.Choice(["auto", "float32", "mixed"]), default="auto", show_default=True,
    help="auto: mixed float16 on a GPU, float32 on a CPU.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of random weights (--weights none).")
@click.option("--store", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="dtype of the cached rows: float16 halves the disk (reads return float32); another extraction.")
@click.option("--strict", is_flag=True, help="Stop at the first bad image instead of skipping it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Compute missing images here, or on a Ray cluster (pip install \"featx[ray]\"; shared cache root).")
@click.option("--address", help="--engine ray: 'auto', ray://HOST:10001 [default: $RAY_ADDRESS, else Ray on this machine].")
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0, show_default=True,
              help="--engine ray: GPUs per embedding actor.")
@cache_dir_option
@click.pass_obj
def extract(obj, data, backbone, weights, image_size, pooling, cut_blocks, taps, batch_size, workers, precision, seed,
            store, strict, quiet, **engine):
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
      featx extract --engine ray --address auto --num-gpus-per-worker 1 /mnt/shared/data/   (a GPU cluster)
      featx extract -b mobilenetv2 --image-size 96 data.npz
    """
    from .extraction import extract as run

    source = data[0] if len(data) == 1 else list(data)
    result = run(
        source, backbone, weights=weights, image_size=image_size, pooling=pooling, cut_blocks=cut_blocks,
        taps=taps, batch_size=batch_size, cache_dir=obj["cache_dir"], strict=strict, workers=workers,
        precision=precision, seed=seed, progress=not quiet, store=store, **engine,
    )
    for path, reason in result.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    _report_ignored(result.ignored)
    click.echo(result.summary())


# --------------------------------------------------------------------------- cache


@cli.group()
def cache():
    """Inspect and manage the feature cache."""


def _versions(versions: dict | None) -> str:
    """{"keras": "3.15.1", "tensorflow": "2.21.0", "backend": "tensorflow"} -> "keras 3.15.1, tensorflow 2.21.0"."""
    if not versions:
        return "-"
    shown = [f"{k} {v}" for k, v in versions.items() if k != "backend"]
    backend = versions.get("backend")
    if backend and backend not in versions:
        shown.append(f"backend {backend}")
    return ", ".join(shown) or "-"


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records.")
@cache_dir_option
@click.pass_obj
def cache_list(obj, as_json):
    """List cached extractions: backbone, settings, rows, size on disk, versions, datasets.

    Broken extractions (an unreadable meta.json) are listed with the reason;
    `featx cache rm NAME` removes them.
    """
    from .cache import Cache

    c = Cache(obj["cache_dir"])
    views = c.views()
    records = []
    for e in c.extractions(broken=True):
        if e.error:
            records.append({
                "name": e.name, "backbone": None, "input_size": None, "pooling": None, "cut_blocks": None,
                "weights": None, "precision": None, "rows": None, "shards": len(e.shards()),
                "quarantined": len(e.quarantined()), "bytes": e.size_bytes(),
                "versions": None, "broken": e.error, "datasets": [v.source for v in views if v.extraction == e.name],
                "created": None,
            })
            continue
        s = e.settings
        records.append({
            "name": e.name, "backbone": s.backbone, "input_size": s.input_size, "pooling": s.pooling,
            "cut_blocks": s.cut_blocks, "weights": e.meta.get("weights_source", s.weights), "precision": s.precision,
            "rows": e.rows(), "shards": len(e.shards()), "quarantined": len(e.quarantined()), "bytes": e.size_bytes(),
            "versions": e.meta.get("versions"), "broken": None,
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
             r["rows"], _human_bytes(r["bytes"]), _versions(r["versions"]), ", ".join(r["datasets"]) or "-"]
            for r in records if not r["broken"]]
    rows += [[r["name"], "BROKEN", "-", "-", "-", _human_bytes(r["bytes"]), "-", r["broken"]] for r in records if r["broken"]]
    click.echo(_table(rows, ["extraction", "backbone", "size", "pooling", "rows", "disk", "versions", "datasets"]))
    if any(r["broken"] for r in records):
        click.echo("Broken extractions cannot be read; `featx cache rm NAME` removes them.")


@cache.command("rm")
@click.argument("names", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every extraction (broken ones included).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@cache_dir_option
@click.pass_obj
def cache_rm(obj, names, remove_all, yes):
    """Remove extractions (by name or unique prefix) and the dataset views that read them.

    Waits for a run that is extracting into one of them to finish first.
    """
    from .cache import Cache

    c = Cache(obj["cache_dir"])
    targets = c.extractions(broken=True) if remove_all else [c.get_extraction(n, broken=True) for n in names]
    if not targets:
        raise FeatxError("Name the extractions to remove (see `featx cache list`) or pass --all.")
    if not yes and sys.stdin.isatty():
        click.confirm(f"Remove {len(targets)} extraction(s) from {c.root}?", abort=True)
    for e in targets:
        views = c.remove_extraction(
            e, on_wait=lambda: click.echo(f"waiting for the process extracting into {e.name}...", err=True)
        )
        click.echo(f"removed {e.name} ({len(views)} dataset view(s))")


@cache.command("compact")
@cache_dir_option
@click.pass_obj
def cache_compact(obj):
    """Merge each extraction's shards into one file (safe while others read).

    Unreadable shards are moved aside (shards/.quarantine-*); broken
    extractions are skipped with a warning.
    """
    import warnings

    from .cache import Cache

    c = Cache(obj["cache_dir"])
    for e in c.extractions(broken=True):
        if e.error:
            click.echo(f"warning: skipping broken extraction {e.name}: {e.error}", err=True)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with e.lock(on_wait=lambda: click.echo(f"waiting for the process extracting into {e.name}...", err=True)):
                merged = e.compact()
        for w in caught:
            click.echo(f"warning: {str(w.message).removeprefix('featx: ')}", err=True)
        click.echo(f"{e.name}: merged {merged} shards" if merged else f"{e.name}: already compact")


# --------------------------------------------------------------------------- heads


@cli.command("fit-head")
@click.option("--head", "kind", type=click.Choice(["dense", "logreg", "lightgbm", "auto"]), default="dense",
              show_default=True,
              help="dense: Keras Dense+BN+Dropout; logreg: logistic regression; lightgbm: boosted trees; "
                   "auto: search head x extraction(s) x normalisation and keep the best.")
@click.option("--data", type=click.Path(), help="Dataset folder/CSV given to extract [default: the latest extraction].")
@click.option("-b", "--backbone", help="Use the latest extraction with this backbone; a,b fuses several.")
@click.option("--extraction", multiple=True,
              help="An extraction name or prefix from `featx cache list`; repeat it to fuse extractions.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: heads/<backbone>-<head>-<time>].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--selection", type=click.Choice(["auto", "cv", "val"]), default="auto", show_default=True,
              help="Choose hyper-parameters by K-fold CV on train (then refit on all of train) or on the val "
                   "split; auto: val when the data has one, else cv.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="K of the cross-validation.")
@click.option("--val-split", type=FRACTION, default=0.2, show_default=True,
              help="With --selection val on data without a val split: the stratified fraction of train held out.")
@click.option("--refit-all", is_flag=True, help="With a val split: refit the chosen configuration on train+val.")
@click.option("--normalise", type=click.Choice(["none", "standard", "l2", "sqrt-l2"]),
              help="Feature normalisation before the head [default: none; searched by --head auto].")
@click.option("--time-budget", type=POSITIVE_FLOAT,
              help="Seconds the search may take [default: 90 for auto, where the logreg screen always completes; "
                   "20 for dense, where data too large for K folds + refit in 2 budgets is chosen on fold 1].")
@click.option("--auto-heads", type=HeadKinds(), default="logreg,lightgbm,dense", show_default=True,
              help="auto: the head kinds to try, comma-separated.")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weigh classes inversely to their frequency.")
@click.option("--top-k", type=POSITIVE_INT, default=5, show_default=True, help="k of the reported top-k accuracy.")
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
    from .api import fit_head as run

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
    result = run(kind, data=data, backbone=backbone, extraction=list(extraction) or None, cache_dir=obj["cache_dir"],
                 out=out, seed=seed, selection=selection, folds=folds, val_split=val_split, refit_all=refit_all,
                 class_weight=class_weight, top_k=top_k, time_budget=time_budget, auto_heads=list(auto_heads),
                 log=lambda m: click.echo(m, err=True), calibrate=calibrate, home=obj["home"], **params)
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
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("--head", metavar="HEAD", help=HEAD_HELP)
@click.option("--model", metavar="MODEL", help=MODEL_HELP)
@click.option("--imagenet", is_flag=True, help="ImageNet labels from the backbone's full classifier.")
@click.option("-b", "--backbone", default="inceptionv3", show_default=True, help="With --imagenet: the backbone.")
@click.option("-k", "--top-k", type=POSITIVE_INT, default=1, show_default=True, help="Labels and probabilities per image.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write a CSV here instead of printing it.")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True)
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
    from . import api

    if sum(bool(x) for x in (head, model, imagenet)) > 1:
        raise FeatxError("Pass at most one of --head, --model and --imagenet.")
    head, model = _resolved(obj, "head", head), _resolved(obj, "model", model)
    source = data[0] if len(data) == 1 else list(data)
    if imagenet:
        preds = api.predict_imagenet(source, backbone, top_k=top_k, batch_size=batch_size)
    elif model:
        from .finetuning import predict_images

        preds = predict_images(model, source, top_k=top_k, batch_size=batch_size, split=split)
    else:
        preds = api.predict(source, head=head, cache_dir=obj["cache_dir"], batch_size=batch_size, progress=not quiet,
                            weights=weights, split=split, home=obj["home"])
    if not imagenet:
        click.echo(f"{'model' if model else 'head'}: {preds.source}", err=True)
    for path, reason in preds.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if out:
        api.Predictions.to_csv(preds, out, top_k)
        click.echo(f"wrote {len(preds.paths)} predictions to {out}", err=True)
    else:
        api.Predictions.to_csv(preds, sys.stdout, top_k)


@cli.command()
@click.option("--data", type=click.Path(), help="The dataset [default: the one extracted most recently].")
@click.option("--heads", type=HeadKinds(), default="dense,logreg,lightgbm", show_default=True,
              help="Comma-separated head kinds.")
@click.option("--out", type=click.Path(dir_okay=False), help="CSV path [default: heads/compare-<time>.csv].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--selection", type=click.Choice(["auto", "cv", "val"]), default="auto", show_default=True,
              help="Score by K-fold CV on train or on the val split; auto: val when the data has one.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--val-split", type=FRACTION, default=0.2, show_default=True)
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
    from .api import compare as run

    board = run(data, cache_dir=obj["cache_dir"], heads=heads, out=out, seed=seed, selection=selection, folds=folds,
                val_split=val_split, log=lambda m: click.echo(m, err=True), home=obj["home"])
    click.echo(board.table())
    click.echo(f"wrote {board.csv_path}")


# --------------------------------------------------------------------------- inspect


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
    from .inspection import inspect as run

    head = _resolved(obj, "head", head)
    report = run(data, backbone=backbone, extraction=extraction, cache_dir=obj["cache_dir"], out=out, head=head,
                 near_threshold=near_threshold, near_rule=near_rule, folds=folds, seeds=seeds, embedding=embedding, seed=seed,
                 log=lambda m: click.echo(m, err=True), home=obj["home"])
    click.echo(report.summary())
    click.echo(f"wrote {report.directory}: {', '.join(p.name for p in report.files)}")


# --------------------------------------------------------------------------- finetune


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
    from .finetuning import FinetuneInterrupted, finetune as run

    try:
        res = run(_resolved(obj, "head", head), unfreeze=unfreeze, unfreeze_blocks=unfreeze_blocks, cache_dir=obj["cache_dir"], out=out,
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


# --------------------------------------------------------------------------- export


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
    from .tables import export as run

    result = run(out, data=data, backbone=backbone, extraction=list(extraction) or None, split=split, format=fmt,
                 cache_dir=obj["cache_dir"])
    click.echo(result.summary())


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
