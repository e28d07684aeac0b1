"""The feature cache: content-addressed, crash-safe HDF5 shards on disk.

Layout under the cache root (``./cache`` by default, ``FEATX_CACHE_DIR``)::

    memo.sqlite                      (path, size, mtime) -> sha256; images known to be bad
    extractions/<name>/meta.json     the settings that make up the key
    extractions/<name>/shards/*.h5   immutable feature shards
    extractions/<name>/.lock         held by the one process computing into it
    datasets/<id>.h5                 one dataset seen through one extraction
    latest.json                      the most recent dataset view

A feature row is keyed by the sha256 of the image bytes inside an
extraction whose name carries a hash of everything else that changes the
result (backbone, weights fingerprint, input size, preprocessing, pooling,
tap point, precision, format version). Shards are written under a temporary
name and renamed into place, so a reader never sees half a file and a killed
run loses only what it had not flushed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .data import sha256_file
from .errors import CacheError
from .spec import FORMAT_VERSION, ExtractionSpec

CACHE_ENV = "FEATX_CACHE_DIR"
DEFAULT_CACHE_DIR = "cache"
_STR = None  # h5py string dtype, made on first use so importing featx stays light


def _h5():
    import h5py

    global _STR
    if _STR is None:
        _STR = h5py.string_dtype("utf-8")
    return h5py


def default_cache_dir() -> Path:
    """``$FEATX_CACHE_DIR``, else ``./cache``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


# --------------------------------------------------------------------------- memo


class Memo:
    """sqlite memo of file hashes and of images known not to decode.

    sqlite does its own locking, so several featx processes may share it.
    The (path, size, mtime_ns) triple keeps an unchanged tree from being
    re-read; an edited file changes its size or mtime and is hashed again.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS bad (sha256 TEXT PRIMARY KEY, reason TEXT)")

    def close(self) -> None:
        self._db.close()

    def lookup(self, stats: dict[str, tuple[int, int]]) -> dict[str, str]:
        """sha256 of each path whose (size, mtime_ns) still matches the memo."""
        found: dict[str, str] = {}
        paths = list(stats)
        for i in range(0, len(paths), 500):
            chunk = paths[i : i + 500]
            rows = self._db.execute(
                f"SELECT path, size, mtime_ns, sha256 FROM files WHERE path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for path, size, mtime, sha in rows:
                if stats[path] == (size, mtime):
                    found[path] = sha
        return found

    def remember(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        rows = list(rows)
        if rows:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)

    def bad(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT sha256, reason FROM bad"))

    def remember_bad(self, rows: Iterable[tuple[str, str]]) -> None:
        rows = list(rows)
        if rows:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO bad VALUES (?, ?)", rows)

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


# --------------------------------------------------------------------------- extractions


@contextlib.contextmanager
def extraction_lock(root: Path, on_wait=None) -> Iterator[None]:
    """The lock of the extraction at ``root``, which need not exist yet.

    It lives beside the extraction (``extractions/.locks/<name>.lock``) so
    that a run can hold it before it knows whether it will create the
    extraction: one that fails before its first shard leaves nothing behind.
    """
    locks = root.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fh = open(locks / f"{root.name}.lock", "a+")
    shard_dir = root / "shards"
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        # Holding the lock, no one else is writing: temporary files left
        # here belong to a writer that was killed mid-shard.
        for tmp in shard_dir.glob(".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@dataclass
class Extraction:
    """One extraction directory: the shards of one set of settings."""

    root: Path
    meta: dict

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def spec(self) -> ExtractionSpec:
        """The extraction's :class:`~featx.spec.ExtractionSpec`, read from its ``meta.json``."""
        return ExtractionSpec.from_record(self.meta, where=f"Extraction {self.name}")

    settings = spec  # the fields used to be called settings

    def shards(self) -> list[Path]:
        try:
            return sorted(p for p in self.shard_dir.iterdir() if p.suffix == ".h5" and not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def lock(self, on_wait=None):
        """Exclusive right to add shards; released by the kernel if we die."""
        return extraction_lock(self.root, on_wait)

    def index(self) -> dict[str, tuple[Path, int]]:
        """sha256 -> (shard, row) over all readable shards; the first copy wins."""
        out: dict[str, tuple[Path, int]] = {}
        for shard in self.shards():
            shas = _read_column(shard, "sha256")
            if shas is None:
                continue
            for row, sha in enumerate(shas):
                out.setdefault(sha, (shard, row))
        return out

    def rows(self) -> int:
        return len(self.index())

    def size_bytes(self) -> int:
        return sum(_file_size(p) for p in self.shards())

    def write_shard(self, features: np.ndarray, shas: Sequence[str], paths: Sequence[str], labels: Sequence[str]) -> Path:
        """Write one immutable shard atomically and return its path."""
        h5py = _h5()
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        tmp = self.shard_dir / f".tmp-{name}"
        final = self.shard_dir / name
        features = np.asarray(features, dtype=np.float32)
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features, chunks=(min(len(features), 256), features.shape[1]))
            f.create_dataset("sha256", data=np.array(shas, dtype="S64"))
            f.create_dataset("path", data=list(paths), dtype=_STR)
            f.create_dataset("label", data=[lab or "" for lab in labels], dtype=_STR)
            f.attrs["extraction"] = self.name
            f.attrs["format_version"] = FORMAT_VERSION
        _fsync(tmp)
        os.replace(tmp, final)
        return final

    def read(self, shas: Sequence[str], index: dict | None = None) -> np.ndarray:
        """Feature rows for ``shas`` in that order; raises if any is missing."""
        index = self.index() if index is None else index
        missing = [s for s in shas if s not in index]
        if missing:
            raise CacheError(
                f"{len(missing)} images are not in extraction {self.name} (first: {missing[0][:12]}). "
                "Run `featx extract` again to compute them."
            )
        width = int(self.meta["feature_width"])
        out = np.empty((len(shas), width), dtype=np.float32)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, sha in enumerate(shas):
            shard, row = index[sha]
            by_shard.setdefault(shard, []).append((row, pos))
        h5py = _h5()
        for shard, pairs in by_shard.items():
            pairs.sort()
            rows = np.array([r for r, _ in pairs])
            pos = np.array([p for _, p in pairs])
            with h5py.File(shard, "r") as f:
                ds = f["features"]
                if len(rows) > ds.shape[0] // 4:
                    out[pos] = ds[...][rows]
                else:
                    out[pos] = ds[np.unique(rows)][np.searchsorted(np.unique(rows), rows)]
        return out

    def compact(self, min_shards: int = 2, only: Sequence[Path] | None = None) -> int:
        """Merge shards into one (call while holding :meth:`lock`); returns shards merged.

        The merged shard is renamed into place before the parts are removed,
        so a concurrent reader sees every row at least once.
        """
        shards = list(only) if only is not None else self.shards()
        if len(shards) < min_shards:
            return 0
        h5py = _h5()
        feats, shas, paths, labels, seen = [], [], [], [], set()
        for shard in shards:
            try:
                with h5py.File(shard, "r") as f:
                    s = [x.decode() for x in f["sha256"][...]]
                    keep = [i for i, x in enumerate(s) if x not in seen]
                    seen.update(s)
                    feats.append(f["features"][...][keep])
                    shas += [s[i] for i in keep]
                    p = f["path"].asstr()[...]
                    lab = f["label"].asstr()[...]
                    paths += [p[i] for i in keep]
                    labels += [lab[i] for i in keep]
            except (OSError, KeyError) as exc:
                warnings.warn(f"featx: skipping unreadable shard {shard.name} while compacting: {exc}")
                shards = [x for x in shards if x != shard]
        if not shas:
            return 0
        self.write_shard(np.concatenate(feats), shas, paths, labels)
        for shard in shards:
            with contextlib.suppress(FileNotFoundError):
                shard.unlink()
        return len(shards)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_column(shard: Path, column: str) -> list[str] | None:
    """A shard's string column, or None (with a warning) if it is unreadable."""
    try:
        with _h5().File(shard, "r") as f:
            return [x.decode() for x in f[column][...]]
    except FileNotFoundError:
        return None  # compacted away between listing and opening
    except (OSError, KeyError) as exc:
        warnings.warn(f"featx: ignoring unreadable cache shard {shard}: {exc}")
        return None


# --------------------------------------------------------------------------- dataset views


@dataclass
class DatasetView:
    """One dataset (its images, labels and splits) seen through one extraction."""

    path: Path
    source: str
    layout: str
    extraction: str
    class_names: list[str]
    created: float
    rows: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.path.stem


# --------------------------------------------------------------------------- the cache


class Cache:
    """A featx cache root. Cheap to create; nothing is read until asked."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # -- layout
    def ensure(self) -> "Cache":
        for sub in ("extractions", "datasets"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        gitignore = self.root / ".gitignore"
        if not gitignore.exists():
            atomic_write_bytes(gitignore, b"# featx cache: generated data, never committed\n*\n!README.md\n!.gitignore\n")
        return self

    def memo(self) -> Memo:
        self.ensure()
        return Memo(self.root / "memo.sqlite")

    # -- extractions
    def extraction(self, spec: ExtractionSpec, feature_width: int | None = None, create: bool = False) -> Extraction | None:
        """The extraction of ``spec``; with ``create``, made (with its ``meta.json``) if absent.

        Extraction runs create it only when they have a first shard to
        write, so a run that fails before that leaves nothing behind.
        """
        root = self.root / "extractions" / spec.dirname
        meta_path = root / "meta.json"
        if meta_path.exists():
            return Extraction(root, json.loads(meta_path.read_text()))
        if not create:
            return None
        if feature_width is None:
            raise CacheError(f"Cannot create extraction {spec.dirname} without its feature width.")
        self.ensure()
        (root / "shards").mkdir(parents=True, exist_ok=True)
        meta = {
            **spec.record(),
            "key": spec.key,
            "feature_width": int(feature_width),
            "created": time.time(),
        }
        if not meta_path.exists():
            atomic_write_json(meta_path, meta)
        return Extraction(root, json.loads(meta_path.read_text()))

    def extractions(self) -> list[Extraction]:
        out = []
        base = self.root / "extractions"
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            try:
                out.append(Extraction(d, json.loads((d / "meta.json").read_text())))
            except (OSError, ValueError):
                continue
        return out

    def get_extraction(self, name: str) -> Extraction:
        """An extraction by directory name or unique prefix of it or of its key."""
        matches = [e for e in self.extractions() if e.name == name or e.name.startswith(name) or e.meta.get("key", "").startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CacheError(f"No extraction {name!r} in {self.root}. `featx cache list` shows what is cached.")
        raise CacheError(f"{name!r} matches {len(matches)} extractions: {', '.join(e.name for e in matches)}.")

    def remove_extraction(self, extraction: Extraction) -> list[DatasetView]:
        """Delete an extraction and the dataset views that read it."""
        views = [v for v in self.views() if v.extraction == extraction.name]
        for v in views:
            with contextlib.suppress(FileNotFoundError):
                v.path.unlink()
        latest = self.latest_view_id()
        if latest and any(v.id == latest for v in views):
            with contextlib.suppress(FileNotFoundError):
                (self.root / "latest.json").unlink()
        trash = extraction.root.with_name(f".trash-{uuid.uuid4().hex[:8]}-{extraction.name}")
        os.replace(extraction.root, trash)  # one rename: readers see all or nothing
        shutil.rmtree(trash, ignore_errors=True)
        return views

    # -- dataset views
    def write_view(
        self,
        extraction: str,
        source: str,
        layout: str,
        class_names: Sequence[str],
        paths: Sequence[str],
        shas: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        skipped: Sequence[tuple[str, str]] = (),
        set_latest: bool = True,
    ) -> DatasetView:
        """Record a dataset's rows (path, sha256, label, split) for the extraction named ``extraction``.

        Only ``featx extract`` writes views: they are what ``fit-head`` and
        ``load_features`` read, so predicting never changes them.
        """
        h5py = _h5()
        self.ensure()
        vid = hashlib.sha256(f"{source}\0{extraction}".encode()).hexdigest()[:16]
        final = self.root / "datasets" / f"{vid}.h5"
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}-{final.name}")
        created = time.time()
        with h5py.File(tmp, "w") as f:
            f.create_dataset("path", data=list(paths), dtype=_STR)
            f.create_dataset("sha256", data=np.array(shas, dtype="S64"))
            f.create_dataset("label", data=np.asarray(labels, dtype=np.int32))
            f.create_dataset("split", data=list(splits), dtype=_STR)
            f.create_dataset("skipped_path", data=[p for p, _ in skipped], dtype=_STR)
            f.create_dataset("skipped_reason", data=[r for _, r in skipped], dtype=_STR)
            f.attrs["source"] = source
            f.attrs["layout"] = layout
            f.attrs["extraction"] = extraction
            f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["created"] = created
            f.attrs["format_version"] = FORMAT_VERSION
        _fsync(tmp)
        os.replace(tmp, final)
        if set_latest:
            atomic_write_json(self.root / "latest.json", {"view": vid, "extraction": extraction, "source": source})
        return self._view_info(final)

    def _view_info(self, path: Path) -> DatasetView:
        with _h5().File(path, "r") as f:
            skipped = list(zip(f["skipped_path"].asstr()[...], f["skipped_reason"].asstr()[...]))
            return DatasetView(
                path=path,
                source=str(f.attrs["source"]),
                layout=str(f.attrs["layout"]),
                extraction=str(f.attrs["extraction"]),
                class_names=json.loads(f.attrs["class_names"]),
                created=float(f.attrs["created"]),
                rows=int(f["path"].shape[0]),
                skipped=skipped,
            )

    def views(self) -> list[DatasetView]:
        out = []
        base = self.root / "datasets"
        if not base.is_dir():
            return out
        for p in base.glob("*.h5"):
            if p.name.startswith("."):
                continue
            try:
                out.append(self._view_info(p))
            except (OSError, KeyError, ValueError) as exc:
                warnings.warn(f"featx: ignoring unreadable dataset view {p}: {exc}")
        return sorted(out, key=lambda v: v.created)

    def latest_view_id(self) -> str | None:
        try:
            return json.loads((self.root / "latest.json").read_text())["view"]
        except (OSError, ValueError, KeyError):
            return None

    def read_view(self, view: DatasetView) -> dict:
        with _h5().File(view.path, "r") as f:
            return {
                "path": np.array(f["path"].asstr()[...], dtype=object),
                "sha256": np.array([x.decode() for x in f["sha256"][...]], dtype=object),
                "label": f["label"][...],
                "split": np.array(f["split"].asstr()[...], dtype=object),
            }
