"""State carried between commands: the extraction spec, views, splits and latest pointers."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx import api
from featx.cache import Cache
from featx.cli import cli
from featx.errors import FeatxWarning, HeadError
from featx.spec import ExtractionSpec, resolve_spec

from conftest import make_dataset, make_image

TINY = dict(weights="none", image_size=32, progress=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    data = make_dataset(root / "data", per_class=6, splits=["train", "val"])
    featx.extract(data, "vgg16", cache_dir=root / "cache", **TINY)
    return root, data


def test_predicting_never_changes_what_fit_head_trains_on(project, tmp_path):
    root, data = project
    cache = root / "cache"
    head = api.fit_head("logreg", cache_dir=cache, out=tmp_path / "h", C=1.0)
    api.predict(data / "val", head=head.directory, cache_dir=cache, progress=False)
    api.predict([data / "val" / "cats" / "cats_0.png"], head=head.directory, cache_dir=cache, progress=False)
    name = featx.load_features(cache_dir=cache).extraction.name
    for kw in ({}, {"backbone": "vgg16"}, {"extraction": name}):
        res = api.fit_head("logreg", cache_dir=cache, out=tmp_path / "h2", C=1.0, **kw)
        assert res.metrics["splits"]["train"]["n"] == 12 and res.metrics["splits"]["val"]["n"] == 12, kw
        assert res.metrics["source"] == str(data)


def test_file_lists_get_views_of_their_own(tmp_path):
    a = [make_image(tmp_path / "a" / f"{i}.png", seed=i) for i in range(3)]
    b = [make_image(tmp_path / "b" / f"{i}.png", seed=10 + i) for i in range(2)]
    ra = featx.extract(a, "vgg16", cache_dir=tmp_path / "c", **TINY)
    rb = featx.extract(b, "vgg16", cache_dir=tmp_path / "c", **TINY)
    assert ra.view.source != rb.view.source and ra.view.source.startswith("<files:")
    assert sorted(ra.paths) == sorted(str(p) for p in a) and len(rb.sha256) == 2
    cols = Cache(tmp_path / "c").read_view(ra.view)
    assert sorted(cols["path"]) == sorted(str(p) for p in a)  # rb did not overwrite it


def test_latest_pointer_follows_out_and_is_relative(project, tmp_path, monkeypatch):
    root, data = project
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    first = api.fit_head("logreg", cache_dir=root / "cache", C=1.0).directory
    elsewhere = api.fit_head("logreg", cache_dir=root / "cache", out=tmp_path / "x" / "h", C=0.5).directory
    pointer = (tmp_path / "heads" / "latest").read_text().strip()
    assert not pointer.startswith("/") and featx.latest_head().resolve() == elsewhere.resolve() != first.resolve()
    # the project moves: the relative pointer still works
    shutil.copytree(tmp_path, tmp_path.parent / "moved")
    assert featx.latest_head(tmp_path.parent / "moved").resolve() == (tmp_path.parent / "moved" / "x" / "h").resolve()
    r = CliRunner().invoke(cli, ["--cache-dir", str(root / "cache"), "predict", "-q", str(data / "val")])
    assert r.exit_code == 0 and "head: " in r.stderr and "x/h" in r.stderr, r.output


def test_key_holds_tap_layer_weights_hash_backend_and_versions(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "c")
    s0, _ = resolve_spec(cache, "vgg16", "none", 32, "avg", 0, "float32")
    s1, _ = resolve_spec(cache, "vgg16", "none", 32, "avg", 1, "float32")
    assert (s0.tap, s1.tap) == ("output", "block4_pool") and s0.key != s1.key
    assert "block4_pool" in json.dumps(s1.record())
    mixed, _ = resolve_spec(cache, "vgg16", "none", 32, "avg", 0, "mixed")
    assert mixed.numerics == "tensorflow" and s0.numerics == ""
    assert dict(s0.versions)["keras"] and dict(s0.versions)["backend"] == "tensorflow"
    # ImageNet weights are keyed by a hash of the arrays Keras loaded, not by the word "imagenet",
    # remembered until a file is added to or replaced in Keras' download folder.
    (tmp_path / "kh" / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    built = []
    monkeypatch.setattr(featx.backbones, "build_backbone", lambda bb, w, size, pooling=None: built.append(size))
    monkeypatch.setattr(featx.backbones, "loaded_fingerprint", lambda model: f"sha256:{len(built):064d}")
    k1 = resolve_spec(cache, "vgg16", "imagenet", None, "avg", 0, "float32")[0]
    assert k1.weights == f"imagenet:loaded-sha256:{1:064d}" and k1.loaded == f"sha256:{1:064d}"
    assert resolve_spec(cache, "vgg16", "imagenet", None, "avg", 0, "float32")[0].key == k1.key and built == [224]
    (tmp_path / "kh" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"replaced")
    k2 = resolve_spec(cache, "vgg16", "imagenet", None, "avg", 0, "float32")[0]
    assert built == [224, 224] and k1.key != k2.key


def test_spec_round_trips_through_meta_and_manifest(project, tmp_path):
    root, data = project
    f = featx.load_features(cache_dir=root / "cache")
    head = api.fit_head("logreg", cache_dir=root / "cache", out=tmp_path / "h", C=1.0)
    man = json.loads((head.directory / "manifest.json").read_text())
    assert ExtractionSpec.from_record(man) == f.spec == f.extraction.spec
    assert man["versions"]["keras"] == f.extraction.meta["versions"]["keras"]


def test_all_bad_dataset_with_a_cut_creates_no_extraction(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not an image")
    (bad / "b.jpg").write_bytes(b"")
    res = featx.extract(bad, "vgg16", cut_blocks=1, cache_dir=tmp_path / "c", **TINY)
    assert res.computed == 0 and len(res.skipped) == 2 and res.extraction is None
    assert Cache(tmp_path / "c").extractions() == []
    assert "nothing cached" in res.summary()


def test_moved_weights_file(tmp_path):
    import keras

    data = make_dataset(tmp_path / "d", per_class=4, splits=["train", "val"])
    w = tmp_path / "w.weights.h5"
    keras.utils.set_random_seed(0)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(w)
    featx.extract(data, "vgg16", weights=str(w), image_size=32, cache_dir=tmp_path / "c", progress=False)
    head = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h", C=1.0).directory
    moved = tmp_path / "elsewhere.weights.h5"
    w.rename(moved)
    # cached images need no weights at all
    assert len(api.predict(data / "val", head=head, cache_dir=tmp_path / "c", progress=False).paths) == 8
    new = [make_image(tmp_path / "new" / "n.png", seed=42)]
    with pytest.raises(HeadError, match="no longer at .*Pass --weights PATH"):
        api.predict(new, head=head, cache_dir=tmp_path / "c", progress=False)
    r = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "c"), "predict", "-q", "--head", str(head),
                                 "--weights", str(moved), str(new[0])])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1].startswith(str(new[0]))


def test_several_taps_from_one_pass_equal_separate_extractions(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", per_class=5)
    import sys

    calls = []
    extract_mod = sys.modules["featx.extraction.engines.local"]

    class Counting(extract_mod.Forward):
        def __init__(self, model):
            super().__init__(model)
            dispatch = self.dispatch
            self.dispatch = lambda x: calls.append(len(x)) or dispatch(x)

    monkeypatch.setattr(extract_mod, "Forward", Counting)
    multi = featx.extract(data, "vgg16", taps=[0, 1, 2], batch_size=16, cache_dir=tmp_path / "multi", **TINY)
    assert calls == [16] and multi.computed == 10  # one forward pass over the 10 images, all taps at once
    assert [s.tap for s in multi.specs] == ["output", "block4_pool", "block3_pool"]
    assert len(Cache(tmp_path / "multi").extractions()) == 3
    for k, ext in zip((0, 1, 2), multi.extractions):
        single = featx.extract(data, "vgg16", cut_blocks=k, cache_dir=tmp_path / f"single{k}", **TINY)
        assert single.extraction.name == ext.name  # the same key
        a = featx.load_features(cache_dir=tmp_path / "multi", extraction=ext.name)
        b = featx.load_features(cache_dir=tmp_path / f"single{k}")
        np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-5)
    # the first tap is the default; a rerun computes nothing; a new tap computes only that tap
    assert featx.load_features(cache_dir=tmp_path / "multi").extraction.name == multi.extractions[0].name
    assert featx.extract(data, "vgg16", taps=[0, 1, 2], cache_dir=tmp_path / "multi", **TINY).computed == 0
    more = featx.extract(data, "vgg16", taps=[0, 3], cache_dir=tmp_path / "multi", **TINY)
    assert more.computed == 10 and more.extractions[0].rows() == 10  # tap 0's rows were not written twice
    with pytest.raises(featx.FeatxError, match="cut_blocks or taps"):
        featx.extract(data, "vgg16", taps=[0, 1], cut_blocks=1, cache_dir=tmp_path / "multi", **TINY)


def test_a_head_refuses_features_of_another_extraction_of_the_same_width(project, tmp_path):
    root, data = project
    featx.extract(data, "vgg16", weights="none", image_size=40, cache_dir=root / "cache", progress=False)
    own = featx.load_features(data, cache_dir=root / "cache", extraction="vgg16-32px")
    other = featx.load_features(data, cache_dir=root / "cache", extraction="vgg16-40px")
    assert own.X.shape[1] == other.X.shape[1] == 512
    fitted = api.fit_head("logreg", cache_dir=root / "cache", extraction=own.extraction.name, out=tmp_path / "h", C=1.0)
    for head in (fitted.head, featx.load_head(tmp_path / "h")):
        assert head.predict_proba(own).shape == (len(own), 2)
        with pytest.raises(HeadError, match="fitted on features of extraction vgg16-32px.*but these are of vgg16-40px"):
            head.predict_proba(other)
    featx.extract(data, "vgg16", cache_dir=root / "cache", **TINY)  # keep the 32 px dataset the latest


# --------------------------------------------------------------------------- paths users type: --head and --model


def _result(path, kind, age=0):
    """A fake head or model folder: a manifest of ``kind``, ``age`` seconds old."""
    import os
    import time

    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"kind": kind, "classes": ["a", "b"]}))
    (path / "model.keras").write_bytes(b"")
    t = time.time() - age
    os.utime(path / "manifest.json", (t, t))
    return path


def test_head_accepts_a_folder_the_pointer_latest_and_latest_kind(project, tmp_path, monkeypatch):
    root, data = project
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")
    logreg = api.fit_head("logreg", cache_dir=root / "cache", C=1.0).directory
    lgbm = api.fit_head("lightgbm", cache_dir=root / "cache", n_estimators=5).directory
    image = str(data / "val" / "cats" / "cats_0.png")
    for value, used in (("heads/latest", lgbm), ("latest", lgbm), ("heads", lgbm), ("heads/latest-logreg", logreg),
                        ("latest-logreg", logreg), (str(logreg), logreg), (f"{logreg}/manifest.json", logreg)):
        r = CliRunner().invoke(cli, ["--cache-dir", str(root / "cache"), "predict", "-q", "--head", value, image])
        assert r.exit_code == 0, (value, r.output)
        assert r.stderr.startswith("head: ") and used.name in r.stderr.splitlines()[0], (value, r.stderr)
    assert api.predict([image], head="latest-logreg", cache_dir=root / "cache", progress=False).source.endswith(
        logreg.name)
    r = CliRunner().invoke(cli, ["predict", "--head", "latest-svm", image])
    assert r.exit_code == 2 and "latest-KIND with KIND among dense, logreg, lightgbm" in r.output


def test_head_and_model_name_the_option_that_takes_the_other_kind(tmp_path, monkeypatch):
    from featx.outputs import resolve_result, set_latest

    monkeypatch.chdir(tmp_path)
    home = tmp_path
    model = _result(home / "models" / "vgg16-finetune-1", "end-to-end")
    head = _result(home / "heads" / "vgg16-dense-1", "dense")
    set_latest("model", model, home)
    set_latest("head", head, home, kind="dense")
    for value in ("models/latest", "latest", "models", str(model), f"{model}/model.keras"):
        assert resolve_result("model", value, home).resolve() == model, value
    assert resolve_result("head", "latest-dense", home).resolve() == head
    for value in ("models/latest", "models", f"{model}/model.keras", str(model)):
        with pytest.raises(HeadError, match=r"is a fine-tuned model \(from `featx finetune`\), not a head: use --model"):
            resolve_result("head", value, home)
    for value in ("heads/latest", "heads", f"{head}/model.keras", str(head)):
        with pytest.raises(HeadError, match=r"not a fine-tuned model: use --head"):
            resolve_result("model", value, home)
    with pytest.raises(HeadError, match="no such file or folder"):
        resolve_result("head", "heads/nowhere", home)
    image = make_image(tmp_path / "img.png")
    for args in (["predict", "--head", f"{model}/model.keras", str(image)], ["predict", "--head", "models/latest", str(image)],
                 ["finetune", "--head", "models"]):
        r = CliRunner().invoke(cli, ["--home", str(home), *args])
        assert r.exit_code == 2 and "use --model" in r.output and r.exception.__class__ is SystemExit, r.output


def test_a_latest_pointer_to_a_missing_folder_is_skipped_with_a_warning(tmp_path):
    from featx.outputs import latest_dir, set_latest

    older = _result(tmp_path / "heads" / "vgg16-logreg-1", "logreg", age=100)
    newer = _result(tmp_path / "heads" / "vgg16-dense-2", "dense", age=50)
    _result(tmp_path / "heads" / "vgg16-finetune-x", "end-to-end", age=0)  # a model in the wrong place: never a head
    (tmp_path / "heads" / "broken").mkdir()
    (tmp_path / "heads" / "broken" / "manifest.json").write_text("{not json")
    gone = tmp_path / "heads" / "vgg16-logreg-3"
    set_latest("head", gone, tmp_path, kind="logreg")
    with pytest.warns(FeatxWarning, match=r"heads/latest points to .*vgg16-logreg-3, which no longer exists; "
                                                 r"using .*vgg16-dense-2, the newest head"):
        assert latest_dir("head", tmp_path).resolve() == newer
    with pytest.warns(FeatxWarning, match=r"using .*vgg16-logreg-1, the newest logreg head"):
        assert latest_dir("head", tmp_path, kind="logreg").resolve() == older
    shutil.rmtree(older)
    shutil.rmtree(newer)
    with pytest.raises(HeadError) as err:
        latest_dir("head", tmp_path)
    assert "no longer exists, and no other head is under" in str(err.value)
    assert "again" not in str(err.value)


def test_predict_skips_a_dangling_latest_pointer_and_says_which_head_it_used(project, tmp_path):
    root, data = project
    home = tmp_path / "home"
    first = api.fit_head("logreg", cache_dir=root / "cache", home=home, C=1.0).directory
    second = api.fit_head("logreg", cache_dir=root / "cache", home=home, C=0.5).directory
    assert first != second
    shutil.rmtree(second)
    r = CliRunner().invoke(cli, ["--cache-dir", str(root / "cache"), "--home", str(home), "predict", "-q",
                                 str(data / "val" / "cats" / "cats_0.png")])
    assert r.exit_code == 0, r.output
    assert f"which no longer exists; using {first}" in r.stderr and f"head: {first}" in r.stderr


def test_two_runs_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    from featx import outputs

    monkeypatch.setattr(outputs.time, "strftime", lambda fmt: "20261127-150000")
    a = outputs.default_dir(tmp_path / "heads", "vgg16", "logreg")
    b = outputs.default_dir(tmp_path / "heads", "vgg16", "logreg")  # before a's head is saved into it
    assert a != b and a.is_dir() and b.is_dir()
    assert (a.name, b.name) == ("vgg16-logreg-20261127-150000", "vgg16-logreg-20261127-150000-2")


def test_results_have_short_reprs(project):
    """repr(featx.extract(...)) printed every path and sha256 (59,833 characters on hymenoptera)."""
    root, data = project
    res = featx.extract(data, "vgg16", cache_dir=root / "cache", **TINY)  # warm: nothing computed
    feats = featx.load_features(data, cache_dir=root / "cache")
    paths = sorted(res.paths)
    for obj, name in ((res, "ExtractResult("), (feats, "Features("), (feats.view, "DatasetView("),
                      (feats.extraction, "Extraction(")):
        text = repr(obj)
        assert text.startswith(name) and len(text) < 700, text
        assert not any(sha in text for sha in res.sha256), text
        assert paths[len(paths) // 2] not in text  # the middle rows are left out
    assert "24 images: 0 computed, 24 reused" in repr(res) and "(24)" in repr(res)
    assert "24 rows x 512 features" in repr(feats) and "train 12, val 12" in repr(feats)


def test_gitignore_covers_every_folder_featx_writes_in_the_home():
    from conftest import REPO

    ignored = set((REPO / ".gitignore").read_text().split())
    assert {"/heads/", "/models/", "/inspect/"} <= ignored


def test_path_resolution_knows_every_head_kind():
    from featx import heads, outputs

    assert outputs.KINDS is heads.KINDS and set(heads.KINDS) == set(heads.HEADS)
