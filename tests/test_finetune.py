"""Phase two: rebuild, parity, what trains, BatchNorm, saving, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx import api
from featx import backbones as B
from featx import tuning as ft
from featx.tuning import build as ft_build, data as ft_data, rows as ft_rows, train as ft_train
from featx.tuning import unfreeze as ft_unfreeze
from featx.cli import cli
from featx.errors import HeadError

from conftest import make_dataset


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Split data, extractions with two backbones, and dense heads on each (one configuration: no search)."""
    root = tmp_path_factory.mktemp("ft")
    data = make_dataset(root / "data", per_class=8, splits=["train", "val", "test"])
    heads = {}
    for bb in ("vgg16", "resnet50"):
        featx.extract(data, bb, weights="none", image_size=32, cache_dir=root / "cache", progress=False)
        heads[bb] = api.fit_head("dense", cache_dir=root / "cache", backbone=bb, out=root / f"head-{bb}",
                                 epochs=10, hidden=(16,), dropout=0.5, lr=1e-3).directory
    return root, data, heads


def _setup(project, bb, **kw):
    root, _, heads = project
    model, base, man = ft.build_end_to_end(heads[bb])
    feats, sp, _ = ft_rows._split_rows(man, root / "cache", 0)
    return model, base, man, feats, sp


def test_rebuild_reproduces_the_head(project):
    model, base, man, feats, sp = _setup(project, "resnet50")
    diff = ft.parity_check(model, base, project[2]["resnet50"], sp, 32, "float32")
    assert diff < 1e-4


def test_parity_fails_with_wrong_preprocessing(project, monkeypatch):
    monkeypatch.setattr(B, "preprocess_affine", lambda mode: (np.eye(3, dtype="float32"), np.zeros(3, "float32")))
    model, base, man, feats, sp = _setup(project, "vgg16")  # vgg16 is 'caffe': identity is wrong
    with pytest.raises(ft.FinetuneError, match="Parity check failed"):
        ft.parity_check(model, base, project[2]["vgg16"], sp, 32, "float32")


def test_logreg_head_seeds_the_output_layer(project, tmp_path):
    root, data, _ = project
    d = api.fit_head("logreg", cache_dir=root / "cache", backbone="vgg16", out=tmp_path / "lr").directory
    model, base, man = ft.build_end_to_end(d)
    feats, sp, _ = ft_rows._split_rows(man, root / "cache", 0)
    assert ft.parity_check(model, base, d, sp, 32, "float32") < 1e-4


def test_only_requested_layers_train_and_bn_stays_frozen(project):
    model, base, man, _, _ = _setup(project, "resnet50")
    n = ft.set_trainable(model, base, "resnet50", unfreeze=10)
    assert n == 10  # counted in layers with weights to train, BatchNorm excluded
    weighted = [l for l in base.layers if l.weights and not ft_unfreeze._is_bn(l)]
    assert all(l.trainable for l in weighted[-10:]) and not any(l.trainable for l in weighted[:-10])
    assert not any(l.trainable for l in base.layers if ft_unfreeze._is_bn(l))
    ft.set_trainable(model, base, "resnet50", unfreeze_blocks=1)
    trainable = [l.name for l in base.layers if l.trainable and l.weights]
    assert trainable and all(name.startswith("conv5_block3") for name in trainable)
    ft.set_trainable(model, base, "resnet50", unfreeze="all")
    assert all(l.trainable for l in base.layers if l.weights and not ft_unfreeze._is_bn(l))
    table = ft.layer_table(base, max_rows=20).splitlines()
    assert len(table) <= 40 and "more layers" in table[-1] and "avg_pool" in table[-1]
    assert not any(l.trainable for l in base.layers if ft_unfreeze._is_bn(l))
    assert not model.get_layer("featx_preprocess").trainable
    ft.set_trainable(model, base, "resnet50")  # head only
    assert not any(l.trainable for l in base.layers if l.weights)
    with pytest.raises(ft.FinetuneError, match="has 53 layers with trainable weights .BatchNorm excluded.; cannot unfreeze the last 500"):
        ft.set_trainable(model, base, "resnet50", unfreeze=500)
    with pytest.raises(ft.FinetuneError, match="16 named blocks"):
        ft.set_trainable(model, base, "resnet50", unfreeze_blocks=17)


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)


def test_bn_statistics_stay_while_the_layers_around_them_train(project):
    import keras

    model, base, _, _, sp = _setup(project, "resnet50")
    ft.set_trainable(model, base, "resnet50", unfreeze_blocks=3)
    trained = [l for l in base.layers if l.trainable and l.weights]
    bns = [l for l in _walk(model) if ft_unfreeze._is_bn(l)]  # backbone and head
    # conv5's three blocks (and block1's shortcut) hold 10 BN layers among trainable convolutions
    assert sum(1 for l in bns if l.name.startswith("conv5_")) == 10
    assert trained and all(l.name.startswith("conv5_") for l in trained)
    kernels = {l.name: l.weights[0].numpy().copy() for l in trained}
    stats = {l.name: (l.moving_mean.numpy().copy(), l.moving_variance.numpy().copy()) for l in bns}
    x, kept, _ = ft.load_pixels(list(sp.train.paths), 32)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4), loss="sparse_categorical_crossentropy")
    model.fit(x, sp.train.y[kept], epochs=1, batch_size=8, verbose=0)
    assert all(not np.array_equal(l.weights[0].numpy(), kernels[l.name]) for l in trained)
    for l in bns:
        np.testing.assert_array_equal(l.moving_mean.numpy(), stats[l.name][0], err_msg=l.name)
        np.testing.assert_array_equal(l.moving_variance.numpy(), stats[l.name][1], err_msg=l.name)


@pytest.mark.slow
def test_finetune_saves_a_self_contained_model(project, tmp_path):
    root, data, heads = project
    logs = []
    res = ft.finetune(heads["vgg16"], cache_dir=root / "cache", out=tmp_path / "m", epochs=1,
                      batch_size=8, log=logs.append)
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    # by default the last block trains with the head, and one line says so
    assert [l.name for l in res.model.get_layer("vgg16").layers if l.trainable and l.weights] == \
        ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert m["unfreeze_default"] and m["unfreeze_blocks"] == 1 and m["best_epoch"] in (0, 1)
    line = next(l for l in logs if l.startswith("unfroze: "))
    assert line.startswith("unfroze: the last block of vgg16 (block5): 3 layers, 7,079,424 params") and "default" in line
    assert "the default for 16 training images (under 1,000: docs/finetune.md)" in line
    assert "warm-up: skipped, the head was fitted on exactly these training rows" in logs
    assert "augmentation: flip=1,crop=0.35 (the default for under 1,000 training images; change it with --augment)" in logs
    assert any(l.startswith("parity check on 16 validation images from 2 classes") for l in logs), logs
    head_metrics = json.loads((heads["vgg16"] / "metrics.json").read_text())
    # the rebuilt model starts exactly where the cached head is, on the same validation rows
    assert m["before"]["val"]["n"] == head_metrics["splits"]["val"]["n"] == 16
    assert m["before"]["val"]["accuracy"] == pytest.approx(head_metrics["splits"]["val"]["accuracy"])
    assert m["epochs_run"] == 1 and len(m["history"]["val_loss"]) == 1
    assert {"model.keras", "metrics.json", "curves.png", "manifest.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert (tmp_path / "m" / "saved_model" / "saved_model.pb").exists()
    # safe-mode reload in a fresh interpreter that never imports featx
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, keras; "
        f"m = keras.saving.load_model(r'{tmp_path / 'm' / 'model.keras'}', safe_mode=True); "
        f"np.save(r'{tmp_path / 'p.npy'}', m.predict(np.load(r'{tmp_path / 'x.npy'}'), verbose=0)); "
        "assert 'featx' not in sys.modules"
    )
    # the same CPU kernels as this process (featx turns oneDNN on): other kernels differ by round-off
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "", "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0")}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), res.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_one_epoch_reduces_training_loss(project):
    root, data, heads = project
    model, base, man, feats, sp = _setup(project, "vgg16")
    import keras

    ft.set_trainable(model, base, "vgg16", unfreeze_blocks=1)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-5), loss="sparse_categorical_crossentropy")
    x, kept, _ = ft.load_pixels(list(sp.train.paths), 32)
    y = sp.train.y[kept]
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    after = model.evaluate(x, y, verbose=0)
    assert after < before


def test_cli_finetune_then_predict_with_model(project, tmp_path, monkeypatch):
    root, data, heads = project
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    r = CliRunner().invoke(cli, ["--cache-dir", str(root / "cache"), "finetune", "--head", str(heads["vgg16"]),
                                 "--unfreeze", "4", "--epochs", "1", "--batch-size", "8", "--augment", "flip,rotate=0.1",
                                 "--no-export"])
    assert r.exit_code == 0, r.output
    assert "trainable params:" in r.output and "(head) ->" in r.output and "block5_conv3" in r.output
    from featx.outputs import latest_dir

    model_dir = str(latest_dir("model", tmp_path))
    # `featx predict` alone uses the latest head: the run says how to label images with the model instead
    assert f"label images with it: featx predict --model {model_dir} DATA" in r.output
    r = CliRunner().invoke(cli, ["predict", "--model", model_dir, "-k", "2", str(data / "test")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "path,label_1,prob_1,label_2,prob_2" and len(lines) == 17


def test_finetune_errors(project, tmp_path, monkeypatch):
    root, data, heads = project
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    run = lambda *a: CliRunner().invoke(cli, ["--cache-dir", str(root / "cache"), "finetune", *map(str, a)])
    r = run("--unfreeze", "3")
    assert r.exit_code == 1 and "No head has been saved under" in r.output
    r = run("--head", heads["vgg16"], "--unfreeze", "999", "--epochs", "1")
    assert r.exit_code == 1 and "cannot unfreeze the last 999" in r.output
    r = run("--head", heads["vgg16"], "--augment", "blur")
    assert r.exit_code == 2 and "Unknown augmentation 'blur'" in r.output  # a usage error, before any work
    # a head whose manifest says another backbone's width
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in heads["vgg16"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    man = json.loads((bad / "manifest.json").read_text())
    for record in (man, *man["extractions"]):
        record["settings"]["backbone"] = "resnet50"
        record.pop("loaded_weights")  # else the rebuilt resnet50 is refused first, for not having vgg16's weights
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(HeadError, match="expects 512 features; resnet50 at 32px gives 2048"):
        ft.build_end_to_end(bad)


def test_too_little_data_for_validation(tmp_path):
    data = make_dataset(tmp_path / "d", per_class=2)
    featx.extract(data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    d = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h", val_split=0.5, C=1.0).directory
    with pytest.raises(ft.FinetuneError, match="Too little data"):
        ft.finetune(d, cache_dir=tmp_path / "c", log=lambda m: None, out=tmp_path / "m")


def test_validation_is_the_heads_own_split(tmp_path):
    """Without a val split, finetune validates on the rows the head held out (its seed)."""
    from featx.features import load_features, make_splits

    data = make_dataset(tmp_path / "d", per_class=10)
    featx.extract(data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    d = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h", seed=3, C=1.0, selection="val").directory
    man = json.loads((d / "manifest.json").read_text())
    _, sp, note = ft_rows._split_rows(man, tmp_path / "c")
    assert note == "" and sorted(man["selection"]["val_sha256"]) == sorted(sp.val.sha256)
    feats = load_features(cache_dir=tmp_path / "c")
    held_out = make_splits(feats, 0.2, 3).val.paths
    assert sorted(sp.val.paths) == sorted(held_out)
    assert sorted(make_splits(feats, 0.2, 0).val.paths) != sorted(held_out)  # the seed matters here
    # fitted on exactly the rows fine-tuning trains on: no refit, no warm-up; on other rows: a warm-up
    assert ft_rows.start_from(d, man, tmp_path / "c", tmp_path / "m").same_rows
    man["selection"]["train_sha256_digest"] = "0" * 64
    start = ft_rows.start_from(d, man, tmp_path / "c", tmp_path / "m")
    assert start.head_dir == d and not start.same_rows and not (tmp_path / "m").exists()


def test_arguments_are_checked_before_anything_is_built(project, monkeypatch):
    root, data, heads = project

    def boom(*a, **k):
        raise AssertionError("built the model before checking the arguments")

    monkeypatch.setattr(ft_train, "build_end_to_end", boom)
    for kw, msg in ((dict(batch_size=0), "batch_size must be an integer >= 1"), (dict(lr=-1.0), "lr must be"),
                    (dict(epochs=0), "epochs must be"), (dict(unfreeze=0), "unfreeze must be"),
                    (dict(unfreeze=3, unfreeze_blocks=1), "not both")):
        with pytest.raises(ft.FinetuneError, match=msg):
            ft.finetune(heads["vgg16"], cache_dir=root / "cache", log=lambda m: None, **kw)


def test_unfreeze_counts_layers_with_weights(project):
    model, base, *_ = _setup(project, "vgg16")
    assert ft.set_trainable(model, base, "vgg16", unfreeze=2) == 2
    assert [l.name for l in base.layers if l.trainable and l.weights] == ["block5_conv2", "block5_conv3"]


def test_finetune_starts_from_the_latest_head_of_any_kind(project, tmp_path):
    root, data, heads = project
    home = tmp_path / "home"
    api.fit_head("logreg", cache_dir=root / "cache", backbone="vgg16", home=home, C=1.0)
    lgb = api.fit_head("lightgbm", cache_dir=root / "cache", backbone="vgg16", home=home, n_estimators=5).directory
    assert ft.seed_head(home).resolve() == lgb.resolve()


def test_a_lightgbm_head_starts_from_a_logreg_on_the_same_rows(project, tmp_path):
    root, data, _ = project
    lgb = api.fit_head("lightgbm", cache_dir=root / "cache", backbone="vgg16", out=tmp_path / "lgb").directory
    man = json.loads((lgb / "manifest.json").read_text())
    logs = []
    start = ft_rows.start_from(lgb, man, root / "cache", tmp_path / "m", logs.append)
    start_man = json.loads((start.head_dir / "manifest.json").read_text())
    assert start.head_dir == tmp_path / "m" / "start-head" and start_man["kind"] == "logreg" and start.same_rows
    # the rows LightGBM was fitted and validated on: train, and the data's val split
    assert start_man["selection"]["train_sha256_digest"] == man["selection"]["train_sha256_digest"]
    assert sorted(start.splits.val.sha256) == man["selection"]["val_sha256"]
    assert "a lightgbm head has no layer to fine-tune: starting from a logreg softmax" in logs[0]
    model, base, _ = ft.build_end_to_end(start.head_dir)
    assert ft.parity_check(model, base, start.head_dir, start.splits, 32, "float32") < 1e-4


def test_a_head_that_saw_every_row_gives_up_its_held_out_fold(tmp_path):
    """The issue's failure: a head refit on all of train must not be validated on rows it saw."""
    from featx.selection import cv_protocol

    data = make_dataset(tmp_path / "d", per_class=10)
    featx.extract(data, "vgg16", weights="none", image_size=32, cache_dir=tmp_path / "c", progress=False)
    for kw in (dict(selection="val", refit_all=True), dict(selection="cv", folds=4)):  # neither holds rows out
        d = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h", C=1.0, **kw).directory
        man = json.loads((d / "manifest.json").read_text())
        feats, sp, seen = ft_rows._split_rows(man, tmp_path / "c")
        assert seen and not set(sp.val.sha256) & set(sp.train.sha256), kw
        if kw["selection"] == "cv":  # fold 1 of the selection's own folds
            train = feats.only("train")
            held = cv_protocol(train.y, feats.class_names, 4, 0).pairs[0][1]
            assert "4-fold cross-validation" in seen and sorted(sp.val.sha256) == sorted(train.sha256[held])
        else:
            assert "train+val" in seen and sorted(sp.val.sha256) == man["selection"]["val_sha256"]
        logs = []
        start = ft_rows.start_from(d, man, tmp_path / "c", tmp_path / "m", logs.append)
        start_man = json.loads((start.head_dir / "manifest.json").read_text())
        # the same configuration, refit without the validation rows
        assert start_man["kind"] == "logreg" and start_man["params"]["C"] == 1.0 and start.same_rows
        assert start_man["selection"]["train_sha256_count"] == len(sp.train) == 20 - len(sp.val)
        assert "so it has seen every training row" in logs[0]


def test_parity_compares_features_from_every_class(project, monkeypatch):
    model, base, man, feats, sp = _setup(project, "vgg16")
    rows = ft_build._parity_sample(sp.val.y, 4)
    assert sorted(sp.val.y[rows].tolist()) == [0, 0, 1, 1]  # not the first 4 by path (one class)
    # features off by 5%: a confident head's probabilities barely move, the feature check fails
    sp.val.X = sp.val.X * 1.05
    with pytest.raises(ft.FinetuneError, match="features differ from the cached ones"):
        ft.parity_check(model, base, project[2]["vgg16"], sp, 32, "float32")


def test_mixed_precision_fine_tuning_scales_the_loss():
    import keras

    opt = ft.make_optimizer(keras, "adam", 1e-5, "mixed")
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(ft.make_optimizer(keras, "sgd", 1e-5, "float32"), keras.optimizers.LossScaleOptimizer)


def test_earlier_tap_fused_and_normalised_heads_rebuild_with_parity(tmp_path):
    from featx.cache import Cache

    data = make_dataset(tmp_path / "d", per_class=6, splits=["train", "val"])
    res = featx.extract(data, "vgg16", taps=[0, 1], weights="none", image_size=32, cache_dir=tmp_path / "c",
                        progress=False)
    top, cut1 = (e.name for e in res.extractions)
    # an earlier tap: the rebuilt backbone ends there
    d1 = api.fit_head("logreg", cache_dir=tmp_path / "c", extraction=cut1, out=tmp_path / "h1", C=1.0).directory
    model, base, man = ft.build_end_to_end(d1)
    assert "block5_conv1" not in {l.name for l in base.layers} and "block4_pool" in {l.name for l in base.layers}
    _, sp, _ = ft_rows._split_rows(man, tmp_path / "c")
    assert ft.parity_check(model, base, d1, sp, 32, "float32") < 1e-4
    # both taps fused (earlier first), sqrt-l2 normalised: one backbone, the head's column order, parity
    d2 = api.fit_head("logreg", cache_dir=tmp_path / "c", extraction=[cut1, top], normalise="sqrt-l2",
                      out=tmp_path / "h2", C=1.0).directory
    model, base, man = ft.build_end_to_end(d2)
    assert len(man["extractions"]) == 2 and int(model.output.shape[-1]) == 2
    _, sp, _ = ft_rows._split_rows(man, tmp_path / "c")
    assert sp.val.X.shape[1] == 1024
    assert ft.parity_check(model, base, d2, sp, 32, "float32") < 1e-4
    assert len(Cache(tmp_path / "c").extractions()) == 2


def test_unreadable_images_same_rows_before_and_after_and_empty_batches(project, tmp_path, monkeypatch):
    """Images that cannot be read at fine-tuning time (moved or damaged since extraction):
    before and after score the same test rows (and say how many), and a training
    batch with no readable image is skipped, not a crash."""
    from featx.errors import BadImage

    root, data, heads = project
    train = sorted(str(p) for p in (data / "train").rglob("*.png"))
    gone = {str(data / "test" / "cats" / "cats_0.png"), *train[3:]}  # 13 of 16 train: some batch of 4 has none
    read_image = ft_data.read_image

    def read(path, size):
        if str(path) in gone:
            raise BadImage(f"{path}: cannot identify image file")
        return read_image(path, size)

    monkeypatch.setattr(ft_data, "read_image", read)
    logs = []
    res = ft.finetune(heads["vgg16"], cache_dir=root / "cache", out=tmp_path / "m", epochs=2, batch_size=4,
                      patience=5, export=False, warmup_epochs=1, log=logs.append)
    assert "warm-up: the head alone for 1 epoch(s), the backbone frozen..." in logs
    m = res.metrics
    assert m["epochs_run"] == 2
    assert m["before"]["test"]["n"] == m["after"]["test"]["n"] == 15
    assert m["unreadable"] == {"val": 0, "test": 1, "train": 13}
    assert any(line.startswith("test: 15 images (1 cannot be read now") for line in logs), logs
    note = next(n for n in m["notes"] if n.startswith("13 training images could not be read"))
    assert "batches had none and were skipped" in note


def test_unfreeze_is_checked_against_the_layer_table_before_anything_is_built(project, tmp_path, monkeypatch):
    root, data, heads = project

    def boom(*a, **k):
        raise AssertionError("built or read something before checking --unfreeze")

    for name in ("build_end_to_end", "start_from", "import_keras"):
        monkeypatch.setattr(ft_train, name, boom)
    monkeypatch.setattr(B, "build_backbone", boom)
    with pytest.raises(ft.FinetuneError) as err:
        ft.finetune(heads["vgg16"], unfreeze=60, cache_dir=root / "cache", log=lambda m: None)
    msg = str(err.value)
    assert "vgg16 has 13 layers with trainable weights" in msg and "The largest is --unfreeze 13 (or all)" in msg
    assert "--unfreeze-blocks 1 = block5 (3 layers), 2 = block4 .. block5 (6 layers)" in msg
    with pytest.raises(ft.FinetuneError, match="has 5 named blocks; cannot unfreeze the last 6. The largest is "
                                               "--unfreeze-blocks 5"):
        ft.finetune(heads["vgg16"], unfreeze_blocks=6, cache_dir=root / "cache", log=lambda m: None)
    r = CliRunner().invoke(cli, ["--cache-dir", str(root / "cache"), "finetune", "--head", str(heads["vgg16"]),
                                 "--unfreeze", "60"])
    assert r.exit_code == 1 and "The largest is --unfreeze 13" in r.output and "Traceback" not in r.output


def test_unfreeze_table_matches_the_models():
    from featx.unfreeze_table import TABLE, measure, unfreezable

    for name in ("vgg16", "mobilenetv3small"):
        assert measure(name) == TABLE[name], name
    # resnet50's count is the one set_trainable reports after a real build (test above: 53)
    assert unfreezable("resnet50").total == 53 and len(unfreezable("resnet50").blocks) == 16
    cut = unfreezable("vgg16", cut_blocks=1)  # tapped at block4: block5 is not there to unfreeze
    assert cut.total == 10 and cut.blocks[-1][0] == "block4"
    assert set(TABLE) == set(B.REGISTRY)


def test_curves_have_whole_epochs_and_mark_the_restored_one(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from featx.metrics import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    history = {"loss": [0.9, 0.7, 0.6, 0.65, 0.7], "val_loss": [0.8, 0.6, 0.62, 0.7, 0.75],
               "accuracy": [0.5, 0.6, 0.7, 0.7, 0.75], "val_accuracy": [0.55, 0.7, 0.68, 0.66, 0.65]}
    plot_curves(history, tmp_path / "c.png", "t", best_epoch=2)
    assert (tmp_path / "c.png").exists()
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        labels = [l.get_label() for l in ax.get_lines()]
        assert "restored: epoch 2" in labels
        marked = [l for l in ax.get_lines() if list(l.get_xdata()) == [2]]
        assert marked and marked[0].get_marker() == "*"


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_without_a_crash(project, tmp_path):
    """SIGINT once training runs: featx stops its decode threads and exits 130 (never -11/139)."""
    import signal

    root, data, heads = project
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "featx.cli", "--cache-dir", str(root / "cache"), "finetune", "--head",
           str(heads["vgg16"]), "--epochs", "10000", "--patience", "10000", "--batch-size", "2", "--no-export",
           "--out", str(tmp_path / "m")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp_path)
    seen = []
    for line in proc.stdout:  # wait for the second epoch to begin: batches are decoding in threads
        seen.append(line)
        if line.startswith("Epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "Interrupted: no model was saved" in out and "Traceback" not in out


# --------------------------------------------------------------------------- options, learning rates, augmentation


def test_options_are_checked_once_and_frozen():
    import dataclasses

    opts = ft.FinetuneOptions(augment="flip,crop=0.2", lr_decay=0.3)
    assert opts.augmentation == {"flip": 1.0, "crop": 0.2} and opts.unfreeze_by_default
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.lr = 1.0
    for kw, msg in ((dict(lr_decay=0.0), "lr_decay must be a number in .0, 1."), (dict(lr_decay=1.5), "lr_decay"),
                    (dict(warmup_epochs=-1), "warmup_epochs must be"), (dict(optimizer="adamw"), "one of adam"),
                    (dict(augment="crop=0.95"), r"in \(0, 0.9\]"), (dict(augment="blur"), "Unknown augmentation"),
                    (dict(unfreeze="some"), "unfreeze must be")):
        with pytest.raises(ft.FinetuneError, match=msg):
            ft.FinetuneOptions(**kw)
    assert ft.FinetuneOptions(augment="none").augment_for(50) == {}
    assert ft.FinetuneOptions().augment_for(50) == {"flip": 1.0, "crop": 0.35}  # chosen by data size


def test_defaults_follow_the_data_size(project):
    from featx.spec import specs_of_manifest
    from featx.tuning.options import default_augment, default_unfreeze_blocks, size_band

    assert [default_unfreeze_blocks(n) for n in (245, 999, 1_000, 9_999, 10_000)] == [1, 1, 2, 2, 3]
    assert "rotate" in default_augment(5_000) and "contrast" in default_augment(20_000)
    assert [size_band(n) for n in (10, 5_000, 20_000)] == ["under 1,000", "1,000 - 10,000", "over 10,000"]
    man = json.loads((project[2]["vgg16"] / "manifest.json").read_text())
    specs = specs_of_manifest(man)
    assert ft_train._unfreeze_setting(ft.FinetuneOptions(), specs, 2_000) == \
        (2, "for 2,000 training images (1,000 - 10,000: docs/finetune.md)")
    assert ft_train._unfreeze_setting(ft.FinetuneOptions(unfreeze=4), specs, 2_000) == (None, "")


def test_discriminative_learning_rates_scale_each_variable_update():
    """Adam's step does not depend on the gradient's scale, so the rate itself is scaled, per variable."""
    import keras

    from featx.tuning.optim import make_optimizer

    def step(name, scale):
        keras.utils.set_random_seed(0)
        inp = keras.Input((4,))
        out = keras.layers.Dense(2, activation="softmax", name="b")(keras.layers.Dense(3, name="a")(inp))
        model = keras.Model(inp, out)
        start = [w.numpy().copy() for w in model.weights]
        scales = {w.path: scale for w in model.get_layer("a").weights} if scale != 1 else None
        model.compile(optimizer=make_optimizer(keras, name, 0.01, "float32", scales),
                      loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
        model.fit(x, np.array([0, 1] * 4), epochs=1, batch_size=8, verbose=0)
        return [np.abs(w.numpy() - s).sum() for w, s in zip(model.weights, start)]

    for name in ("adam", "sgd"):
        full, scaled = step(name, 1), step(name, 0.25)
        np.testing.assert_allclose(np.divide(scaled, full), [0.25, 0.25, 1, 1], rtol=1e-3, err_msg=name)


def test_lower_blocks_get_lower_learning_rates(project):
    from featx.tuning.unfreeze import lr_scales

    model, base, *_ = _setup(project, "vgg16")
    ft.set_trainable(model, base, "vgg16", unfreeze_blocks=3)
    scales = lr_scales(model, base, "vgg16", 0.5)
    by_layer = {}
    for layer in base.layers:
        for w in layer.trainable_weights:
            by_layer[layer.name] = scales.get(w.path, 1.0)
    assert by_layer == {**{f"block5_conv{i}": 1.0 for i in (1, 2, 3)}, **{f"block4_conv{i}": 0.5 for i in (1, 2, 3)},
                        **{f"block3_conv{i}": 0.25 for i in (1, 2, 3)}}
    assert not any(w.path in scales for w in model.get_layer("head").trainable_weights)
    assert lr_scales(model, base, "vgg16", 1.0) == {}


def test_random_resized_crop_keeps_a_part_of_the_image_at_its_size():
    from featx.tuning.data import random_resized_crop

    image = np.repeat(np.repeat((np.arange(16) * 10).astype(np.uint8)[None, :, None], 16, 0), 3, 2)  # columns 0..150
    rng = np.random.default_rng(0)
    same = random_resized_crop(image, rng, (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_array_equal(same, image)
    spans, corners = [], []
    for _ in range(20):
        out = random_resized_crop(image, rng, (0.25, 0.25), (1.0, 1.0))  # an 8 x 8 crop, resized back to 16 x 16
        assert out.shape == image.shape and out.dtype == np.uint8
        spans.append(int(out[..., 0].max()) - int(out[..., 0].min()))
        corners.append(int(out[0, 0, 0]))
    assert max(spans) <= 71 and len(set(corners)) > 1  # 8 columns of 10 apart (not 16), taken at several places
    gray = random_resized_crop(image[..., :1], np.random.default_rng(1), (0.5, 0.9))
    assert gray.shape == (16, 16, 1)
    a = random_resized_crop(image, np.random.default_rng(5), (0.3, 0.8))
    np.testing.assert_array_equal(a, random_resized_crop(image, np.random.default_rng(5), (0.3, 0.8)))  # seeded


def test_a_head_on_a_flip_tta_extraction_fine_tunes_its_backbone(tmp_path):
    """--tta flip wraps the backbone in the feature model: the rebuilt model still reproduces the head, and
    unfreezing reaches the backbone's last block inside the wrapper (it used to freeze it all and refuse)."""
    data = make_dataset(tmp_path / "d", per_class=4, splits=["train", "val"])
    featx.extract(data, "vgg16", weights="none", image_size=32, tta="flip", cache_dir=tmp_path / "c", progress=False)
    head = api.fit_head("logreg", cache_dir=tmp_path / "c", out=tmp_path / "h", C=1.0).directory
    model, base, man = ft.build_end_to_end(head)
    assert base.name.startswith("vgg16") and any(l.name == "block5_conv3" for l in base.layers)
    n = ft.set_trainable(model, base, "vgg16", unfreeze_blocks=1)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert n == 3 and {"block5_conv1", "block5_conv2", "block5_conv3"} <= trainable
    assert not trainable & {"block4_conv3", "block1_conv1"}
    sp = ft_rows._split_rows(json.loads((head / "manifest.json").read_text()), tmp_path / "c")[1]
    assert ft.parity_check(model, base, head, sp, 32, "float32") < 1e-4
