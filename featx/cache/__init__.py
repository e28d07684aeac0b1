"""The feature cache: content-addressed, crash-safe HDF5 shards on disk.

A feature row is keyed by the sha256 of the image bytes inside an
extraction whose name carries a hash of everything else that changes the
result (backbone, weights fingerprint, input size, preprocessing, pooling,
tap point, precision, format version). Shards are written under a temporary
name and renamed into place, so a reader never sees half a file and a killed
run loses only what it had not flushed.

The package, one concern a module (docs/cache.md, "Layout of featx/cache/"):

    layout      where things live under a cache root, and file names
    atomic      atomic writes, durable renames, tidying killed runs' leftovers
    shards      the shard format: open, binary-search, read rows, write
    shardset    the shards in use in one extraction; unreadable ones set aside
    lock        one writer per extraction
    reading     lookups and reads by sha256 (KnownRows, locate, read_rows)
    merge       streamed k-way merging, the size-class rule, settle
    staging     shards written by Ray workers, published by their driver
    extraction  Extraction: one set of settings, the face of the above
    views       DatasetView: one dataset seen through one extraction
    memo        the sqlite memo of file hashes and undecodable images
    store       Cache: the root, its extractions, views and memo
"""

# Re-exported for reading: a test or tool that patches a constant or a function does so in the
# module that uses it (featx.cache.merge.TIER0_ROWS, featx.cache.shards.WORK_BYTES, ...).
from .atomic import atomic_write_bytes, atomic_write_json
from .extraction import Extraction
from .layout import CACHE_ENV, DEFAULT_CACHE_DIR, STAGED_PREFIX, default_cache_dir
from .memo import Memo, decoder_version
from .merge import FANOUT, TIER0_ROWS, tier
from .reading import KnownRows
from .shards import SORTED_ATTR, STORES, WORK_BYTES
from .staging import write_staged_shard
from .store import Cache
from .views import DatasetView

__all__ = [
    "CACHE_ENV", "DEFAULT_CACHE_DIR", "FANOUT", "SORTED_ATTR", "STAGED_PREFIX", "STORES", "TIER0_ROWS", "WORK_BYTES",
    "Cache", "DatasetView", "Extraction", "KnownRows", "Memo", "atomic_write_bytes", "atomic_write_json",
    "decoder_version", "default_cache_dir", "tier", "write_staged_shard",
]
