"""Where things live under a cache root, and the names featx gives its files.

::

    memo.sqlite                      (path, size, mtime) -> sha256; images known to be bad (memo.py)
    extractions/<name>/meta.json     the settings that make up the key
    extractions/<name>/shards/*.h5   immutable feature shards (.quarantine-* ones are unreadable, set aside;
                                     .staged-* ones are written by Ray workers, published by their driver)
    extractions/<name>/.lock         held by the one process computing into it
    datasets/<id>.h5                 one dataset seen through one extraction
    latest.json                      the most recent dataset view

Temporary files and removed folders carry their owner's pid and host
(``.tmp-<pid>.<host>-...``, ``.trash-<pid>.<host>-...``), so the next
holder of a lock can tell a killed run's leftovers from live ones.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from pathlib import Path

CACHE_ENV = "FEATX_CACHE_DIR"
DEFAULT_CACHE_DIR = "cache"
STAGED_PREFIX = ".staged-"
QUARANTINE_PREFIX = ".quarantine-"
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def default_cache_dir() -> Path:
    """``$FEATX_CACHE_DIR``, else ``./cache``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def shard_name() -> str:
    """A new shard's name: sorts by creation time, unique across processes."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"


def tmp_name(final: Path) -> Path:
    """``.tmp-<pid>.<host>-<random>-<name>`` beside ``final``: whose it is, so the next lock holder
    can tell a killed writer's file from one still being written."""
    return final.with_name(f".tmp-{os.getpid()}.{HOST}-{uuid.uuid4().hex[:8]}-{final.name}")


def trash_name(folder: Path) -> Path:
    """Where a folder being removed is renamed first (one rename: readers see all or nothing)."""
    return folder.with_name(f".trash-{os.getpid()}.{HOST}-{uuid.uuid4().hex[:8]}-{folder.name}")
