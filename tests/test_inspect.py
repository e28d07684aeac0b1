"""featx inspect: duplicates and leakage, label issues, label budget, calibration, files, CLI."""

import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx import inspection
from featx.features import CachedRows, Features
from featx.inspection import limits, rows as inspect_rows
from featx.calibration import apply_temperature, expected_calibration_error, fit_temperature
from featx.cache import Cache
from featx.cli import cli
from featx.errors import InspectError
from featx.features import load_features
from featx.spec import ExtractionSpec

from conftest import HYMENOPTERA, INTEL6, make_dataset, needs_hymenoptera, needs_intel6

EXTRACT = ["extract", "-q", "-b", "mobilenetv3small", "--weights", "none", "--image-size", "32"]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def invoke(*args, cache_dir):
    return CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), *map(str, args)])


def write_features(root, X, y, splits, class_names, paths=None, shas=None, source="/synthetic/data"):
    """Rows written through the cache API (one shard, one dataset view), read back as Features."""
    n = len(X)
    paths = list(paths) if paths is not None else [f"{source}/{splits[i]}/{i}.jpg" for i in range(n)]
    shas = list(shas) if shas is not None else [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    spec = ExtractionSpec(backbone="resnet50", weights="synthetic", input_size=224, preprocessing="caffe",
                                  pooling="avg", tap="output", cut_blocks=0, precision="float32")
    cache = Cache(root)
    ext = cache.extraction(spec, X.shape[1], create=True)
    first = {}
    for i, s in enumerate(shas):
        first.setdefault(s, i)
    rows = list(first.values())
    labels = [class_names[y[i]] if y[i] >= 0 else "" for i in rows]
    ext.write_shard(X[rows], [shas[i] for i in rows], [paths[i] for i in rows], labels)
    cache.write_view(ext, source, "splits", class_names, paths, shas, np.asarray(y), list(splits))
    return load_features(cache_dir=root)


def blobs(per_class=(30, 10, 10), k=3, d=64, noise=1.5, seed=0):
    """Gaussian class clusters in train/val/test; within a class, cosines are about 0.3."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d))
    y, splits = [], []
    for split, m in zip(("train", "val", "test"), per_class):
        y += [c for c in range(k) for _ in range(m)]
        splits += [split] * (k * m)
    y = np.array(y)
    X = (centers[y] + rng.normal(0, noise, (len(y), d))).astype(np.float32)
    return X, y, np.array(splits, dtype=object)


# --------------------------------------------------------------------------- duplicates


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Blobs with planted exact and near duplicates across splits, and a same-sha pair at two train paths."""
    X, y, splits = blobs()
    paths = [f"/synthetic/data/{s}/{i}.jpg" for i, s in enumerate(splits)]
    shas = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    rng = np.random.default_rng(1)
    train, test, val = (np.flatnonzero(splits == s) for s in ("train", "test", "val"))
    a, b = train[0], test[-1]  # exact: same bytes in train and test, with another label
    X[b], shas[b], y[b] = X[a], shas[a], (y[a] + 1) % 3
    c, d = train[1], train[2]  # exact: one file at two paths of train
    X[d], shas[d] = X[c], shas[c]
    e, g = train[5], val[3]  # near: a train image, a little noise, in val (cosine ~0.99)
    X[g] = X[e] + rng.normal(0, 0.15, X.shape[1])
    h, j = train[8], test[4]  # similar but not a copy (cosine ~0.91)
    X[j] = X[h] + rng.normal(0, 0.75, X.shape[1])
    root = tmp_path_factory.mktemp("planted")
    f = write_features(root / "cache", X, y, splits, ["a", "b", "c"], paths, shas)
    return f, {"exact_cross": (a, b), "exact_same": (c, d), "near": (e, g), "similar": (h, j)}


def _pairs(dups, kind):
    return {frozenset((p["row_a"], p["row_b"])) for p in dups[f"{kind}_pairs"]}


FIXED = inspection.NearRule(adaptive=False)


def test_planted_exact_and_near_duplicates_across_splits(planted):
    f, rows = planted
    dups = inspection.find_duplicates(f, FIXED)
    assert _pairs(dups, "exact") == {frozenset(rows["exact_cross"]), frozenset(rows["exact_same"])}
    assert _pairs(dups, "near") == {frozenset(rows["near"])}  # unrelated images are not near
    assert dups["cross_split"] == {"train-test": {"exact": 1, "near": 0, "conflicting_labels": 1},
                                   "train-val": {"exact": 0, "near": 1, "conflicting_labels": 0}}
    assert dups["leaking_pairs"] == 2
    same = next(p for p in dups["exact_pairs"] if frozenset((p["row_a"], p["row_b"])) == frozenset(rows["exact_same"]))
    assert same["cross_split"] == "" and same["split_a"] == same["split_b"] == "train"
    # The default rule also reports the half-noise copy (cosine 0.91): each other's nearest neighbour by far.
    dups = inspection.find_duplicates(f)
    rule = {frozenset((p["row_a"], p["row_b"])): p["rule"] for p in dups["near_pairs"]}
    assert rule == {frozenset(rows["near"]): "cosine", frozenset(rows["similar"]): "neighbourhood"}
    assert dups["cross_split"]["train-test"] == {"exact": 1, "near": 1, "conflicting_labels": 1}
    assert dups["by_rule"] == {"cosine": 1, "neighbourhood": 1} and dups["rule_stats"]["ratio_cut"] <= 0.75


def test_near_threshold_effect(planted):
    """A fixed 0.95 finds the noisy copy only; 0.85 also finds an image that is merely similar."""
    f, rows = planted
    Z = inspection.unit_rows(f.X)
    sims = {k: float(Z[a] @ Z[b]) for k, (a, b) in rows.items() if k in ("near", "similar")}
    assert sims["near"] > 0.98 and 0.85 < sims["similar"] < 0.95
    loose = inspection.find_duplicates(f, inspection.NearRule(0.85, adaptive=False))
    assert _pairs(loose, "near") == {frozenset(rows["near"]), frozenset(rows["similar"])}
    assert loose["cross_split"]["train-test"]["near"] == 1


def copy_among_look_alikes(d=256, triples=30, singles=120, cosine=0.93, seed=3):
    """Triples of distinct look-alike images (cosines about 0.9 to each other) and singletons, plus one
    copy of a singleton at ``cosine`` to it: the most similar pair, under 0.95, over the look-alikes."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(triples):
        c = rng.normal(size=d)
        rows += [np.sqrt(0.9) * c + np.sqrt(0.1) * rng.normal(size=d) for _ in range(3)]
    rows += [rng.normal(size=d) for _ in range(singles)]
    rows.append(cosine * rows[3 * triples] + np.sqrt(1 - cosine ** 2) * rng.normal(size=d))
    return np.array(rows, np.float32), (3 * triples, len(rows) - 1)


def test_adaptive_rule_finds_a_copy_that_the_fixed_threshold_misses(tmp_path):
    """Issue 19: a copy whose cosine (0.94) tops the dataset's nearest-neighbour similarities (99th
    percentile 0.92) but not 0.95. The look-alike triples are not reported: their nearest neighbour is
    not much nearer than the next."""
    X, copy = copy_among_look_alikes()
    n = len(X)
    f = write_features(tmp_path / "cache", X, np.full(n, -1), [""] * n, [], source="/synthetic/look-alikes")
    Z = inspection.unit_rows(X)
    S = Z @ Z.T
    np.fill_diagonal(S, -1)
    nn = S.max(axis=1)
    assert np.quantile(nn, 0.99) < S[copy] < 0.95 and S[copy] == nn.max()
    assert inspection.find_duplicates(f, FIXED)["near_pairs"] == []
    dups = inspection.find_duplicates(f)
    assert [({p["row_a"], p["row_b"]}, p["rule"]) for p in dups["near_pairs"]] == [(set(copy), "neighbourhood")]
    assert dups["near_pairs"][0]["ratio"] < 0.5 and dups["near_pairs"][0]["similarity"] == pytest.approx(S[copy], abs=1e-5)
    r = invoke("inspect", "--near-rule", "fixed", "--out", tmp_path / "fixed", cache_dir=tmp_path / "cache")
    assert r.exit_code == 0 and "0 near pairs at cosine >= 0.95 (exact search)" in r.output
    # Without structure, nothing stands out: no pairs from random 256-d rows.
    g = write_features(tmp_path / "noise", np.random.default_rng(0).normal(size=(500, 256)).astype(np.float32),
                       np.full(500, -1), [""] * 500, [], source="/synthetic/noise")
    assert inspection.find_duplicates(g)["near_pairs"] == []


def test_near_rule_checks_its_values():
    with pytest.raises(InspectError, match=r"near_threshold must be in \(0, 1\]"):
        inspection.NearRule(threshold=1.5)
    with pytest.raises(InspectError, match="max_ratio"):
        inspection.NearRule(max_ratio=1.2)
    with pytest.raises(InspectError, match="near_rule must be"):
        featx.inspect(Features.__new__(Features), near_rule="loose")


def test_blockwise_search_matches_full_matrix():
    rng = np.random.default_rng(3)
    Z = inspection.unit_rows(rng.normal(size=(300, 8)))
    i, j, s = inspection.near_pairs(Z, 0.9, block_bytes=4 * 300 * 64)  # 64-row blocks
    full = Z @ Z.T
    want = {(a, b) for a, b in zip(*np.nonzero(full >= 0.9)) if a < b}
    assert set(zip(i.tolist(), j.tolist())) == want and len(want) > 10
    assert np.allclose(s, full[i, j], atol=1e-5) and np.all(np.diff(s) <= 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_approximate_index_past_the_brute_force_limit(planted, monkeypatch, workers):
    """Past the limit: neighbours from an index on principal components, pairs scored on all dimensions."""
    monkeypatch.setattr(limits, "INDEX_CELL_ROWS", 16)
    monkeypatch.setattr(limits, "INDEX_PROBES", 4)  # several cells, only some of them probed
    f, rows = planted
    dups = inspection.find_duplicates(f, brute_force_limit=10, workers=workers)
    assert dups["method"].startswith("approximate")
    assert f"inverted file, 9 cells of about 16 rows, 4 probed, {workers} worker" in dups["method"]
    exact = inspection.find_duplicates(f)
    assert _pairs(dups, "near") == _pairs(exact, "near") == {frozenset(rows["near"]), frozenset(rows["similar"])}
    got = {frozenset((p["row_a"], p["row_b"])): p["similarity"] for p in dups["near_pairs"]}
    assert all(got[frozenset((p["row_a"], p["row_b"]))] == pytest.approx(p["similarity"], abs=5e-3)
               for p in exact["near_pairs"])  # cosines as the exact search (mean and scale of all rows, not distinct ones)


def test_approximate_pair_seen_from_one_side_only(planted, monkeypatch):
    """An approximate index may list j among i's neighbours but not i among j's: the pair still counts."""
    from featx.inspection import duplicates

    real = duplicates.knn

    def one_sided(U, k, seed=0, workers=1):
        (nbrs, sims), how = real(U, k, seed, workers)
        return (nbrs, np.where(nbrs > np.arange(len(nbrs))[:, None], -1.0, sims)), how  # seen from the later row

    monkeypatch.setattr(duplicates, "knn", one_sided)
    f, rows = planted
    dups = inspection.find_duplicates(f, FIXED, brute_force_limit=10)
    assert _pairs(dups, "near") == {frozenset(rows["near"])}


def test_index_probes_the_cells_nearest_each_row(monkeypatch):
    """A copy across a cell boundary: each row searches its own nearest cells, not those nearest its cell's centre.

    Cells X (the copy's original) and Y (the copy) have orthogonal centres;
    X's nearest other cell is W. Probing 2 cells per cell (X, W and Y, V)
    missed the pair; probing the 2 cells nearest each row (X, Y) finds it.
    """
    from featx.inspection import index

    e = np.eye(6, dtype=np.float32)
    centers = np.stack([e[0], e[1], e[0] + e[2], e[0] - e[2], e[0] + e[3], e[1] + e[4]])  # X, Y, W..., V
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    Z = np.concatenate([np.repeat(centers, 20, axis=0) + rng.normal(0, 0.01, (120, 6)),
                        [e[0] + 0.98 * e[1], 0.98 * e[0] + e[1]]]).astype(np.float32)  # the pair: cosine 0.9998
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    monkeypatch.setattr(index, "_spherical_kmeans", lambda *args: centers.copy())
    monkeypatch.setattr(limits, "INDEX_CELL_ROWS", 20)
    monkeypatch.setattr(limits, "INDEX_PROBES", 2)
    (nbrs, sims), how = index.knn(Z, 3)
    assert "6 cells of about 20 rows, 2 probed" in how
    assert nbrs[120, 0] == 121 and nbrs[121, 0] == 120 and sims[120, 0] > 0.999


def test_index_recall_and_workers(monkeypatch):
    """The index finds most true nearest neighbours, and a pool of workers returns what one worker does."""
    from featx.inspection.index import knn

    monkeypatch.setattr(limits, "INDEX_CELL_ROWS", 100)  # 30 cells, 8 of them probed
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    Z = centers[rng.integers(0, 20, 3000)] + rng.normal(0, 0.7, (3000, 32))
    Z = (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)
    (nbrs, sims), how = knn(Z, 10, workers=1)
    assert "30 cells of about 100 rows, 8 probed, 1 worker" in how
    S = Z[:500] @ Z.T
    S[np.arange(500), np.arange(500)] = -np.inf
    truth = np.argmax(S, axis=1)
    assert np.mean([t in row for t, row in zip(truth, nbrs[:500])]) >= 0.97  # 1.0 here; 0.89 with 1 cell probed
    assert not (nbrs == np.arange(3000)[:, None]).any() and np.all(np.diff(sims, axis=1) <= 0)
    assert np.allclose(sims[:500], np.take_along_axis(S, nbrs[:500], 1), atol=1e-5)
    (nbrs2, sims2), how2 = knn(Z, 10, workers=2)
    assert "2 workers" in how2 and np.array_equal(sims, sims2)


@pytest.mark.parametrize("shape", [(7, 100, 11), (40, 4100, 11), (30, 4096, 11), (3, 353, 10), (5, 12, 12)])
def test_top_columns_are_the_largest(shape):
    """The grouped top-k gives the k largest values of each row, largest first, ties included."""
    from featx.inspection.index import top_columns

    n, m, k = shape
    S = np.random.default_rng(m).normal(size=(n, m)).astype(np.float32)
    S[:, ::7] = S[:, 3:4]  # many ties
    got = top_columns(S, k)
    want = -np.sort(-S, axis=1)[:, :k]
    assert np.array_equal(np.take_along_axis(S, got, 1), want)
    assert all(len(set(row)) == k for row in got.tolist())


# --------------------------------------------------------------------------- label issues, budget


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    X, y, splits = blobs(per_class=(40, 10, 10), k=4, d=32, noise=0.8, seed=5)
    rng = np.random.default_rng(2)
    train = np.flatnonzero(splits == "train")
    bad = rng.choice(train, 8, replace=False)
    y = y.copy()
    y[bad] = (y[bad] + rng.integers(1, 4, len(bad))) % 4
    f = write_features(tmp_path_factory.mktemp("flipped") / "cache", X, y, splits, ["w", "x", "y", "z"])
    return f, bad


@pytest.mark.parametrize("with_cleanlab", [True, False])
def test_planted_label_flips_rank_at_the_top(flipped, monkeypatch, with_cleanlab):
    if with_cleanlab and not installed("cleanlab"):
        pytest.skip("cleanlab not installed")
    if not with_cleanlab:
        monkeypatch.setitem(sys.modules, "cleanlab", None)
    f, bad = flipped
    section, oof, ranking = inspection.find_label_issues(f, inspect_rows.reduce(f.X, 0))
    assert section["method"].startswith("cleanlab") == with_cleanlab
    assert set(ranking[:len(bad)].tolist()) == set(bad.tolist())  # precision at k = 1
    flagged = {s["row"] for s in section["suspects"]}
    assert len(set(bad.tolist()) & flagged) >= 6 and len(flagged) <= 2 * len(bad)
    top = section["suspects"][0]
    assert top["given"] != top["suggested"] and top["given"] == f.class_names[f.y[top["row"]]]
    assert np.allclose(oof[f.y >= 0].sum(axis=1), 1)


def test_budget_curve_rises_on_separable_data(tmp_path):
    X, y, splits = blobs(per_class=(60, 0, 40), k=5, d=64, noise=2.5, seed=4)
    f = write_features(tmp_path / "cache", X, y, splits, list("abcde"))
    b = inspection.label_budget(f, inspect_rows.reduce(f.X, 0), seeds=3)
    pts = b["points"]
    assert [p["per_class"] for p in pts] == [1, 2, 5, 10, 20, 50, 60] and pts[-1]["all"]
    assert b["evaluated_on"] == "test" and b["n_eval"] == 200
    means = [p["mean"] for p in pts]
    assert means[-1] >= 0.85 and means[0] <= means[-1] - 0.3  # about 0.49 at 1 per class, 0.93 at 60
    assert all(b >= a - 0.02 for a, b in zip(means, means[1:]))
    assert pts[0]["min"] <= pts[0]["mean"] <= pts[0]["max"] and pts[-1]["std"] == 0
    assert len(b["runs"]) == 6 * 3 + 1


def test_budget_holds_out_a_quarter_without_val_or_test(tmp_path):
    X, y, splits = blobs(per_class=(40, 0, 0), k=2, d=16, seed=6)
    f = write_features(tmp_path / "cache", X, y, splits, ["a", "b"])
    b = inspection.label_budget(f, inspect_rows.reduce(f.X, 0), seeds=2)
    assert b["evaluated_on"].startswith("a stratified 25%") and b["n_eval"] == 20
    assert b["points"][-1]["per_class"] == 30


def test_budget_note_when_only_the_curve_is_cut(tmp_path):
    """A capped curve scored on every held-out image: the note is one clause, without a dangling separator."""
    X, y, splits = blobs(per_class=(40, 0, 10), k=2, d=16, seed=6)
    f = write_features(tmp_path / "cache", X, y, splits, ["a", "b"])
    notes = []
    b = inspection.label_budget(f, inspect_rows.reduce(f.X, 0), seeds=1, notes=notes, max_fit=20, max_eval=1000)
    assert b["points"][-1]["per_class"] == 10 and b["n_eval"] == 20
    assert notes == ["label budget: curve stops at 10 images per class (at most 20 training rows; the largest class "
                     "has 40), so its last point is not all of train"]


# --------------------------------------------------------------------------- calibration


def _overconfident(n=3000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    true_p = apply_temperature(logits, 1.0)
    y = (rng.random((n, 1)) > true_p.cumsum(axis=1)).sum(axis=1)
    return apply_temperature(logits, 0.4), y  # logits / 0.4: far too sure


def test_temperature_scaling_lowers_ece_of_an_overconfident_head():
    proba, y = _overconfident()
    fit, held = slice(0, 1500), slice(1500, None)
    T = fit_temperature(proba[fit], y[fit])
    assert 2.0 < T < 3.0  # the true factor is 1 / 0.4
    before = expected_calibration_error(proba[held], y[held])
    after = expected_calibration_error(apply_temperature(proba[held], T), y[held])
    assert before > 0.1 and after < before / 3
    assert np.array_equal(apply_temperature(proba, T).argmax(1), proba.argmax(1))  # accuracy untouched
    calibrated = apply_temperature(proba, 2.5)
    assert abs(fit_temperature(calibrated, y) - 1.0) < 0.15
    assert fit_temperature(np.log(calibrated) + 7.0, y) == pytest.approx(fit_temperature(calibrated, y), rel=1e-3)


def test_expected_calibration_error_by_hand():
    proba = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins: 0.95 -> acc 0.5 (2 rows), 0.6 -> acc 1, 0.7 -> acc 1
    assert expected_calibration_error(proba, y) == pytest.approx((2 * 0.45 + 0.4 + 0.3) / 4)
    with pytest.raises(featx.FeatxError, match="labels"):
        expected_calibration_error(proba, y[:3])


# --------------------------------------------------------------------------- the report and its files


def _check_files(d: Path, labeled=True):
    from PIL import Image

    names = {"report.json", "duplicates.csv", "duplicates.png", "embedding.png"}
    if labeled:
        names |= {"label_issues.csv", "label_issues.png", "label_budget.csv", "label_budget.png", "reliability.png"}
    assert {p.name for p in d.iterdir()} == names
    for png in d.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
    heads = {"duplicates.csv": list(limits.DUPLICATE_COLUMNS),
             "label_issues.csv": ["path", "split", "given", "suggested", "score"],
             "label_budget.csv": ["per_class", "seed", "n_train", "accuracy"]}
    rows = {}
    for name in names & set(heads):
        with open(d / name, newline="") as fh:
            rows[name] = list(csv.DictReader(fh))
        with open(d / name, newline="") as fh:
            assert next(csv.reader(fh)) == heads[name]
    return json.loads((d / "report.json").read_text()), rows


def test_report_files_written_and_parseable(planted, tmp_path):
    f, rows = planted
    # One real image among missing ones: a thumbnail is decoded, the others become placeholders.
    from conftest import make_image

    real = make_image(tmp_path / "img.png", size=(300, 120))
    f = f.subset(np.arange(len(f)))
    f.paths = f.paths.copy()
    f.paths[rows["exact_cross"][0]] = str(real)
    rep = featx.inspect(f, out=tmp_path / "out", head=False)
    report, tables = _check_files(tmp_path / "out")
    assert report["duplicates"]["cross_split"]["train-test"]["exact"] == 1
    assert len(tables["duplicates.csv"]) == 4 and tables["duplicates.csv"][0]["kind"] == "exact"
    assert [r["rule"] for r in tables["duplicates.csv"]] == ["sha256", "sha256", "cosine", "neighbourhood"]
    assert float(tables["label_issues.csv"][0]["score"]) <= float(tables["label_issues.csv"][-1]["score"])
    assert {r["per_class"] for r in tables["label_budget.csv"]} >= {"1", "30"}
    assert report["calibration"]["source"] == "out-of-fold logistic regression"
    assert set(report["timings"]) == {"duplicates", "reduce", "label issues", "budget", "calibration", "map", "files"}
    assert rep.summary().startswith("features: resnet50 224px avg on /synthetic/data")
    assert "LEAKAGE train-test: 1 exact, 1 near, 1 with conflicting labels" in rep.summary()
    assert "4 near pairs" not in rep.summary() and "2 near pairs (1 at cosine >= 0.95, 1 mutual" in rep.summary()


@pytest.mark.slow
def test_inspect_imports_no_keras(planted, tmp_path):
    """The whole report from the cache alone: no Keras, no TensorFlow, no model."""
    cache = Path(planted[0].view.path).parents[1]
    code = (
        "import sys, featx\n"
        f"r = featx.inspect(cache_dir={str(cache)!r}, out={str(tmp_path / 'out')!r})\n"
        # umap-learn's own __init__ would import TensorFlow for ParametricUMAP;
        # featx imports it without (running UMAP itself costs a numba start-up of tens of seconds).
        f"if {installed('umap')}: featx.inspection.embedding.import_umap().UMAP\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'jax', 'torch'))\n"
        "assert not bad, bad[:5]\n"
        "print('ok', len(r.files))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(featx.__file__).parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok 9")


def test_optional_libraries_missing_or_present(planted, tmp_path, monkeypatch):
    f = planted[0]
    for name in ("cleanlab", "umap"):
        monkeypatch.setitem(sys.modules, name, None)
    rep = featx.inspect(f, out=False, head=False, embedding="umap", brute_force_limit=10)
    assert rep.label_issues["method"] == "confident learning (self-confidence)"
    assert rep.embedding["method"] == "pca"
    cores = inspection.run.usable_cores()  # the near-duplicate search: a worker per core by default
    assert rep.duplicates["method"].endswith(f"{cores} worker{'s' if cores > 1 else ''}), pairs scored again on all dimensions")
    assert "1 worker)" in featx.inspect(f, out=False, head=False, brute_force_limit=10, n_jobs=1).duplicates["method"]
    assert any("umap-learn is not installed" in n for n in rep.notes)
    # With a UMAP in place, the map uses it (a stand-in: the real one's numba start-up costs tens of seconds).
    fake = types.ModuleType("umap")
    fake.UMAP = lambda **kw: types.SimpleNamespace(fit_transform=lambda Z: Z[:, :2] * 0 + 1)
    monkeypatch.setitem(sys.modules, "umap", fake)
    rep = featx.inspect(f, out=False, head=False, embedding="umap")
    assert rep.embedding["method"] == "umap"


def test_unlabeled_gets_duplicates_and_map_only(tmp_path):
    X, _, _ = blobs(per_class=(10, 0, 0))
    X[7] = X[3]
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(X))]
    shas[7] = shas[3]
    f = write_features(tmp_path / "cache", X, np.full(len(X), -1), [""] * len(X), [], shas=shas)
    rep = featx.inspect(f, out=tmp_path / "out")
    assert rep.label_issues is None and rep.budget is None and rep.calibration is None
    assert rep.duplicates["exact_groups"] == 1 and "unlabeled images" in rep.notes[0]
    _check_files(tmp_path / "out", labeled=False)


def test_one_class_or_too_few_per_class_is_a_one_line_error(tmp_path):
    X, y, splits = blobs(per_class=(6, 0, 0), k=2)
    one = write_features(tmp_path / "one", X, np.zeros_like(y), splits, ["a", "b"])
    with pytest.raises(InspectError, match="at least 2 classes"):
        featx.inspect(one, out=False)
    y = y.copy()
    y[y == 1] = 0
    y[-2:] = 1  # class b: 2 images
    few = write_features(tmp_path / "few", X, y, splits, ["a", "b"])
    with pytest.raises(InspectError, match=r"at least 3 labelled images; b \(2\) has fewer"):
        featx.inspect(few, out=False)
    r = invoke("inspect", cache_dir=tmp_path / "few")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("Error: Too few images for K-fold") and r.output.count("\n") == 1


# --------------------------------------------------------------------------- with real images


@pytest.fixture(scope="module")
def tiny_extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", per_class=8, splits=["train", "val", "test"])
    r = invoke(*EXTRACT, data, cache_dir=root / "cache")
    assert r.exit_code == 0, r.output
    return root, data


def test_cli_inspect_on_extracted_images(tiny_extracted, monkeypatch):
    root, data = tiny_extracted
    monkeypatch.chdir(root)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    r = invoke("inspect", "--seeds", "2", cache_dir=root / "cache")
    assert r.exit_code == 0, r.output
    out = Path(r.output.strip().splitlines()[-1].split()[1].rstrip(":"))
    assert out.parent.resolve() == (root / "inspect").resolve() and out.name.startswith("mobilenetv3small-")
    _check_files(root / out)
    assert "label issues:" in r.output and "calibration (out-of-fold" in r.output


def test_fit_head_calibrate_stores_temperature_and_predict_applies_it(tiny_extracted, monkeypatch):
    root, data = tiny_extracted
    monkeypatch.chdir(root)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    res = featx.fit_head("logreg", cache_dir=root / "cache", calibrate=True, C=100.0, out=root / "heads" / "cal")
    c = res.metrics["calibration"]
    man = json.loads((res.directory / "manifest.json").read_text())
    assert man["temperature"] == c["temperature"] > 0 and c["fitted_on"] == "val"
    assert c["val_ece_after"] <= c["val_ece_before"] + 1e-9
    preds = featx.predict(data / "test", head=res.directory, cache_dir=root / "cache", progress=False)
    f = featx.load_features(data, cache_dir=root / "cache")
    raw = featx.load_head(res.directory).predict_proba(f.X)
    order = [list(f.paths).index(p) for p in preds.paths]
    assert len(order) == 16 and np.allclose(preds.probabilities, apply_temperature(raw[order], c["temperature"]))
    # inspect checks that head (not a Keras one), on test, with its temperature applied
    rep = featx.inspect(cache_dir=root / "cache", data=data, out=False, head=res.directory)
    assert rep.calibration["source"].startswith("head cal (its temperature")
    assert rep.calibration["evaluated_on"] == "test"
    r = invoke("fit-head", "--head", "logreg", "--calibrate", "--out", root / "heads" / "cli", cache_dir=root / "cache")
    assert r.exit_code == 0 and "calibration: temperature" in r.output


@pytest.mark.slow
@needs_hymenoptera
def test_real_copies_are_near_duplicates(tmp_path):
    """Resized and recompressed copies of real photos are found across splits; other photos are not."""
    from PIL import Image, ImageOps

    originals = sorted((HYMENOPTERA / "train" / "ants").glob("*.jpg"))[:6] + sorted(
        (HYMENOPTERA / "train" / "bees").glob("*.jpg"))[:6]
    data = tmp_path / "data"
    copies = {}
    for i, src in enumerate(originals):
        cls = src.parent.name
        dst = data / "train" / cls / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        if i % 6 < 3:
            with Image.open(src) as im:
                im = im.convert("RGB")
                how = ["resized", "recompressed", "flipped"][i % 6]
                out = data / "test" / cls / f"{how}-{src.name}"
                out.parent.mkdir(parents=True, exist_ok=True)
                if how == "resized":
                    im.resize((im.width // 2, im.height // 2)).save(out, quality=90)
                elif how == "recompressed":
                    im.save(out, quality=30)
                else:
                    ImageOps.mirror(im).save(out, quality=90)
                copies[str(out)] = (str(dst), how)
    cache = tmp_path / "cache"
    assert invoke(*EXTRACT[:3], "vgg16", *EXTRACT[4:], data, cache_dir=cache).exit_code == 0
    rep = featx.inspect(data, cache_dir=cache, out=False, head=False)
    found = {(p["path_a"], p["path_b"]) for p in rep.duplicates["near_pairs"]}
    for copy, (orig, how) in copies.items():
        if how != "flipped":  # random weights do not make a mirror image near; trained ones do
            assert (str(orig), copy) in found, (how, rep.duplicates["near_pairs"])
    assert all(p["cross_split"] == "train-test" for p in rep.duplicates["near_pairs"])


@pytest.mark.slow
@needs_hymenoptera
def test_cli_end_to_end_on_hymenoptera(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    cache = tmp_path / "cache"
    r = invoke(*EXTRACT, HYMENOPTERA, cache_dir=cache)
    assert r.exit_code == 0, r.output
    r = invoke("inspect", "--out", tmp_path / "out", cache_dir=cache)
    assert r.exit_code == 0, r.output
    report, tables = _check_files(tmp_path / "out")
    assert report["splits"] == {"train": 245, "val": 153}
    assert report["budget"]["evaluated_on"] == "val"
    assert report["label_issues"]["n_labeled"] == 398
    for line in ("duplicates:", "label issues:", "label budget (val):", "calibration (", "map: pca of 398 images"):
        assert line in r.output


@pytest.mark.slow
@needs_intel6
def test_intel6_known_cross_split_duplicate(tmp_path):
    cache = tmp_path / "cache"
    r = invoke(*EXTRACT, INTEL6, cache_dir=cache)
    assert r.exit_code == 0, r.output
    rep = featx.inspect(cache_dir=cache, out=tmp_path / "out", head=False)
    leak = [p for p in rep.duplicates["exact_pairs"] if p["cross_split"] == "train-test"]
    assert [(p["rel_a"], p["label_a"], p["rel_b"], p["label_b"], p["label_conflict"]) for p in leak] == [
        ("train/street/10408.jpg", "street", "test/buildings/20805.jpg", "buildings", True)]
    assert "train/street/10408.jpg [street] == test/buildings/20805.jpg [buildings]" in rep.summary()
    assert rep.budget["evaluated_on"] == "test"


# --------------------------------------------------------------------------- contact sheets


def test_contact_sheet_captions_and_the_no_pairs_panel(tmp_path):
    from PIL import Image

    from featx.inspection import plots as P

    pair = {"kind": "near", "rule": "neighbourhood", "similarity": 0.93, "cross_split": "train-val",
            "label_conflict": True, "path_a": "/d/train/ants/a.jpg", "split_a": "train", "label_a": "ants",
            "path_b": "/d/val/bees/b.jpg", "split_b": "val", "label_b": "bees"}
    assert P.pair_caption(pair, "a") == ["train/ants/a.jpg", "train, label ants",
                                         "cosine 0.930, nearest neighbours, train-val"]
    assert P.pair_caption(pair, "b") == ["val/bees/b.jpg", "val, label bees", "labels differ"]
    exact = {**pair, "kind": "exact", "rule": "sha256", "cross_split": "", "label_conflict": False, "label_b": "ants"}
    assert P.pair_caption(exact, "a")[2] == "identical bytes" and P.pair_caption(exact, "b")[2] == "same label"
    # Words stay apart when drawn: Pillow's default font drew a 2-px space ("labelsdiffer").
    font = P._font()
    assert font.getlength(" ") >= 0.4 * font.getlength("n")
    assert P._fit("x" * 200, 100, font).startswith("...") and font.getlength(P._fit("x" * 200, 100, font)) <= 100
    # No pairs: a framed white panel that says so, not a grey "missing" thumbnail.
    png = P.pair_sheet([], tmp_path / "d.png", "duplicates (0 pairs)", empty_note="398 images searched")
    with Image.open(png) as im:
        px = np.asarray(im.convert("RGB"))
    assert not ((px == 170).all(axis=2)).any()  # no placeholder grey
    assert (px < 100).all(axis=2).sum() > 100  # but text
    assert P.NO_PAIRS == "no duplicate pairs"


# --------------------------------------------------------------------------- at scale: rows read in blocks, sections subsampled


def test_large_view_is_read_in_blocks_and_subsampled_sections_say_so(planted, tmp_path, monkeypatch):
    """The path `featx inspect` takes past IN_MEMORY_ROWS, at a scale a test can afford."""
    f, rows = planted
    cache = Path(f.view.path).parents[1]
    for name, value in {"IN_MEMORY_ROWS": 50, "BLOCK_ROWS": 32, "PCA_FIT_ROWS": 60, "LABEL_FIT_ROWS": 60,
                        "BUDGET_FIT_ROWS": 30, "BUDGET_EVAL_ROWS": 25}.items():
        monkeypatch.setattr(limits, name, value)
    reads = []
    real_read = CachedRows.read
    monkeypatch.setattr(CachedRows, "read", lambda self, pos=None: reads.append(len(self) if pos is None else len(pos))
                        or real_read(self, pos))
    rep = featx.inspect(cache_dir=cache, out=tmp_path / "out", head=False, brute_force_limit=10)
    assert reads and max(reads) <= 32  # never the whole matrix at once
    report, tables = _check_files(tmp_path / "out")
    d = rep.duplicates
    assert len(d["exact_pairs"]) == 2 and d["method"].startswith("approximate")
    assert {frozenset(rows["near"]), frozenset(rows["similar"])} <= _pairs(d, "near")
    notes = " | ".join(rep.notes)
    assert "principal components fitted on 60 of 150 images" in notes and "blocks of 32" in notes
    assert "each of the 5 fold models trained on 60 of the 120 rows" in notes and "all 150 labelled images scored" in notes
    assert "curve stops at 10 images per class (at most 30 training rows; the largest class has 30)" in notes
    assert "scored on 25 of 60 held-out images" in notes
    assert rep.label_issues["n_labeled"] == 150 and len(rep.suspect_ranking) == 150
    assert [p["per_class"] for p in rep.budget["points"]] == [1, 2, 5, 10] and not rep.budget["points"][-1]["all"]
    assert "images per class, " in rep.budget["verdict"] and "(all)" not in rep.budget["verdict"]
    # The block-wise mean and scale are those of the whole matrix.
    red = inspect_rows.Reduced.fit(inspect_rows.Rows.of(inspect_rows.open_features(None, None, cache, None, 50)))
    assert red.Z.shape == (150, 64) and red.fitted_on == 60  # 64 wide: standardised, not projected
    assert np.allclose(red.mean, f.X.mean(axis=0), atol=1e-5) and np.allclose(red.scale, f.X.std(axis=0), atol=1e-4)
