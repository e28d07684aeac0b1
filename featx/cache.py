"""The feature cache: content-addressed, crash-safe HDF5 shards on disk.

Layout under the cache root (``./cache`` by default, ``FEATX_CACHE_DIR``)::

    memo.sqlite                      (path, size, mtime) -> sha256; images known to be bad (featx.memo)
    extractions/<name>/meta.json     the settings that make up the key
    extractions/<name>/shards/*.h5   immutable feature shards (.quarantine-* ones are unreadable, set aside;
                                     .staged-* ones are written by Ray workers, published by their driver)
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
import errno
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

from .errors import BrokenExtraction, CacheError, ExtractionRemoved, FeatxError
from .memo import Memo, decoder_version  # noqa: F401  (decoder_version: part of this module's API before the memo moved)
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


# --------------------------------------------------------------------------- extractions


@dataclass
class Extraction:
    """One extraction directory: the shards of one set of settings.

    ``error`` is set (and ``meta`` empty) for a broken extraction, one whose
    meta.json cannot be read; such an entry can only be listed and removed.
    An extraction made by ``Cache.extraction(create=True)`` has its
    meta.json written with its first shard (or view), so a run that fails
    before computing anything leaves no empty entry behind.
    """

    root: Path
    meta: dict
    error: str | None = None
    unsaved: bool = field(default=False, repr=False, compare=False)
    _locked: bool = field(default=False, init=False, repr=False, compare=False)
    _unreadable: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.root.name

    def __repr__(self) -> str:
        return f"Extraction({str(self.root)!r}" + (f", error={self.error!r})" if self.error else ")")

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

    def quarantined(self) -> list[Path]:
        try:
            return sorted(self.shard_dir.glob(".quarantine-*"))
        except FileNotFoundError:
            return []

    def save_meta(self) -> None:
        """Write meta.json if this extraction has none yet (first shard or view)."""
        meta_path = self.root / "meta.json"
        if not self.unsaved or meta_path.exists():
            self.unsaved = False
            return
        _writable_or_raise(self.root.parent, f"write extraction {self.name}")
        self.root.mkdir(parents=True, exist_ok=True)
        with _write_errors(self.root):
            atomic_write_json(meta_path, self.meta)
        self.unsaved = False

    @contextlib.contextmanager
    def lock(self, on_wait=None) -> Iterator[None]:
        """Exclusive right to add, merge or remove shards; released by the kernel if we die.

        Shards found unreadable while the lock is held are moved aside
        (``shards/.quarantine-*``) when the holder finishes without error:
        by then a run has recomputed the rows its data needed.
        """
        _writable_or_raise(self.root if self.root.exists() else self.root.parent, f"write to extraction {self.name}")
        if self.unsaved:
            self.root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                with _write_errors(self.root):
                    fh = open(self.root / ".lock", "a+")
            except FileNotFoundError:
                raise ExtractionRemoved(f"Extraction {self.name} was removed (`featx cache rm`).") from None
            try:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait:
                        on_wait()
                    fcntl.flock(fh, fcntl.LOCK_EX)
            except BaseException:
                fh.close()
                raise
            if self._same_file(fh):
                break
            # The folder was removed while we waited: our lock guards nothing.
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            if not self.unsaved:
                raise ExtractionRemoved(f"Extraction {self.name} was removed (`featx cache rm`) while this run waited for it.")
            self.root.mkdir(parents=True, exist_ok=True)
        self._locked = True
        try:
            # Holding the lock, no one else is writing: temporary files left
            # here belong to a writer that was killed mid-shard.
            for tmp in self.shard_dir.glob(".tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            # Staged shards are complete: a distributed run's driver died
            # before publishing them. Adopting them saves their rows.
            if not self.error:
                self.publish(self.staged())
            yield
            self._quarantine_unreadable()
        finally:
            self._locked = False
            self._unreadable.clear()
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def _same_file(self, fh) -> bool:
        try:
            st = os.stat(self.root / ".lock")
        except FileNotFoundError:
            return False
        mine = os.fstat(fh.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _quarantine_unreadable(self) -> None:
        for shard, reason in list(self._unreadable.items()):
            if not shard.exists() or _readable(shard):
                continue  # gone, or readable after all (a passing error such as too many open files)
            aside = shard.with_name(f".quarantine-{shard.name}")
            try:
                os.replace(shard, aside)
            except OSError as exc:
                warnings.warn(f"featx: could not move unreadable shard {shard} aside: {exc}")
                continue
            warnings.warn(
                f"featx: moved unreadable shard {shard.name} of {self.name} aside to shards/{aside.name} "
                f"({reason}); its rows are recomputed when needed"
            )

    def _note_unreadable(self, shard: Path, exc: Exception) -> None:
        if self._locked:
            self._unreadable[shard] = " ".join(str(exc).split())[:160]

    def index(self) -> dict[str, tuple[Path, int]]:
        """sha256 -> (shard, row) over all readable shards; the first copy wins."""
        return self._index()[0]

    def _index(self) -> tuple[dict[str, tuple[Path, int]], list[Path]]:
        """The index and the shard listing it was built from."""
        out: dict[str, tuple[Path, int]] = {}
        listing = self.shards()
        for shard in listing:
            shas = _read_column(shard, "sha256", on_error=self._note_unreadable)
            if shas is None:
                continue
            for row, sha in enumerate(shas):
                out.setdefault(sha, (shard, row))
        return out, listing

    def rows(self) -> int:
        return len(self.index())

    def size_bytes(self) -> int:
        return sum(_file_size(p) for p in self.shards())

    def write_shard(self, features: np.ndarray, shas: Sequence[str], paths: Sequence[str], labels: Sequence[str]) -> Path:
        """Write one immutable shard atomically and return its path.

        Refuses (:class:`ExtractionRemoved`) when the extraction's meta.json
        is gone: a run must not resurrect an extraction removed under it.
        """
        if self.meta.get("feature_width") is None:  # known once the model has run
            self.meta["feature_width"] = int(np.shape(features)[1])
        self.save_meta()
        if not (self.root / "meta.json").exists():
            raise ExtractionRemoved(
                f"Extraction {self.name} was removed (`featx cache rm`) while this run was writing to it; "
                "nothing more was written. Run the command again."
            )
        _writable_or_raise(self.root, f"write to extraction {self.name}")
        with _write_errors(self.root):
            self.shard_dir.mkdir(exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        tmp = self.shard_dir / f".tmp-{name}"
        final = self.shard_dir / name
        with _write_errors(self.root):
            _write_shard_file(tmp, self.name, features, shas, paths, labels)
        os.replace(tmp, final)
        return final

    def staged(self) -> list[Path]:
        """Complete shards that distributed workers wrote but no driver has published yet."""
        try:
            return sorted(self.shard_dir.glob(f"{STAGED_PREFIX}*.h5"))
        except FileNotFoundError:
            return []

    def publish(self, staged: Iterable[Path]) -> list[Path]:
        """Rename staged shards (``shards/.staged-*``, see :func:`write_staged_shard`) into place.

        Call while holding :meth:`lock`. The first shard also writes
        meta.json, with the feature width read from it. A staged shard that
        is not readable is deleted: its rows are computed again when needed.
        """
        out = []
        for shard in staged:
            if self.meta.get("feature_width") is None:
                try:
                    with _h5().File(shard, "r") as f:
                        self.meta["feature_width"] = int(f["features"].shape[1])
                except (OSError, KeyError):
                    with contextlib.suppress(FileNotFoundError):
                        shard.unlink()
                    continue
            self.save_meta()
            if not (self.root / "meta.json").exists():
                raise ExtractionRemoved(f"Extraction {self.name} was removed (`featx cache rm`) while this run was writing to it.")
            final = shard.with_name(shard.name.removeprefix(STAGED_PREFIX))
            try:
                os.replace(shard, final)
            except FileNotFoundError:  # reported twice (a retried task): published already
                if not final.exists():
                    continue
            out.append(final)
        return out

    def read(self, shas: Sequence[str], index: dict | None = None) -> np.ndarray:
        """Feature rows for ``shas`` in that order; raises if any is missing.

        A compaction may merge and unlink shards between the index and the
        read (it writes the merged shard first): a vanished shard, or rows
        missing from an index taken mid-compaction, make the read start over
        with a fresh index, a few times, before anything is reported missing.
        """
        for attempt in range(4):
            fresh = index is None or attempt > 0
            idx, listing = self._index() if fresh else (index, None)
            missing = [s for s in shas if s not in idx]
            if missing:
                if attempt < 3 and (not fresh or self.shards() != listing):
                    continue
                raise CacheError(
                    f"{len(missing)} images are not in extraction {self.name} (first: {missing[0][:12]}). "
                    "Run `featx extract` again to compute them."
                )
            try:
                return self._read_rows(shas, idx)
            except FileNotFoundError:
                if attempt == 3:
                    raise CacheError(
                        f"Shards of extraction {self.name} keep vanishing while being read "
                        "(a compaction or removal is running?). Try again."
                    ) from None
        raise AssertionError("unreachable")

    def _read_rows(self, shas: Sequence[str], index: dict) -> np.ndarray:
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
            try:
                f = h5py.File(shard, "r")
            except OSError as exc:
                # h5py names a file unlinked mid-open (by another process's compaction)
                # an OSError, not FileNotFoundError: either way the read starts over.
                if not shard.exists():
                    raise FileNotFoundError(str(shard)) from exc
                raise
            with f:
                ds = f["features"]
                if len(rows) > ds.shape[0] // 4:
                    out[pos] = ds[...][rows]
                else:
                    out[pos] = ds[np.unique(rows)][np.searchsorted(np.unique(rows), rows)]
        return out

    def compact(self, min_shards: int = 2, only: Sequence[Path] | None = None) -> int:
        """Merge shards into one (call while holding :meth:`lock`); returns shards merged.

        The merged shard is renamed into place before the parts are removed,
        so a concurrent reader sees every row at least once, and a reader
        whose index names a removed part reads again with a fresh index.
        Unreadable shards are moved aside when the lock is released.
        """
        shards = list(only) if only is not None else self.shards()
        if self._locked and only is None:
            self.index()  # notes the unreadable shards, moved aside when the lock is released
            shards = [p for p in shards if p not in self._unreadable]
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
                if not isinstance(exc, FileNotFoundError):
                    self._note_unreadable(shard, exc)
                    if not self._locked:
                        warnings.warn(f"featx: skipping unreadable shard {shard.name} while compacting: {exc}")
                shards = [x for x in shards if x != shard]
        if not shas:
            return 0
        self.write_shard(np.concatenate(feats), shas, paths, labels)
        for shard in shards:
            with contextlib.suppress(FileNotFoundError):
                shard.unlink()
        return len(shards)


def _broken_message(e: Extraction) -> str:
    return f"Extraction {e.name} is broken: {e.error}. Remove it with `featx cache rm {e.name}`."


def _writable_or_raise(folder: Path, action: str) -> None:
    """A one-line :class:`CacheError` instead of a PermissionError deep inside h5py or sqlite."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CacheError(f"Cannot {action}: the cache folder {probe} is read-only (no write permission).")


@contextlib.contextmanager
def _write_errors(folder: Path):
    try:
        yield
    except PermissionError:
        raise CacheError(f"Cannot write to the cache folder {folder}: permission denied.") from None
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        raise CacheError(f"Cannot write to the cache folder {folder}: read-only file system.") from None


def _write_shard_file(path: Path, extraction: str, features, shas, paths, labels) -> None:
    """The shard schema (cache/README.md), written and fsynced at ``path``."""
    h5py = _h5()
    features = np.asarray(features, dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features, chunks=(min(len(features), 256), features.shape[1]))
        f.create_dataset("sha256", data=np.array(shas, dtype="S64"))
        f.create_dataset("path", data=list(paths), dtype=_STR)
        f.create_dataset("label", data=[lab or "" for lab in labels], dtype=_STR)
        f.attrs["extraction"] = extraction
        f.attrs["format_version"] = FORMAT_VERSION
    _fsync(path)


STAGED_PREFIX = ".staged-"


def write_staged_shard(shard_dir: str | os.PathLike, extraction: str, features, shas, paths, labels) -> str:
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
    tmp = Path(shard_dir) / f".tmp-{uuid.uuid4().hex}-{name}"
    _write_shard_file(tmp, extraction, features, shas, paths, labels)
    os.replace(tmp, Path(shard_dir) / name)
    return name


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


def _readable(shard: Path) -> bool:
    try:
        with _h5().File(shard, "r") as f:
            f["sha256"][:1]
        return True
    except (OSError, KeyError):
        return False


def _read_column(shard: Path, column: str, on_error=None) -> list[str] | None:
    """A shard's string column, or None (with a warning) if it is unreadable."""
    try:
        with _h5().File(shard, "r") as f:
            return [x.decode() for x in f[column][...]]
    except FileNotFoundError:
        return None  # compacted away between listing and opening
    except (OSError, KeyError) as exc:
        if not shard.exists():
            return None  # the same, named an OSError by h5py
        warnings.warn(f"featx: ignoring unreadable cache shard {shard}: {exc}")
        if on_error:
            on_error(shard, exc)
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

    def __repr__(self) -> str:
        from .reprs import ends

        return (f"DatasetView({self.source!r}, {self.layout}, {self.rows} rows, extraction {self.extraction}, "
                f"classes {ends(self.class_names, 5)}, {len(self.skipped)} skipped)")


# --------------------------------------------------------------------------- the cache


class Cache:
    """A featx cache root. Cheap to create; nothing is read until asked."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # -- layout
    def ensure(self) -> "Cache":
        """Create the layout; a read-only cache that already has it is left as it is."""
        with _write_errors(self.root):
            for sub in ("extractions", "datasets"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            gitignore = self.root / ".gitignore"
            if not gitignore.exists():
                atomic_write_bytes(gitignore, b"# featx cache: generated data, never committed\n*\n!README.md\n!.gitignore\n")
        return self

    def writable(self) -> bool:
        """Whether this process may write here (False for a read-only cache).

        A read-only cache still serves everything already extracted.
        """
        folders = [self.root / "extractions", self.root / "datasets"]
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return all(os.access(p, os.W_OK | os.X_OK) for p in [probe, *(f for f in folders if f.exists())])

    def memo(self) -> Memo:
        """The memo; read-only (lookups only) where this process may not write it."""
        path = self.root / "memo.sqlite"
        if not self.writable() or (path.exists() and not os.access(path, os.W_OK)):
            return Memo(path, readonly=True)
        self.ensure()
        try:
            return Memo(path)
        except sqlite3.OperationalError as exc:
            # Locked past the busy timeout, disk full, an I/O error, a file system without
            # working locks: the file may be fine. Never moved aside; this run reads what it can.
            warnings.warn(f"featx: the memo {path} cannot be written ({exc}); going on with it read-only "
                          "(see docs/filesystems.md)")
            return Memo(path, readonly=True)
        except sqlite3.DatabaseError as exc:  # not a database any more: it only saved work
            aside = path.with_name(f"memo.sqlite.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            warnings.warn(f"featx: the memo {path} was unreadable ({exc}); moved it aside to {aside.name} and started a new one")
            return Memo(path)

    # -- extractions
    def extraction(self, spec: ExtractionSpec, feature_width: int | None = None, create: bool = False) -> Extraction | None:
        """The extraction of ``spec``: None if absent, unless ``create``.

        A created extraction writes its meta.json with its first shard or
        dataset view: a run that fails before (bad weights, a crash while
        building the model) leaves no empty entry in ``featx cache list``.
        """
        root = self.root / "extractions" / spec.dirname
        found = self._load(root)
        if found is not None:
            if found.error:
                raise BrokenExtraction(_broken_message(found))
            return found
        if not create:
            return None
        meta = {
            **spec.record(),
            "key": spec.key,
            "feature_width": None if feature_width is None else int(feature_width),
            "created": time.time(),
        }
        return Extraction(root, meta, unsaved=True)

    @staticmethod
    def _load(root: Path) -> Extraction | None:
        """The extraction in ``root``; broken (``error`` set) if its meta.json is unreadable.

        A folder with neither meta.json nor shards is a run that never
        wrote anything (or is about to): not an extraction.
        """
        meta_path = root / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
                raise ValueError("no settings in it")
            ExtractionSpec.from_record(meta)
            return Extraction(root, meta)
        except FileNotFoundError:
            if not Extraction(root, {}).shards():
                return None
            return Extraction(root, {}, error="meta.json is missing")
        except (OSError, ValueError, TypeError, FeatxError) as exc:
            reason = " ".join(str(exc).split())[:120]
            return Extraction(root, {}, error=f"meta.json is unreadable ({type(exc).__name__}: {reason})")

    def extractions(self, broken: bool = False) -> list[Extraction]:
        """The cached extractions; with ``broken=True`` also those whose meta.json is unreadable."""
        out = []
        base = self.root / "extractions"
        if not base.is_dir():
            return out
        for d in sorted(base.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            e = self._load(d)
            if e is not None and (broken or not e.error):
                out.append(e)
        return out

    def get_extraction(self, name: str, broken: bool = False) -> Extraction:
        """An extraction by directory name or unique prefix of it or of its key.

        A broken extraction is an error that says how to remove it, unless
        ``broken=True`` (what removal needs).
        """
        every = self.extractions(broken=True)
        exact = [e for e in every if e.name == name]
        matches = exact or [e for e in every if e.name.startswith(name) or e.meta.get("key", "").startswith(name)]
        if len(matches) == 1:
            if matches[0].error and not broken:
                raise BrokenExtraction(_broken_message(matches[0]))
            return matches[0]
        if not matches:
            raise CacheError(f"No extraction {name!r} in {self.root}. `featx cache list` shows what is cached.")
        raise CacheError(f"{name!r} matches {len(matches)} extractions: {', '.join(e.name for e in matches)}.")

    def remove_extraction(self, extraction: Extraction, on_wait=None) -> list[DatasetView]:
        """Delete an extraction and the dataset views that read it.

        Waits for the extraction's lock, so a running extraction finishes
        first; a run that waited for it afterwards refuses to write
        (:class:`ExtractionRemoved`) instead of recreating the folder.
        """
        _writable_or_raise(self.root / "extractions", f"remove {extraction.name}")
        _writable_or_raise(self.root / "datasets", f"remove the dataset views of {extraction.name}")
        with extraction.lock(on_wait=on_wait):
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
        extraction: Extraction,
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
        """Record a dataset's rows (path, sha256, label, split) for an extraction.

        Only ``featx extract`` writes views: they are what ``fit-head`` and
        ``load_features`` read, so predicting never changes them. A dataset
        none of whose images could be read records its view (with the
        skipped files) but creates no extraction. In a read-only cache, an
        identical view already there is returned as it is; anything else is
        a :class:`CacheError`.
        """
        h5py = _h5()
        vid = hashlib.sha256(f"{source}\0{extraction.name}".encode()).hexdigest()[:16]
        final = self.root / "datasets" / f"{vid}.h5"
        if not self.writable():
            return self._unchanged_view(final, extraction, paths, shas, labels, splits, skipped)
        self.ensure()
        if extraction.meta.get("feature_width") is not None:
            extraction.save_meta()
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
            f.attrs["extraction"] = extraction.name
            f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["created"] = created
            f.attrs["format_version"] = FORMAT_VERSION
        _fsync(tmp)
        os.replace(tmp, final)
        if set_latest:
            atomic_write_json(self.root / "latest.json", {"view": vid, "extraction": extraction.name, "source": source})
        return self._view_info(final)

    def _unchanged_view(self, final: Path, extraction, paths, shas, labels, splits, skipped) -> DatasetView:
        try:
            if extraction.unsaved:
                raise KeyError("no extraction")
            view = self._view_info(final)
            cols = self.read_view(view)
            same = (
                list(cols["path"]) == list(paths)
                and list(cols["sha256"]) == list(shas)
                and np.array_equal(cols["label"], np.asarray(labels, dtype=np.int32))
                and list(cols["split"]) == list(splits)
                and view.skipped == [tuple(x) for x in skipped]
            )
        except (OSError, KeyError, ValueError):
            same = False
        if not same:
            raise CacheError(
                f"Cannot record this dataset: the cache folder {self.root} is read-only and does not hold "
                "these features yet. Extract into a writable --cache-dir."
            )
        return view

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
