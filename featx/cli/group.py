"""The ``featx`` group: global options, one-line errors and warnings, and ``main``.

Any :class:`~featx.errors.FeatxError` becomes a one-line message and exit
status 1; no traceback for user mistakes. The commands register themselves
on :data:`cli` from their own modules (see :mod:`featx.cli`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import click

from ..errors import FeatxError, FeatxWarning
from ..runtime import quiet_frameworks
from .types import home_path


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
    ctx.obj = {"cache_dir": cache_dir, "home": home_path(home), "verbose": verbose}
    ctx.with_resource(_one_line_warnings())
    if verbose:
        os.environ["FEATX_VERBOSE"] = "1"  # read by runtime.import_keras and the Ray engine, here and in workers
    else:
        quiet_frameworks()


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="featx")
    except BrokenPipeError:
        # The reader went away (`featx predict ... | head`): not an error.
        # Point stdout at devnull so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)

