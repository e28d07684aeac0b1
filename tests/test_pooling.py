"""Pooling (avg,max and GeM) and flip TTA: what the feature model computes, and their cache keys."""

import json

import numpy as np
import pytest

import featx
from featx import backbones as B
from featx.cache import Cache
from featx.errors import FeatxValueError
from featx.extraction import spec_for
from featx.spec import ExtractionSpec, resolve_spec

from conftest import make_dataset


@pytest.fixture(scope="module")
def vgg():
    """VGG16 at 32 px, its maps at taps 0 and 1 (1x1 and 2x2), a batch of pixels and its preprocessed twin."""
    import keras

    w = B.resolve_weights(None)
    full = B.build_backbone("vgg16", w, 32)
    maps = keras.Model(full.input, [full.get_layer("block5_pool").output, full.get_layer("block4_pool").output])
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    x = B.preprocess(pixels, "caffe")
    return w, maps, pixels, x


def _maps(vgg, x):
    return [np.asarray(m) for m in vgg[1].predict_on_batch(x)]


def test_avg_max_pooling_is_the_average_then_the_maximum_of_every_tap(vgg):
    w, _, _, x = vgg
    model = B.feature_model("vgg16", w, 32, "avg,max", [0, 1], include_preprocessing=False)
    ref = np.concatenate([np.concatenate([m.mean(axis=(1, 2)), m.max(axis=(1, 2))], axis=1) for m in _maps(vgg, x)],
                         axis=1)
    assert model._featx_widths == [1024, 1024]
    np.testing.assert_allclose(model.predict_on_batch(x), ref, rtol=1e-5, atol=1e-6)


def test_gem_pooling_is_the_generalised_mean_of_the_clamped_activations(vgg):
    w, _, _, x = vgg
    model = B.feature_model("vgg16", w, 32, "gem", [0, 1], include_preprocessing=False)
    maps = _maps(vgg, x)
    ref = np.concatenate([np.mean(np.maximum(m, B.GEM_EPS) ** 3, axis=(1, 2)) ** (1 / 3) for m in maps], axis=1)
    got = model.predict_on_batch(x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    avg = np.concatenate([m.mean(axis=(1, 2)) for m in maps], axis=1)
    top = np.concatenate([m.max(axis=(1, 2)) for m in maps], axis=1)
    assert np.all(got >= avg - 1e-5) and np.all(got <= top + 1e-5) and not np.allclose(got, avg)


def test_flip_tta_averages_the_image_and_its_mirror_in_one_pass(vgg):
    import keras

    w, _, pixels, x = vgg
    flip = B.feature_model("vgg16", w, 32, "avg", [0, 1], tta="flip")
    a, b = [np.concatenate([m.mean(axis=(1, 2)) for m in _maps(vgg, v)], axis=1) for v in (x, x[:, :, ::-1])]
    assert not np.allclose(a, b, atol=1e-4)  # the mirror really sees something else
    np.testing.assert_allclose(flip.predict_on_batch(pixels), (a + b) / 2, rtol=1e-5, atol=1e-5)
    assert flip._featx_widths == [512, 512] and flip._featx_tap == ["output", "block4_pool"]
    # one backbone, called once on the doubled batch
    inner = [layer for layer in flip.layers if isinstance(layer, keras.Model)]
    assert len(inner) == 1 and inner[0].get_layer("featx_tta_batch") is not None


def test_new_poolings_and_tta_save_and_load_in_safe_mode(vgg, tmp_path):
    import keras

    pixels = vgg[2]
    model = B.feature_model("mobilenetv3small", vgg[0], 32, "gem", [0, 1], tta="flip")
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(again.predict_on_batch(pixels), model.predict_on_batch(pixels))


def test_bad_pooling_or_tta_is_a_value_error(vgg):
    w = vgg[0]
    with pytest.raises(FeatxValueError, match="Received: pooling='mean'"):
        B.feature_model("vgg16", w, 32, "mean", 0)
    with pytest.raises(FeatxValueError, match="Received: tta='rot90'"):
        B.feature_model("vgg16", w, 32, "avg", 0, tta="rot90")
    with pytest.raises(FeatxValueError, match="tta must be one of"):
        resolve_spec(Cache(), "vgg16", "none", 32, tta="rot90")


def test_defaults_keep_their_keys_and_options_get_their_own():
    cache = Cache()
    default, _ = resolve_spec(cache, "vgg16", "none", 32)
    settings = default.settings()
    assert "tta" not in settings and "store" not in settings  # the key of an older featx
    assert default.key == __import__("hashlib").sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    keys = {default.key}
    for pooling, tta in [("avg,max", "none"), ("gem", "none"), ("avg", "flip"), ("gem", "flip")]:
        spec, _ = resolve_spec(cache, "vgg16", "none", 32, pooling=pooling, tta=tta)
        assert spec.key not in keys and "," not in spec.dirname
        keys.add(spec.key)
        assert ExtractionSpec.from_record(spec.record()) == spec
    flip, _ = resolve_spec(cache, "vgg16", "none", 32, tta="flip")
    assert flip.settings()["tta"] == "flip" and flip.dirname.endswith(f"-flip-{flip.key}")


def test_extract_with_options_caches_the_features_the_model_computes(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2, size=(32, 32))
    res = featx.extract(data, "vgg16", weights="none", image_size=32, taps=[0, 1], pooling="avg,max", tta="flip",
                        progress=False)
    assert res.computed == 4 and res.spec.tta == "flip" and res.spec.pooling == "avg,max"
    plain = [spec_for("vgg16", weights="none", image_size=32, cut_blocks=k).dirname for k in (0, 1)]
    assert {e.name for e in res.extractions}.isdisjoint(plain)
    again = featx.extract(data, "vgg16", weights="none", image_size=32, taps=[0, 1], pooling="avg,max", tta="flip",
                          progress=False)
    assert again.computed == 0  # its own key, found again
    f = featx.load_features(data, extraction=res.extractions[1].name)
    model = B.build_feature_model(res.specs)
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in f.paths])
    np.testing.assert_allclose(f.X, np.asarray(model.predict_on_batch(pixels))[:, 1024:], rtol=1e-4, atol=1e-5)
