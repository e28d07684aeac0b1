"""Phase one end to end: extraction, the cache's promises, bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featx

from featx.cache import Cache
from featx.extraction import default_batch_size, plan, spec_for, steps
from featx.extraction.engines import local
from featx.extraction.engines.local import LocalEngine
from featx.cli import cli
from featx.errors import CacheError, DataError

from conftest import HYMENOPTERA, make_dataset, make_image, needs_hymenoptera

TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=4, progress=False)


def run(data, cache_dir, **kw):
    return featx.extract(data, cache_dir=cache_dir, **{**TINY, **kw})


def forbid_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was built although everything is cached")

    monkeypatch.setattr(featx.backbones, "build_feature_model", boom)
    monkeypatch.setattr(featx.backbones, "build_backbone", boom)


def test_features_equal_keras_applications_on_same_pixels(tiny_dataset, cache_dir, tmp_path):
    import keras

    from featx.decode import read_image

    keras.utils.set_random_seed(7)
    ref = keras.applications.VGG16(weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    wfile = tmp_path / "vgg.weights.h5"
    ref.save_weights(wfile)
    res = run(tiny_dataset, cache_dir, backbone="vgg16", weights=str(wfile))
    f = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    assert res.computed == 12 and f.X.shape == (12, 512)
    pixels = np.stack([read_image(p, 32) for p in f.paths]).astype("float32")
    expected = ref.predict(keras.applications.vgg16.preprocess_input(pixels), verbose=0)
    np.testing.assert_allclose(f.X, expected, rtol=1e-4, atol=1e-4)
    assert f.class_names == ["cats", "dogs"]
    assert sorted(set(f.y.tolist())) == [0, 1]
    assert all(Path(p).name.startswith(f.class_names[y]) for p, y in zip(f.paths, f.y))


def test_warm_rerun_computes_nothing_and_builds_no_model(tiny_dataset, cache_dir, monkeypatch):
    first = run(tiny_dataset, cache_dir)
    assert (first.computed, first.reused) == (12, 0)
    before = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    forbid_model(monkeypatch)
    again = run(tiny_dataset, cache_dir)
    assert (again.computed, again.reused, again.skipped) == (0, 12, [])
    assert again.extraction.name == first.extraction.name
    after = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    assert list(after.paths) == list(before.paths) and list(after.sha256) == list(before.sha256)
    np.testing.assert_array_equal(after.y, before.y)
    assert len(np.unique(before.X, axis=0)) == 12  # twelve distinct rows: the comparison below can fail
    np.testing.assert_array_equal(after.X, before.X)  # the first run's rows, served from the cache


def test_memo_avoids_rehashing_unchanged_files(tiny_dataset, cache_dir, monkeypatch):
    run(tiny_dataset, cache_dir)
    opened = []
    real_open = open

    def spy(path, *a, **k):
        if str(path).endswith(".png"):
            opened.append(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    assert run(tiny_dataset, cache_dir).reused == 12
    assert opened == []


def test_adding_and_editing_images_computes_only_those(tiny_dataset, cache_dir):
    run(tiny_dataset, cache_dir)
    make_image(tiny_dataset / "cats" / "new_cat.png", color=(220, 40, 40), seed=99)
    make_image(tiny_dataset / "dogs" / "new_dog.png", color=(40, 40, 220), seed=98)
    res = run(tiny_dataset, cache_dir)
    assert (res.computed, res.reused) == (2, 12)
    before = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    edited = tiny_dataset / "cats" / "cats_0.png"
    make_image(edited, color=(0, 255, 0), seed=5)
    res = run(tiny_dataset, cache_dir)
    assert (res.computed, res.reused) == (1, 13)
    after = featx.load_features(tiny_dataset, cache_dir=cache_dir)
    i = list(after.paths).index(str(edited))
    j = list(before.paths).index(str(edited))
    assert np.abs(after.X[i] - before.X[j]).max() > 1e-3 * np.abs(before.X[j]).max()
    k = list(after.paths).index(str(tiny_dataset / "dogs" / "dogs_1.png"))
    np.testing.assert_array_equal(after.X[k], before.X[list(before.paths).index(after.paths[k])])


def test_duplicate_content_is_computed_once(tmp_path, cache_dir):
    data = make_dataset(tmp_path / "d", per_class=3)
    (data / "cats" / "copy.png").write_bytes((data / "cats" / "cats_0.png").read_bytes())
    res = run(data, cache_dir)
    assert res.computed == 6 and res.reused == 1
    f = featx.load_features(data, cache_dir=cache_dir)
    a, b = list(f.paths).index(str(data / "cats" / "copy.png")), list(f.paths).index(str(data / "cats" / "cats_0.png"))
    np.testing.assert_array_equal(f.X[a], f.X[b])


def test_settings_change_the_key(tiny_dataset, cache_dir):
    a = run(tiny_dataset, cache_dir)
    b = run(tiny_dataset, cache_dir, pooling="max")
    c = run(tiny_dataset, cache_dir, image_size=40)
    d = run(tiny_dataset, cache_dir, seed=1)
    names = {r.extraction.name for r in (a, b, c, d)}
    assert len(names) == 4 and all(r.computed == 12 for r in (b, c, d))
    assert featx.load_features(cache_dir=cache_dir).extraction.name == d.extraction.name  # latest
    assert featx.load_features(tiny_dataset, "vgg16", cache_dir=cache_dir).extraction.name == d.extraction.name


BAD_KINDS = {
    "empty.jpg": (b"", "empty file"),
    "text.jpg": (b"hello, I am not a picture\n" * 10, "not an image"),
}


def test_bad_files_are_skipped_named_and_remembered(tiny_dataset, cache_dir, monkeypatch):
    for name, (content, _) in BAD_KINDS.items():
        (tiny_dataset / "cats" / name).write_bytes(content)
    good = (tiny_dataset / "dogs" / "dogs_0.png").read_bytes()
    jpg = tiny_dataset / "dogs" / "trunc.jpg"
    make_image(jpg, size=(64, 64), fmt="JPEG")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    res = run(tiny_dataset, cache_dir)
    reasons = {Path(p).name: r for p, r in res.skipped}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["text.jpg"] == "not an image"
    assert "truncated" in reasons["trunc.jpg"]
    assert res.computed == 12
    view = featx.load_features(tiny_dataset, cache_dir=cache_dir).view
    assert {Path(p).name for p, _ in view.skipped} == {"empty.jpg", "text.jpg", "trunc.jpg"}
    # Known-bad bytes are not decoded again on the next run.
    forbid_model(monkeypatch)
    again = run(tiny_dataset, cache_dir)
    assert len(again.skipped) == 3 and again.reused == 12
    assert (tiny_dataset / "dogs" / "dogs_0.png").read_bytes() == good  # untouched


def test_strict_makes_bad_files_fatal_and_keeps_the_cache(tiny_dataset, cache_dir):
    run(tiny_dataset, cache_dir)
    (tiny_dataset / "cats" / "zz_bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="zz_bad.png: not an image"):
        run(tiny_dataset, cache_dir, strict=True)
    assert featx.load_features(tiny_dataset, cache_dir=cache_dir).X.shape[0] == 12


def test_pipeline_rows_equal_the_model_on_each_image(tmp_path, cache_dir):
    """Batches in flight, a last short batch, duplicates and bad files: every row is its own image's."""
    from featx import backbones as B
    from featx.decode import read_image

    data = make_dataset(tmp_path / "d", per_class=11, size=(48, 40))
    (data / "cats" / "copy.png").write_bytes((data / "dogs" / "dogs_3.png").read_bytes())
    (data / "cats" / "bad.png").write_bytes(b"nope")
    res = run(data, cache_dir, batch_size=4, workers=3)
    assert (res.computed, res.reused, len(res.skipped)) == (22, 1, 1)
    assert set(res.stage_seconds) == set(steps.STAGES) and res.stage_seconds["model"] > 0
    f = featx.load_features(data, cache_dir=cache_dir)
    model = B.build_feature_model(res.extraction.spec)
    expected = model.predict(np.stack([read_image(p, 32) for p in f.paths]), verbose=0)
    np.testing.assert_allclose(f.X, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_jax_backend_gives_tensorflows_features(tmp_path, cache_dir):
    """The GPU path (JAX: a jitted stateless call, dispatched before the previous
    batch is fetched) run on the CPU: TensorFlow's rows, in full and short batches."""
    pytest.importorskip("jax")
    import keras

    data = make_dataset(tmp_path / "d", per_class=6, size=(48, 40))
    keras.utils.set_random_seed(3)
    wfile = tmp_path / "vgg.weights.h5"
    keras.applications.VGG16(weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)).save_weights(wfile)
    run(data, cache_dir, weights=str(wfile))
    ref = featx.load_features(data, cache_dir=cache_dir)
    code = f"""
import numpy as np, featx
from featx.runtime import backend_name
for batch in (4, 10):  # 12 images: three full batches of 4; 10, then 2 padded to 8
    cache = r"{tmp_path}" + f"/jax{{batch}}"
    res = featx.extract(r"{data}", "vgg16", weights=r"{wfile}", image_size=32, batch_size=batch, cache_dir=cache,
                        progress=False, precision="float32")
    f = featx.load_features(r"{data}", cache_dir=cache)
    np.save(cache + ".npy", f.X)
    print(backend_name(), batch, res.computed, list(f.paths) == {list(ref.paths)!r})
"""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "jax"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-3:-1] == ["jax 4 12 True", "jax 10 12 True"]
    for batch in (4, 10):
        np.testing.assert_allclose(np.load(tmp_path / f"jax{batch}.npy"), ref.X, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ahead, images", [(local.AHEAD_BYTES, local.AHEAD_IMAGES), (0, 10**6), (10**9, 6)])
def test_decoding_goes_on_while_the_model_is_built(tmp_path, cache_dir, monkeypatch, ahead, images):
    """The model builds on its own thread; images decoded meanwhile wait for it (up to AHEAD_BYTES).

    The build is held until the pipeline can do nothing but wait for it: the main
    thread waits on the build and no decode task is running. What was decoded by
    then is what the pipeline decodes during a build however long it takes.
    """
    import concurrent.futures as cf
    import threading

    data = make_dataset(tmp_path / "d", per_class=40, size=(32, 32))
    state = threading.Condition()
    building, built, awaited = threading.Event(), threading.Event(), threading.Event()
    decoding = [0]  # chunks being decoded now
    decoded_while_building = []
    _free_model(monkeypatch, bars=[])
    real_model, real_prepare, real_chunk = LocalEngine._model, local.prepare_image, LocalEngine._prepare_chunk

    def held_model(self, run):
        building.set()
        with state:
            settled = state.wait_for(lambda: awaited.is_set() and decoding[0] == 0, timeout=120)
        assert settled, "the pipeline never came to wait for the model"
        try:
            return real_model(self, run)
        finally:
            built.set()

    def prepare(*a, **k):
        out = real_prepare(*a, **k)
        if building.is_set() and not built.is_set():
            decoded_while_building.append(out.item.path)
        return out

    def prepare_chunk(self, *a, **k):
        with state:
            decoding[0] += 1
        try:
            return real_chunk(self, *a, **k)
        finally:
            with state:
                decoding[0] -= 1
                state.notify_all()

    class Pool(cf.ThreadPoolExecutor):
        """The build's future says when someone waits on it."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.builds = k.get("thread_name_prefix") == "featx-build"

        def submit(self, *a, **k):
            future = super().submit(*a, **k)
            if self.builds:
                result = future.result

                def waited_on(timeout=None):
                    with state:
                        awaited.set()
                        state.notify_all()
                    return result(timeout)

                future.result = waited_on
            return future

    monkeypatch.setattr(LocalEngine, "_model", held_model)
    monkeypatch.setattr(local, "prepare_image", prepare)
    monkeypatch.setattr(LocalEngine, "_prepare_chunk", prepare_chunk)
    monkeypatch.setattr(cf, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(local, "AHEAD_BYTES", ahead)
    monkeypatch.setattr(local, "AHEAD_IMAGES", images)
    res = run(data, cache_dir, batch_size=2, workers=2)
    assert res.computed == 80 and awaited.is_set()
    if ahead and images > 80:  # with room to wait in, the rest of the data is decoded during the build
        assert len(decoded_while_building) >= 40
    else:  # no room (in bytes, or past `images`): then at most the decode window (3 tasks of 8) runs ahead
        held = images + 2 + local.CHUNK if ahead else 0  # the cap, a batch past it, the chunk being read
        assert len(decoded_while_building) <= held + 3 * local.CHUNK, len(decoded_while_building)
    f = featx.load_features(data, cache_dir=cache_dir)
    assert len(f) == 80 and len(set(f.sha256)) == 80


def test_a_model_that_fails_to_build_fails_the_run_and_leaves_no_extraction(tiny_dataset, cache_dir, monkeypatch):
    def offline(self, run):
        raise featx.errors.WeightsError("ImageNet weights for vgg16 cannot be downloaded (offline).")

    monkeypatch.setattr(LocalEngine, "_model", offline)
    with pytest.raises(featx.errors.WeightsError, match="offline"):
        run(tiny_dataset, cache_dir)
    assert Cache(cache_dir).extractions() == []


def test_writer_thread_errors_reach_the_caller(tiny_dataset, cache_dir, monkeypatch):
    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(featx.cache.Extraction, "write_shard", full)
    monkeypatch.setattr(local, "FLUSH_SECONDS", 0.0)  # a flush after every batch
    with pytest.raises(OSError, match="No space left"):
        run(tiny_dataset, cache_dir, batch_size=2)


def test_corrupt_shard_is_a_miss_with_a_warning(tiny_dataset, cache_dir):
    res = run(tiny_dataset, cache_dir)
    shard = res.extraction.shards()[0]
    shard.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache shard"):
        again = run(tiny_dataset, cache_dir)
    assert again.computed == 12


def test_load_features_errors(tmp_path, tiny_dataset, cache_dir):
    with pytest.raises(CacheError, match="Nothing has been extracted"):
        featx.load_features(cache_dir=cache_dir)
    run(tiny_dataset, cache_dir)
    with pytest.raises(CacheError, match="No extraction of"):
        featx.load_features(tmp_path / "elsewhere", cache_dir=cache_dir)
    with pytest.raises(CacheError, match="No resnet50 extraction"):
        featx.load_features(backbone="resnet50", cache_dir=cache_dir)
    assert featx.load_features(split="train", cache_dir=cache_dir).X.shape[0] == 12


def test_splits_and_unlabeled(tmp_path, cache_dir):
    data = make_dataset(tmp_path / "s", per_class=3, splits=["train", "val", "test"])
    run(data, cache_dir)
    f = featx.load_features(data, cache_dir=cache_dir)
    assert f.splits == ["train", "val", "test"] and len(f) == 18
    unl = tmp_path / "unl"
    for i in range(3):
        make_image(unl / f"{i}.png", seed=i)
    run(unl, cache_dir)
    g = featx.load_features(unl, cache_dir=cache_dir)
    assert (g.y == -1).all() and g.class_names == []


def test_shard_and_view_files_are_plain_hdf5(tiny_dataset, cache_dir):
    res = run(tiny_dataset, cache_dir)
    (shard,) = res.extraction.shards()
    with h5py.File(shard) as f:
        assert f["features"].shape == (12, 512) and f["features"].dtype == np.float32
        assert len(f["sha256"][0]) == 64
        assert set(f["label"].asstr()[...]) == {"cats", "dogs"}
        assert f["path"].asstr()[0].endswith(".png")
    with h5py.File(res.view.path) as v:
        assert json.loads(v.attrs["class_names"]) == ["cats", "dogs"]
        assert v["label"].shape == (12,)
    assert not list(Path(cache_dir).rglob(".tmp-*"))
    assert (Path(cache_dir) / ".gitignore").exists()


# ---------------------------------------------------------------- processes

CLI = [sys.executable, "-m", "featx.cli"]


def _extract_cmd(data, cache_dir, batch=2):
    return CLI + ["--cache-dir", str(cache_dir), "extract", "-q", "-b", "vgg16", "--weights", "none",
                  "--image-size", "32", "--batch-size", str(batch), "--workers", "1", str(data)]


@pytest.mark.slow
def test_kill_dash_nine_then_resume(tmp_path, cache_dir):
    data = make_dataset(tmp_path / "big", per_class=300, size=(48, 48))
    env = {**os.environ, "FEATX_FLUSH_SECONDS": "0"}  # a shard per batch
    proc = subprocess.Popen(_extract_cmd(data, cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    shards = Path(cache_dir) / "extractions"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # a process that died early ends the wait
        if shards.exists() and len(list(shards.rglob("shards/*.h5"))) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    res = run(data, cache_dir, batch_size=2)
    assert res.reused > 0 and res.computed > 0
    assert res.reused + res.computed == 600
    assert featx.load_features(data, cache_dir=cache_dir).X.shape == (600, 512)
    assert not list(Path(cache_dir).rglob(".tmp-*"))


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_row_once(tmp_path, cache_dir):
    data = make_dataset(tmp_path / "conc", per_class=40)
    procs = [subprocess.Popen(_extract_cmd(data, cache_dir, batch=4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computed = [int(o.split(" computed")[0].rsplit(" ", 1)[-1]) for o, _ in outs]
    assert sum(computed) == 80, outs
    f = featx.load_features(data, cache_dir=cache_dir)
    assert f.X.shape == (80, 512) and len(set(f.sha256)) == 80


# ---------------------------------------------------------------- CLI


def test_cli_extract_list_rm(tiny_dataset, cache_dir):
    r = CliRunner()
    out = r.invoke(cli, ["--cache-dir", str(cache_dir), "extract", "-q", "-b", "vgg16", "--weights", "none",
                         "--image-size", "32", str(tiny_dataset)])
    assert out.exit_code == 0, out.output
    assert "12 images, 12 computed, 0 reused, 0 skipped" in out.output
    listed = r.invoke(cli, ["--cache-dir", str(cache_dir), "cache", "list", "--json"])
    (rec,) = json.loads(listed.output)
    assert rec["backbone"] == "vgg16" and rec["rows"] == 12 and rec["datasets"] == [str(tiny_dataset)]
    table = r.invoke(cli, ["--cache-dir", str(cache_dir), "cache", "list"])
    assert "vgg16" in table.output and "12" in table.output
    gone = r.invoke(cli, ["--cache-dir", str(cache_dir), "cache", "rm", "-y", rec["name"][:12]])
    assert gone.exit_code == 0 and "removed" in gone.output
    assert Cache(cache_dir).extractions() == []


def test_cli_user_mistakes_are_one_line_errors(tiny_dataset, cache_dir, tmp_path):
    r = CliRunner()
    base = ["--cache-dir", str(cache_dir), "extract", "-q", "--image-size", "32"]
    cases = {
        "Unknown backbone 'resnet5'. Did you mean": base + ["-b", "resnet5", str(tiny_dataset)],
        "does not exist": base + ["-b", "vgg16", "--weights", "none", str(tmp_path / "nope")],
        "Weights file not found": base + ["-b", "mobilenet", "--weights", str(tmp_path / "w.h5"), str(tiny_dataset)],
        "at least 75 px": base + ["-b", "inceptionv3", "--weights", "none", str(tiny_dataset)],
        "could not be downloaded": base + ["-b", "mobilenet", str(tiny_dataset)],
    }
    for expected, args in cases.items():
        out = r.invoke(cli, args)
        assert out.exit_code == 1, (expected, out.output)
        assert expected in out.output, (expected, out.output)
        assert "Traceback" not in out.output
        assert out.output.strip().count("\n") == 0, out.output


def test_cli_backbones_table_and_json():
    r = CliRunner()
    out = r.invoke(cli, ["backbones"])
    assert out.exit_code == 0 and "resnet50" in out.output and "2048" in out.output
    js = json.loads(r.invoke(cli, ["backbones", "--json", "efficientnetb*"]).output)
    assert [b["name"] for b in js] == [f"efficientnetb{i}" for i in range(8)]


# Files of the real dataset a synthetic one lacks: a palette GIF, a .jpeg, a progressive
# JPEG with a space in its name, one with XMP, a 1488 x 1984 photo (reduced-scale decode).
ODD_FILES = ["train/ants/imageNotFound.gif", "train/ants/formica.jpeg", "train/ants/ant photos.jpg",
             "train/ants/MehdiabadiAnt2_600.jpg", "train/ants/Nepenthes_rafflesiana_ant.jpg",
             "val/bees/6a00d8341c630a53ef00e553d0beb18834-800wi.jpg"]


@pytest.mark.slow
@needs_hymenoptera
def test_hymenoptera_end_to_end(cache_dir, tmp_path):
    """Every file of the real dataset is a row, labelled by its folders; odd files' rows are the model's."""
    import keras

    from featx.decode import read_image

    keras.utils.set_random_seed(11)
    ref = keras.applications.VGG16(weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    wfile = tmp_path / "vgg.weights.h5"
    ref.save_weights(wfile)
    res = run(HYMENOPTERA, cache_dir, weights=str(wfile), batch_size=32)
    root = HYMENOPTERA.resolve()  # featx records real paths
    on_disk = sorted(p for p in root.rglob("*") if p.is_file())
    assert (res.total, res.computed, res.reused, res.skipped) == (len(on_disk), 398, 0, [])  # no copies, none bad
    f = featx.load_features(HYMENOPTERA, cache_dir=cache_dir)
    assert f.class_names == ["ants", "bees"] and f.splits == ["train", "val"]
    assert sorted(map(Path, f.paths)) == on_disk
    for path, y, split in zip(f.paths, f.y, f.split):
        rel = Path(path).relative_to(root)
        assert (rel.parts[0], rel.parts[1]) == (split, f.class_names[y]), path
    assert {s: int((f.split == s).sum()) for s in f.splits} == {"train": 245, "val": 153}
    rows = [list(f.paths).index(str(root / rel)) for rel in ODD_FILES]
    pixels = np.stack([read_image(f.paths[i], 32) for i in rows]).astype("float32")
    expected = ref.predict(keras.applications.vgg16.preprocess_input(pixels), verbose=0)
    np.testing.assert_allclose(f.X[rows], expected, rtol=1e-4, atol=1e-4)
    assert len(np.unique(f.X, axis=0)) == 398


# ---------------------------------------------------------------- progress: rows written, not images decoded


class _FreeModel:
    """A model that costs nothing (no framework import): constant rows of width 512, like VGG16's."""

    calls = 0
    fail_at = None  # raise KeyboardInterrupt on this dispatch (1-based)

    def __init__(self, model):
        pass

    def dispatch(self, x):
        type(self).calls += 1
        if type(self).calls == self.fail_at:
            raise KeyboardInterrupt
        return np.full((len(x), 512), float(type(self).calls), np.float32)

    fetch = staticmethod(np.asarray)


def _free_model(monkeypatch, fail_at=None, bars=None):
    import io

    from tqdm import tqdm

    free = type("Free", (_FreeModel,), {"calls": 0, "fail_at": fail_at})
    monkeypatch.setattr(LocalEngine, "_model", lambda self, run: object())
    monkeypatch.setattr(local, "Forward", free)
    monkeypatch.setattr(local, "FLUSH_SECONDS", 0.0)  # a shard per batch

    def progress(total, enabled, desc):
        bar = tqdm(total=total, desc=desc, file=io.StringIO(), mininterval=0)
        bars.append(bar)
        return bar

    monkeypatch.setattr(local, "progress_bar", progress)


def test_the_bar_counts_rows_written_and_its_total_shrinks_for_cached_and_bad(tmp_path, cache_dir, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=10, size=(32, 32))
    (data / "cats" / "copy.png").write_bytes((data / "dogs" / "dogs_3.png").read_bytes())
    (data / "cats" / "bad.png").write_bytes(b"nope")
    bars = []
    _free_model(monkeypatch, bars=bars)
    written = []
    real_put = local.Writer.put

    def put(self, rows, *a):  # the bar never runs ahead of the rows handed to the writer
        written.append(bars[0].n)
        return real_put(self, rows, *a)

    monkeypatch.setattr(local.Writer, "put", put)
    res = run(data, cache_dir, batch_size=4, progress=True)
    (bar,) = bars
    assert (res.computed, res.reused, len(res.skipped)) == (20, 1, 1)
    rows = Cache(cache_dir).extraction(res.spec).rows()
    assert bar.n == bar.total == rows == 20
    assert written and max(written) < 20  # it moved while the run went on, never ahead


def test_an_interrupted_run_says_how_many_rows_it_kept(tmp_path, cache_dir, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=12, size=(32, 32))
    bars, said = [], []
    _free_model(monkeypatch, fail_at=4, bars=bars)
    with pytest.raises(KeyboardInterrupt):
        run(data, cache_dir, batch_size=4, progress=True, log=said.append)
    spec = spec_for("vgg16", weights="none", image_size=32, cache_dir=cache_dir)
    kept = Cache(cache_dir).extraction(spec).rows()
    assert 0 < kept < 24
    assert bars[0].n == kept
    assert said == [f"featx: stopped after writing {kept} of 24 rows to the cache; those stay cached and the next "
                    "run computes only the rest."]
    monkeypatch.setattr(local.Forward, "fail_at", None)
    again = run(data, cache_dir, batch_size=4)
    assert (again.computed, again.reused) == (24 - kept, kept)


def test_cpu_default_batch_holds_about_the_pixels_of_64_images_of_64_px():
    sizes = {32: 256, 33: 64, 64: 64, 65: 32, 90: 32, 91: 16, 128: 16, 224: 16, 512: 16}
    assert {s: default_batch_size(False, s) for s in sizes} == sizes
    assert default_batch_size(True, 224) == 128


def test_planning_drops_its_copy_of_the_extractions_keys_before_computing(tmp_path, cache_dir, monkeypatch):
    """On a large extraction every set of its keys is a set of every row: the run keeps one, not two."""
    import gc

    data = make_dataset(tmp_path / "d", per_class=15, size=(32, 32))
    bars = []
    _free_model(monkeypatch, bars=bars)
    first = run(data, cache_dir)
    keys = set(Cache(cache_dir).extraction(first.spec).index())
    make_image(data / "cats" / "new.png", seed=123)
    alive = []
    real = plan.Run._compute

    def compute(self, *a, **k):
        gc.collect()
        alive.extend(len(o) for o in gc.get_objects() if isinstance(o, set) and o is not keys and len(o) >= 30 and o <= keys)
        return real(self, *a, **k)

    monkeypatch.setattr(plan.Run, "_compute", compute)
    assert run(data, cache_dir).computed == 1
    assert alive == []


# --------------------------------------------------------------------------- options, checked once

BAD_OPTIONS = [
    dict(batch_size=0), dict(workers=0), dict(engine="spark"), dict(address="auto"), dict(num_gpus_per_worker=1),
    dict(engine="ray", num_gpus_per_worker=-1), dict(taps=[0, 1], cut_blocks=1), dict(taps=[1, 1]),
    dict(pooling="min"), dict(cut_blocks=-1), dict(precision="half"), dict(store="float64"), dict(image_size=5),
    dict(backbone="resnet5"), dict(spec="vgg16"),
]


@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=lambda kw: ",".join(kw))
def test_extract_options_refuse_what_extract_refuses_with_its_message(bad, tmp_path):
    from featx.extraction import ExtractOptions

    with pytest.raises(featx.FeatxError) as built:
        ExtractOptions(**bad)
    with pytest.raises(featx.FeatxError) as called:
        featx.extract(tmp_path / "nothing-here", cache_dir=tmp_path / "c", **bad)
    assert (type(called.value), str(called.value)) == (type(built.value), str(built.value))
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_extract_options_hold_the_choices_and_ranges_a_cli_offers():
    from featx.extraction import ExtractOptions

    lo, hi = ExtractOptions.IMAGE_SIZES
    assert (lo, hi) == featx.backbones.IMAGE_SIZE_RANGE
    for size in (lo, hi):
        assert ExtractOptions(backbone="vgg16", image_size=size).image_size == size
    for size in (lo - 1, hi + 1):
        with pytest.raises(ValueError, match="image_size must be an integer"):
            ExtractOptions(backbone="vgg16", image_size=size)
    assert set(ExtractOptions.CHOICES) == {"pooling", "precision", "store", "tta", "engine", "decode"}
    for option, choices in ExtractOptions.CHOICES.items():
        for value in choices:
            assert getattr(ExtractOptions(**{option: value}), option) == value
        with pytest.raises(featx.FeatxError, match=f"{option}"):
            ExtractOptions(**{option: "nonesuch"})
    opts = ExtractOptions(taps=[2, 0], class_names=["a"])
    assert (opts.taps, opts.cuts, opts.class_names) == ((2, 0), (2, 0), ("a",))
    assert ExtractOptions(cut_blocks=3).cuts == (3,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.pooling = "max"
    assert ExtractOptions.names()[:3] == ("backbone", "weights", "image_size")


def test_extract_with_built_options_is_extract(tiny_dataset, cache_dir, monkeypatch):
    from featx.extraction import ExtractOptions, extract_with

    _free_model(monkeypatch, bars=[])
    first = extract_with(tiny_dataset, ExtractOptions(**TINY, cache_dir=cache_dir), log=lambda msg: None)
    again = run(tiny_dataset, cache_dir)
    assert first.computed == len(first.paths) == 12
    assert (again.spec, again.paths, again.sha256, again.computed) == (first.spec, first.paths, first.sha256, 0)


# --------------------------------------------------------------------------- the extraction package's shape

FEATX_DIR = Path(featx.__file__).parent
OWN = ["extraction", "datasets.py", "decode.py", "spec.py"]


def _featx_imports(path: Path) -> set[str]:
    """The featx modules ``path`` imports (relative imports resolved), at any depth of the file."""
    import ast

    parts = path.relative_to(FEATX_DIR.parent).with_suffix("").parts
    package = ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            mod = f"{base}.{node.module}" if node.module else base
            out |= {mod} if node.module else {mod, *(f"{mod}.{a.name}" for a in node.names)}
    return out


def test_extraction_modules_are_in_no_import_circle():
    """Not at module level, not inside functions (extract.py and ray_engine.py imported each other)."""
    modules = {".".join(p.relative_to(FEATX_DIR.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in FEATX_DIR.rglob("*.py")}
    graph = {name: {m for m in _featx_imports(path) if m in modules and m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    mine = [m for m in modules if m.startswith(("featx.extract", "featx.ray_engine", "featx.spec", "featx.data",
                                                "featx.decode"))]
    assert "featx.extraction.engines.ray" in mine
    for start in mine:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"{start} imports itself through {sorted(seen)}"
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])


def test_the_extraction_modules_stay_small():
    import ast

    paths = [p for own in OWN for p in ([FEATX_DIR / own] if own.endswith(".py") else (FEATX_DIR / own).rglob("*.py"))]
    long_modules = [p.name for p in paths if len(p.read_text().splitlines()) > 500]
    assert not long_modules
    long_functions = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 100:
                body = node.body[1:] if ast.get_docstring(node) else node.body  # a public docstring may be long
                if node.end_lineno - body[0].lineno >= 100:
                    long_functions.append(f"{p.name}:{node.name}")
    assert not long_functions


def test_kept_models_are_reused_only_for_the_same_model_and_one_run_at_a_time(tmp_path, monkeypatch):
    """FEATX_KEEP_MODELS: a second run of the same spec builds nothing; another spec, or no keeping, builds."""
    from featx.extraction import forward as F
    from featx.extraction.engines import local

    builds = []
    real = local.LocalEngine._model

    def counting(self, run):
        builds.append(run.settings.spec.dirname)
        return real(self, run)

    monkeypatch.setattr(local.LocalEngine, "_model", counting)
    monkeypatch.setattr(F, "SHELF", F.Shelf())
    monkeypatch.setattr(local, "SHELF", F.SHELF)
    monkeypatch.setenv("FEATX_KEEP_MODELS", "2")
    a, b = make_dataset(tmp_path / "a", per_class=2), make_dataset(tmp_path / "b", per_class=2, size=(44, 36))
    first = featx.extract(a, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    again = featx.extract(b, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    assert len(builds) == 1 and first.computed == again.computed == 4  # the second run used the kept model
    direct = featx.extract(b, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "d", progress=False)
    assert np.array_equal(featx.load_features(b, cache_dir=tmp_path / "c").X,
                          featx.load_features(b, cache_dir=tmp_path / "d").X) and direct.computed == 4
    featx.extract(a, "vgg16", weights="none", image_size=32, pooling="max", cache_dir=tmp_path / "c", progress=False)
    assert len(builds) == 2  # another spec is another model
    key = next(iter(F.SHELF._kept))
    assert F.SHELF.take(key) is not None and F.SHELF.take(key) is None  # handed to one run at a time
    monkeypatch.setenv("FEATX_KEEP_MODELS", "0")
    featx.extract(a, "vgg16", weights="none", image_size=32, pooling="max", cache_dir=tmp_path / "e", progress=False)
    featx.extract(b, "vgg16", weights="none", image_size=32, pooling="max", cache_dir=tmp_path / "e", progress=False)
    assert len(builds) == 4  # nothing kept is used or added
