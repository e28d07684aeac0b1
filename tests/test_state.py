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
from featx.errors import HeadError
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
    extract_mod = sys.modules["featx.extract"]

    class Counting(extract_mod._Forward):
        def __init__(self, model):
            super().__init__(model)
            dispatch = self.dispatch
            self.dispatch = lambda x: calls.append(len(x)) or dispatch(x)

    monkeypatch.setattr(extract_mod, "_Forward", Counting)
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
