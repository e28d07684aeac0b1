"""Heads on rows left on disk: lazy features, streamed dense batches, chunked solvers, subsampled selection."""

import hashlib

import numpy as np
import pytest

import featx.features as F
from featx import api, heads as H, selection as S
from featx.cache import Cache
from featx.features import CachedRows, load_features
from featx.spec import ExtractionSpec


def write_cache(root, n=400, d=16, k=3, shards=5, seed=0, splits=None):
    """Class-structured rows written through the cache API in several shards, in shuffled order."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d)) * 3
    y = rng.integers(0, k, n)
    X = (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    paths = [f"/synthetic/{i}.jpg" for i in range(n)]
    shas = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    names = ["ant", "bee", "wasp"][:k]
    spec = ExtractionSpec(backbone="resnet50", weights="synthetic", input_size=224, preprocessing="caffe",
                          pooling="avg", tap="output", cut_blocks=0, precision="float32")
    cache = Cache(root)
    ext = cache.extraction(spec, d, create=True)
    for part in np.array_split(rng.permutation(n), shards):
        ext.write_shard(X[part], [shas[i] for i in part], [paths[i] for i in part], [names[y[i]] for i in part])
    cache.write_view(ext, "/synthetic", "splits", names, paths, shas, y, list(splits or ["train"] * n))
    return X, np.array(names)[y]


@pytest.fixture
def cached(tmp_path):
    X, y = write_cache(tmp_path / "c")
    return tmp_path / "c", X, y


@pytest.fixture
def reads(monkeypatch):
    """Sizes of every read of rows on disk."""
    sizes = []
    real = CachedRows.read

    def read(self, idx=None):
        out = real(self, idx)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(CachedRows, "read", read)
    return sizes


def test_lazy_features_read_nothing_until_asked_and_match_the_eager_ones(cached, reads):
    root, X, y = cached
    lazy = load_features(cache_dir=root, lazy=True)
    eager = load_features(cache_dir=root)
    assert lazy.lazy and not eager.lazy and lazy.X.shape == eager.X.shape == (400, 16) and reads == []
    part = lazy.subset(np.arange(10, 50))
    assert isinstance(part.X, CachedRows) and reads == []
    np.testing.assert_array_equal(np.asarray(part.X), X[10:50])
    np.testing.assert_array_equal(lazy.X[[7, 3]], X[[7, 3]])
    np.testing.assert_array_equal(np.asarray(lazy.only("train").X), eager.X)
    seen = np.concatenate([pos for pos, _ in lazy.X.chunks(64)])
    assert sorted(seen.tolist()) == list(range(400)) and max(reads[-7:]) <= 64


def test_dense_head_streams_bounded_blocks_from_the_cache(cached, reads, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_ROWS", 64)
    root, X, y = cached
    f = load_features(cache_dir=root, lazy=True)
    head = H.DenseHead(hidden=(8,), epochs=3, batch_size=16, lr=1e-2, normalise="standard").fit(f.X, y)
    assert reads and max(reads) <= 64  # a block at a time, never the matrix
    assert len(head.history_["loss"]) == 3 and (head.predict(f) == y).mean() > 0.9
    np.testing.assert_allclose(head.norm_stats_["mean"], X.mean(axis=0), rtol=1e-4, atol=1e-4)
    assert max(reads) <= 64


def test_chunked_logistic_solver_is_scikit_learns_model(monkeypatch):
    """Past CHUNKED_SOLVER_VALUES the logistic head solves the same objective over float32 chunks."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (600, 12)).astype(np.float32) * rng.uniform(0.5, 5, 12).astype(np.float32) + 3
    for k in (2, 3):
        y = np.array(["a", "b", "c"])[(X[:, 0] + X[:, 1] * (k - 2) + rng.normal(0, 2, 600) > 3).astype(int) + (k - 2)
                                      * (X[:, 2] > 4)]
        monkeypatch.setattr(H.logreg, "CHUNKED_SOLVER_VALUES", 1000)
        monkeypatch.setattr(H.logreg, "WARM_START_ROWS", 50)
        monkeypatch.setattr(F, "CHUNK_ROWS", 128)
        head = H.LogisticHead(C=0.3, class_weight="balanced").fit(X, y)
        Xs = (X - X.astype(np.float64).mean(0)) / X.astype(np.float64).std(0)
        ref = LogisticRegression(C=0.3, class_weight="balanced", max_iter=2000).fit(Xs, y)
        np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Xs), atol=2e-3)
        assert head.coef_.shape == ref.coef_.shape


def test_lightgbm_learns_its_projection_on_a_sample_and_projects_in_chunks(monkeypatch):
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=500, n_features=32, centers=3, cluster_std=4.0, random_state=0)
    X = X.astype(np.float32)
    monkeypatch.setattr(H.lightgbm, "PCA_FIT_ROWS", 100)
    monkeypatch.setattr(F, "CHUNK_ROWS", 64)
    head = H.LightGBMHead(n_estimators=30, pca_components=8).fit(X, y)
    want = (X - head.pca_mean_) @ head.pca_components_.T
    np.testing.assert_allclose(head._project(X), want, rtol=1e-4, atol=1e-4)
    assert (head.predict(X) == y).mean() > 0.9


def test_lightgbm_on_rows_on_disk_reads_chunks_and_fits_the_in_memory_model(cached, reads, monkeypatch):
    """The projection of CachedRows is read a chunk at a time (the float32 rows never all in memory)."""
    monkeypatch.setattr(H.lightgbm, "PCA_FIT_ROWS", 100)
    monkeypatch.setattr(F, "CHUNK_ROWS", 64)
    root, X, y = cached
    f = load_features(cache_dir=root, lazy=True)
    kw = dict(n_estimators=20, pca_components=4, normalise="l2")
    on_disk = H.LightGBMHead(**kw).fit(f.X, y)
    assert reads and max(reads) <= 100  # the PCA sample, then chunks of 64
    np.testing.assert_array_equal(np.asarray(f.X), X)  # the same rows, in the same order
    in_memory = H.LightGBMHead(**kw).fit(X, y)
    np.testing.assert_allclose(on_disk.pca_components_, in_memory.pca_components_, atol=1e-5)
    np.testing.assert_allclose(on_disk.predict_proba(X), in_memory.predict_proba(X), atol=1e-5)
    assert (on_disk.predict(f) == y).mean() > 0.9


def test_lightgbm_big_fits_use_every_core_and_bounded_bags(monkeypatch):
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=500, n_features=16, centers=3, random_state=0)
    small = H.LightGBMHead(n_estimators=5, pca_components=None).fit(X, y)
    assert small.n_threads_ == 1 and small.booster_.params["subsample"] == 0.8
    monkeypatch.setattr(H.lightgbm, "THREADED_FIT_ROWS", 400)
    monkeypatch.setattr(H.lightgbm, "BAG_ROWS", 200)
    monkeypatch.setattr(H.lightgbm.os, "cpu_count", lambda: 3)
    big = H.LightGBMHead(n_estimators=5, pca_components=None).fit(X, y)
    assert big.n_threads_ == 3 and big.booster_.params["num_threads"] == 3
    assert big.booster_.params["subsample"] == 0.4  # 200 of the 500 rows per tree
    assert H.LightGBMHead(n_estimators=5, n_jobs=1, pca_components=None).fit(X, y).n_threads_ == 1


@pytest.mark.parametrize("kind", ["logreg", "auto"])
def test_fit_head_at_scale_selects_on_a_subsample_and_refits_on_every_row(kind, cached, monkeypatch):
    root, X, y = cached
    monkeypatch.setattr(S, "SCALE_ROWS", 300)
    monkeypatch.setattr(S, "SELECT_ROWS", 90)
    res = api.fit_head(kind, cache_dir=root, out=root.parent / "h", folds=3,
                       **({"auto_heads": ("logreg", "lightgbm")} if kind == "auto" else {}))
    note = res.metrics["selection"]["subsample"]
    assert "subsample of 90 of 400 train rows" in note and "refitted on all 400" in note and note in res.report
    assert res.metrics["splits"]["train"]["n"] == 400 and len(res.metrics["cv"]["scores"]) == 3
    assert "sampled_from" not in res.metrics["splits"]["train"]
    if kind == "logreg":  # the refit is the chosen C on all 400 rows
        ref = H.LogisticHead(C=res.metrics["C"]).fit(X, y)
        np.testing.assert_allclose(res.head.predict_proba(X), ref.predict_proba(X), atol=1e-6)


def test_train_metrics_at_scale_are_computed_on_a_sample_and_say_so(cached, monkeypatch):
    from featx import fitting

    root, X, y = cached
    monkeypatch.setattr(S, "SCALE_ROWS", 300)
    monkeypatch.setattr(S, "SELECT_ROWS", 90)
    monkeypatch.setattr(fitting, "TRAIN_SCORE_ROWS", 150)
    res = api.fit_head("logreg", cache_dir=root, out=root.parent / "h", folds=3)
    train = res.metrics["splits"]["train"]
    assert train["n"] == 150 and train["sampled_from"] == 400
    assert "n=150 sampled of 400" in res.report
    ref = H.LogisticHead(C=res.metrics["C"]).fit(X, y)  # the head itself is still fitted on all 400 rows
    np.testing.assert_allclose(res.head.predict_proba(X), ref.predict_proba(X), atol=1e-6)
