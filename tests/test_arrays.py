"""Images that are not files: arrays, .npz, keras.datasets and streams through the same cache."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx import api
from featx import arrays as A
from featx.cli import cli
from featx.errors import DataError, FeatxError

from conftest import make_image

TINY = dict(backbone="vgg16", weights="none", image_size=32, batch_size=16, progress=False)


def run(data, cache_dir, **kw):
    return featx.extract(data, cache_dir=cache_dir, **{**TINY, **kw})


def forbid_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was built although every row is cached")

    monkeypatch.setattr(featx.backbones, "build_feature_model", boom)


@pytest.fixture(scope="module")
def digits():
    """120 of scikit-learn's 8x8 grayscale digits (shipped with it: offline), as uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(d.target))[:120]
    x = np.rint(d.images[idx] * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    return x, d.target[idx]


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory, digits):
    """The digits extracted (resized 8 -> 32 px) as train/test splits, and a logreg head."""
    root = tmp_path_factory.mktemp("digits")
    x, y = digits
    res = run({"train": (x[:90], y[:90]), "test": (x[90:], y[90:])}, root / "cache", name="digits")
    head = api.fit_head("logreg", data="digits", cache_dir=root / "cache", out=root / "head", home=root)
    return root, res, head


# --------------------------------------------------------------------------- real data: extract, fit-head, predict


def test_digits_extract_fit_predict(digits_project, digits):
    root, res, head = digits_project
    x, y = digits
    assert (res.total, res.computed, res.view.source) == (120, 120, "digits")
    f = featx.load_features("digits", cache_dir=root / "cache")
    assert f.X.shape == (120, 512) and f.splits == ["train", "test"]
    assert f.class_names == [str(i) for i in range(10)]
    assert list(f.paths[:2]) == ["train#0", "train#1"] and f.paths[90] == "test#0"
    np.testing.assert_array_equal(f.y, y)  # class "i" is index i
    assert head.metrics["splits"]["test"]["accuracy"] > 0.5  # random VGG16 weights, 90 training digits
    preds = api.predict(x[90:], head=head.directory, cache_dir=root / "cache", progress=False)
    assert preds.paths == [str(i) for i in range(30)]
    accuracy = np.mean(np.asarray(preds.class_names)[preds.probabilities.argmax(1)] == y[90:].astype(str))
    assert accuracy == head.metrics["splits"]["test"]["accuracy"]


def test_a_second_run_computes_nothing_and_appended_rows_only_those(digits_project, digits, monkeypatch):
    root, _, _ = digits_project
    x, y = digits
    grown = np.concatenate([x, x[:5, ::-1]])  # five new (flipped) images
    res = run((grown, np.concatenate([y, y[:5]])), root / "cache", name="digits-grown")
    assert (res.computed, res.reused) == (5, 120)
    forbid_model(monkeypatch)
    again = run((grown, np.concatenate([y, y[:5]])), root / "cache", name="digits-grown")
    assert (again.computed, again.reused) == (0, 125)
    # Float [0, 1] images, (N, H, W, 1) grayscale, int64 pixels: the same uint8 rows, the same keys.
    for same in (x / 255.0, x[..., None], x.astype(np.int64)):
        assert run(same, root / "cache").computed == 0
    # Without a name, the view is named by a hash of the rows: equal inputs share it.
    a, b = run(x, root / "cache"), run(x.astype(np.float32), root / "cache")
    assert a.view.source == b.view.source and a.view.source.startswith("arrays:")


def test_stream_of_batches_and_tf_data(digits_project, digits, monkeypatch):
    root, _, _ = digits_project
    x, y = digits
    forbid_model(monkeypatch)  # every row is cached: streaming recomputes nothing
    gen = ((x[i:i + 25], y[i:i + 25]) for i in range(0, 120, 25))
    res = run(gen, root / "cache", name="digits-stream", class_names=[f"d{i}" for i in range(10)])
    assert (res.total, res.computed, res.reused) == (120, 0, 120)
    f = featx.load_features("digits-stream", cache_dir=root / "cache")
    assert f.class_names == [f"d{i}" for i in range(10)] and list(f.paths[:2]) == ["0", "1"]
    assert np.array_equal(np.asarray(f.class_names)[f.y], [f"d{v}" for v in y])
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.from_tensor_slices((x.astype("float32") / 255.0, y)).batch(32)
    assert run(ds, root / "cache").reused == 120


def test_stream_batches_are_released(digits):
    x, y = digits
    ds = A.as_dataset(((x[i:i + 30], y[i:i + 30]) for i in range(0, 120, 30)))
    seen = []
    for item in ds.items:
        sha, pixels = item.load(32)
        seen.append(item.rows)
    assert len(ds.items) == 120 and all(rows.x is None for rows in seen)  # no batch kept
    assert ds.class_names == sorted({str(v) for v in y}, key=int)


def test_a_stream_is_read_once_and_feeds_both_backbones_of_a_fused_head(digits, tmp_path):
    x, y = digits
    cache = tmp_path / "c"
    data = {"train": (x[:90], y[:90]), "test": (x[90:], y[90:])}
    a = run(data, cache, name="d").extraction.name
    b = run(data, cache, name="d", image_size=40).extraction.name  # another input size: its own pass
    head = api.fit_head("logreg", extraction=[a, b], cache_dir=cache, out=tmp_path / "h", home=tmp_path)
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["feature_width"] == 1024
    read = []

    def stream():
        for i in range(90, 120, 8):
            read.append(i)
            yield x[i:i + 8], y[i:i + 8]

    preds = api.predict(stream(), head=head.directory, cache_dir=cache, progress=False)
    assert read == [90, 98, 106, 114]  # read once
    want = api.predict(x[90:], head=head.directory, cache_dir=cache, progress=False)
    assert preds.paths == want.paths == [str(i) for i in range(30)]
    np.testing.assert_allclose(preds.probabilities, want.probabilities, rtol=1e-6)


def test_a_stream_read_already_is_a_one_line_error(digits, tmp_path):
    x, y = digits
    ds = A.as_dataset((x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10))
    run(ds, tmp_path / "c")
    with pytest.raises(A.ArrayError, match="stream of batches was read already"):
        run(ds, tmp_path / "c2")


def test_finetune_from_arrays_takes_arrays_at_their_size(digits_project, digits):
    import keras

    root, _, head = digits_project
    x, y = digits
    data = {"train": (x[:90], y[:90]), "test": (x[90:], y[90:])}
    with pytest.raises(featx.FeatxError, match="pass the same arrays as data="):
        featx.finetune(head.directory, cache_dir=root / "cache", home=root, epochs=1, log=lambda m: None)
    flipped = {"train": (x[:90, ::-1], y[:90]), "test": (x[90:], y[90:])}
    with pytest.raises(featx.FeatxError, match="is not the image extracted"):
        featx.finetune(head.directory, data=flipped, cache_dir=root / "cache", home=root, epochs=1, log=lambda m: None)
    res = featx.finetune(head.directory, data=data, cache_dir=root / "cache", out=root / "model", home=root,
                         epochs=1, batch_size=64, export=False, log=lambda m: None)
    assert res.parity_max_diff < 2e-2  # 8 -> 32 px by the Resizing layer, Pillow's filter up to rounding
    model = keras.saving.load_model(root / "model" / "model.keras", safe_mode=True)
    assert tuple(model.input.shape) == (None, 8, 8, 1)
    proba = model.predict(x[90:, ..., None], verbose=0)
    preds = featx.predict_images(root / "model", data, split="test")
    assert preds.paths[:2] == ["0", "1"]
    np.testing.assert_allclose(preds.probabilities, proba, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the same pixels as a file


def test_png_and_array_give_equal_features(tmp_path):
    from PIL import Image

    cache = tmp_path / "cache"
    rgb = np.stack([np.asarray(Image.open(make_image(tmp_path / "png" / f"{i}.png", size=(32, 32), seed=i)))
                    for i in range(4)])
    gray = np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    for i, g in enumerate(gray):  # resized 16 -> 32 on both ways
        Image.fromarray(g, "L").save(tmp_path / "png" / f"g{i}.png")
    files = run(tmp_path / "png", cache)
    by_name = dict(zip((p.rsplit("/", 1)[-1] for p in files.paths), featx.load_features(tmp_path / "png", cache_dir=cache).X))
    X_rgb = featx.load_features(cache_dir=cache, extraction=run(rgb, cache).extraction.name).X
    X_gray = featx.load_features(cache_dir=cache, extraction=run(gray, cache).extraction.name).X
    np.testing.assert_array_equal(X_rgb, np.stack([by_name[f"{i}.png"] for i in range(4)]))
    np.testing.assert_array_equal(X_gray, np.stack([by_name[f"g{i}.png"] for i in range(3)]))


# --------------------------------------------------------------------------- .npz and the CLI


def test_npz_through_the_cli(digits_project, digits, tmp_path):
    root, _, _ = digits_project
    x, y = digits
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    runner = CliRunner()
    cache = ["--cache-dir", str(root / "cache")]
    out = runner.invoke(cli, [*cache, "extract", "-b", "vgg16", "-w", "none", "--image-size", "32", "-q", str(npz)])
    assert out.exit_code == 0, out.output
    assert "x_train (90, 8, 8) uint8, y_train; x_test (30, 8, 8) uint8, y_test" in out.output
    assert "120 images, 0 computed, 120 reused" in out.output  # the same rows as the arrays
    home = tmp_path / "home"
    out = runner.invoke(cli, [*cache, "fit-head", "--head", "logreg", "--data", str(npz), "--out", str(home / "h")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, [*cache, "predict", "--head", str(home / "h"), "--split", "test", "--out",
                              str(tmp_path / "p.csv"), "-q", str(npz)])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["path"] for r in rows] == [str(i) for i in range(30)]
    assert set(r["label_1"] for r in rows) <= {str(i) for i in range(10)}


def test_npz_images_are_memory_mapped(tmp_path):
    x = np.zeros((50, 8, 8, 3), np.uint8) + np.arange(50, dtype=np.uint8)[:, None, None, None]
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(50) % 2)
    ds = A.as_dataset(tmp_path / "a.npz")
    rows = ds.items[0].rows.x
    assert isinstance(rows, np.memmap) and np.array_equal(rows, x)
    np.savez_compressed(tmp_path / "b.npz", x=x)  # compressed members are read whole
    ds = A.as_dataset(tmp_path / "b.npz")
    assert [it.path for it in ds.items[:2]] == ["0", "1"] and ds.items[3].pixels()[0, 0, 0] == 3
    with pytest.raises(A.ArrayError, match="expected x_train"):
        np.savez(tmp_path / "c.npz", images=x)
        A.as_dataset(tmp_path / "c.npz")


# --------------------------------------------------------------------------- keras.datasets offline


def test_keras_dataset_offline_names_the_file(tmp_path, monkeypatch):
    import urllib.error

    from keras.src.backend import config
    from keras.src.utils import file_utils

    def no_network(url, *a, **k):
        raise urllib.error.URLError("no network (test)")

    (tmp_path / "keras-home").mkdir()  # an empty KERAS_HOME (Keras read the variable at import)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    with pytest.raises(DataError) as err:
        A.as_dataset("keras:mnist")
    msg = str(err.value)
    assert "\n" not in msg and f"into {tmp_path / 'keras-home' / 'datasets'}:" in msg
    assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz" in msg
    # Default ImageNet weights: the data's message comes first, before any weights are looked for.
    out = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "c"), "extract", "keras:cifar10"])
    assert out.exit_code == 1 and "cifar-10-python.tar.gz" in out.output and "Traceback" not in out.output
    with pytest.raises(A.ArrayError, match="Unknown Keras dataset"):
        A.as_dataset("keras:imagenet")


# --------------------------------------------------------------------------- bad input


X = np.zeros((4, 8, 8, 3), np.uint8)


@pytest.mark.parametrize("data, match", [
    (np.zeros((4, 8, 8, 3, 1), np.uint8), "must have shape"),
    (np.zeros((8, 8), np.uint8), "must have shape"),
    (np.zeros((4, 8, 8, 4), np.uint8), "must have shape"),
    ((X, np.arange(3)), "4 images but 3 labels"),
    (np.full((4, 8, 8), np.nan), "NaN or inf"),
    (np.full((4, 8, 8), np.inf, np.float32), "NaN or inf"),
    (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
    (np.empty((4, 8, 8, 3), object), "object array"),
    (np.full((4, 8, 8), -0.5), "values from -0.5"),
    (np.full((4, 8, 8), 300.0), "values from 300"),
    (np.full((4, 8, 8), 1000, np.int32), "integers in"),
    ({"holdout": X}, "Unknown split"),
    ((X, np.array([0.5, 1, 2, 3])), "not whole numbers"),
    (iter([]), "empty"),
])
def test_bad_input_is_one_line_error(data, match):
    with pytest.raises(A.ArrayError, match=match) as err:
        ds = A.as_dataset(data)
        list(ds.items)
    assert isinstance(err.value, ValueError) and isinstance(err.value, FeatxError)
    assert "\n" not in str(err.value)


def test_bad_batch_midway_in_a_stream():
    batches = iter([X, np.zeros((2, 8, 8, 3), np.float32) + 0.5, np.full((2, 8, 8, 3), 7.0, np.float32)])
    ds = A.as_dataset(batches)
    with pytest.raises(A.ArrayError, match="first float batch"):
        list(ds.items)


def test_explicit_scale():
    ds = A.as_dataset(np.full((2, 4, 4), 16.0), scale=255 / 16)
    assert ds.items[0].pixels().max() == 255
    with pytest.raises(A.ArrayError, match="scale must be"):
        A.as_dataset(X, scale=0)
