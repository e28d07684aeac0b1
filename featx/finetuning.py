"""Compatibility name for :mod:`featx.tuning` (phase two), kept while ``featx/cli.py`` imports it.

New code imports from :mod:`featx.tuning`.
"""

from .tuning import *  # noqa: F401,F403
from .tuning import __all__  # noqa: F401
from .tuning.build import _parity_sample  # noqa: F401
from .tuning.rows import _split_rows  # noqa: F401
