"""The one exception family featx raises for user-facing problems.

The CLI turns any :class:`FeatxError` into a one-line message and a non-zero
exit; anything else is a bug and keeps its traceback.
"""


class FeatxError(Exception):
    """Base class of every error featx raises for a user mistake or bad input."""


class FeatxValueError(FeatxError, ValueError):
    """A parameter value out of its documented range (``image_size=0``, ``batch_size=-1``...)."""


class BadImage(FeatxError):
    """An image file that cannot be decoded (empty, truncated, not an image...)."""


class DecoderUnavailable(BadImage):
    """An image this process cannot decode for a reason of its own (a missing
    Pillow plugin or library, no memory): skipped for this run, never
    remembered as a bad file."""


class UnknownBackbone(FeatxError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(FeatxError):
    """Backbone weights that cannot be found, downloaded or loaded."""


class WeightsMismatch(WeightsError):
    """A rebuilt backbone whose loaded weights differ from those its extraction recorded."""


class DataError(FeatxError):
    """A dataset that cannot be read: no images, mismatched classes, bad CSV."""


class CacheError(FeatxError):
    """A cache request that cannot be served (nothing extracted yet, ambiguous pick)."""


class BrokenExtraction(CacheError):
    """An extraction folder whose meta.json cannot be read (``featx cache rm`` removes it)."""


class ExtractionRemoved(CacheError):
    """An extraction removed (``featx cache rm``) while a run was using it."""


class HeadError(FeatxError, ValueError):
    """A head that cannot be fitted, loaded or applied to the given features.

    A ``ValueError`` too, as scikit-learn expects of an estimator that
    refuses its input (one class, one sample).
    """


class HeadParamError(HeadError):
    """A head parameter outside its allowed values (``C=-1``, ``dropout=1.5``)."""


class FeatxWarning(UserWarning):
    """Something featx went on with but the user should know (a CSV without a label column...).

    The CLI prints these as one ``warning:`` line each.
    """


class InspectError(FeatxError, ValueError):
    """Data that a check of `featx inspect` cannot run on (one class, too few images per class)."""


class CalibrationError(FeatxError, ValueError):
    """Probabilities and labels that cannot be calibrated (bad shapes, empty input)."""
