"""Finding and reading rows: every lookup binary-searches the shards' sorted key columns.

Nothing here builds a table of every row: reading k rows of an extraction
of N costs about O(k log N), and memory follows k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from ..errors import CacheError

if TYPE_CHECKING:
    from .extraction import Extraction


class KnownRows:
    """The sha256 keys of an extraction, for ``in`` tests while a run adds rows.

    A lookup binary-searches each shard (O(log N), not a set of every key
    built first); keys added by the run are kept in a set. After many
    lookups (more than an eighth of the rows) it loads every key once,
    which is cheaper from then on. :meth:`missing` checks many keys at
    once without loading any set.
    """

    def __init__(self, extraction: "Extraction"):
        self._extraction = extraction
        self._added: set[str] = set()
        self._all: set[str] | None = None
        self._lookups = 0
        self.refresh()

    def refresh(self) -> None:
        """Search the shards live now (called after a merge replaced some)."""
        self._shards = tuple(s for _, s in self._extraction._live() if s is not None)
        self._rows = sum(s.n for s in self._shards)

    def __contains__(self, sha) -> bool:
        if sha in self._added:
            return True
        if self._all is not None:
            return sha in self._all
        self._lookups += 1
        if self._lookups > max(4096, self._rows // 8):
            self._all = set(iter(self))
            return sha in self._all
        if not isinstance(sha, str) or len(sha) != 64:
            return False
        key = sha.encode()
        return any(key in s for s in self._shards)

    def missing(self, shas: Sequence[str]) -> list[str]:
        """The ``shas`` that are not here, in their order: one vectorised binary search per shard."""
        queries = np.array(list(shas), dtype="S64")
        absent = np.ones(len(queries), bool)
        if self._added:
            absent &= ~np.isin(np.asarray(list(shas), dtype=object), list(self._added))
        order = np.argsort(queries, kind="stable")
        for shard in self._shards:
            todo = order[absent[order]]
            if not len(todo):
                break
            absent[todo[shard.find(queries[todo]) >= 0]] = False
            shard.release()
        return [shas[i] for i in np.flatnonzero(absent)]

    def add(self, sha: str) -> None:
        self._added.add(sha)

    def update(self, shas: Iterable[str]) -> None:
        self._added.update(shas)

    def __iter__(self) -> Iterator[str]:
        seen = set(self._added)
        yield from self._added
        for s in self._shards:
            for k in s.keys:
                sha = k.decode()
                if sha not in seen:
                    seen.add(sha)
                    yield sha

    def __len__(self) -> int:
        return sum(1 for _ in self)


def locate(extraction: "Extraction", shas: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(shard number in name order, file row) of each of ``shas``; (-1, -1) where absent.

    The first copy wins, as in :func:`read_rows`. Sorting by the pair gives
    an order in which reads run forward through each shard.
    """
    queries = np.array(list(shas), dtype="S64")
    order = np.argsort(queries, kind="stable")
    sorted_q = queries[order]
    shard_no = np.full(len(queries), -1, np.int64)
    row = np.full(len(queries), -1, np.int64)
    todo = np.arange(len(queries))  # positions in sorted_q still to find
    for number, (_, shard) in enumerate(extraction._live()):
        if not len(todo):
            break
        rows = shard.find(sorted_q[todo])
        hit = rows >= 0
        shard_no[order[todo[hit]]] = number
        row[order[todo[hit]]] = rows[hit]
        todo = todo[~hit]
        shard.release()
    return shard_no, row


def read_rows(extraction: "Extraction", shas: Sequence[str]) -> np.ndarray:
    """Feature rows for ``shas`` in that order, as float32; raises if any is missing.

    Each shard is binary-searched for the keys not found yet, in name
    order (the first copy wins). A merge may replace shards between the
    listing and the read (it puts the merged shard in place first): rows
    missing from a listing that changed make the read start over, a few
    times, before anything is reported missing.
    """
    width = int(extraction.meta["feature_width"])
    queries = np.array(list(shas), dtype="S64")
    order = np.argsort(queries, kind="stable")
    sorted_q = queries[order]
    for attempt in range(4):
        listing = extraction._files()
        out = np.empty((len(queries), width), dtype=np.float32)
        todo = np.arange(len(queries))  # positions in sorted_q still to find
        for _, shard in extraction._live():
            if not len(todo):
                break
            rows = shard.find(sorted_q[todo])
            hit = rows >= 0
            if hit.any():
                shard.gather(rows[hit], out, order[todo[hit]])
            todo = todo[~hit]
        if not len(todo):
            return out
        if attempt < 3 and extraction._files() != listing:
            continue
        first = sorted_q[todo[0]].decode()
        raise CacheError(
            f"{len(todo)} images are not in extraction {extraction.name} (first: {first[:12]}). "
            "Run `featx extract` again to compute them."
        )
    raise AssertionError("unreachable")
