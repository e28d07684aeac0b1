"""The cache's storage layer: sorted shards read by binary search, streamed and
size-tiered merging, float16 rows, and what faults during a merge leave behind."""

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cache import Cache, atomic_write_bytes
from featx.cli import cli
from featx.errors import CacheError
from featx.spec import ExtractionSpec

merge_mod = sys.modules["featx.cache.merge"]
shards_mod = sys.modules["featx.cache.shards"]
REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=4, progress=False)


def sha(i: int) -> str:
    return f"{(i * 2654435761) % 2**64:064x}"  # keys in another order than the rows


def rows(lo, hi, width=3):
    return np.repeat(np.arange(lo, hi, dtype=np.float32)[:, None], width, 1)


def fake_extraction(cache_dir, shards=((0, 4), (4, 8)), store="float32"):
    """An extraction with hand-written shards (no model): row i has features [i, i, i]."""
    spec = ExtractionSpec(
        backbone="vgg16", weights="random:seed=0:tensorflow", input_size=32, preprocessing="caffe",
        pooling="avg", tap="output", cut_blocks=0, precision="float32", weights_source="none",
        **({"store": store} if store != "float32" else {}),
    )
    ext = Cache(cache_dir).ensure().extraction(spec, 3, create=True)
    for lo, hi in shards:
        ext.write_shard(rows(lo, hi), [sha(i) for i in range(lo, hi)], [f"/img/{i}.png" for i in range(lo, hi)],
                        [f"c{i % 3}" for i in range(lo, hi)])
    return ext


def disk_rows(ext) -> int:
    """Rows in every shard file on disk, hidden ones included."""
    total = 0
    for p in ext.shard_dir.glob("*.h5"):
        with h5py.File(p) as f:
            total += f["sha256"].shape[0]
    return total


def write_old_shard(ext, lo, hi, name="20200101T000000-1-old.h5"):
    """A shard as featx wrote it before: unsorted rows, (256, D) chunks, no sorted flag; one duplicate row."""
    keys = [sha(i) for i in range(lo, hi)] + [sha(lo)]
    feats = np.concatenate([rows(lo, hi), rows(lo, lo + 1)])
    ext.shard_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(ext.shard_dir / name, "w") as f:
        f.create_dataset("features", data=feats, chunks=(min(len(feats), 256), 3))
        f.create_dataset("sha256", data=np.array(keys, dtype="S64"))
        f.create_dataset("path", data=[f"/img/{i}.png" for i in range(lo, hi)] + ["dup"], dtype=h5py.string_dtype())
        f.create_dataset("label", data=["old"] * (hi - lo + 1), dtype=h5py.string_dtype())
        f.attrs["format_version"] = 2
    return ext.shard_dir / name


# ---------------------------------------------------------------- the sorted index


def test_shards_are_sorted_and_reads_binary_search_them(cache_dir):
    ext = fake_extraction(cache_dir, shards=((0, 50), (50, 90)))
    for shard in ext.shards():
        with h5py.File(shard) as f:
            keys = f["sha256"][...]
            assert f.attrs["sha256_sorted"] and list(keys) == sorted(keys)
            assert f["features"].chunks is None  # contiguous: rows are read through a memory map
            np.testing.assert_array_equal(
                f["features"][:, 0], [int(f["path"].asstr()[i].split("/")[-1][:-4]) for i in range(len(keys))])
    want = [89, 0, 51, 3, 3, 70]
    np.testing.assert_array_equal(ext.read([sha(i) for i in want])[:, 0], want)
    with pytest.raises(CacheError, match="1 images are not in extraction"):
        ext.read([sha(1), sha(1000)])
    known = ext.known()
    assert sha(7) in known and sha(1000) not in known and len(known) == 90


def test_old_unsorted_shards_are_read_and_rewritten_sorted_by_compact(cache_dir):
    ext = fake_extraction(cache_dir, shards=((0, 5),))
    old = write_old_shard(ext, 5, 300)
    np.testing.assert_array_equal(ext.read([sha(i) for i in (299, 5, 0, 17)])[:, 0], [299, 5, 0, 17])
    assert ext.rows() == 5 + 296  # the old shard's duplicate row is still in it
    with ext.lock():
        assert ext.compact() == 2
    (merged,) = ext.shards()
    assert not old.exists() and merged != old
    with h5py.File(merged) as f:
        assert f.attrs["sha256_sorted"] and f["sha256"].shape == (300,)
        labels = dict(zip(f["sha256"][...], f["label"].asstr()[...]))
    assert labels[sha(6).encode()] == "old" and labels[sha(1).encode()] == "c1"
    np.testing.assert_array_equal(ext.read([sha(i) for i in range(300)])[:, 0], np.arange(300))


def _no_index(monkeypatch):
    """Make Extraction.index(), a dict of every row, an error: the code under test must not build it."""
    def index(self):
        raise AssertionError("built a dict of every row")

    monkeypatch.setattr(featx.cache.Extraction, "index", index)


def test_storage_order_comes_from_the_shards_sorted_keys_not_an_index(cache_dir, monkeypatch):
    from featx.features import CachedRows

    ext = fake_extraction(cache_dir, shards=((0, 40), (40, 70)))
    write_old_shard(ext, 70, 100)  # an older, unsorted shard: rows in file order come from its permutation
    files = ext.shards()
    where = {}
    for j, shard in enumerate(files):
        with h5py.File(shard) as f:
            for row, key in enumerate(f["sha256"][...].tolist()):
                where.setdefault(key.decode(), (j, row))  # the first copy, in name order
    _no_index(monkeypatch)
    picked = [83, 5, 71, 39, 40, 0, 99, 41]
    X = CachedRows(ext, [sha(i) for i in picked])
    order = X.storage_order()
    assert [where[sha(picked[i])] for i in order] == sorted(where[sha(i)] for i in picked)
    shard, row = ext.locate([sha(5), sha(1000), sha(71)])
    assert shard.tolist()[1] == row.tolist()[1] == -1 and (shard[0], row[0]) == where[sha(5)]
    pieces = list(X.chunks(3))
    assert [len(p) for p, _ in pieces] == [3, 3, 2]
    for pos, block in pieces:  # every row once, each the row asked for
        np.testing.assert_array_equal(block[:, 0], np.array(picked)[pos])
    assert sorted(np.concatenate([p for p, _ in pieces]).tolist()) == list(range(len(picked)))


def test_lazy_load_features_checks_for_missing_rows_without_an_index(cache_dir, monkeypatch):
    ext = fake_extraction(cache_dir, shards=((0, 6), (6, 10)))
    cache = Cache(cache_dir)
    shas = [sha(i) for i in range(10)]
    cache.write_view(ext, "all", "folders", ["a"], [f"/img/{i}.png" for i in range(10)], shas,
                     np.zeros(10, np.int32), ["train"] * 10)
    _no_index(monkeypatch)
    f = featx.load_features("all", cache_dir=cache_dir, lazy=True)
    assert f.lazy and f.X.shape == (10, 3)
    np.testing.assert_array_equal(np.asarray(f.X)[:, 0], np.arange(10))
    cache.write_view(ext, "more", "folders", ["a"], ["/img/0.png", "/img/x.png"], [sha(0), sha(500)],
                     np.zeros(2, np.int32), ["train"] * 2)
    with pytest.raises(CacheError, match=f"1 images are not in extraction .*first: {sha(500)[:12]}"):
        featx.load_features("more", cache_dir=cache_dir, lazy=True)


def test_known_rows_check_many_keys_at_once(cache_dir):
    ext = fake_extraction(cache_dir, shards=((0, 6), (6, 10)))
    known = ext.known()
    known.add(sha(20))
    asked = [sha(21), sha(3), sha(20), sha(9), sha(22), sha(3)]
    assert known.missing(asked) == [sha(21), sha(22)]
    assert known.missing([]) == []


def test_read_takes_the_keys_only(cache_dir):
    import inspect

    assert list(inspect.signature(featx.cache.Extraction.read).parameters) == ["self", "shas"]


# ---------------------------------------------------------------- merging


def test_opening_reads_the_shard_index_not_each_shards_hdf5_header(cache_dir, monkeypatch):
    fake_extraction(cache_dir, shards=((0, 4), (4, 8), (8, 12)))
    want = [sha(i) for i in range(12)]
    writer = Cache(cache_dir).extractions()[0]
    np.testing.assert_array_equal(writer.read(want)[:, 0], np.arange(12))  # opens each through HDF5, writes the index
    index = writer.shard_dir / ".index.json"
    assert sorted(json.loads(index.read_text())["shards"]) == sorted(p.name for p in writer.shards())
    headers = []
    real = shards_mod.Shard._header
    monkeypatch.setattr(shards_mod.Shard, "_header", lambda self, size: headers.append(self.path) or real(self, size))
    reader = Cache(cache_dir).extractions()[0]
    np.testing.assert_array_equal(reader.read(want[::-1])[:, 0], np.arange(12)[::-1])
    assert headers == [] and reader.rows() == 12

    # A shard rewritten under the same name (another inode): its entry is stale, the file is opened itself.
    victim = writer.shards()[1]
    with h5py.File(victim) as f:
        keys = [k.decode() for k in f["sha256"][...]]
        feats = f["features"][...]
    tmp = victim.with_name("rewrite.tmp")
    shards_mod.write_shard_file(tmp, writer.name, feats + 100, keys, ["p"] * len(keys), ["c"] * len(keys))
    os.replace(tmp, victim)
    again = Cache(cache_dir).extractions()[0].read(keys)
    assert headers == [victim] and (again[:, 0] >= 100).all()

    # A damaged index is no index: every shard opens through HDF5, and the index is written afresh.
    index.write_bytes(b'{"version": 1, "shards": {"x')
    headers.clear()
    rewritten = np.isin(want, keys)
    np.testing.assert_array_equal(Cache(cache_dir).extractions()[0].read(want)[:, 0], np.arange(12) + 100 * rewritten)
    assert len(headers) == 3 and json.loads(index.read_text())["version"] == 1


def test_a_merge_streams_in_bounded_rounds_and_the_first_copy_wins(cache_dir, monkeypatch):
    ext = fake_extraction(cache_dir, shards=((0, 400), (300, 700), (650, 1000)))
    spans = {}
    for j, shard in enumerate(ext.shards()):  # row i of the j-th shard in name order holds i + 10000 j
        with h5py.File(shard, "r+") as f:
            f["features"][...] += 10000 * j
            spans[j] = f["features"][:, 0] % 10000
    want = [min(j for j in spans if i in spans[j]) * 10000 + i for i in range(1000)]
    monkeypatch.setattr(shards_mod, "WORK_BYTES", 3 * 4 * 64)  # 64 rows of 3 floats per round, over all shards
    seen = []
    real = merge_mod.merge_rounds

    def spy(shards, step):
        for out in real(shards, step):
            seen.append(len(out[0]))
            yield out

    monkeypatch.setattr(merge_mod, "merge_rounds", spy)
    with ext.lock():
        assert ext.compact() == 3
    assert len(seen) > 20 and max(seen) <= 3 * 21  # three shards, 21 keys each at most
    assert ext.rows() == 1000 == disk_rows(ext)
    np.testing.assert_array_equal(ext.read([sha(i) for i in range(1000)])[:, 0], want)  # the first copy won


def test_size_tiered_merging_bounds_the_shard_count_and_the_rewrites(cache_dir, monkeypatch):
    monkeypatch.setattr(merge_mod, "TIER0_ROWS", 4)
    written = []
    real = merge_mod.merge_shards

    def count(path, extraction, shards, store, replaces):
        written.append(sum(s.n for s in shards))
        return real(path, extraction, shards, store, replaces)

    monkeypatch.setattr(merge_mod, "merge_shards", count)
    ext = fake_extraction(cache_dir, shards=())
    n = 0
    with ext.lock():
        for run in range(120):  # 120 flushes of 3 rows: 360 rows
            ext.write_shard(rows(n, n + 3), [sha(i) for i in range(n, n + 3)], ["p"] * 3, [""] * 3)
            n += 3
            live = ext.shards()
            tiers = [merge_mod.tier(s.n) for _, s in ext._live()]
            assert all(tiers.count(t) < merge_mod.FANOUT for t in set(tiers)), tiers
            assert len(live) <= (merge_mod.FANOUT - 1) * (merge_mod.tier(n) + 1)
    assert ext.rows() == n == disk_rows(ext)
    # Each row is rewritten at most once per size class it passes through: O(N log N), not O(N^2).
    assert sum(written) <= n * (merge_mod.tier(n) + 1), (sum(written), n)
    np.testing.assert_array_equal(ext.read([sha(i) for i in range(n)])[:, 0], np.arange(n))


def test_an_incremental_run_merges_its_own_shards_and_leaves_big_ones_alone(cache_dir, monkeypatch):
    monkeypatch.setattr(merge_mod, "TIER0_ROWS", 16)
    ext = fake_extraction(cache_dir, shards=((0, 2000),))
    (big,) = ext.shards()
    with ext.lock():
        for lo in range(2000, 2012, 3):
            ext.write_shard(rows(lo, lo + 3), [sha(i) for i in range(lo, lo + 3)], ["p"] * 3, [""] * 3)
        ext.settle()
    assert len(ext.shards()) == 2 and big in ext.shards()  # the 2,000-row shard was not rewritten
    assert ext.rows() == 2012


# ---------------------------------------------------------------- faults during a merge

KILL_SCRIPT = r"""
import os, signal, sys
from pathlib import Path
import featx.cache as C
import featx.cache.merge as M
import featx.cache.shards as S
cache, where = sys.argv[1:3]
ext = C.Cache(cache).extractions()[0]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if where == "mid-write":  # after the first round of rows is in the temporary file
    real = M.merge_rounds
    def rounds(shards, step):
        for i, out in enumerate(real(shards, step)):
            if i == 1 and any(p.name.startswith(".tmp-") for p in ext.shard_dir.iterdir()):
                die()
            yield out
    M.merge_rounds = rounds
    S.WORK_BYTES = 3 * 4 * 32
with ext.lock():
    if where == "after-rename":  # the merged shard is in place, its parts not yet removed
        C.Extraction._drop_replaced = die
    ext.compact()
"""


@pytest.mark.parametrize("where", ["mid-write", "after-rename"])
def test_a_merge_killed_halfway_loses_nothing_and_shows_no_row_twice(cache_dir, where):
    ext = fake_extraction(cache_dir, shards=((0, 100), (100, 200), (200, 300)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cache_dir), where], env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = sorted(p.name for p in ext.shard_dir.iterdir())
    assert any(n.startswith(".tmp-") for n in left) == (where == "mid-write"), left
    reader = Cache(cache_dir).extractions()[0]
    assert reader.rows() == 300 and len(reader.index()) == 300
    np.testing.assert_array_equal(reader.read([sha(i) for i in range(300)])[:, 0], np.arange(300))
    assert len(reader.shards()) == (3 if where == "mid-write" else 1)
    with reader.lock():  # the next lock holder tidies: the half-written file, or the replaced parts
        pass
    assert not [p for p in ext.shard_dir.iterdir() if p.name.startswith(".tmp-")]
    assert disk_rows(reader) == 300
    np.testing.assert_array_equal(reader.read([sha(i) for i in range(300)])[:, 0], np.arange(300))


def test_a_reader_during_a_merge_sees_every_row_once(cache_dir, monkeypatch):
    ext = fake_extraction(cache_dir, shards=((0, 10), (10, 20), (20, 30)))
    parts = ext.shards()
    seen = {}
    real = featx.cache.Extraction._drop_replaced

    def look_then_drop(self):
        if not seen:  # the merged shard is in place; its parts are still on disk
            reader = Cache(cache_dir).extractions()[0]
            assert all(p.exists() for p in parts)
            seen["shards"] = reader.shards()
            seen["rows"] = reader.rows()
            seen["index"] = len(reader.index())
            seen["read"] = reader.read([sha(i) for i in range(30)])[:, 0]
        return real(self)

    with ext.lock():
        monkeypatch.setattr(featx.cache.Extraction, "_drop_replaced", look_then_drop)
        assert ext.compact() == 3
    assert len(seen["shards"]) == 1 and seen["shards"][0] not in parts
    assert seen["rows"] == seen["index"] == 30
    np.testing.assert_array_equal(seen["read"], np.arange(30))


def test_a_full_disk_during_a_merge_is_one_line_and_the_shards_stay(cache_dir, monkeypatch):
    ext = fake_extraction(cache_dir, shards=((0, 10), (10, 20)))
    before = sorted(ext.shards())
    real = merge_mod.merge_shards

    def full(path, *a, **k):
        real(path, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(merge_mod, "merge_shards", full)
    out = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), "cache", "compact"])
    assert out.exit_code == 1 and "No space left on device while merging 2 shards" in out.output, out.output
    assert "Traceback" not in out.output and out.output.strip().count("\n") == 0, out.output
    assert sorted(ext.shards()) == before and not list(ext.shard_dir.glob(".tmp-*"))
    np.testing.assert_array_equal(ext.read([sha(i) for i in range(20)])[:, 0], np.arange(20))


# ---------------------------------------------------------------- not corruption (issue 19)


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Unable to synchronously open file (unable to open file: name = 'x', errno = 13, "
                                  "error message = 'Permission denied', flags = 0, o_flags = 0)"),
    OSError("Unable to synchronously open file (unable to lock file, errno = 11, error message = 'Resource "
            "temporarily unavailable')"),
    OSError(errno.ENOLCK, "No locks available"),
], ids=["permission", "nfs-lock", "enolck"])
def test_a_shard_that_cannot_be_opened_now_is_reported_not_quarantined(cache_dir, monkeypatch, error):
    ext = fake_extraction(cache_dir, shards=((0, 4), (4, 8)))
    victim = ext.shards()[0]
    real = h5py.File

    def refuse(name, *a, **k):
        if Path(name) == victim:
            raise error
        return real(name, *a, **k)

    monkeypatch.setattr(h5py, "File", refuse)
    fresh = Cache(cache_dir).extractions()[0]
    with pytest.warns(UserWarning, match="left in place"):
        with fresh.lock():
            assert len(fresh.index()) == 4
    monkeypatch.undo()
    assert victim.exists() and ext.quarantined() == []
    np.testing.assert_array_equal(Cache(cache_dir).extractions()[0].read([sha(i) for i in range(8)])[:, 0], np.arange(8))


# ---------------------------------------------------------------- leftovers and durable renames (issue 19)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_removed_by_the_next_lock_holder(cache_dir):
    ext = fake_extraction(cache_dir, shards=((0, 4),))
    root = Path(cache_dir)
    dead, host = _dead_pid(), hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]  # whose files
    stale = [
        ext.shard_dir / ".tmp-20261127T000000-1-abcd.h5",  # an older featx's name: shards/ is the lock's
        root / "datasets" / f".tmp-{dead}.{host}-0a1b2c3d-view.h5",
        ext.root / f".tmp-{dead}.{host}-0a1b2c3d-meta.json",
        root / "extractions" / f".tmp-{dead}.{host}-0a1b2c3d-x.json",
        root / f".tmp-{dead}.{host}-0a1b2c3d-latest.json",
    ]
    trash = root / "extractions" / f".trash-{dead}.{host}-0a1b2c3d-vgg16-old"
    in_use = [root / "datasets" / f".tmp-{os.getpid()}.{host}-0a1b2c3d-view.h5",  # being written right now
              root / "datasets" / ".tmp-0a1b2c3d-other.h5"]  # no owner in its name, and new
    (trash / "shards").mkdir(parents=True)
    (trash / "shards" / "a.h5").write_bytes(b"x")
    for p in stale + in_use:
        p.write_bytes(b"half")
    with ext.lock():
        pass
    assert [p for p in stale + [trash] if p.exists()] == []
    assert all(p.exists() for p in in_use)
    os.utime(in_use[1], (1, 1))  # old enough to be a leftover whatever wrote it
    with ext.lock():
        pass
    assert in_use[0].exists() and not in_use[1].exists()


def test_every_rename_into_place_is_followed_by_an_fsync_of_its_folder(cache_dir, monkeypatch):
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        events.append(("replace", os.path.realpath(Path(dst).parent)))

    def fsync(fd):
        real_fsync(fd)
        path = os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        if os.path.isdir(path):
            events.append(("fsync", path))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    ext = fake_extraction(cache_dir, shards=((0, 4), (4, 8)))
    with ext.lock():
        ext.compact()
    atomic_write_bytes(Path(cache_dir) / "x.json", b"{}")
    Cache(cache_dir).write_view(ext, "src", "folders", ["a"], ["p"], [sha(0)], np.zeros(1, np.int32), ["train"])
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(renames) >= 6  # meta.json, two shards, the merged one, x.json, the view, latest.json
    for i in renames:
        assert ("fsync", events[i][1]) in events[i + 1 : i + 2], (events[i], events[i + 1 : i + 2])


# ---------------------------------------------------------------- float16 rows


def test_float16_rows_take_half_the_disk_and_read_back_as_float32(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 512)).astype(np.float32)
    sizes, got = {}, {}
    for store in ("float32", "float16"):
        ext = fake_extraction(tmp_path / store, shards=(), store=store)
        ext.meta["feature_width"] = 512
        ext.write_shard(x[:120], [sha(i) for i in range(120)], ["p"] * 120, [""] * 120)
        ext.write_shard(x[120:], [sha(i) for i in range(120, 200)], ["p"] * 80, [""] * 80)
        with ext.lock():
            ext.compact()
        (shard,) = ext.shards()
        with h5py.File(shard) as f:
            assert f["features"].dtype == np.dtype(store)
        sizes[store] = shard.stat().st_size
        got[store] = ext.read([sha(i) for i in range(200)])
        assert got[store].dtype == np.float32
    np.testing.assert_array_equal(got["float32"], x)
    np.testing.assert_array_equal(got["float16"], x.astype(np.float16).astype(np.float32))
    assert sizes["float16"] < 0.55 * sizes["float32"]


def test_store_float16_is_an_extraction_of_its_own_and_float32_keys_are_unchanged(tiny_dataset, cache_dir):
    out = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), "extract", "-q", "-b", "vgg16", "--weights", "none",
                                   "--image-size", "32", "--store", "float16", str(tiny_dataset)])
    assert out.exit_code == 0, out.output
    (ext,) = Cache(cache_dir).extractions()
    assert ext.name.startswith("vgg16-32px-avg-f16-") and ext.spec.store == "float16"
    (shard,) = ext.shards()
    with h5py.File(shard) as f:
        assert f["features"].dtype == np.float16
    f = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    assert f.X.dtype == np.float32 and f.X.shape == (12, 512)
    plain = sys.modules["featx.extraction"].spec_for("vgg16", weights="none", image_size=32, cache_dir=cache_dir)
    assert "store" not in plain.settings() and plain.key != ext.spec.key  # float32 keys: as older featx computed
    assert plain.with_store("float16").key == ext.spec.key
    with pytest.raises(featx.FeatxError, match="store must be one of"):
        featx.extract(tiny_dataset, cache_dir=cache_dir, store="float64", **TINY)
