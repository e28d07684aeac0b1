"""The writer thread: shards and memo rows written beside the computing, never in its way."""

from __future__ import annotations

import queue
import threading
import time

from ..cache import Extraction


class Writer:
    """Writes shards and memo rows on a thread of its own, so the model never waits for the disk.

    The queue holds two flushes: a slow disk slows the run down instead of
    filling memory. An error in the thread is raised in the caller at the
    next ``put`` or at ``close``; later jobs are dropped, never half written.
    """

    def __init__(self, extraction: Extraction, memo, clock: dict[str, float], on_written=None):
        self.extraction, self.memo, self.clock = extraction, memo, clock
        self.on_written = on_written or (lambda n: None)
        self.rows = 0  # rows written so far (their shards are in the cache)
        self.shards: list = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, name="featx-writer", daemon=True)
        self._thread.start()

    def put(self, rows, memo_rows: list, bad_rows: list) -> None:
        self._raise()
        if rows is not None or memo_rows or bad_rows:
            self._queue.put((rows, memo_rows, bad_rows))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so that put() never blocks
            t = time.perf_counter()
            try:
                rows, memo_rows, bad_rows = job
                if rows is not None:
                    self.shards.append(self.extraction.write_shard(*rows))
                    self.rows += len(rows[1])
                    self.on_written(len(rows[1]))
                self.memo.remember(memo_rows)
                self.memo.remember_bad(bad_rows)
            except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                self.error = exc
            self.clock["write"] += time.perf_counter() - t
