"""The heads as estimators: learning, the sklearn contract, pickle-free saving."""

import json
import zipfile

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.errors import HeadError
from featx.heads import DenseHead, LightGBMHead, LogisticHead, load_head, make_head


def blobs(n=300, d=32, classes=3, seed=0):
    X, y = make_blobs(n_samples=n, n_features=d, centers=classes, cluster_std=4.0, random_state=seed)
    names = np.array(["ant", "bee", "wasp", "fly"])[y]
    return X.astype("float32"), names


FAST = {"dense": dict(epochs=15, hidden=(32,), seed=0), "logreg": {}, "lightgbm": dict(n_estimators=100)}


@pytest.mark.parametrize("kind", ["dense", "logreg", "lightgbm"])
def test_each_head_learns_separable_features(kind):
    X, y = blobs()
    head = make_head(kind, **FAST[kind]).fit(X[:200], y[:200], eval_set=(X[200:250], y[200:250]))
    acc = (head.predict(X[250:]) == y[250:]).mean()
    assert acc > 0.9  # chance is 1/3
    proba = head.predict_proba(X[250:])
    assert proba.shape == (50, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(head.classes_) == ["ant", "bee", "wasp"]


@pytest.mark.parametrize("kind", ["dense", "logreg", "lightgbm"])
def test_save_load_round_trip_is_identical_and_pickle_free(kind, tmp_path):
    X, y = blobs(n=200, classes=2)
    head = make_head(kind, **FAST[kind]).fit(X[:150], y[:150], eval_set=(X[150:], y[150:]))
    d = head.save(tmp_path / "h", manifest={"settings": {"backbone": "vgg16"}})
    loaded = load_head(d)
    np.testing.assert_allclose(loaded.predict_proba(X), head.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert list(loaded.predict(X)) == list(head.predict(X))
    man = json.loads((d / "manifest.json").read_text())
    assert man["kind"] == kind and man["classes"] == ["ant", "bee"] and man["feature_width"] == 32
    for f in d.iterdir():
        raw = f.read_bytes()
        assert not raw.startswith(b"\x80"), f"{f.name} looks like a pickle"
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                assert all(z[k].dtype != object for k in z.files)
        if f.suffix == ".keras":
            with zipfile.ZipFile(f) as zf:
                assert not any(n.endswith((".pkl", ".pickle")) for n in zf.namelist())


def test_dense_head_structure_and_history():
    X, y = blobs(n=120, classes=2)
    head = DenseHead(hidden=(16, 8), epochs=5, seed=1).fit(X, y)
    names = [layer.name for layer in head.model_.layers]
    assert names == ["features", "head_norm", "head_dense_0", "head_bn_0", "head_relu_0", "head_dropout_0",
                     "head_dense_1", "head_bn_1", "head_relu_1", "head_dropout_1", "head_output"]
    assert len(head.history_["loss"]) == 5 and 1 <= head.best_epoch_ <= 5
    again = DenseHead(hidden=(16, 8), epochs=5, seed=1).fit(X, y)
    np.testing.assert_allclose(again.predict_proba(X), head.predict_proba(X), rtol=1e-4, atol=1e-5)


def test_logreg_chooses_C_on_validation_or_uses_given():
    X, y = blobs(n=200, classes=2)
    auto = LogisticHead().fit(X[:150], y[:150], eval_set=(X[150:], y[150:]))
    assert auto.C_ in (0.001, 0.01, 0.1, 1.0, 10.0)
    fixed = LogisticHead(C=0.5).fit(X, y)
    assert fixed.C_ == 0.5
    cv = LogisticHead().fit(X, y)  # no eval set: cross-validated
    assert cv.C_ in (0.001, 0.01, 0.1, 1.0, 10.0)


def test_errors_name_the_class_and_the_problem(tmp_path):
    X, y = blobs(n=60, classes=2)
    head = LogisticHead().fit(X, y)
    with pytest.raises(ValueError, match="X has 5 features, but LogisticHead is expecting 32 features"):
        head.predict(X[:, :5])
    with pytest.raises(HeadError, match="at least 2 classes"):
        LogisticHead().fit(X, np.array(["ant"] * len(X)))
    with pytest.raises(HeadError, match="Unknown head 'dens'. Did you mean 'dense'"):
        make_head("dens")
    with pytest.raises(HeadError, match="has no parameter hidden"):
        make_head("logreg", hidden=(3,))
    with pytest.raises(HeadError, match="not a featx head"):
        load_head(tmp_path)
    with pytest.raises(HeadError, match="do not occur in the training data"):
        LogisticHead().fit(X, y, eval_set=(X[:3], np.array(["zebra"] * 3)))


def test_class_weight_balanced_shifts_toward_the_minority():
    X, y = make_blobs(n_samples=[270, 30], n_features=4, cluster_std=6.0, random_state=3)
    plain = LogisticHead(C=1.0).fit(X, y)
    balanced = LogisticHead(C=1.0, class_weight="balanced").fit(X, y)
    assert (balanced.predict(X) == 1).sum() > (plain.predict(X) == 1).sum()


# The dense head is left out: each of sklearn's ~40 checks would build and
# train a Keras model, minutes of CI for checks the shared base class already
# passes through LogisticHead and LightGBMHead.
@parametrize_with_checks(
    [LogisticHead(), LightGBMHead(n_estimators=20, min_child_samples=1)],
    expected_failed_checks=lambda est: {
        "check_classifiers_one_label": "a one-class fit is a HeadError with a clear message, by design",
        "check_fit2d_1sample": "one sample is one class: HeadError by design",
    },
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def test_lightgbm_projection_is_saved_and_reused(tmp_path):
    X, y = blobs(n=200, d=32, classes=2)
    head = LightGBMHead(n_estimators=50, pca_components=8).fit(X[:150], y[:150], eval_set=(X[150:], y[150:]))
    assert head.pca_components_.shape == (8, 32)
    loaded = load_head(head.save(tmp_path / "h"))
    assert (tmp_path / "h" / "pca.npz").exists()
    np.testing.assert_allclose(loaded.predict_proba(X), head.predict_proba(X), rtol=1e-6)
    assert (head.predict(X[150:]) == y[150:]).mean() > 0.9
