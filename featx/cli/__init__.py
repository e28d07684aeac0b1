"""The ``featx`` command line: a thin shell over the Python API.

Each command parses its options, builds the options object of its API
function where it has one (:mod:`featx.options`), calls that function and
prints what it returns. The package holds:

- :mod:`.group`: the ``featx`` group, its global options (``--cache-dir``,
  ``--home``, ``--verbose``), one-line errors and warnings, and :func:`main`;
- :mod:`.types`: the option types and shared options, with choices and ranges
  read from the library (options objects, registries);
- :mod:`.show`: how results are printed (tables, sizes);
- one module per command group: :mod:`.backbones`, :mod:`.extract`,
  :mod:`.cache`, :mod:`.heads` (fit-head, compare), :mod:`.predict`,
  :mod:`.inspect`, :mod:`.finetune`, :mod:`.export`.

Importing this package registers every command on :data:`cli`.
"""

from .group import cli, main
from .types import IMAGE_SIZES, RAY_WORKERS_DEFAULT, WORKERS_DEFAULT
# Each command module registers its commands on `cli`.
from . import backbones, cache, export, extract, finetune, heads, inspect, predict  # noqa: F401

__all__ = ["cli", "main", "IMAGE_SIZES", "WORKERS_DEFAULT", "RAY_WORKERS_DEFAULT"]
