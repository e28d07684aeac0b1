"""Phase one: run a headless backbone over a dataset once and cache the features.

The modules, in the order a run goes through them:

- :mod:`~featx.extraction.options`: :class:`ExtractOptions`, every option checked once;
- :mod:`~featx.extraction.api`: :func:`extract` and :class:`ExtractResult`;
- :mod:`~featx.extraction.plan`: the specs the options resolve to, and what the memo and index answer;
- :mod:`~featx.extraction.steps`: the per-image step and batch padding both engines run;
- :mod:`~featx.extraction.engines`: where the missing images are computed (``local``, ``ray``);
- :mod:`~featx.extraction.forward`, :mod:`~featx.extraction.writer`, :mod:`~featx.extraction.taps`:
  the model call, the writer thread, and several taps filled from one pass.

Named ``extraction``, not ``extract``, so that ``featx.extract`` is always the function.
"""

from .api import ExtractResult, extract, extract_with, spec_for
from .forward import default_batch_size
from .options import ExtractOptions

__all__ = ["ExtractOptions", "ExtractResult", "default_batch_size", "extract", "extract_with", "spec_for"]
