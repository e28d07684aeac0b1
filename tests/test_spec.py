"""The extraction spec: what is remembered in resolved.json, and the check that a
rebuilt model is the one an extraction recorded."""

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

import featx
import featx.spec as S
from featx import api
from featx.cache import Cache
from featx.errors import FeatxError, HeadError, WeightsMismatch

from conftest import make_dataset, make_image


def test_concurrent_resolvers_keep_each_others_entries(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "c")
    cache.ensure()
    read = S._resolved

    def slow_read(c):  # widens the window between reading resolved.json and replacing it
        found = read(c)
        time.sleep(0.2)
        return found

    monkeypatch.setattr(S, "_resolved", slow_read)
    threads = [threading.Thread(target=S._remember, args=(cache, "blocks", f"bb{i}", [[f"b{i}", "x"]]))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = json.loads((tmp_path / "c" / "resolved.json").read_text())["blocks"]
    assert sorted(entries) == ["bb0", "bb1", "bb2"]


# ---------------------------------------------------------------- the rebuilt model is the recorded one

def _manifest_without_fingerprint(head_dir):
    path = head_dir / "manifest.json"
    man = json.loads(path.read_text())
    for rec in [man, *man.get("extractions", [])]:
        rec.pop("loaded_weights", None)
    path.write_text(json.dumps(man))


def test_predict_refuses_a_backbone_rebuilt_with_other_weights(tmp_path, monkeypatch):
    import keras

    cache = tmp_path / "cache"
    data = make_dataset(tmp_path / "data", per_class=3)
    featx.extract(data, "vgg16", weights="none", image_size=32, cache_dir=cache, progress=False)
    ext = featx.load_features(cache_dir=cache).extraction
    head = api.fit_head("logreg", cache_dir=cache, out=tmp_path / "h", C=1.0)
    new = [make_image(tmp_path / "new" / f"{i}.png", seed=50 + i) for i in range(2)]

    # A Keras upgrade whose initialisers draw other numbers for the same seed
    seed = keras.utils.set_random_seed
    monkeypatch.setattr(keras.utils, "set_random_seed", lambda s: seed(s + 1))
    then = dict(ext.spec.versions)
    monkeypatch.setattr(S, "versions", lambda: tuple(sorted({**then, "keras": "9.9.9"}.items())))
    rows = len(ext.index())
    with pytest.raises(HeadError) as info:
        api.predict(new[1:], head=head.directory, cache_dir=cache, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "does not have the weights extraction" in msg
    assert f"Keras {then['keras']} then, 9.9.9 now" in msg
    assert len(featx.load_features(cache_dir=cache).extraction.index()) == rows  # nothing cached under the old key
    with pytest.raises(WeightsMismatch, match="does not have the weights"):  # extracting more refuses too
        featx.extract(new[1:], "vgg16", weights="none", image_size=32, cache_dir=cache, progress=False)
    # what was checked: the hash the extraction recorded, which its head's manifest carries
    loaded = ext.meta["loaded_weights"]
    assert loaded.startswith("sha256:") and ext.spec.loaded == loaded
    man = json.loads((head.directory / "manifest.json").read_text())
    assert [r["loaded_weights"] for r in man["extractions"]] == [loaded]

    # A head from before featx recorded the hash is not checked
    _manifest_without_fingerprint(head.directory)
    meta_path = ext.root / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["loaded_weights"]
    meta_path.write_text(json.dumps(meta))
    assert api.predict(new[1:], head=head.directory, cache_dir=cache, progress=False).paths == [str(new[1])]


def test_a_rebuild_takes_preprocessing_and_resizing_from_the_spec(tmp_path):
    from featx import backbones as B

    spec, _ = S.resolve_spec(Cache(tmp_path / "c"), "vgg16", "none", 32, "avg", 0, "float32")
    assert spec.preprocessing == "caffe"
    other = dataclasses.replace(spec, preprocessing="tf")  # the registry's mode changed since, say
    model = B.build_feature_model(other)
    kernel, bias = model.get_layer("featx_preprocess").get_weights()
    np.testing.assert_allclose(kernel.reshape(3, 3), B.preprocess_affine("tf")[0])
    with pytest.raises(FeatxError, match="resized its images by 'crop-bicubic'"):
        B.build_feature_model(dataclasses.replace(spec, resize="crop-bicubic"))


def _spec(**changes) -> S.ExtractionSpec:
    base = S.ExtractionSpec(backbone="vgg16", weights="random:seed=0:tensorflow", input_size=32, preprocessing="caffe",
                            pooling="avg", tap="output", cut_blocks=0, precision="float32")
    return dataclasses.replace(base, **changes)


def test_one_pass_groups_follow_the_specs_own_key_fields():
    """Every key field but a tap's own (tap, cut_blocks, store) splits the passes; the old hand list missed
    resize and format_version."""
    other = {"backbone": "vgg19", "weights": "sha256:ab", "input_size": 48, "preprocessing": "tf", "pooling": "max",
             "tap": "block4_pool", "cut_blocks": 1, "precision": "mixed", "numerics": "jax", "resize": "crop",
             "store": "float16", "tta": "flip", "format_version": 1}
    assert set(other) == set(S.ExtractionSpec.key_fields())
    for name, value in other.items():
        together = S.one_pass_groups([_spec(), _spec(**{name: value})]) == [[0, 1]]
        assert together == (name in ("tap", "cut_blocks", "store")), name
    assert S.ExtractionSpec.pass_fields() == tuple(n for n in S.ExtractionSpec.key_fields()
                                                   if n not in ("tap", "cut_blocks", "store"))
    assert S.one_pass_groups([_spec(), _spec(pooling="max"), _spec(cut_blocks=2)]) == [[0, 2], [1]]


def test_ray_auto_precision_is_decided_once_by_the_workers_devices(tmp_path):
    """The Ray engine gets specs resolved with the workers' precision; nothing decides "auto" again."""
    from featx.extraction import ExtractOptions
    from featx.extraction.plan import Settings

    tiny = dict(backbone="vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c")
    gpu = Settings.resolve(Cache(tmp_path / "c"), ExtractOptions(engine="ray", num_gpus_per_worker=1, **tiny))
    cpu = Settings.resolve(Cache(tmp_path / "c"), ExtractOptions(engine="ray", **tiny))
    assert (gpu.spec.precision, gpu.spec.numerics) == ("mixed", featx.runtime.backend_name())
    assert (cpu.spec.precision, cpu.spec.numerics) == ("float32", "")
    assert ExtractOptions(precision="float32", engine="ray", num_gpus_per_worker=1).compute_precision() == "float32"
