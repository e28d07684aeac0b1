"""The memo: which file holds which bytes, and which bytes do not decode.

``memo.sqlite`` at the cache root maps (path, size, mtime_ns) to the sha256
of the file's bytes, so an unchanged tree is never read twice, and keeps
the sha256 of images that failed to decode, per decoder version, so a bad
file is not retried until Pillow or featx's decoder changes. It only ever
saves work: losing it costs a re-hash, never a wrong feature.

So a memo that cannot be used right now (locked past the busy timeout,
disk full, an I/O error: ``sqlite3.OperationalError``) is reported once and
the run goes on without it; it is never taken for a corrupt file. On a
network file system (NFS, SMB, Lustre...: docs/filesystems.md) the memo
uses SQLite's rollback journal instead of WAL, whose shared-memory index
only works when every process is on one machine.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from pathlib import Path
from typing import Iterable

from ..datasets import sha256_file
from ..errors import FeatxWarning

# How long a statement waits for another process's lock before it gives up
# (SQLite retries the lock in between): a writer holds it for one batch.
BUSY_TIMEOUT_S = 60.0
# File system types (/proc/mounts) whose locks span machines but which give
# SQLite no shared memory, so WAL mode is unsafe there (sqlite.org/wal.html).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs",
    "ceph", "glusterfs", "beegfs", "orangefs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.beegfs",
})


def decoder_version() -> str:
    """What decides whether bytes decode: Pillow's version and featx's decoder.

    A file is remembered as bad under this string only; when Pillow is
    upgraded (a plugin added, a decoder bug fixed) or featx's own decoding
    code changes (:data:`featx.decode.DECODER_VERSION`), the file is tried again.
    """
    import PIL

    from .. import decode

    return f"Pillow {PIL.__version__}; featx decoder {decode.DECODER_VERSION}"


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
        self._warned = False
        if readonly:
            self._db = _connect_readonly(self.path)
            self._bad_has_decoder = self._db is not None and "decoder" in self._columns("bad")
            return
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        wanted = "delete" if is_network_filesystem(self.path.parent) else "wal"
        # The mode in force: a switch needs the database to itself, and waits for the next opener otherwise.
        self.journal_mode = str(self._db.execute(f"PRAGMA journal_mode={wanted}").fetchone()[0]).lower()
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
        except sqlite3.OperationalError as exc:
            if not self.readonly:  # an empty read-only memo may lack the table: nothing to say
                self._unavailable(exc, "read")
            return []

    def _unavailable(self, exc: sqlite3.OperationalError, doing: str) -> None:
        """Report, once, that the memo could not be used; the run goes on without it."""
        if not self._warned:
            self._warned = True
            warnings.warn(f"featx: could not {doing} the memo {self.path} ({exc}); going on without it "
                          "(unchanged files are hashed again)", FeatxWarning, stacklevel=3)

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
            with self._transaction() as ok:
                if ok:
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
            with self._transaction() as ok:
                if ok:
                    self._db.executemany("INSERT OR REPLACE INTO bad (sha256, reason, decoder) VALUES (?, ?, ?)",
                                         rows)

    @contextlib.contextmanager
    def _transaction(self):
        """One write; an OperationalError (locked past the timeout, disk full, I/O) is reported, not raised."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self._unavailable(exc, "update")
            yield False
            return
        try:
            yield True
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._unavailable(exc, "update")
            return
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._unavailable(exc, "update")

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
            db = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            continue
    return None


def filesystem_type(path: str | os.PathLike) -> str:
    """The type (``ext4``, ``nfs4``, ``fuse.sshfs``...) of the file system holding ``path``.

    Read from /proc/mounts: the entry with the longest mount point above the
    resolved path. "" where that cannot be told (no /proc, as on macOS).
    """
    target = os.path.realpath(path)
    best, kind = -1, ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > best:
                    best, kind = len(mount), parts[2]
    except OSError:
        return ""
    return kind


def is_network_filesystem(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on a file system other machines may share (see :data:`NETWORK_FILESYSTEMS`)."""
    kind = filesystem_type(path)
    return kind in NETWORK_FILESYSTEMS or kind.startswith(("nfs", "smb", "fuse.s3", "fuse.gcs"))
