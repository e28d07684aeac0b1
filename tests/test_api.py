"""fit-head, predict and compare, through the Python API and the CLI."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx import api
from featx.cli import cli
from featx.errors import HeadError
from featx.heads import load_head

from conftest import make_dataset, make_image

EXTRACT = ["extract", "-q", "-b", "vgg16", "--weights", "none", "--image-size", "32"]


def invoke(*args, cache_dir):
    out = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), *map(str, args)])
    return out


@pytest.fixture
def split_data(tmp_path):
    return make_dataset(tmp_path / "data", per_class=8, splits=["train", "val", "test"])


def test_mission_commands_in_sequence(tmp_path, monkeypatch, split_data):
    """extract, then fit-head with no data argument, then predict, in one folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    cache = tmp_path / "cache"
    r = invoke(*EXTRACT, split_data, cache_dir=cache)
    assert r.exit_code == 0, r.output
    r = invoke("fit-head", "--head", "dense", "--epochs", "20", "--hidden", "256", "--dropout", "0.5", "--lr", "1e-3",
               cache_dir=cache)
    assert r.exit_code == 0, r.output
    assert "vgg16 32px avg on" in r.output and "val: accuracy" in r.output and "test: accuracy" in r.output
    used = featx.load_features(cache_dir=cache).extraction.name
    assert f"[extraction {used}]" in r.output  # says which extraction it picked
    latest = featx.latest_head(tmp_path)
    assert {"manifest.json", "model.keras", "metrics.json", "confusion.png", "curves.png"} <= {p.name for p in latest.iterdir()}
    metrics = json.loads((latest / "metrics.json").read_text())
    assert metrics["splits"]["test"]["accuracy"] >= 0.75  # colour-coded classes; chance is 0.5
    r = invoke("predict", "-q", "-k", "2", split_data / "test", cache_dir=cache)
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    assert len(rows) == 1 + 16
    for row in rows[1:]:
        assert row[1] in ("cats", "dogs") and abs(float(row[2]) + float(row[4]) - 1) < 1e-4
    right = sum(Path(row[0]).parent.name == row[1] for row in rows[1:])
    assert right >= 12
    # predicting does not change which extraction fit-head uses next
    assert featx.load_features(cache_dir=cache).view.source == str(split_data)


@pytest.mark.parametrize("kind", ["logreg", "lightgbm"])
def test_fit_head_api_writes_head_metrics_and_plots(kind, tmp_path, split_data):
    featx.extract(split_data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    res = api.fit_head(kind, cache_dir=tmp_path / "c", out=tmp_path / "h")
    assert res.metrics["splits"]["val"]["accuracy"] > 0.8
    assert (tmp_path / "h" / "confusion.png").stat().st_size > 1000
    man = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert man["settings"]["backbone"] == "vgg16" and man["weights_source"] == "none"
    assert man["extraction"] == res.metrics["extraction"] and man["classes"] == ["cats", "dogs"]
    preds = api.predict(split_data / "val", head=tmp_path / "h", cache_dir=tmp_path / "c", progress=False)
    assert preds.probabilities.shape == (16, 2) and preds.class_names == ["cats", "dogs"]


def test_stratified_validation_and_refit_all(tmp_path):
    data = make_dataset(tmp_path / "flat", per_class=10)
    featx.extract(data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    res = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h", selection="val", val_split=0.3, seed=1)
    assert res.metrics["splits"]["val"]["n"] == 6 and res.metrics["splits"]["train"]["n"] == 14
    man = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert man["val_from"] == "stratified split of train" and man["val_split"] == 0.3
    assert man["selection"]["val_split"] == 0.3 and len(man["selection"]["val_sha256"]) == 6
    refit = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h2", selection="val", val_split=0.3,
                         seed=1, refit_all=True)
    assert refit.metrics["refit_all"] and refit.metrics["C"] == res.metrics["C"]
    # refit on all 20 images (train + val) with the C chosen on val
    f = featx.load_features(data, cache_dir=tmp_path / "c")
    again = featx.LogisticHead(C=res.metrics["C"], seed=1).fit(f.X, np.array(f.class_names)[f.y])
    np.testing.assert_allclose(refit.head.predict_proba(f.X), again.predict_proba(f.X), rtol=1e-6)
    assert not np.allclose(res.head.predict_proba(f.X), again.predict_proba(f.X))


def test_compare_leaderboard(tmp_path, split_data):
    for size in (32, 40):
        featx.extract(split_data, "vgg16", weights="none", image_size=size, cache_dir=tmp_path / "c", progress=False)
    board = api.compare(cache_dir=tmp_path / "c", heads=["logreg", "lightgbm"], out=tmp_path / "cmp.csv")
    # 3 feature sets (each size, both fused) x (logreg: 3 normalisations, lightgbm: 2)
    assert len(board.rows) == 15
    assert {(r["features"], r["head"]) for r in board.rows} >= {
        ("vgg16-32px", "logreg"), ("vgg16-40px", "lightgbm"), ("vgg16-32px+vgg16-40px", "logreg")}
    assert [r["val_acc"] for r in board.rows] == sorted((r["val_acc"] for r in board.rows), reverse=True)
    assert all(0 <= r["test_acc"] <= 1 for r in board.rows)
    with open(tmp_path / "cmp.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 15
    assert board.table().splitlines()[0].split() == ["features", "normalise", "head", "params", "val_acc", "fit_s",
                                                     "note", "test_acc"]


def test_head_refuses_features_of_other_settings(tmp_path, split_data):
    import keras

    wfile = tmp_path / "w.weights.h5"
    keras.utils.set_random_seed(0)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(wfile)
    featx.extract(split_data, "vgg16", weights=str(wfile), image_size=32, cache_dir=tmp_path / "c", progress=False)
    api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h")
    keras.utils.set_random_seed(1)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(wfile)
    # cached images need no weights; a new one needs the recorded file, and this one is not it
    assert len(api.predict(split_data / "val", head=tmp_path / "h", cache_dir=tmp_path / "c", progress=False).paths) == 16
    new = make_image(tmp_path / "new" / "n.png", seed=99)
    with pytest.raises(HeadError, match="is not the weights file of extraction vgg16-32px-avg-"):
        api.predict([new], head=tmp_path / "h", cache_dir=tmp_path / "c", progress=False)
    head = load_head(tmp_path / "h")
    with pytest.raises(ValueError, match="X has 100 features, but LogisticHead is expecting 512 features"):
        head.predict(np.zeros((2, 100), "float32"))


def test_bad_inputs_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    cache = tmp_path / "cache"
    cases = []
    # nothing extracted yet
    cases.append((("fit-head",), "Nothing has been extracted"))
    cases.append((("predict", tmp_path), "No head has been saved under"))
    one = tmp_path / "one"
    make_image(one / "only" / "a.png", seed=1)
    make_image(one / "only" / "b.png", seed=2)
    unl = tmp_path / "unl"
    make_image(unl / "x.png", seed=3)
    tiny = make_dataset(tmp_path / "tiny", per_class=1)
    for args, expected in cases:
        r = invoke(*args, cache_dir=cache)
        assert r.exit_code == 1 and expected in r.output and "Traceback" not in r.output, r.output
    r = invoke("fit-head", "--head", "svm", cache_dir=cache)
    assert r.exit_code == 2 and "svm" in r.output  # click's own choice error
    with pytest.raises(HeadError, match="Unknown head 'svm'"):
        api.fit_head("svm", cache_dir=cache)
    for data, expected in ((one, "has 1 class; a classifier needs at least 2"),
                           (unl, "fit-head needs labeled data"),
                           (tiny, "Cross-validation needs at least 2 training images per class")):
        assert invoke(*EXTRACT, data, cache_dir=cache).exit_code == 0
        r = invoke("fit-head", "--head", "logreg", "--data", data, cache_dir=cache)
        assert r.exit_code == 1 and expected in r.output, r.output
        assert r.output.strip().count("\n") == 0
    r = invoke("fit-head", "--data", tmp_path / "nowhere", cache_dir=cache)
    assert r.exit_code == 1 and "No extraction of" in r.output
    r = invoke("predict", "--head", tmp_path, unl, cache_dir=cache)
    assert r.exit_code == 2 and "not a featx head" in r.output  # a bad --head value is a usage error
    r = invoke("fit-head", "--hidden", "12,x", cache_dir=cache)
    assert r.exit_code == 2 and "expected widths" in r.output


def test_empty_train_split_is_an_error(tmp_path):
    data = tmp_path / "d"
    for split in ("val", "test"):
        for cls in ("a", "b"):
            make_image(data / split / cls / "x.png", seed=hash((split, cls)) % 100)
    featx.extract(data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(HeadError, match="train split of .* is empty"):
        api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h")


def test_predict_imagenet_offline_message(tmp_path):
    img = make_image(tmp_path / "x.png")
    r = CliRunner().invoke(cli, ["predict", "--imagenet", "-b", "mobilenet", str(img)])
    if r.exit_code == 0:
        pytest.skip("ImageNet weights available here")
    assert r.exit_code == 1 and "mobilenet_1_0_224_tf.h5" in r.output and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0


def test_predict_imagenet_class_index_offline_message(tmp_path, monkeypatch):
    """Weights present but keras' imagenet_class_index.json not: still one clear line."""
    import keras

    if (Path.home() / ".keras" / "models" / "imagenet_class_index.json").exists():
        pytest.skip("ImageNet class index available here")

    def fake_mobilenet(weights, include_top):  # stands in for the downloaded classifier
        assert (weights, include_top) == ("imagenet", True)
        inp = keras.Input((32, 32, 3))
        out = keras.layers.Dense(1000, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
        return keras.Model(inp, out)

    monkeypatch.setattr(keras.applications, "MobileNet", fake_mobilenet)
    img = make_image(tmp_path / "x.png")
    r = CliRunner().invoke(cli, ["predict", "--imagenet", "-b", "mobilenet", str(img)])
    assert r.exit_code == 1, r.output
    assert "ImageNet class names could not be downloaded" in r.output and "imagenet_class_index.json" in r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0


# --------------------------------------------------------------------------- one options object per command


def test_options_defaults_are_the_api_defaults():
    """fit_head, predict and compare build their options object: the same names, the same defaults."""
    import dataclasses
    import inspect as pyinspect

    from featx.options import CompareOptions, FitHeadOptions, PredictOptions

    for fn, cls, extra in ((api.fit_head, FitHeadOptions, {"log", "params"}), (api.predict, PredictOptions, set()),
                           (api.compare, CompareOptions, {"log"})):
        sig = {n: p.default for n, p in pyinspect.signature(fn).parameters.items() if p.kind != p.VAR_KEYWORD}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(sig) | extra == set(fields) | extra, cls.__name__
        obj = cls()
        for name, default in sig.items():
            if name in fields and default is not pyinspect.Parameter.empty:
                got = getattr(obj, name)
                assert got == default or tuple(got) == tuple(default), (cls.__name__, name)


@pytest.mark.parametrize("kwargs,error,mentions", [
    ({"head": "svm"}, HeadError, "Unknown head 'svm'"),
    ({"head": "auto", "auto_heads": ["logreg", "svn"]}, HeadError, "Unknown head 'svn'"),
    ({"selection": "loo"}, HeadError, "Received: selection='loo'"),
    ({"folds": 1}, HeadError, "'folds' parameter of FitHeadOptions"),
    ({"val_split": 1.0}, HeadError, "'val_split' parameter of FitHeadOptions"),
    ({"seed": -1}, HeadError, "'seed' parameter"),
    ({"top_k": 0}, HeadError, "'top_k' parameter"),
    ({"time_budget": 0}, HeadError, "'time_budget' parameter"),
    ({"class_weight": "even"}, HeadError, "'class_weight' parameter"),
])
def test_fit_head_options_refuse_bad_values_before_reading_the_cache(kwargs, error, mentions, tmp_path):
    """Checked once, when the options object is built: no cache is opened, nothing is written."""
    from featx.errors import HeadParamError
    from featx.options import FitHeadOptions

    with pytest.raises(error, match=mentions) as info:
        api.fit_head(**{"cache_dir": tmp_path / "c", "out": tmp_path / "h", **kwargs})
    assert isinstance(info.value, ValueError)
    if "head" not in kwargs and "auto_heads" not in kwargs:
        assert isinstance(info.value, HeadParamError)
    with pytest.raises(error, match=mentions):
        FitHeadOptions(**kwargs)
    assert not (tmp_path / "c").exists() and not (tmp_path / "h").exists()


def test_options_are_frozen_and_normalised():
    import dataclasses

    from featx.options import CompareOptions, FitHeadOptions, PredictOptions

    opts = FitHeadOptions(head="auto", auto_heads=["logreg"], extraction="a, b", params={"C": 1.0})
    assert opts.auto and opts.auto_heads == ("logreg",) and opts.extractions == ["a", "b"] and opts.backbones == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 3
    assert CompareOptions(heads=["dense"]).heads == ("dense",)
    with pytest.raises(HeadError, match="Unknown head 'svm'"):
        CompareOptions(heads=["dense", "svm"])
    with pytest.raises(HeadError, match="'batch_size' parameter of PredictOptions"):
        PredictOptions(batch_size=0)
    with pytest.raises(HeadError, match="Unknown head 'svm'"):
        api.compare(heads=["svm"])
