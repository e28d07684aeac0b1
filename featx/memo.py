"""The memo: which file holds which bytes, and which bytes do not decode.

``memo.sqlite`` at the cache root maps (path, size, mtime_ns) to the sha256
of the file's bytes, so an unchanged tree is never read twice, and keeps
the sha256 of images that failed to decode, per decoder version, so a bad
file is not retried until Pillow or featx's decoder changes. It only ever saves work: losing
it costs a re-hash, never a wrong feature.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterable

from .data import sha256_file


def decoder_version() -> str:
    """What decides whether bytes decode: Pillow's version and featx's decoder.

    A file is remembered as bad under this string only; when Pillow is
    upgraded (a plugin added, a decoder bug fixed) or featx's own decoding
    code changes (:data:`featx.data.DECODER_VERSION`), the file is tried again.
    """
    import PIL

    from . import data

    return f"Pillow {PIL.__version__}; featx decoder {data.DECODER_VERSION}"


class Memo:
    """sqlite memo of file hashes and of images known not to decode.

    sqlite does its own locking, so several featx processes may share it.
    The (path, size, mtime_ns) triple keeps an unchanged tree from being
    re-read; an edited file changes its size or mtime and is hashed again.
    The triple must be taken *before* the bytes are read: a file edited in
    between then fails the next lookup instead of keeping the old hash.

    A memo in a folder without write permission is opened read-only: lookups
    work and nothing is remembered (it only saves work, never changes a result).
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.decoder = decoder_version()
        if readonly:
            self._db = _connect_readonly(self.path)
            self._bad_has_decoder = self._db is not None and "decoder" in self._columns("bad")
            return
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS bad (sha256 TEXT PRIMARY KEY, reason TEXT, decoder TEXT)")
        if "decoder" not in self._columns("bad"):
            # A memo from before bad marks carried the decoder: its marks
            # (decoder NULL) are stale and every such file is tried again.
            with contextlib.suppress(sqlite3.OperationalError):  # another process migrated it first
                self._db.execute("ALTER TABLE bad ADD COLUMN decoder TEXT")
        self._bad_has_decoder = True

    def _columns(self, table: str) -> set[str]:
        try:
            return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        except sqlite3.DatabaseError:
            return set()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _select(self, sql: str, args=()) -> list[tuple]:
        if self._db is None:
            return []
        try:
            return list(self._db.execute(sql, args))
        except sqlite3.OperationalError:
            if self.readonly:  # an empty read-only memo may lack the table
                return []
            raise

    def lookup(self, stats: dict[str, tuple[int, int]]) -> dict[str, str]:
        """sha256 of each path whose (size, mtime_ns) still matches the memo."""
        found: dict[str, str] = {}
        paths = list(stats)
        for i in range(0, len(paths), 500):
            chunk = paths[i : i + 500]
            rows = self._select(
                f"SELECT path, size, mtime_ns, sha256 FROM files WHERE path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for path, size, mtime, sha in rows:
                if stats[path] == (size, mtime):
                    found[path] = sha
        return found

    def remember(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        rows = list(rows)
        if rows and not self.readonly:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)

    def bad(self) -> dict[str, str]:
        """sha256 -> reason of the files that failed to decode with this decoder."""
        if not self._bad_has_decoder:
            return {}
        return dict(self._select("SELECT sha256, reason FROM bad WHERE decoder = ?", (self.decoder,)))

    def remember_bad(self, rows: Iterable[tuple[str, str]]) -> None:
        """Remember files whose *content* does not decode (never a missing plugin)."""
        rows = [(sha, reason, self.decoder) for sha, reason in rows]
        if rows and not self.readonly:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO bad (sha256, reason, decoder) VALUES (?, ?, ?)", rows)

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def hash_file(self, path: Path) -> str:
        """sha256 of a file, through the memo."""
        path = str(Path(path).resolve())
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns)
        hit = self.lookup({path: key})
        if path in hit:
            return hit[path]
        digest = sha256_file(path)
        self.remember([(path, *key, digest)])
        return digest


def _connect_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection, or None when there is no memo yet.

    A WAL database normally needs its -shm file, which a reader without
    write permission cannot create; ``immutable=1`` reads it without one.
    """
    if not path.exists():
        return None
    uri = path.resolve().as_uri()
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            continue
    return None
