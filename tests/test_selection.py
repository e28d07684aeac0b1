"""Normalisation, the selection protocols, fusion and `--head auto`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import make_blobs

import featx
from featx import api
from featx.cli import cli
from featx.errors import HeadError
from featx.heads import LightGBMHead, LogisticHead, load_head
from featx.normalise import keras_normalise, normalise, normaliser_stats
from featx.selection import cv_protocol, evaluate, heads_split_record, select

from conftest import make_dataset, make_image


def blobs(n=150, d=16, classes=3, seed=0):
    X, y = make_blobs(n_samples=n, n_features=d, centers=classes, cluster_std=5.0, random_state=seed)
    return np.abs(X).astype("float32"), np.array(["a", "b", "c", "d"])[y]


# --------------------------------------------------------------------------- normalisation


def test_normalise_kinds_by_hand():
    X = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [4.0, 0.0, 9.0]], dtype="float32")
    np.testing.assert_allclose(normalise(X, "none"), X)
    np.testing.assert_allclose(normalise(X, "l2")[0], [0.6, -0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(normalise(X, "l2")[1], 0.0)  # a zero row stays zero
    r = np.array([2.0, 0.0, 3.0]) / np.sqrt(13.0)  # sqrt(4), sqrt(9), then L2
    np.testing.assert_allclose(normalise(X, "sqrt-l2")[2], r, rtol=1e-6)
    np.testing.assert_allclose(normalise(X, "sqrt-l2")[0], np.array([np.sqrt(3), -2.0, 0]) / np.sqrt(7), rtol=1e-6)
    stats = normaliser_stats(X, "standard")
    np.testing.assert_allclose(normalise(X, "standard", stats), (X - X.mean(0)) / X.std(0), rtol=1e-5, atol=1e-6)
    assert normaliser_stats(X, "l2") == {}
    with pytest.raises(ValueError, match="normalise must be one of none, standard, l2, sqrt-l2. Received: normalise='l1'"):
        normalise(X, "l1")


@pytest.mark.parametrize("kind", ["standard", "l2", "sqrt-l2"])
def test_keras_normalise_matches_numpy_and_loads_in_safe_mode(kind, tmp_path):
    import keras

    X, _ = blobs(n=20)
    X[:, 0] -= 3.0  # some negative values for the signed square root
    stats = normaliser_stats(X, kind)
    got = np.asarray(keras_normalise(X, kind, stats))
    np.testing.assert_allclose(got, normalise(X, kind, stats), rtol=1e-5, atol=1e-6)
    inp = keras.Input((X.shape[1],))
    keras.Model(inp, keras_normalise(inp, kind, stats)).save(tmp_path / "m.keras")
    model = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(model.predict(X, verbose=0), normalise(X, kind, stats), rtol=1e-5, atol=1e-6)


def test_keras_normalise_has_finite_gradients_at_zero_features():
    """A pooled channel of exactly 0 (dead after a ReLU) must not give NaN gradients when fine-tuning.

    TensorFlow's gradient was already finite there; JAX's was 0 * inf = NaN,
    which wiped the unfrozen weights of a sqrt-l2 head on the GPU backend.
    """
    import tensorflow as tf

    x = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]], dtype="float32")
    w = np.array([[1.0, 2.0, 3.0]], dtype="float32")
    for kind in ("sqrt-l2", "l2"):
        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(keras_normalise(v, kind) * w)
        g = tape.gradient(loss, v).numpy()
        assert np.isfinite(g).all() and abs(g[0, 1]) > 0, (kind, g)
    pytest.importorskip("jax")
    code = (
        "import numpy as np, jax\n"
        "from featx.normalise import keras_normalise\n"
        "x = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]], dtype='float32')\n"
        "w = np.array([[1.0, 2.0, 3.0]], dtype='float32')\n"
        "g = [np.asarray(jax.grad(lambda v: (keras_normalise(v, k) * w).sum())(x)) for k in ('sqrt-l2', 'l2')]\n"
        "print(all(np.isfinite(a).all() for a in g), float(abs(g[0][0, 1])) > 0)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "True"], out.stdout


@pytest.mark.parametrize("kind", ["standard", "sqrt-l2"])
def test_head_normalises_inside_predict_proba_and_after_loading(kind, tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = blobs()
    head = LogisticHead(C=1.0, normalise=kind).fit(X, y)
    Xn = normalise(X, kind, normaliser_stats(X, kind))
    Xs = (Xn - Xn.mean(0)) / Xn.std(0)
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(Xs, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Xs), atol=1e-4)
    d = head.save(tmp_path / "h")
    assert json.loads((d / "manifest.json").read_text())["params"]["normalise"] == kind
    assert (d / "norm.npz").exists() == (kind == "standard")
    np.testing.assert_allclose(load_head(d).predict_proba(X), head.predict_proba(X), rtol=1e-6)


def test_sqrt_l2_changes_what_a_tree_head_sees():
    X, y = blobs()
    X[:75] *= 10  # row norms vary; l2 removes that
    plain = LightGBMHead(n_estimators=20, pca_components=4).fit(X, y)
    normed = LightGBMHead(n_estimators=20, pca_components=4, normalise="sqrt-l2").fit(X, y)
    assert not np.allclose(plain.pca_components_, normed.pca_components_)


# --------------------------------------------------------------------------- protocols


def test_cv_protocol_is_stratified_and_shrinks_to_the_smallest_class():
    y = np.array([0] * 10 + [1] * 3)
    p = cv_protocol(y, ["a", "b"], folds=5, seed=0)
    assert p.kind == "cv" and p.folds == 3
    for fit_rows, score_rows in p.pairs:
        assert set(fit_rows).isdisjoint(score_rows) and len(fit_rows) + len(score_rows) == 13
        assert (y[score_rows] == 1).sum() == 1
    with pytest.raises(HeadError, match="at least 2 training images per class; b has 1"):
        cv_protocol(np.array([0, 0, 0, 1]), ["a", "b"])


def test_select_by_cv_picks_the_best_mean_and_averages_tree_counts():
    X, y = blobs(n=120)
    p = cv_protocol(np.unique(y, return_inverse=True)[1], ["a", "b", "c"], folds=3)
    best, trials = select("logreg", X, y, p, {"seed": 0})
    assert [t.params["C"] for t in trials] == [0.001, 0.01, 0.1, 1.0, 10.0]
    assert best.mean == max(t.mean for t in trials) and len(best.scores) == 3
    # the scores are those of fits that never saw their held-out fold
    fit_rows, score_rows = p.pairs[0]
    alone = LogisticHead(C=best.params["C"]).fit(X[fit_rows], y[fit_rows])
    assert best.scores[0] == (alone.predict(X[score_rows]) == y[score_rows]).mean()
    trees = evaluate("lightgbm", X, y, p, {"n_estimators": 200, "early_stopping_rounds": 5})
    assert trees.chosen["n_estimators"] < 200


def test_dense_cv_that_would_overrun_its_budget_is_chosen_on_fold_one():
    X, y = blobs(n=90)
    p = cv_protocol(np.unique(y, return_inverse=True)[1], ["a", "b", "c"], folds=2)
    fixed = {"seed": 0, "epochs": 3, "hidden": (8,), "dropout": 0.5, "lr": 1e-3}
    # a budget no fit can meet: the default selection keeps fold 1 as its validation split
    best, trials = select("dense", X, y, p, fixed, budget_s=1e-6, holdout_ok=True)
    fit_rows, val_rows = best.holdout
    np.testing.assert_array_equal(fit_rows, p.pairs[0][0])
    np.testing.assert_array_equal(val_rows, p.pairs[0][1])
    assert len(best.scores) == 1 and "fold 1 of 2 only" in best.note and best.estimator is not None
    assert best.scores[0] == (best.estimator.predict(X[val_rows]) == y[val_rows]).mean()
    assert trials[0] is best and len(trials) == 1
    # an explicit CV (holdout_ok False) runs every fold whatever the budget
    best, _ = select("dense", X, y, p, fixed, budget_s=1e-6)
    assert best.holdout is None and len(best.scores) == 2
    # within the budget, the default selection is the full CV too, fold 1 included once
    best, trials = select("dense", X, y, p, fixed, budget_s=1e6, holdout_ok=True)
    assert best.holdout is None and len(trials[0].scores) == 2 and trials[0].estimator is None
    assert trials[0].chosen["epochs"] >= 1


def test_a_skipped_configuration_does_not_let_the_next_one_through(monkeypatch):
    """Each dense fit 'takes' 12 s on a fake clock; a 20 s budget admits the first only, never a later one."""
    import types

    from featx import selection as S

    clock = [0.0]
    monkeypatch.setattr(S.grid, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def fake_evaluate(kind, X, y, protocol, params, features="", keep_estimator=False, deadline=None):
        clock[0] += 12.0
        return S.Trial(kind, dict(params), features, scores=[0.5], seconds=12.0)

    monkeypatch.setattr(S.grid, "evaluate", fake_evaluate)
    X, y = blobs(n=30)
    p = S.val_protocol(20, 10)
    best, trials = S.select("dense", X, y, p, {"seed": 0}, budget_s=20.0)
    assert [bool(t.scores) for t in trials] == [True] + [False] * (len(S.DENSE_GRID) - 1)
    assert all("time budget" in t.skipped for t in trials[1:])


def _recording_make_head(monkeypatch, calls):
    """make_head as selection fits with it, recording the row ids (column 0) each fit and eval set held; dense kept tiny."""
    from featx import selection as S

    real = S.trials.make_head

    def make(kind, **params):
        if kind == "dense":
            params = {**params, "epochs": 2, "hidden": (8,)}
        head = real(kind, **params)
        fit = head.fit

        def recording_fit(X, y, eval_set=None):
            calls.append((kind, set(X[:, 0].astype(int)), None if eval_set is None else set(eval_set[0][:, 0].astype(int))))
            return fit(X, y, eval_set=eval_set)

        head.fit = recording_fit
        return head

    monkeypatch.setattr(S.trials, "make_head", make)


def test_early_stopping_rows_are_disjoint_from_the_scored_rows(monkeypatch):
    """The heads used to stop early on the very rows that scored them (dense and LightGBM share this path)."""
    kind = "lightgbm"
    X, y = blobs(n=120)
    X[:, 0] = np.arange(len(X))  # row ids, to see which rows each fit was given
    p = cv_protocol(np.unique(y, return_inverse=True)[1], ["a", "b", "c"], folds=3)
    calls = []
    _recording_make_head(monkeypatch, calls)
    evaluate(kind, X, y, p, {"seed": 0, "n_estimators": 50})
    assert len(calls) == 3
    for (_, fitted, stopped), (fit_rows, score_rows) in zip(calls, p.pairs):
        assert stopped and stopped.isdisjoint(score_rows) and stopped.isdisjoint(fitted)
        assert fitted | stopped == set(fit_rows.tolist())
        assert len(stopped) == round(0.1 * len(fit_rows))


def test_early_stopping_split_is_stratified_and_gives_up_on_too_few_rows():
    from featx.selection import early_stopping_split

    y = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    fit, stop = early_stopping_split(y)
    assert len(stop) == 10 and sorted(np.unique(y[stop], return_counts=True)[1]) == [2, 3, 5]
    assert set(fit).isdisjoint(stop) and len(fit) + len(stop) == 100
    assert early_stopping_split(np.array(["a", "b", "a", "b", "c"])) is None  # no room: fixed epochs or trees


def test_auto_scores_every_head_kind_even_when_the_screen_spent_the_budget(monkeypatch):
    """With the budget spent by the logistic screen, the dense head was listed as 'time budget' at 0.0 s."""
    from featx.selection import search

    X, y = blobs(n=90)
    X[:, 0] = np.arange(len(X))
    calls = []
    _recording_make_head(monkeypatch, calls)
    p = cv_protocol(np.unique(y, return_inverse=True)[1], ["a", "b", "c"], folds=2)
    trials = search({"f": X}, y, p, kinds=("logreg", "lightgbm", "dense"), base={"seed": 0}, budget_s=0.0)
    dense = [t for t in trials if t.kind == "dense"]
    assert dense[0].scores and len(dense[0].scores) == 2 and "past the 0s budget" in dense[0].note
    assert sum(1 for c in calls if c[0] == "dense") == 2
    assert any(t.kind == "lightgbm" and t.scores for t in trials)
    # the second pair of each kind is what the budget leaves out
    assert all(t.skipped.startswith("time budget") for t in trials if t.kind != "logreg" and not t.scores)


def test_best_epoch_is_the_one_early_stopping_restores():
    from featx.heads.dense import _best_epoch

    assert _best_epoch([1.0, 0.5, 0.4995, 0.6], 1e-3) == 2  # 0.4995 is not better by more than 0.001
    assert _best_epoch([1.0, 0.5, 0.498, 0.6], 1e-3) == 3
    assert _best_epoch([0.3], 1e-3) == 1


def test_default_dense_selection_falls_back_to_a_recorded_fold(tmp_path, flat):
    """Too slow for K folds + refit: fold 1's held-out rows become a recorded val split that finetune reuses."""
    from featx.tuning.rows import _split_rows

    res = api.fit_head("dense", data=flat, cache_dir=tmp_path / "c", out=tmp_path / "h", time_budget=1e-6,
                       epochs=2, hidden=(8,), dropout=0.5, lr=1e-3)
    man = json.loads((tmp_path / "h" / "manifest.json").read_text())
    sel = man["selection"]
    assert sel["protocol"] == "val" and sel["train_sha256_count"] + len(sel["val_sha256"]) == 21
    assert man["val_from"].startswith("fold 1 of 5-fold CV on train")
    assert "val" in res.metrics["splits"] and "cv" not in res.metrics and "fold 1 of" in res.report
    assert "over 2 x the 0s budget" in res.metrics["selection"]["note"]
    feats, splits, note = _split_rows(man, tmp_path / "c")
    assert sorted(splits.val.sha256.tolist()) == sel["val_sha256"] and note == ""
    # asked for explicitly, CV runs all folds and refits (3 of them: the count is not the point)
    res = api.fit_head("dense", data=flat, cache_dir=tmp_path / "c", out=tmp_path / "h2", time_budget=1e-6,
                       selection="cv", folds=3, epochs=2, hidden=(8,), dropout=0.5, lr=1e-3)
    assert res.metrics["cv"]["folds"] == 3 and len(res.metrics["cv"]["scores"]) == 3


def test_split_record_keys():
    rec = heads_split_record("val", train_sha256=["b", "a"], val_sha256=["d", "c"], seed=3, val_split=0.2)
    assert rec["protocol"] == "val" and rec["folds"] is None and rec["seed"] == 3 and rec["val_split"] == 0.2
    assert rec["train_sha256_count"] == 2 and rec["val_sha256"] == ["c", "d"] and rec["refit_all"] is False
    assert rec["train_sha256_digest"] == heads_split_record("val", train_sha256=["a", "b"])["train_sha256_digest"]


# --------------------------------------------------------------------------- through the cache

EXTRACT = dict(weights="none", image_size=32, progress=False)


@pytest.fixture
def flat(tmp_path):
    """Class folders without val/test: selection is by CV on train."""
    data = make_dataset(tmp_path / "flat", classes=("cats", "dogs", "owls"), per_class=7)
    featx.extract(data, "vgg16", cache_dir=tmp_path / "c", **EXTRACT)
    featx.extract(data, "vgg16", cut_blocks=1, cache_dir=tmp_path / "c", **EXTRACT)
    return data


def test_fit_head_default_is_cv_on_train_then_refit_on_all_of_train(tmp_path, flat):
    res = api.fit_head("logreg", data=flat, cache_dir=tmp_path / "c", out=tmp_path / "h")
    cv = res.metrics["cv"]
    assert cv["folds"] == 5 and len(cv["scores"]) == 5 and 0 <= cv["std"] and "val" not in res.metrics["splits"]
    assert "cv: accuracy" in res.report and "5-fold CV on train" in res.report
    man = json.loads((tmp_path / "h" / "manifest.json").read_text())
    sel = man["selection"]
    assert sel["protocol"] == "cv" and sel["folds"] == 5 and sel["train_sha256_count"] == 21
    assert "val_sha256" not in sel and sel["val_split"] is None
    # the saved head is the chosen C refitted on all 21 training images
    f = featx.load_features(flat, cache_dir=tmp_path / "c", extraction=man["extraction"])
    ref = LogisticHead(C=res.metrics["C"]).fit(f.X, np.array(f.class_names)[f.y])
    np.testing.assert_allclose(res.head.predict_proba(f.X), ref.predict_proba(f.X), rtol=1e-6)
    assert {"extraction", "settings", "weights_source", "seed", "source"} <= set(man)


def test_val_protocol_records_its_rows_and_refit_all(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=8, splits=["train", "val"])
    featx.extract(data, "vgg16", cache_dir=tmp_path / "c", **EXTRACT)
    res = api.fit_head("lightgbm", cache_dir=tmp_path / "c", out=tmp_path / "h", refit_all=True,
                       n_estimators=400, early_stopping_rounds=5)
    sel = json.loads((tmp_path / "h" / "manifest.json").read_text())["selection"]
    f = featx.load_features(data, cache_dir=tmp_path / "c")
    assert sel["protocol"] == "val" and sel["refit_all"] and sel["train_sha256_count"] == 16
    assert sel["val_sha256"] == sorted(f.only("val").sha256.tolist())
    # refit on train + val with exactly the count early stopping chose on val
    tr, va = f.only("train"), f.only("val")
    names = np.array(f.class_names)
    alone = LightGBMHead(n_estimators=400, early_stopping_rounds=5).fit(tr.X, names[tr.y], eval_set=(va.X, names[va.y]))
    assert res.metrics["selection"]["chosen"]["n_estimators"] == alone.best_iteration_
    assert res.head.booster_.current_iteration() == alone.best_iteration_


def test_fusion_joins_by_image_and_predict_uses_every_extraction(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=6)
    a = featx.extract(data, "vgg16", cache_dir=tmp_path / "c", **EXTRACT).extraction.name
    make_image(data / "cats" / "extra.png", color=(220, 40, 40), seed=77)  # only in the second extraction
    b = featx.extract(data, "vgg16", cut_blocks=1, cache_dir=tmp_path / "c", **EXTRACT).extraction.name
    logs = []
    res = api.fit_head("logreg", data=data, extraction=[a, b], cache_dir=tmp_path / "c", out=tmp_path / "h",
                       log=logs.append)
    assert any("left out 1 image" in m and "extra.png" in m for m in logs)
    man = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert [e["name"] for e in man["extractions"]] == [a, b] and man["extraction"] == a
    assert man["feature_widths"] == [512, 512] and man["feature_width"] == 1024
    assert res.metrics["selection"]["protocol"] == "cv" and res.metrics["splits"]["train"]["n"] == 12
    preds = api.predict(data / "dogs", head=tmp_path / "h", cache_dir=tmp_path / "c", progress=False)
    fa = featx.load_features(data, cache_dir=tmp_path / "c", extraction=a)
    fb = featx.load_features(data, cache_dir=tmp_path / "c", extraction=b)
    want = [p for p in fa.paths if "/dogs/" in p]
    rows = {p: np.concatenate([fa.X[list(fa.paths).index(p)], fb.X[list(fb.paths).index(p)]]) for p in want}
    assert sorted(preds.paths) == sorted(want)
    np.testing.assert_allclose(preds.probabilities, res.head.predict_proba(np.stack([rows[p] for p in preds.paths])),
                               rtol=1e-5)
    other = make_dataset(tmp_path / "other", per_class=3)
    c = featx.extract(other, "vgg16", cut_blocks=2, cache_dir=tmp_path / "c", **EXTRACT).extraction.name
    with pytest.raises(HeadError, match="Cannot fuse extractions of different datasets"):
        api.fit_head("logreg", extraction=[a, c], cache_dir=tmp_path / "c", out=tmp_path / "h2")


def test_head_auto_searches_and_saves_a_usable_head(tmp_path, flat, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    r = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "c"), "fit-head", "--head", "auto", "--data",
                                 str(flat), "--auto-heads", "logreg,lightgbm", "--folds", "3", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    header = ["features", "normalise", "head", "params", "cv_acc", "cv_std", "fit_s", "note"]
    assert header in [line.split() for line in r.output.splitlines()]
    assert "vgg16-32px+vgg16-32px-cut1" in r.output and "sqrt-l2" in r.output
    metrics = json.loads((tmp_path / "h" / "metrics.json").read_text())
    board = metrics["leaderboard"]
    scored = [row["cv_acc"] for row in board if row["cv_acc"] != ""]
    assert scored == sorted(scored, reverse=True) and {row["head"] for row in board} >= {"logreg", "lightgbm"}
    head = load_head(tmp_path / "h")
    assert head.kind == board[0]["head"] and head.normalise == board[0]["normalise"]
    preds = api.predict(flat / "owls", head=tmp_path / "h", cache_dir=tmp_path / "c", progress=False)
    assert len(preds.paths) == 7 and (np.array(preds.top(1))[:, 0, 0] == "owls").mean() >= 0.7


def test_val_scores_show_no_spread_and_skipped_rows_no_fit_time(monkeypatch):
    """'0.7059 +- 0.0000' on a val split, and 'time budget 20s' with fit_s 0.0 for a configuration never fitted."""
    import types

    from featx import selection as S

    clock = [0.0]
    monkeypatch.setattr(S.grid, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def fake_evaluate(kind, X, y, protocol, params, features="", keep_estimator=False, deadline=None):
        clock[0] += 7.0
        return S.Trial(kind, dict(params), features, scores=[0.5] * len(protocol.pairs), seconds=7.0)

    monkeypatch.setattr(S.grid, "evaluate", fake_evaluate)
    X, y = blobs(n=30)
    lines = []
    best, trials = S.select("dense", X, y, S.val_protocol(20, 10), {"seed": 0}, budget_s=20.0, log=lines.append)
    assert lines and not any("+-" in line for line in lines), lines
    assert [bool(t.scores) for t in trials[:3]] == [True, True, False]
    row = trials[2].row("val")
    assert row["fit_s"] == "" and row["note"] == "time budget 20s: not fitted, 14s used and the last fit took 7s"
    assert trials[0].row("val")["fit_s"] == 7.0
    assert S.Trial("logreg", {}, scores=[0.5, 0.7]).score_text == "0.6000 +- 0.1000"


def test_feature_labels_name_pooling_and_tta_so_fused_sets_never_read_the_same():
    from types import SimpleNamespace

    from featx.fusion import feature_label

    def f(**kw):
        s = {"backbone": "vgg16", "input_size": 150, "pooling": "avg", "cut_blocks": 0, "tta": "none", **kw}
        return SimpleNamespace(settings=SimpleNamespace(**s))

    assert feature_label(f()) == "vgg16-150px"
    assert feature_label(f(cut_blocks=1)) == "vgg16-150px-cut1"
    assert feature_label(f(pooling="max")) == "vgg16-150px-max"
    assert feature_label(f(pooling="gem", cut_blocks=2)) == "vgg16-150px-gem-cut2"
    assert feature_label(f(pooling="avg,max", tta="flip")) == "vgg16-150px-avgmax-flip"
    names = [feature_label(f(**kw)) for kw in ({}, {"pooling": "gem"}, {"tta": "flip"}, {"pooling": "avg,max"})]
    assert len(set(names)) == 4
