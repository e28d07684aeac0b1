"""Several extractions filled from one forward pass: one per tap (``--taps 0,1,2``)."""

from __future__ import annotations

import contextlib

import numpy as np

from ..cache import Extraction


class TapSet:
    """Several extractions filled from one forward pass (one per tap).

    Looks like one :class:`~featx.cache.Extraction` to the pipeline: an
    image is cached only when every tap has it, each shard written is split
    by columns into each tap's own shard (rows a tap already holds are not
    written again), and the locks are taken in a fixed order.
    """

    def __init__(self, parts: list[Extraction]):
        self.parts = parts
        self.widths: list[int] | None = None
        self._held: dict[str, set] = {}

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.parts)

    @property
    def unsaved(self) -> bool:
        return all(p.unsaved for p in self.parts)

    def known(self) -> "AllOf":
        self._held = {p.name: p.known() for p in self.parts}
        return AllOf(list(self._held.values()))

    @contextlib.contextmanager
    def lock(self, on_wait=None):
        with contextlib.ExitStack() as stack:
            for part in sorted(self.parts, key=lambda p: p.name):
                stack.enter_context(part.lock(on_wait=on_wait))
            yield

    def write_shard(self, features, shas, paths, labels):
        bounds = np.cumsum([0, *self.widths])
        written = []
        for part, lo, hi in zip(self.parts, bounds[:-1], bounds[1:]):
            held = self._held.setdefault(part.name, set())
            rows = [i for i, sha in enumerate(shas) if sha not in held]
            if not rows:
                continue
            written.append(part.write_shard(features[rows, lo:hi], [shas[i] for i in rows],
                                            [paths[i] for i in rows], [labels[i] for i in rows]))
            held.update(shas[i] for i in rows)
        return written

    def shards(self) -> list:
        return max((p.shards() for p in self.parts), key=len)

    def compact(self, min_shards: int = 2, only=None) -> int:
        mine = None if only is None else {str(x) for group in only for x in (group if isinstance(group, list) else [group])}
        merged = 0
        for part in self.parts:
            subset = None if mine is None else [s for s in part.shards() if str(s) in mine]
            merged += part.compact(min_shards=min_shards, only=subset)
        return merged

    def merge_tiers(self) -> int:
        return sum(part.merge_tiers() for part in self.parts)

    def settle(self) -> int:
        return sum(part.settle() for part in self.parts)


class AllOf:
    """Keys every tap holds (``in``), and keys the run adds to all of them."""

    def __init__(self, knowns):
        self.knowns = knowns
        self._added: set = set()

    def __contains__(self, sha) -> bool:
        return sha in self._added or all(sha in k for k in self.knowns)

    def add(self, sha) -> None:
        self._added.add(sha)

    def __iter__(self):
        first, *rest = self.knowns
        yield from (s for s in set(first) | self._added if s in self._added or all(s in k for k in rest))
