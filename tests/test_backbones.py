import os
import re
import subprocess
import sys

import numpy as np
import pytest

from featx import backbones as B
from featx.errors import FeatxError, UnknownBackbone, WeightsError
from featx.runtime import fast_cpu_kernels

# One member of each family, built for real with random weights at a small
# size: the registry's numbers must be the model's numbers.
ONE_PER_FAMILY = {}
for _b in B.list_backbones():
    ONE_PER_FAMILY.setdefault(_b.family, _b.name)
# The smallest member stands in for big families in CI.
ONE_PER_FAMILY[B.get_backbone("convnexttiny").family] = "convnexttiny"
# Families whose full build costs seconds of CPU each: the slow run checks them.
BIG = {"convnexttiny", "densenet121", "efficientnetb0", "efficientnetv2b0", "inceptionresnetv2", "inceptionv3",
       "nasnetmobile"}


def _families(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in sorted(names)]


def test_registry_covers_the_issue_list():
    names = {b.name for b in B.list_backbones()}
    expected = {
        "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2", "inceptionv3",
        "inceptionresnetv2", "vgg16", "vgg19", "xception", "densenet121", "densenet169", "densenet201",
        "mobilenet", "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "nasnetmobile", "nasnetlarge",
        *{f"efficientnetb{i}" for i in range(8)}, *{f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")},
        *{f"convnext{v}" for v in ("tiny", "small", "base", "large", "xlarge")},
    }
    assert expected <= names
    for b in B.list_backbones():
        assert b.preprocessing in B.PREPROCESSING_MODES
        assert b.input_size >= b.min_input_size
        assert b.feature_width > 0 and b.params > 0


def test_lookup_is_forgiving_and_unknown_names_suggest():
    assert B.get_backbone("ResNet-50").name == "resnet50"
    assert B.get_backbone("efficientnet_b0").name == "efficientnetb0"
    with pytest.raises(UnknownBackbone, match=r"Did you mean .*resnet50") as exc:
        B.get_backbone("resnet5")
    assert "Received: backbone='resnet5'" in str(exc.value)
    assert [b.name for b in B.list_backbones("vgg*")] == ["vgg16", "vgg19"]
    assert B.list_backbones("nothing*") == []


@pytest.mark.parametrize(
    "mode,module", [("caffe", "resnet"), ("tf", "mobilenet_v2"), ("torch", "densenet"), ("none", "efficientnet")]
)
def test_preprocess_matches_keras(mode, module):
    import keras

    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    ours = B.preprocess(x.astype(np.uint8), mode)
    theirs = np.asarray(getattr(keras.applications, module).preprocess_input(x.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    with pytest.raises(FeatxError, match="Received: mode='bgr'"):
        B.preprocess(x, "bgr")


@pytest.mark.parametrize("name", _families(ONE_PER_FAMILY.values()))
def test_record_matches_real_model(name):
    import keras

    bb = B.get_backbone(name)
    w = B.resolve_weights(None)
    size = max(bb.min_input_size, 64) if not bb.family.fixed_imagenet_size else 64
    model = B.build_backbone(bb, w, size, pooling="avg")
    assert model.output.shape[-1] == bb.feature_width
    assert model.count_params() == bb.params
    base = B.build_backbone(bb, w, size)
    named = B.blocks(base, bb)
    assert len(named) >= 1
    assert len({b.name for b in named}) == len(named)
    assert [b.end for b in named] == sorted(b.end for b in named)
    assert named[-1].end >= len(base.layers) - 3  # the last block ends at (or next to) the output
    pattern = re.compile(bb.family.block_pattern)
    for b in named:
        assert base.layers[b.end].name == b.layer
        # A block is named after the nearest layer at or before its end that the family pattern recognises.
        nearest = next(m for m in map(pattern.search, (l.name for l in reversed(base.layers[: b.end + 1]))) if m)
        assert nearest.expand(bb.family.block_template) == b.name, (b, nearest.group(0))
        if bb.family.block_end_pattern:
            assert re.search(bb.family.block_end_pattern, b.layer), b
    keras.backend.clear_session()


def test_cut_blocks_taps_earlier_block():
    w = B.resolve_weights(None)
    full = B.feature_model("resnet50", w, 32, "avg", 0)
    cut1 = B.feature_model("resnet50", w, 32, "avg", 1)
    cut5 = B.feature_model("resnet50", w, 32, "max", 5, include_preprocessing=False)
    assert full.output.shape[-1] == 2048
    assert cut1.output.shape[-1] == 2048  # conv5_block2_out
    assert cut5.output.shape[-1] == 1024  # conv4_block5_out
    names = [b.layer for b in B.blocks(B.build_backbone("resnet50", w, 32), "resnet50")]
    assert names[-1] == "conv5_block3_out" and names[-2] == "conv5_block2_out"
    with pytest.raises(FeatxError, match="at most 15 can be cut"):
        B.feature_model("resnet50", w, 32, "avg", 16)


def test_vgg_blocks_and_cut_features_equal_keras_intermediate():
    import keras

    w = B.resolve_weights(None)
    base = B.build_backbone("vgg16", w, 32)
    assert [b.name for b in B.blocks(base, "vgg16")] == ["block1", "block2", "block3", "block4", "block5"]
    cut = B.feature_model("vgg16", w, 32, "avg", 1, include_preprocessing=False)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    ref = keras.Model(base.input, base.get_layer("block4_pool").output).predict(x, verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(cut.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", _families(["resnet50", "mobilenetv2", "densenet121", "efficientnetb0"]))
def test_in_model_preprocessing_equals_keras_preprocess_input(name):
    """The frozen 1x1 convolution in front of the backbone is preprocess_input."""
    import keras

    bb = B.get_backbone(name)
    w = B.resolve_weights(None)
    with_pre = B.feature_model(bb, w, 32, "avg")
    without = B.feature_model(bb, w, 32, "avg", include_preprocessing=False)
    pixels = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    ref = getattr(keras.applications, bb.module).preprocess_input(pixels.astype("float32"))
    a = with_pre.predict_on_batch(pixels)
    b = without.predict_on_batch(np.asarray(ref))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("mode", sorted(B.PREPROCESSING_MODES))
def test_preprocessing_is_the_affine_map_of_the_frozen_convolution(mode):
    pixels = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    kernel, bias = B.preprocess_affine(mode)
    np.testing.assert_allclose(pixels.astype("float32") @ kernel + bias, B.preprocess(pixels, mode), rtol=1e-6, atol=1e-4)


def test_input_size_and_pooling_are_checked():
    w = B.resolve_weights(None)
    with pytest.raises(FeatxError, match="at least 75 px"):
        B.check_input_size(B.get_backbone("inceptionv3"), 64)
    with pytest.raises(FeatxError, match="only load at 224 px"):
        B.check_input_size(B.get_backbone("nasnetmobile"), 128, B.Weights("imagenet", fingerprint="imagenet"))
    with pytest.raises(FeatxError, match="pooling must be"):
        B.feature_model("vgg16", w, 32, "mean", 0)


def test_weights_file_errors(tmp_path):
    with pytest.raises(WeightsError, match="Weights file not found"):
        B.resolve_weights(tmp_path / "missing.weights.h5")
    # A real weights file of another architecture is a one-line error too.
    m = B.build_backbone("vgg16", B.resolve_weights(None), 32)
    path = tmp_path / "vgg16.weights.h5"
    m.save_weights(path)
    w = B.resolve_weights(path)
    assert w.fingerprint.startswith("sha256:") and w.kind == "file"
    loaded = B.build_backbone("vgg16", w, 32)
    np.testing.assert_array_equal(loaded.get_weights()[0], m.get_weights()[0])
    with pytest.raises(WeightsError, match="does not fit mobilenet"):
        B.build_backbone("mobilenet", w, 32)


def test_random_weights_are_reproducible_and_keyed_by_seed():
    a = B.build_backbone("mobilenet", B.resolve_weights(None, seed=3), 32)
    b = B.build_backbone("mobilenet", B.resolve_weights("none", seed=3), 32)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    assert B.resolve_weights(None, seed=3).fingerprint != B.resolve_weights(None, seed=4).fingerprint


def test_offline_imagenet_message_names_the_file(tmp_path, monkeypatch):
    """The real download path, made to fail: whatever the network or ~/.keras hold,
    the message says which file Keras looks for and where."""
    import urllib.error

    import keras  # noqa: F401  (Keras reads its home folder at import)
    from keras.src.backend import config
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))
    fetched = []

    def offline(url, *args, **kwargs):
        fetched.append(url)
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsError) as info:
        B.build_backbone("resnet50", B.resolve_weights("imagenet"), 32)
    msg = str(info.value)
    fname = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert len(fetched) == 1 and fetched[0].endswith(fname)
    assert "\n" not in msg
    assert f"Keras looks for {tmp_path / 'models' / fname}: download {fetched[0]} and put it there" in msg
    assert "--weights PATH" in msg


@pytest.mark.slow
def test_tensorflow_gets_onednn_cpu_kernels():
    # TensorFlow leaves them off by itself on CPUs without AVX-512 VNNI/BF16
    # or AMX, where they are about 20% faster for convolutions.
    code = (
        "from featx.runtime import import_keras; import_keras()\n"
        "from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    done = subprocess.run([sys.executable, "-c", code], env={**env, "KERAS_BACKEND": "tensorflow"},
                          capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "True"


def test_a_users_onednn_choice_is_kept(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    fast_cpu_kernels()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_a_weights_file_of_another_backbone_is_one_complete_line():
    """VGG16 weights loaded into VGG19: Keras' first line ends 'Example error message for object <Conv2D ...>:'."""
    from featx.backbones import Weights, _weights_error, get_backbone

    keras_says = ValueError(
        "A total of 5 objects could not be loaded. Example error message for object "
        "<Conv2D name=block3_conv4, built=True>:\n\nThe shape of the target variable and the shape of the target "
        "value in `variable.assign(value)` must match. variable.shape=(3, 3, 256, 256), Received: "
        "value.shape=(3, 3, 256, 512). Target variable: <Variable path=block3_conv4/kernel, shape=(3, 3, 256, 256), "
        "dtype=float32, value=[[[[-2.5e-03 -1.7e-02\n   [ 0.1 0.2]]]]>\n\nList of objects that could not be loaded:\n"
        "[<Conv2D name=block3_conv4, built=True>, ...]"
    )
    msg = str(_weights_error(get_backbone("vgg19"), Weights("file", path="/w/vgg16.weights.h5"), keras_says))
    assert "\n" not in msg and not msg.endswith(":") and "Example error message" not in msg, msg
    assert ("does not fit vgg19 (include_top=False): A total of 5 objects could not be loaded, the first in layer "
            "block3_conv4 (the model wants shape (3, 3, 256, 256), the file has (3, 3, 256, 512)).") in msg
    assert msg.endswith("another backbone, or of another input size with a classifier on top?")
