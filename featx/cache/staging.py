"""Shards written by distributed workers (which hold no lock), published by their driver.

A worker writes ``shards/.staged-ray-<hash>.h5``: hidden from readers until
the driver, holding the extraction's lock, renames it to ``ray-<hash>.h5``
(:func:`publish`). A driver that dies first leaves complete staged shards,
which the next holder of the lock adopts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..errors import ExtractionRemoved
from .atomic import publish_file
from .layout import STAGED_PREFIX, tmp_name
from .shards import h5, write_shard_file

if TYPE_CHECKING:
    from .extraction import Extraction


def write_staged_shard(shard_dir: str | os.PathLike, extraction: str, features, shas, paths, labels,
                       store: str = "float32") -> str:
    """Write a shard for a driver to publish; used by distributed workers, which hold no lock.

    The name is a hash of the shard's sorted sha256 list, so a retried task
    that embeds the same rows rewrites the same file instead of adding a
    second copy. Written under ``.tmp-*``, then renamed to
    ``.staged-ray-<hash>.h5``: hidden from readers until
    :meth:`Extraction.publish` (or the next holder of the lock) renames it
    to ``ray-<hash>.h5``. Returns that staged name.
    """
    digest = hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()[:32]
    name = f"{STAGED_PREFIX}ray-{digest}.h5"
    final = Path(shard_dir) / name
    tmp = tmp_name(final)
    write_shard_file(tmp, extraction, features, shas, paths, labels, store=store)
    publish_file(tmp, final)
    return name


def staged(shard_dir: Path) -> list[Path]:
    """Complete shards that distributed workers wrote but no driver has published yet."""
    try:
        return sorted(shard_dir.glob(f"{STAGED_PREFIX}*.h5"))
    except FileNotFoundError:
        return []


def publish(ext: "Extraction", shards: Iterable[Path]) -> list[Path]:
    """Rename staged shards into place (holding the lock); returns their published paths.

    The first shard also writes meta.json, with the feature width read from
    it. A staged shard that is not readable is deleted: its rows are
    computed again when needed.
    """
    out = []
    for shard in shards:
        if ext.meta.get("feature_width") is None:
            try:
                with h5().File(shard, "r") as f:
                    ext.meta["feature_width"] = int(f["features"].shape[1])
            except (OSError, KeyError):
                with contextlib.suppress(FileNotFoundError):
                    shard.unlink()
                continue
        ext.save_meta()
        if not (ext.root / "meta.json").exists():
            raise ExtractionRemoved(f"Extraction {ext.name} was removed (`featx cache rm`) while this run was writing to it.")
        final = shard.with_name(shard.name.removeprefix(STAGED_PREFIX))
        try:
            publish_file(shard, final)
        except FileNotFoundError:  # reported twice (a retried task): published already
            if not final.exists():
                continue
        out.append(final)
        ext._own.add(final.name)
    return out
