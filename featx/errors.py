"""The one exception family featx raises for user-facing problems.

The CLI turns any :class:`FeatxError` into a one-line message and a non-zero
exit; anything else is a bug and keeps its traceback.
"""


class FeatxError(Exception):
    """Base class of every error featx raises for a user mistake or bad input."""


class BadImage(FeatxError):
    """An image file that cannot be decoded (empty, truncated, not an image...)."""


class UnknownBackbone(FeatxError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(FeatxError):
    """Backbone weights that cannot be found, downloaded or loaded."""


class DataError(FeatxError):
    """A dataset that cannot be read: no images, mismatched classes, bad CSV."""


class CacheError(FeatxError):
    """A cache request that cannot be served (nothing extracted yet, ambiguous pick)."""


class HeadError(FeatxError, ValueError):
    """A head that cannot be fitted, loaded or applied to the given features.

    A ``ValueError`` too, as scikit-learn expects of an estimator that
    refuses its input (one class, one sample).
    """


class HeadParamError(HeadError):
    """A head parameter outside its allowed values (``C=-1``, ``dropout=1.5``)."""
