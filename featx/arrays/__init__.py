"""Images that are not files: NumPy arrays, ``.npz``/``.npy`` files, ``keras.datasets``, streams.

:func:`as_dataset` turns any of these into a :class:`~featx.datasets.Dataset`
whose items are :class:`ArrayItem` rows, so they go through the same
extraction, cache, heads and prediction as image files:

- ``x`` or ``(x, y)``: one array of images, optionally labelled (split "train");
- ``{"train": (x, y), "val": ..., "test": ...}``: named splits;
- ``"data.npz"``: keys ``x_train, y_train, x_val, y_val, x_test, y_test`` (or ``x, y``),
  as ``np.savez`` and ``keras.datasets`` produce them; ``"x.npy"``: unlabelled;
- ``"keras:cifar10"`` (``cifar100``, ``mnist``, ``fashion_mnist``): through ``keras.datasets``;
- a ``tf.data.Dataset`` or any other iterable of ``(images, labels)`` (or ``images``)
  batches, read batch by batch and never held whole.

Images are ``(N, H, W, 3)`` RGB or ``(N, H, W)`` / ``(N, H, W, 1)`` grayscale.
uint8 is taken as is. Other integer arrays must hold values in [0, 255].
Float arrays are scaled once per array, by its maximum: at most 1.0 means
[0, 1] images, multiplied by 255; otherwise [0, 255] as is (``scale=`` sets
the factor explicitly). Scaled values are rounded to uint8, the pixels every
image file decodes to as well; NaN, inf or values outside [0, 255] after
scaling are errors. A stream decides the scale on its first float batch.

A row's key is the sha256 of its uint8 pixels together with their shape and
dtype (``featx-array:HxWxC:uint8``), so the same array extracted twice, or
an array that grew, computes only rows never seen. Rows are resized to the
backbone's input exactly as decoded files are (Pillow bilinear squash;
grayscale resized, then repeated to 3 channels): the same pixels as a PNG
file and as an array give the same features.

A row's ``path`` is its index, ``"12"``, for one array, and ``"test#12"``
(split, then the index within that split's array) when the data has several
named splits. The dataset view is recorded under ``name=``, under the
``.npz`` file's path or ``keras:NAME``, or else ``arrays:<hash of the rows>``.

The package, by concern:

- :mod:`.rows`: one array's rows as :class:`ArrayItem` (keys, resizing);
- :mod:`.checks`: images, values, scale and labels checked as they enter;
- :mod:`.sources`: :func:`as_dataset` over every kind of input, and reading rows again (:func:`row_reader`);
- :mod:`.files`: ``.npz``/``.npy`` files (memory-mapped where stored uncompressed);
- :mod:`.keras_datasets`: ``keras:NAME``;
- :mod:`.stream`: iterables of batches, read once (and :func:`spooled` to disk to read again).
"""

from .checks import ArrayError
from .keras_datasets import KERAS_DATASETS
from .rows import ANONYMOUS, LAYOUT, ArrayItem, resize_pixels, row_key
from .sources import as_dataset, is_array_data, row_reader, view_source
from .stream import is_streamed, spooled

__all__ = ["ArrayItem", "ArrayError", "as_dataset", "is_array_data", "is_streamed", "row_key", "resize_pixels",
           "row_reader", "spooled", "view_source", "LAYOUT", "ANONYMOUS", "KERAS_DATASETS"]
