"""The heads as estimators: learning, the sklearn contract, pickle-free saving."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.errors import HeadError, HeadParamError
from featx.heads import C_GRID, DenseHead, LightGBMHead, LogisticHead, load_head, make_head


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


def test_logreg_uses_the_given_C_and_picks_the_best_C_on_validation():
    from sklearn.linear_model import LogisticRegression

    X, y = blobs(n=200, classes=3)
    # A given C is the model sklearn fits with that C on the standardised features.
    fixed = LogisticHead(C=0.05).fit(X, y)
    Xs = (X - X.mean(axis=0)) / X.std(axis=0)
    ref = LogisticRegression(C=0.05, max_iter=2000, random_state=0).fit(Xs, y)
    np.testing.assert_allclose(fixed.predict_proba(X), ref.predict_proba(Xs), atol=1e-4)
    # Without C, the chosen one scores best on the eval set among the grid.
    Xt, yt, Xv, yv = X[:80], y[:80], X[80:], y[80:]
    auto = LogisticHead().fit(Xt, yt, eval_set=(Xv, yv))
    accs = {c: (LogisticHead(C=c).fit(Xt, yt).predict(Xv) == yv).mean() for c in C_GRID}
    assert accs[auto.C_] == max(accs.values())


@pytest.mark.parametrize("est, bad", [
    (LogisticHead(C=0), "'C' parameter of LogisticHead .* Got 0 instead"),
    (LogisticHead(C=-1.0), "'C' parameter of LogisticHead .* Got -1.0 instead"),
    (LogisticHead(max_iter=0), "'max_iter' parameter of LogisticHead .* Got 0"),
    (LogisticHead(normalise="l3"), "'normalise' parameter of LogisticHead .* Got 'l3'"),
    (LightGBMHead(n_estimators=0), "'n_estimators' parameter of LightGBMHead .* Got 0"),
    (LightGBMHead(num_leaves=1), "'num_leaves' parameter of LightGBMHead .* Got 1"),
    (LightGBMHead(learning_rate=0.0), "'learning_rate' parameter of LightGBMHead .* Got 0.0"),
    (DenseHead(dropout=1.0), "'dropout' parameter of DenseHead .* Got 1.0"),
    (DenseHead(dropout=-0.1), "'dropout' parameter of DenseHead .* Got -0.1"),
    (DenseHead(lr=0), "'lr' parameter of DenseHead .* Got 0"),
    (DenseHead(epochs=0), "'epochs' parameter of DenseHead .* Got 0"),
    (DenseHead(batch_size=0), "'batch_size' parameter of DenseHead .* Got 0"),
    (DenseHead(optimizer="adamw"), "'optimizer' parameter of DenseHead .* Got 'adamw'"),
    (DenseHead(hidden=(64, 0)), "'hidden' parameter of DenseHead .* Got \\(64, 0\\)"),
])
def test_parameters_are_checked_in_fit_with_the_class_and_the_value(est, bad):
    X, y = blobs(n=40, classes=2)
    with pytest.raises(HeadParamError, match=bad) as info:
        est.fit(X, y)
    assert isinstance(info.value, ValueError)


def test_lightgbm_refit_builds_the_early_stopped_number_of_trees(tmp_path):
    """A refit without an eval set used to be capped at 300 trees whatever was asked."""
    X, y = blobs(n=120, d=8, classes=2)
    head = LightGBMHead(n_estimators=420, num_leaves=4, learning_rate=0.01, pca_components=None).fit(X, y)
    assert head.best_iteration_ == 420 and head.booster_.current_iteration() == 420
    assert load_head(head.save(tmp_path / "h")).booster_.current_iteration() == 420


def test_saving_into_a_reused_folder_leaves_nothing_stale(tmp_path):
    X, y = blobs(n=200, d=32, classes=2)
    LightGBMHead(n_estimators=30, pca_components=8).fit(X, y).save(tmp_path / "h")
    LogisticHead(C=1.0, normalise="standard").fit(X, y).save(tmp_path / "h")
    plain = LightGBMHead(n_estimators=30, pca_components=None).fit(X, y)
    plain.save(tmp_path / "h")
    assert not (tmp_path / "h" / "pca.npz").exists() and not (tmp_path / "h" / "norm.npz").exists()
    np.testing.assert_allclose(load_head(tmp_path / "h").predict_proba(X), plain.predict_proba(X), rtol=1e-6)


def test_errors_name_the_class_and_the_problem(tmp_path):
    X, y = blobs(n=60, classes=2)
    head = LogisticHead().fit(X, y)
    with pytest.raises(ValueError, match="X has 5 features, but LogisticHead is expecting 32 features"):
        head.predict(X[:, :5])
    with pytest.raises(HeadError, match="at least 2 classes to learn from; got one class"):
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
@parametrize_with_checks([LogisticHead(), LightGBMHead(n_estimators=20, min_child_samples=1),
                          LogisticHead(C=1.0, normalise="sqrt-l2")])
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


def test_logistic_head_fits_without_future_warnings():
    """scikit-learn 1.9 warned three times per fit (scoring, l1_ratios, legacy attributes) when C is chosen."""
    import warnings

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 8)), np.array(["a", "b", "c"] * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        head = LogisticHead().fit(X, y)
    assert head.C_ in C_GRID


def test_declared_sequences_and_names_lists():
    """params.Items takes a non-empty sequence of accepted items; as_list reads "a,b" or a list."""
    from featx.params import Integral, Interval, Items, as_list, check_params

    widths = {"hidden": [Items(Interval(Integral, 1, None, closed="left"))]}
    check_params(widths, {"hidden": (512, 128)}, "DenseHead")
    check_params(widths, {"hidden": [8]}, "DenseHead")
    for bad in [(), (64, 0), (1.5,), 64, "64"]:
        with pytest.raises(ValueError, match=r"'hidden' parameter of DenseHead must be a non-empty tuple or list, "
                                             r"each item an int in the range \[1, inf\)"):
            check_params(widths, {"hidden": bad}, "DenseHead")
    assert as_list(" a, b,,") == ["a", "b"] and as_list(("a", 2)) == ["a", "2"] and as_list(None) == []


def test_kinds_names_the_registry_without_importing_a_head():
    """The CLI's --head choices come from featx.heads.KINDS, which costs no import."""
    import subprocess
    import sys

    from featx.heads import HEADS, KINDS

    assert KINDS == tuple(HEADS)
    code = "import sys, featx.heads as h; h.KINDS; print(sorted(m for m in ('sklearn', 'keras') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


SAVED = Path(__file__).parent / "data" / "saved_heads"


@pytest.mark.parametrize("kind", ["logreg", "lightgbm", "dense"])
def test_heads_saved_before_the_package_split_load_and_predict_the_same(kind, tmp_path):
    """Folders written by the flat featx/heads.py (tests/data/saved_heads/make_fixture.py) still load,
    predict what they predicted then, and save again to the same files."""
    with np.load(SAVED / "inputs.npz") as z:
        X, expected = z["X"], z[f"proba_{kind}"]
    head = load_head(SAVED / kind)
    np.testing.assert_allclose(head.predict_proba(X), expected, rtol=1e-5, atol=1e-6)
    old = (SAVED / kind / "manifest.json").read_bytes()
    again = head.save(tmp_path / kind, manifest=json.loads(old))
    assert (again / "manifest.json").read_bytes() == old
    assert sorted(f.name for f in again.iterdir()) == sorted(f.name for f in (SAVED / kind).iterdir())
    for f in (SAVED / kind).glob("*.npz"):
        with np.load(f) as a, np.load(again / f.name) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    for name in ("lightgbm.txt", "history.json"):
        if (SAVED / kind / name).exists():
            assert (again / name).read_bytes() == (SAVED / kind / name).read_bytes()


# Every name the flat modules had (and that other modules import) resolves from the packages.
OLD_NAMES = {
    "featx.heads": ["C_GRID", "CHUNKED_SOLVER_VALUES", "WARM_START_ROWS", "PCA_FIT_ROWS", "HEAD_FILES", "MIN_DELTA",
                    "one_blas_thread", "DenseHead", "LogisticHead", "LightGBMHead", "HEADS", "head_class",
                    "make_head", "read_manifest", "load_head", "align_proba", "_class_weights", "_best_epoch"],
    "featx.selection": ["DENSE_GRID", "DENSE_BUDGET_S", "CV_BUDGETS", "DEFAULT_FOLDS", "EARLY_STOP_FRACTION",
                        "EARLY_STOP_MAX_ROWS", "EARLY_STOPPING_KINDS", "SCALE_ROWS", "SELECT_ROWS", "AUTO_NORMS",
                        "Protocol", "Trial", "stratified_subsample", "cv_protocol", "val_protocol",
                        "early_stopping_split", "fit_for_scoring", "refit_counts", "evaluate", "grid_for", "select",
                        "search", "feature_set_names", "leaderboard_table", "heads_split_record"],
    "featx.arrays": ["LAYOUT", "ANONYMOUS", "KERAS_DATASETS", "ArrayError", "ArrayItem", "row_key", "resize_pixels",
                     "is_array_data", "as_dataset", "view_source", "is_streamed", "row_reader", "spooled"],
}


@pytest.mark.parametrize("package", sorted(OLD_NAMES))
def test_the_packages_export_what_the_flat_modules_did(package):
    import importlib

    mod = importlib.import_module(package)
    assert [n for n in [*OLD_NAMES[package], *mod.__all__] if not hasattr(mod, n)] == []
