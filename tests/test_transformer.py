"""featx.FeatureExtractor: the scikit-learn transformer backed by the featx cache."""

import importlib
import os
import pickle
import shutil

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import featx
from featx.errors import BadImage, FeatxValueError
from featx.transformer import FeatureExtractor
from featx_test_helpers import HYMENOPTERA, make_dataset, make_image, needs_hymenoptera

featx_extract = importlib.import_module("featx.extraction.engines.local")  # where the model is called
TINY = dict(backbone="vgg16", weights="none", image_size=32, progress=False)


@pytest.fixture
def passes(monkeypatch):
    """Counts the model builds and the rows of each forward pass of every extraction."""
    seen = {"builds": 0, "rows": []}

    class Counting(featx_extract.Forward):
        def __init__(self, model):
            super().__init__(model)
            seen["builds"] += 1
            inner = self.dispatch

            def dispatch(x):
                seen["rows"].append(len(x))
                return inner(x)

            self.dispatch = dispatch

    monkeypatch.setattr(featx_extract, "Forward", Counting)
    return seen


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """Eight PNG files and the same pixels as an array, extracted once into a cache of the module's own."""
    root = tmp_path_factory.mktemp("fx")
    paths = sorted(str(p) for p in make_dataset(root / "data", per_class=4).rglob("*.png"))
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    fx = FeatureExtractor(**TINY, cache_dir=root / "cache")
    X = fx.transform(paths)
    A = fx.transform(pixels)
    return {"root": root, "paths": paths, "pixels": pixels, "X": X, "A": A, "cache": root / "cache"}


def extractor(warm, **kw):
    return FeatureExtractor(**{**TINY, "cache_dir": warm["cache"], **kw})


# --------------------------------------------------------------------------- inputs and outputs


def test_paths_in_any_container_give_the_rows_featx_extract_caches(warm, passes):
    import pandas as pd

    paths, X = warm["paths"], warm["X"]
    assert X.shape == (8, 512) and X.dtype == np.float32 and np.isfinite(X).all()
    fx = extractor(warm)
    for given in (np.array(paths), pd.Series(paths), pd.DataFrame({"path": paths}), [os.path.relpath(p) for p in paths]):
        np.testing.assert_array_equal(fx.transform(given), X)
    # The rows featx.extract caches for these files.
    res = featx.extract(paths, **TINY, cache_dir=warm["cache"], record=False)
    assert res.computed == 0
    np.testing.assert_array_equal(fx.transform(res.paths), res.extraction.read(res.sha256))
    assert passes["builds"] == 0  # all of it came from the cache


def test_arrays_and_pil_images_are_keyed_by_their_pixels(warm, passes):
    from PIL import Image

    fx = extractor(warm)
    pixels, A = warm["pixels"], warm["A"]
    assert A.shape == (8, 512)
    np.testing.assert_allclose(A, warm["X"], atol=1e-5)  # lossless PNGs: the same pixels as the files
    pil = [Image.fromarray(p) for p in pixels]
    np.testing.assert_array_equal(fx.transform(pil), A)
    np.testing.assert_array_equal(fx.transform(list(pixels)), A)
    assert passes["builds"] == 0
    gray = pixels[:2, ..., 0]
    G = fx.transform(gray)
    assert G.shape == (2, 512)
    np.testing.assert_array_equal(fx.transform([Image.fromarray(g) for g in gray]), G)
    assert passes["builds"] == 1 and sum(passes["rows"]) >= 2


def test_the_estimator_contract_on_images(warm, passes):
    """sklearn's own checks of these properties feed numeric tables; here they run on images."""
    fx = extractor(warm)
    paths, X = warm["paths"], warm["X"]
    before = dict(fx.__dict__)
    perm = np.random.default_rng(0).permutation(len(paths))
    np.testing.assert_array_equal(fx.transform([paths[i] for i in perm]), X[perm])  # sample order invariance
    np.testing.assert_array_equal(np.vstack([fx.transform([p]) for p in paths]), X)  # subset invariance
    np.testing.assert_array_equal(fx.fit(paths).transform(paths), fx.fit_transform(paths))
    assert fx.__dict__ == before  # fit and transform change nothing
    mm = warm["root"] / "pixels.npy"
    np.save(mm, warm["pixels"])
    np.testing.assert_array_equal(fx.transform(np.load(mm, mmap_mode="r")), warm["A"])  # read-only input
    assert passes["builds"] == 0


def test_clone_and_pickle_carry_parameters_only(warm):
    fx = extractor(warm, normalise="l2")
    fx.transform(warm["paths"])
    blob = pickle.dumps(fx)
    assert len(blob) < 2000  # no model, no features
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.transform(warm["paths"]), fx.transform(warm["paths"]))
    twin = clone(fx)
    assert twin is not fx and twin.get_params() == fx.get_params()
    np.testing.assert_allclose(np.linalg.norm(twin.transform(warm["paths"][:2]), axis=1), 1.0, rtol=1e-5)


def test_set_output_and_feature_names(warm):
    import pandas as pd

    paths = pd.Series(warm["paths"], index=[f"img{i}" for i in range(8)])
    fx = extractor(warm).set_output(transform="pandas")
    df = fx.transform(paths)
    assert list(df.columns[:2]) == ["vgg16_0", "vgg16_1"] and df.shape == (8, 512)
    assert list(df.index) == list(paths.index)
    np.testing.assert_array_equal(df.to_numpy(), warm["X"])
    assert list(extractor(warm).get_feature_names_out()) == [f"vgg16_{i}" for i in range(512)]
    pl = pytest.importorskip("polars")
    out = extractor(warm).set_output(transform="polars").transform(warm["paths"])
    assert isinstance(out, pl.DataFrame) and out.columns[-1] == "vgg16_511"


def test_taps_are_concatenated_and_named(warm):
    fx = extractor(warm, taps=[0, 1])
    X = fx.transform(warm["paths"][:2])
    names = fx.get_feature_names_out()
    assert X.shape == (2, len(names)) and names[0] == "vgg16_0" and names[512] == "vgg16_cut1_0"
    np.testing.assert_array_equal(X[:, :512], warm["X"][:2])


# --------------------------------------------------------------------------- the cache


@pytest.mark.slow
@needs_hymenoptera
def test_grid_search_computes_features_once(tmp_path, passes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    ants = sorted((HYMENOPTERA / "train" / "ants").iterdir())[:20]
    bees = sorted((HYMENOPTERA / "train" / "bees").iterdir())[:20]
    paths = [str(p) for p in ants + bees]
    y = np.array([0] * 20 + [1] * 20)
    pipe = make_pipeline(FeatureExtractor(**TINY, cache_dir=tmp_path / "cache"), LogisticRegression(max_iter=500))

    def search():
        return GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=3).fit(paths, y)

    first = search()
    assert sum(passes["rows"]) >= 40  # every image once (a last batch is padded to a multiple of 8)
    assert passes["builds"] <= 2  # the first fold's train rows, then its test rows; later folds computed nothing
    passes["rows"].clear()
    passes["builds"] = 0
    second = search()
    assert passes == {"builds": 0, "rows": []}
    assert second.best_params_ == first.best_params_
    np.testing.assert_array_equal(second.predict(paths), first.predict(paths))


def test_a_changed_file_is_computed_again(warm, tmp_path, passes):
    copies = [shutil.copy(p, tmp_path / os.path.basename(p)) for p in warm["paths"][:3]]
    fx = extractor(warm)
    np.testing.assert_array_equal(fx.transform(copies), warm["X"][:3])  # same bytes, other paths: cached
    assert passes["builds"] == 0
    make_image(tmp_path / os.path.basename(copies[1]), size=(40, 32), seed=99)
    st = os.stat(copies[1])
    os.utime(copies[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = fx.transform(copies)
    assert passes["builds"] == 1
    np.testing.assert_array_equal(again[[0, 2]], warm["X"][[0, 2]])
    assert not np.array_equal(again[1], warm["X"][1])


def test_bad_images_raise_or_become_nan_rows(warm, tmp_path, passes):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths = [warm["paths"][0], str(broken), warm["paths"][1], str(tmp_path / "gone.jpg")]
    with pytest.raises(BadImage, match=r"could not read 2 of 4 images \(first: .*broken.png.*on_bad='nan'"):
        extractor(warm).transform(paths)
    X = extractor(warm, on_bad="nan").transform(paths)
    assert X.shape == (4, 512)
    assert np.isnan(X[[1, 3]]).all()
    np.testing.assert_array_equal(X[[0, 2]], warm["X"][:2])
    assert np.isnan(extractor(warm, on_bad="nan").transform([str(broken)])).all()
    assert passes["builds"] == 0


def test_bad_parameters_and_inputs_are_one_line_value_errors(warm):
    with pytest.raises(FeatxValueError, match="StandardScaler"):
        extractor(warm, normalise="standard").fit(warm["paths"])
    with pytest.raises(FeatxValueError, match="on_bad"):
        extractor(warm, on_bad="skip").transform(warm["paths"])
    with pytest.raises(ValueError, match=r"numeric array of shape \(3, 4\)"):
        extractor(warm).transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="0 images"):
        extractor(warm).transform([])


# --------------------------------------------------------------------------- scikit-learn's own checks

_TABLE = "the check feeds a numeric (n, d) table; transform takes images (the image version is in this file)"
_NO_FIT = "fit learns nothing and does not read X (transform validates it and rejects this input)"
EXPECTED_FAILED = {
    **dict.fromkeys([
        "check_fit_score_takes_y", "check_estimators_dtypes", "check_pipeline_consistency", "check_estimators_pickle",
        "check_f_contiguous_array_estimator", "check_transformer_general", "check_transformers_unfitted_stateless",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_dict_unchanged",
        "check_fit_idempotent", "check_fit2d_predict1d", "check_dtype_object", "check_transformer_data_not_an_array",
    ], _TABLE),
    "check_n_features_in": "images have no n_features_in_; the output width is get_feature_names_out's",
    "check_n_features_in_after_fitting": "images have no n_features_in_; the output width is get_feature_names_out's",
    **dict.fromkeys(["check_complex_data", "check_estimators_empty_data_messages", "check_estimators_nan_inf",
                     "check_estimator_sparse_tag", "check_fit1d"], _NO_FIT),
}


@parametrize_with_checks([FeatureExtractor(**TINY)], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
