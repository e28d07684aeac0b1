"""The cache's trust guarantees: the memo, readers during compaction and
removal, read-only caches, broken entries and failed runs."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cache import Cache, Memo
from featx.spec import ExtractionSpec
from featx.cli import cli
from featx.errors import CacheError, ExtractionRemoved, WeightsError

from conftest import make_image

extract_mod = sys.modules["featx.extraction.steps"]  # its open() reads the images
memo_mod = sys.modules["featx.cache.memo"]
store_mod = sys.modules["featx.cache.store"]
REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=4, progress=False)


def run(data, cache_dir, **kw):
    return featx.extract(data, cache_dir=cache_dir, **{**TINY, **kw})


def sha(i: int) -> str:
    return f"{i:064x}"


def fake_extraction(cache_dir, shards=((0, 4), (4, 8)), extra=None):
    """An extraction with hand-written shards (no model): rows i have features [i, i, i]."""
    spec = ExtractionSpec(
        backbone="vgg16", weights="random:seed=0:tensorflow", input_size=32, preprocessing="caffe",
        pooling="avg", tap="output", cut_blocks=0, precision="float32", weights_source="none",
        versions=tuple(sorted((extra or {}).get("versions", {}).items())),
    )
    ext = Cache(cache_dir).ensure().extraction(spec, 3, create=True)
    for lo, hi in shards:
        ext.write_shard(np.repeat(np.arange(lo, hi, dtype=np.float32)[:, None], 3, 1), [sha(i) for i in range(lo, hi)],
                        [f"/img/{i}.png" for i in range(lo, hi)], ["cats"] * (hi - lo))
    return ext


def cli_run(cache_dir, *args):
    return CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), *args])


# ---------------------------------------------------------------- 1. the memo


def test_memo_stats_before_reading_so_an_edit_during_the_read_is_seen(tiny_dataset, cache_dir, monkeypatch):
    victim = tiny_dataset / "cats" / "cats_0.png"
    real_open = open

    def edit_while_reading(path, *a, **k):
        if Path(path) == victim:
            with real_open(path, "rb") as fh:
                old = fh.read()
            make_image(victim, size=(44, 36), color=(0, 255, 0), seed=77)  # edited between read and stat
            os.utime(victim, ns=(time.time_ns() + 10**9,) * 2)
            return io.BytesIO(old)
        return real_open(path, *a, **k)

    monkeypatch.setattr(extract_mod, "open", edit_while_reading, raising=False)
    assert run(tiny_dataset, cache_dir).computed == 12
    monkeypatch.undo()
    again = run(tiny_dataset, cache_dir)
    assert (again.computed, again.reused) == (1, 11)  # the memo did not pin the old hash to the new mtime
    f = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    assert f.sha256[list(f.paths).index(str(victim))] == featx.datasets.sha256_file(victim)


@pytest.mark.parametrize("failure", [OSError("decoder png not available"), ImportError("libpng"), MemoryError()],
                         ids=["missing-plugin", "import-error", "out-of-memory"])
def test_decoder_failures_of_the_environment_are_never_remembered(tiny_dataset, cache_dir, monkeypatch, failure):
    import PIL.ImageFile

    def broken_load(self):
        raise failure

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", broken_load)
    res = run(tiny_dataset, cache_dir)
    assert len(res.skipped) == 12 and all(r.startswith("cannot decode here") for _, r in res.skipped), res.skipped
    memo = Cache(cache_dir).memo()
    assert memo.bad() == {}
    memo.close()
    if isinstance(failure, OSError):
        monkeypatch.undo()
        assert run(tiny_dataset, cache_dir).computed == 12


def test_bad_marks_carry_the_decoder_version_and_old_memos_migrate(tmp_path, monkeypatch):
    path = tmp_path / "memo.sqlite"
    old = sqlite3.connect(path)  # the schema of featx before bad marks carried a decoder
    old.execute("CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)")
    old.execute("CREATE TABLE bad (sha256 TEXT PRIMARY KEY, reason TEXT)")
    old.execute("INSERT INTO bad VALUES (?, ?)", (sha(1), "cannot decode: OSError: decoder webp not available"))
    old.commit()
    old.close()
    memo = Memo(path)
    assert memo.bad() == {}  # unknown decoder: tried again
    memo.remember_bad([(sha(2), "not an image")])
    assert memo.bad() == {sha(2): "not an image"}
    memo.close()
    monkeypatch.setattr(memo_mod, "decoder_version", lambda: "Pillow 99.0.0; featx format 1")
    memo = Memo(path)
    assert memo.bad() == {}  # a new Pillow gets another chance at every bad file
    memo.close()


def test_a_file_marked_bad_by_a_featx_decoder_bug_is_tried_again_after_the_fix(tmp_path, monkeypatch):
    memo = Memo(tmp_path / "memo.sqlite")
    memo.remember_bad([(sha(3), "cannot decode: ValueError: a featx bug")])
    assert memo.bad() == {sha(3): "cannot decode: ValueError: a featx bug"}
    memo.close()
    monkeypatch.setattr(featx.decode, "DECODER_VERSION", getattr(featx.decode, "DECODER_VERSION", 1) + 1,
                        raising=False)  # the fix
    memo = Memo(tmp_path / "memo.sqlite")
    assert memo.bad() == {}
    memo.close()


@pytest.mark.parametrize("message", ["database is locked", "disk I/O error", "database or disk is full",
                                     "unable to open database file"])
def test_a_memo_that_cannot_be_opened_for_writing_is_kept_not_renamed(cache_dir, monkeypatch, message):
    cache = Cache(cache_dir)
    memo = cache.memo()
    memo.remember([("/data/a.jpg", 1, 2, sha(1))])
    memo.close()
    real = store_mod.Memo

    def failing(path, readonly=False):
        if not readonly:
            raise sqlite3.OperationalError(message)
        return real(path, readonly=True)

    monkeypatch.setattr(store_mod, "Memo", failing)
    with pytest.warns(UserWarning, match=message):
        memo = cache.memo()
    assert memo.lookup({"/data/a.jpg": (1, 2)}) == {"/data/a.jpg": sha(1)}  # still there, read-only
    memo.close()
    assert (Path(cache_dir) / "memo.sqlite").exists() and not list(Path(cache_dir).glob("*corrupt*"))


def test_a_memo_locked_by_another_connection_is_reported_and_skipped_not_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(memo_mod, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "memo.sqlite"
    memo = Memo(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # as another featx process writing for longer than the busy timeout
    with pytest.warns(featx.errors.FeatxWarning, match="database is locked"):
        memo.remember([("/data/a.jpg", 1, 2, sha(1))])
        memo.remember_bad([(sha(2), "not an image")])  # reported once
    other.execute("ROLLBACK")
    other.close()
    memo.remember([("/data/b.jpg", 3, 4, sha(3))])
    assert memo.lookup({"/data/a.jpg": (1, 2), "/data/b.jpg": (3, 4)}) == {"/data/b.jpg": sha(3)}
    memo.close()
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_the_memo_uses_a_rollback_journal_on_network_file_systems(tmp_path, monkeypatch):
    assert memo_mod.filesystem_type("/proc") == "proc"
    memo = Memo(tmp_path / "local.sqlite")
    assert memo.journal_mode == "wal" or memo_mod.is_network_filesystem(tmp_path)
    memo.close()
    monkeypatch.setattr(memo_mod, "filesystem_type", lambda path: "nfs4")
    memo = Memo(tmp_path / "shared.sqlite")
    assert memo.journal_mode == "delete"
    assert memo._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    memo.remember([("/data/a.jpg", 1, 2, sha(1))])
    assert memo.lookup({"/data/a.jpg": (1, 2)}) == {"/data/a.jpg": sha(1)}
    memo.close()
    assert not (tmp_path / "shared.sqlite-wal").exists()


# ---------------------------------------------------------------- 2. concurrency


def test_read_finds_rows_after_a_compaction_replaced_the_shards_it_had_opened(cache_dir):
    ext = fake_extraction(cache_dir)
    assert ext.rows() == 8 and len(ext.shards()) == 2  # both shards opened
    with ext.lock():
        assert ext.compact() == 2
    shas = [sha(i) for i in (7, 0, 5)]
    np.testing.assert_array_equal(ext.read(shas)[:, 0], [7, 0, 5])


def test_readers_never_fail_while_another_thread_compacts(cache_dir):
    """A reader and a compacting writer in one process: each goes on until the other has done 30 rounds."""
    ext = fake_extraction(cache_dir)
    rounds, stop, failed = [0], threading.Event(), []

    def churn():  # what an extraction run or `featx cache compact` does, as fast as it can
        try:
            while not stop.is_set():
                with ext.lock():
                    ext.write_shard(np.array([[1.0] * 3, [6.0] * 3]), [sha(1), sha(6)], ["a", "b"], ["", ""])
                    ext.compact()
                rounds[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failed.append(exc)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        reader = Cache(cache_dir).get_extraction(ext.name)
        shas = [sha(i) for i in range(8)]
        reads = 0
        while (reads < 30 or rounds[0] < 30) and writer.is_alive():
            np.testing.assert_array_equal(reader.read(shas)[:, 0], np.arange(8))
            reads += 1
    finally:
        stop.set()
        writer.join(60)
    assert not failed, failed
    assert reads >= 30 and rounds[0] >= 30


CHURN_SCRIPT = r"""
import sys
from pathlib import Path
import numpy as np
from featx.cache import Cache
cache_dir, name, stop = sys.argv[1:4]
ext = Cache(cache_dir).get_extraction(name)
rounds = 0
while not Path(stop).exists():
    with ext.lock():
        ext.write_shard(np.array([[1.0] * 3, [6.0] * 3]), [f"{1:064x}", f"{6:064x}"], ["a", "b"], ["", ""])
        ext.compact()
    rounds += 1
    print(rounds, flush=True)
"""


def test_readers_never_fail_while_another_process_compacts(cache_dir, tmp_path):
    """The reader here, the compacting writer in a process of its own (flock and renames across processes)."""
    ext = fake_extraction(cache_dir)
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", CHURN_SCRIPT, str(cache_dir), ext.name, str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rounds = [0]

    def count():  # the writer prints each round it finished
        for line in proc.stdout:
            rounds[0] = int(line)

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    try:
        reader = Cache(cache_dir).get_extraction(ext.name)
        shas = [sha(i) for i in range(8)]
        reads = 0  # counted from the writer's first round on
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a shard compacted away is not an unreadable one
            while (reads < 60 or rounds[0] < 60) and proc.poll() is None:
                np.testing.assert_array_equal(reader.read(shas)[:, 0], np.arange(8))
                reads += rounds[0] > 0
    finally:
        stop.touch()
        proc.wait(60)
        counter.join(10)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    assert reads >= 60 and rounds[0] >= 60


def test_rm_waits_for_the_writer_which_then_refuses_to_resurrect_it(cache_dir):
    writer = fake_extraction(cache_dir)
    cache = Cache(cache_dir)
    (target,) = cache.extractions()
    waiting, done = threading.Event(), threading.Event()

    def remove():
        cache.remove_extraction(target, on_wait=waiting.set)
        done.set()

    with writer.lock():
        remover = threading.Thread(target=remove)
        remover.start()
        assert waiting.wait(60), "rm never found the lock taken"
        assert not done.is_set() and writer.root.exists()  # rm waits for the running extraction
        writer.write_shard(np.ones((1, 3)), [sha(99)], ["/img/99.png"], ["cats"])
    remover.join(10)
    assert done.is_set() and not writer.root.exists()
    with pytest.raises(ExtractionRemoved, match="was removed"):
        writer.write_shard(np.ones((1, 3)), [sha(100)], ["/img/100.png"], ["cats"])
    assert not writer.root.exists() and cache.extractions(broken=True) == []
    with pytest.raises(ExtractionRemoved, match="was removed"):
        with writer.lock():
            pass
    assert not writer.root.exists()


# ---------------------------------------------------------------- 3. read-only caches

READ_ONLY_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from click.testing import CliRunner
import featx
from featx.cache import Cache
from featx.cli import cli
cache, data, other = sys.argv[1:4]
try:
    open(Path(cache) / "probe", "w")
    print(json.dumps({"can_write": True})); sys.exit(0)
except PermissionError:
    pass
out = {"can_write": False}
tiny = dict(backbone="vgg16", weights="none", image_size=32, batch_size=4, progress=False, cache_dir=cache)
res = featx.extract(data, **tiny)
out["writable"] = Cache(cache).writable()
out["extract"] = [res.computed, res.reused]
out["load"] = list(featx.load_features(data, cache_dir=cache).X.shape)
try:
    featx.extract(other, **tiny)
except featx.FeatxError as exc:
    out["extract_new"] = [type(exc).__name__, str(exc)]
r = CliRunner()
for name, args in {"list": ["cache", "list"], "rm": ["cache", "rm", "-y", "--all"], "compact": ["cache", "compact"]}.items():
    got = r.invoke(cli, ["--cache-dir", cache, *args])
    out[name] = [got.exit_code, got.output]
print(json.dumps(out))
"""


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """Run ``cmd`` without the power to ignore permission bits (root has it by default)."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a cache read-only")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]


def test_read_only_cache_serves_cached_features_and_refuses_writes_in_one_line(tiny_dataset, cache_dir, tmp_path):
    run(tiny_dataset, cache_dir)
    other = tmp_path / "other"
    make_image(other / "new.png", seed=42)
    subprocess.run(["chmod", "-R", "a-w", str(cache_dir)], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(_as_unprivileged([sys.executable, "-c", READ_ONLY_SCRIPT, str(cache_dir), str(tiny_dataset),
                                                str(other)]), capture_output=True, text=True, env=env, timeout=120)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(cache_dir)], check=True)
    if proc.returncode != 0 and proc.stderr.startswith("setpriv"):
        pytest.skip(f"cannot drop root's capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["can_write"]:
        pytest.skip("permission bits do not stop this process from writing")
    assert out["writable"] is False
    assert out["extract"] == [0, 12] and out["load"] == [12, 512]
    kind, msg = out["extract_new"]
    assert kind == "CacheError" and str(cache_dir) in msg and "read-only" in msg
    assert out["list"][0] == 0 and "vgg16" in out["list"][1]
    for cmd in ("rm", "compact"):
        code, text = out[cmd]
        assert code == 1 and "read-only" in text and str(cache_dir) in text, (cmd, text)
        assert "Traceback" not in text and text.strip().count("\n") == 0, (cmd, text)
    assert len(Cache(cache_dir).extractions()) == 1


# ---------------------------------------------------------------- 4. broken entries


def test_corrupt_meta_is_listed_as_broken_and_every_command_says_so(tiny_dataset, cache_dir):
    res = run(tiny_dataset, cache_dir)
    name = res.extraction.name
    (res.extraction.root / "meta.json").write_text('{"settings": {"backbo')
    listed = cli_run(cache_dir, "cache", "list")
    assert listed.exit_code == 0 and name in listed.output and "BROKEN" in listed.output
    assert "meta.json is unreadable" in listed.output
    (rec,) = json.loads(cli_run(cache_dir, "cache", "list", "--json").output)
    assert rec["name"] == name and "meta.json is unreadable" in rec["broken"]
    with pytest.raises(CacheError, match=f"{name} is broken"):
        featx.load_features(tiny_dataset, cache_dir=cache_dir)
    again = cli_run(cache_dir, "extract", "-q", "-b", "vgg16", "--weights", "none", "--image-size", "32", str(tiny_dataset))
    assert again.exit_code == 1 and "is broken" in again.output and again.output.strip().count("\n") == 0, again.output
    compact = cli_run(cache_dir, "cache", "compact")
    assert compact.exit_code == 0 and f"skipping broken extraction {name}" in compact.output
    gone = cli_run(cache_dir, "cache", "rm", "-y", name[:10])
    assert gone.exit_code == 0 and f"removed {name}" in gone.output
    assert Cache(cache_dir).extractions(broken=True) == []


def test_corrupt_shard_is_quarantined_once_its_rows_are_recomputed(tiny_dataset, cache_dir):
    res = run(tiny_dataset, cache_dir)
    (shard,) = res.extraction.shards()
    shard.write_bytes(b"garbage")
    with pytest.warns(UserWarning) as caught:
        again = run(tiny_dataset, cache_dir)
    assert again.computed == 12
    said = [str(w.message) for w in caught]
    assert sum("moved unreadable shard" in m for m in said) == 1, said
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no more warnings, ever
        third = run(tiny_dataset, cache_dir)
        assert (third.computed, third.reused) == (0, 12)
        assert featx.load_features(tiny_dataset, cache_dir=cache_dir).X.shape == (12, 512)
    ext = Cache(cache_dir).extractions()[0]
    assert [p.name for p in ext.quarantined()] == [f".quarantine-{shard.name}"]
    assert shard not in ext.shards()


def test_compact_quarantines_unreadable_shards_and_says_so_once(cache_dir):
    ext = fake_extraction(cache_dir, shards=((0, 4), (4, 8), (8, 10)))
    bad = ext.index()[sha(5)][0]  # the shard of rows 4..7
    bad.write_bytes(b"garbage")
    out = cli_run(cache_dir, "cache", "compact")
    assert out.exit_code == 0, out.output
    assert out.output.count("moved unreadable shard") == 1 and f"merged 2 shards" in out.output, out.output
    assert [p.name for p in ext.quarantined()] == [f".quarantine-{bad.name}"]
    (rec,) = json.loads(cli_run(cache_dir, "cache", "list", "--json").output)
    assert (rec["rows"], rec["shards"], rec["quarantined"]) == (6, 1, 1)
    np.testing.assert_array_equal(ext.read([sha(i) for i in (0, 9)])[:, 0], [0, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ext.index()) == 6


# ---------------------------------------------------------------- 5. failed runs


def test_a_failed_extraction_leaves_no_empty_entry(tiny_dataset, cache_dir, monkeypatch):
    def bad_weights(*a, **k):
        raise WeightsError("Cannot load weights file w.h5: truncated")

    monkeypatch.setattr(featx.backbones, "build_feature_model", bad_weights)
    with pytest.raises(WeightsError):
        run(tiny_dataset, cache_dir)
    assert Cache(cache_dir).extractions() == [] and Cache(cache_dir).extractions(broken=True) == []
    assert "No extractions" in cli_run(cache_dir, "cache", "list").output


# ---------------------------------------------------------------- 6. cache list


def test_cache_list_shows_the_recorded_framework_versions(cache_dir):
    versions = {"keras": "3.15.1", "tensorflow": "2.21.0", "backend": "tensorflow"}
    fake_extraction(cache_dir, extra={"versions": versions})
    table = cli_run(cache_dir, "cache", "list")
    assert table.exit_code == 0 and "keras 3.15.1, tensorflow 2.21.0" in table.output, table.output
    (rec,) = json.loads(cli_run(cache_dir, "cache", "list", "--json").output)
    assert rec["versions"] == versions and rec["rows"] == 8 and rec["broken"] is None


def test_an_unreadable_memo_is_moved_aside_and_started_again(tiny_dataset, cache_dir):
    Cache(cache_dir).ensure()
    (Path(cache_dir) / "memo.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.warns(UserWarning, match="moved it aside"):
        assert run(tiny_dataset, cache_dir).computed == 12
    assert list(Path(cache_dir).glob("memo.sqlite.corrupt-*"))
    assert run(tiny_dataset, cache_dir).reused == 12
