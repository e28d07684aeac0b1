"""The CLI's option types and shared options: every value is checked where it enters.

A bad value is click's usage error (exit 2) before anything is read, built or
trained. The choices and ranges of ``fit-head``, ``compare`` and ``predict``
are read from their options objects (:mod:`featx.options`) by
:func:`option_type`; the head kinds from the heads registry, the
normalisations from :mod:`featx.normalise`, the image sizes from
:data:`featx.backbones.IMAGE_SIZE_RANGE`.
"""

from __future__ import annotations

import math
import os
from numbers import Integral

import click

from ..backbones import IMAGE_SIZE_RANGE
from ..errors import FeatxError
from ..options import HEAD_KIND, SEED_RANGE, OneOf, constraint
from ..params import Interval

IMAGE_SIZES = IMAGE_SIZE_RANGE
# The --workers defaults as extract.py and ray_engine.py decide them; README.md and docs/cli.md say the same (tested).
WORKERS_DEFAULT = "the CPU count, at least 2 and at most 16"
RAY_WORKERS_DEFAULT = "the cluster's GPUs / --num-gpus-per-worker, or one per 4 CPUs"


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (nan passes any comparison)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


POSITIVE_INT = click.IntRange(min=1)
COUNT = click.IntRange(min=0)
SEED = click.IntRange(*SEED_RANGE)
IMAGE_SIZE = click.IntRange(*IMAGE_SIZES)
FRACTION = _FiniteFloat(0, 1, min_open=True, max_open=True)  # val split: both ends excluded
DROPOUT = _FiniteFloat(0, 1, max_open=True)
POSITIVE_FLOAT = _FiniteFloat(0, min_open=True)


class RegistryChoice(click.Choice):
    """A click Choice whose values a :class:`~featx.options.OneOf` gives, read when first needed.

    The head kinds come from the heads registry, which imports scikit-learn:
    read lazily, ``featx --help`` and the other commands do not pay for it.
    """

    def __init__(self, one_of: OneOf, case_sensitive: bool = True):
        self.one_of, self.case_sensitive = one_of, case_sensitive

    @property
    def choices(self):
        return self.one_of.values


def option_type(options_cls, name: str) -> click.ParamType:
    """The click type of ``options_cls``'s field ``name``, from the field's own constraint."""
    c = constraint(options_cls, name, (Interval, OneOf))
    return RegistryChoice(c) if isinstance(c, OneOf) else interval_type(c)


def interval_type(c: Interval) -> click.ParamType:
    """An :class:`~featx.params.Interval` as a click range (floats: finite ones only)."""
    bounds = {"min": c.left, "max": c.right,
              "min_open": c.left is not None and c.closed in ("right", "neither"),
              "max_open": c.right is not None and c.closed in ("left", "neither")}
    return click.IntRange(**bounds) if c.type is Integral else _FiniteFloat(**bounds)


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
    """``--augment flip,zoom=0.1`` or ``none``, checked with featx.tuning.parse_augment.

    Returns the canonical spec ("flip=1.0,zoom=0.1", or "none"), which
    parse_augment reads back to the same settings.
    """

    name = "SPEC"

    def convert(self, value, param, ctx):
        from ..tuning.options import parse_augment

        try:
            parsed = parse_augment(value)
        except FeatxError as exc:
            self.fail(str(exc), param, ctx)
        if not parsed:
            if value.strip().lower() == "none":
                return "none"
            self.fail(f"expected augmentations like flip,rotate=0.1, or none; got {value!r}", param, ctx)
        return ",".join(f"{k}={v!r}" for k, v in parsed.items())




class HeadKinds(click.ParamType):
    """``--heads dense,logreg`` -> a list of head kinds (of the heads registry)."""

    name = "KIND[,KIND...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        kinds = [h.strip() for h in str(value).split(",") if h.strip()]
        known = HEAD_KIND.values
        unknown = [h for h in kinds if h not in known]
        if not kinds or unknown:
            self.fail(f"expected head kinds among {', '.join(known)}; got {value!r}", param, ctx)
        return kinds



# --head and --model take a result folder, a file in one, a pointer (heads/latest), the word
# latest or latest-<kind>: featx.outputs.resolve_result reads them in the command, once the
# featx home (--home, which may come later on the line) is known.
HEAD_HELP = ("A head: its folder (from `featx fit-head`), the pointer heads/latest, 'latest' or 'latest-KIND' "
             "(latest-logreg) [default: the latest].")
MODEL_HELP = ("A fine-tuned model: its folder or model.keras (from `featx finetune`), the pointer models/latest, "
              "or 'latest'.")


def resolved(obj: dict, what: str, value: str | None) -> str | None:
    """The folder a --head/--model value names (None stays None); a bad value is a usage error (exit 2)."""
    if value is None:
        return None
    from ..errors import HeadError
    from ..outputs import resolve_result

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


def home_path(value: str) -> str:
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
        "--home", type=click.Path(file_okay=False), expose_value=False, callback=_set_obj("home", home_path),
        help="Where heads/ and models/ go [default: featx --home, else FEATX_HOME, else the current folder].",
    )(command)
