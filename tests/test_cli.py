"""The command line's option parsing: where options go, what values they take.

Almost everything here fails before any model is built: the API functions a
command calls are replaced by recorders, and bad values must be click usage
errors (exit 2). A few end-to-end runs on tiny synthetic data close the file.
"""

import dataclasses
import importlib
import json
import os
import re
import sys

import pytest
from click.testing import CliRunner

import featx
from featx import api, backbones
from featx.cli import IMAGE_SIZES, cli
from featx.errors import FeatxError, FeatxValueError

from conftest import make_dataset, make_image


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty working folder and no FEATX_* variables from the caller's shell."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATX_CACHE_DIR", raising=False)
    monkeypatch.delenv("FEATX_HOME", raising=False)
    return tmp_path


# --------------------------------------------------------------------------- --cache-dir and --home


class Recorder:
    """Stands in for an API function: records its keyword arguments, then stops the command.

    An options object (fit-head, predict, compare) counts as its fields, a head's own parameters included.
    """

    def __init__(self, *, takes_home=False):
        self.calls = []

        def fn(*args, **kwargs):
            options = [a for a in args if dataclasses.is_dataclass(a)]
            if options:
                fields = options[0].kwargs()
                kwargs = {**fields, **fields.pop("params", {}), **kwargs}
            if takes_home:
                kwargs.setdefault("home", None)
            self.calls.append(kwargs)
            raise FeatxError("recorded")
        self.fn = fn


# command line (after `featx`) -> (module, function) the command calls with cache_dir=
CACHE_COMMANDS = {
    "extract": (["extract", "img.png"], "featx.extraction", "extract"),
    "fit-head": (["fit-head"], "featx.fitting", "fit_with"),
    "predict": (["predict", "img.png"], "featx.predicting", "predict_with"),
    "compare": (["compare"], "featx.comparing", "compare_with"),
    "finetune": (["finetune"], "featx.tuning", "finetune"),
}


def _split(argv):
    """`featx extract img.png` -> (["extract"], ["img.png"]): the subcommand, then its arguments."""
    return argv[:1], argv[1:]


@pytest.mark.parametrize("name", sorted(CACHE_COMMANDS))
def test_cache_dir_after_the_subcommand_wins(name, isolated, monkeypatch):
    argv, module, attr = CACHE_COMMANDS[name]
    rec = Recorder()
    monkeypatch.setattr(importlib.import_module(module), attr, rec.fn)
    make_image(isolated / "img.png")
    env = {"FEATX_CACHE_DIR": "from-env"}
    sub, rest = _split(argv)
    cases = [
        (["--cache-dir", "group", *sub, "--cache-dir", "sub", *rest], "sub"),
        ([*sub, "--cache-dir", "sub", *rest], "sub"),
        ([*sub, *rest, "--cache-dir", "sub"], "sub"),
        (["--cache-dir", "group", *argv], "group"),
        (argv, "from-env"),
    ]
    for args, expected in cases:
        r = invoke(*args, env=env)
        assert r.exit_code == 1 and "recorded" in r.output, (args, r.output)
        assert str(rec.calls[-1]["cache_dir"]) == expected, args
    r = invoke(*argv, env={"FEATX_CACHE_DIR": None})
    assert str(rec.calls[-1]["cache_dir"]) == "cache"  # the documented default


@pytest.mark.parametrize("sub", [["cache", "list"], ["cache", "compact"], ["cache", "rm", "--all", "-y"]])
def test_cache_subcommands_take_cache_dir(sub, isolated):
    (isolated / "env").mkdir()
    (isolated / "mine").mkdir()
    for args in ([*sub, "--cache-dir", "mine"], ["--cache-dir", "other", *sub, "--cache-dir", "mine"]):
        r = invoke(*args, env={"FEATX_CACHE_DIR": "env"})
        assert r.exit_code in (0, 1), r.output
        assert "Usage" not in r.output and "No such option" not in r.output
    if sub[-1] == "list":
        r = invoke(*sub, "--cache-dir", "mine", env={"FEATX_CACHE_DIR": "env"})
        assert r.output.strip() == "No extractions in mine."
        r = invoke("--cache-dir", "group", *sub, env={"FEATX_CACHE_DIR": "env"})
        assert r.output.strip() == "No extractions in group."
        r = invoke(*sub, env={"FEATX_CACHE_DIR": "env"})
        assert r.output.strip() == "No extractions in env."


@pytest.mark.parametrize("name", ["fit-head", "predict", "compare", "finetune"])
def test_home_option_env_and_default(name, isolated, monkeypatch):
    argv, module, attr = CACHE_COMMANDS[name]
    rec = Recorder(takes_home=True)
    monkeypatch.setattr(importlib.import_module(module), attr, rec.fn)
    make_image(isolated / "img.png")
    sub, rest = _split(argv)
    cases = [
        ([*argv], {}, str(isolated)),  # default: the current folder
        ([*argv], {"FEATX_HOME": "h-env"}, str(isolated / "h-env")),
        (["--home", "h-group", *argv], {"FEATX_HOME": "h-env"}, str(isolated / "h-group")),
        (["--home", "h-group", *sub, "--home", "h-sub", *rest], {"FEATX_HOME": "h-env"}, str(isolated / "h-sub")),
        ([*sub, "--home", "~/h", *rest], {}, os.path.expanduser("~/h")),
    ]
    for args, env, expected in cases:
        r = invoke(*args, env=env)
        assert r.exit_code == 1 and "recorded" in r.output, (args, r.output)
        assert rec.calls[-1]["home"] == expected, args


# --------------------------------------------------------------------------- option values

BAD_VALUES = [
    (["extract", "--image-size", "0", "img.png"], "--image-size"),
    (["extract", "--image-size", "10000", "img.png"], "--image-size"),
    (["extract", "--image-size", "31", "img.png"], "--image-size"),
    (["extract", "--batch-size", "0", "img.png"], "--batch-size"),
    (["extract", "--workers", "0", "img.png"], "--workers"),
    (["extract", "--cut-blocks", "-1", "img.png"], "--cut-blocks"),
    (["extract", "--seed", "-1", "img.png"], "--seed"),
    (["fit-head", "--batch-size", "0"], "--batch-size"),
    (["fit-head", "--val-split", "1.5"], "--val-split"),
    (["fit-head", "--val-split", "0"], "--val-split"),
    (["fit-head", "--C", "-1"], "--C"),
    (["fit-head", "--C", "nan"], "--C"),
    (["fit-head", "--n-estimators", "0"], "--n-estimators"),
    (["fit-head", "--num-leaves", "1"], "--num-leaves"),
    (["fit-head", "--dropout", "2"], "--dropout"),
    (["fit-head", "--dropout", "1"], "--dropout"),
    (["fit-head", "--lr", "-1"], "--lr"),
    (["fit-head", "--lr", "inf"], "--lr"),
    (["fit-head", "--epochs", "0"], "--epochs"),
    (["fit-head", "--top-k", "0"], "--top-k"),
    (["fit-head", "--hidden", "12,x"], "expected widths"),
    (["fit-head", "--hidden", "0"], "expected positive widths"),
    (["fit-head", "--hidden", ","], "expected positive widths"),
    (["predict", "-k", "0", "img.png"], "-k"),
    (["predict", "--batch-size", "0", "img.png"], "--batch-size"),
    (["compare", "--heads", "dense,svm"], "--heads"),
    (["compare", "--val-split", "-0.1"], "--val-split"),
    (["finetune", "--batch-size", "0"], "--batch-size"),
    (["finetune", "--epochs", "0"], "--epochs"),
    (["finetune", "--lr", "-1"], "--lr"),
    (["finetune", "--patience", "-1"], "--patience"),
    (["finetune", "--unfreeze", "some"], "number of layers or 'all'"),
    (["finetune", "--unfreeze", "0"], "--unfreeze"),
    (["finetune", "--unfreeze-blocks", "0"], "--unfreeze-blocks"),
    (["finetune", "--augment", "flip,blur"], "Unknown augmentation 'blur'"),
    (["finetune", "--augment", "zoom=big"], "must be a number"),
    (["finetune", "--augment", "rotate=-0.1"], "must be in (0, 1]"),
    (["finetune", "--augment", "zoom=3"], "must be in (0, 1]"),
    (["finetune", "--augment", ","], "expected augmentations"),
]


@pytest.mark.parametrize("args,mentions", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_usage_errors(args, mentions, isolated):
    make_image(isolated / "img.png")
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Usage: ") and "Invalid value" in r.output and mentions in r.output, r.output
    assert "Traceback" not in r.output
    assert not (isolated / "cache").exists() and not (isolated / "heads").exists()


def test_good_values_reach_the_api(isolated, monkeypatch):
    fit, tune, cmp = Recorder(), Recorder(), Recorder()
    monkeypatch.setattr(importlib.import_module("featx.fitting"), "fit_with", fit.fn)
    monkeypatch.setattr(importlib.import_module("featx.comparing"), "compare_with", cmp.fn)
    monkeypatch.setattr(importlib.import_module("featx.tuning"), "finetune", tune.fn)
    invoke("fit-head", "--hidden", "512, 128", "--dropout", "0", "--val-split", "0.5", "--lr", "1e-4", "--C", "2")
    assert fit.calls[-1]["hidden"] == (512, 128) and fit.calls[-1]["dropout"] == 0.0
    assert fit.calls[-1]["val_split"] == 0.5 and fit.calls[-1]["lr"] == 1e-4
    invoke("fit-head", "--head", "logreg", "--C", "2")
    assert fit.calls[-1]["C"] == 2.0
    invoke("fit-head", "--head", "lightgbm", "--num-leaves", "2", "--n-estimators", "1")
    assert (fit.calls[-1]["num_leaves"], fit.calls[-1]["n_estimators"]) == (2, 1)
    invoke("compare", "--heads", " logreg ,dense")
    assert list(cmp.calls[-1]["heads"]) == ["logreg", "dense"]
    invoke("finetune", "--unfreeze", "ALL", "--augment", "flip,rotate=0.2,zoom", "--patience", "0")
    call = tune.calls[-1]["options"]
    assert call.unfreeze == "all" and call.patience == 0
    assert call.augmentation == {"flip": 1.0, "rotate": 0.2, "zoom": 0.1}
    invoke("finetune", "--unfreeze", "60", "--lr-decay", "1", "--warmup-epochs", "0", "--augment", "none")
    call = tune.calls[-1]["options"]
    assert (call.unfreeze, call.lr_decay, call.warmup_epochs, call.augmentation) == (60, 1.0, 0, {})


def test_cli_ranges_are_the_library_ranges():
    from featx.heads import HEADS
    from featx.normalise import NORMALISATIONS

    assert IMAGE_SIZES == backbones.IMAGE_SIZE_RANGE
    fit_head_opts = {o.name: o for o in cli.commands["fit-head"].params}
    assert list(fit_head_opts["kind"].type.choices) == [*HEADS, "auto"]
    assert list(fit_head_opts["normalise"].type.choices) == list(NORMALISATIONS)

def test_head_kinds_are_read_from_the_heads_registry(isolated, monkeypatch):
    """A kind added to the registry (heads.KINDS and heads.HEADS, kept equal by
    test_heads) is a choice of --head, --heads and --auto-heads, with no CLI change."""
    from featx import heads

    monkeypatch.setattr(heads, "KINDS", (*heads.KINDS, "svm"))
    monkeypatch.setitem(heads.HEADS, "svm", heads.LogisticHead)
    assert "[dense|logreg|lightgbm|svm|auto]" in invoke("fit-head", "--help").output
    rec = Recorder()
    monkeypatch.setattr(importlib.import_module("featx.comparing"), "compare_with", rec.fn)
    r = invoke("compare", "--heads", "svm,dense")
    assert r.exit_code == 1 and "recorded" in r.output, r.output
    assert rec.calls[-1]["heads"] == ("svm", "dense")
    monkeypatch.delitem(heads.HEADS, "svm")
    monkeypatch.setattr(heads, "KINDS", heads.KINDS[:-1])
    r = invoke("fit-head", "--auto-heads", "svm")
    assert r.exit_code == 2 and "expected head kinds among dense, logreg, lightgbm" in r.output


def test_cli_types_follow_the_options_objects():
    """--seed, --selection, --folds, --val-split, --top-k and --time-budget take their ranges from FitHeadOptions."""
    from featx.options import FOLDS, SELECTIONS, VAL_SPLIT

    params = {o.name: o for o in cli.commands["fit-head"].params}
    assert list(params["selection"].type.choices) == list(SELECTIONS)
    assert (params["folds"].type.min, params["folds"].type.min_open) == (FOLDS.left, False)
    assert (params["val_split"].type.min, params["val_split"].type.max) == (VAL_SPLIT.left, VAL_SPLIT.right)
    assert params["val_split"].type.min_open and params["val_split"].type.max_open
    assert params["seed"].type.max == 2**32 - 1 and params["top_k"].type.min == 1
    compare = {o.name: o for o in cli.commands["compare"].params}
    assert list(compare["selection"].type.choices) == list(SELECTIONS)


# fit-head option -> (head kind, parameter): the heads check these too; the CLI's ranges must be theirs.
HEAD_PARAM_OPTIONS = {"hidden": None, "dropout": ("dense", "dropout"), "lr": ("dense", "lr"),
                      "epochs": ("dense", "epochs"), "batch_size": ("dense", "batch_size"), "C": ("logreg", "C"),
                      "n_estimators": ("lightgbm", "n_estimators"), "num_leaves": ("lightgbm", "num_leaves")}


def test_head_parameter_options_have_the_heads_ranges():
    """The head's own parameters keep click types (so `fit-head --help` imports no scikit-learn);
    each range is the one the head checks, and the optimizer choices are the dense head's."""
    from featx.cli.types import interval_type
    from featx.heads import HEADS
    from featx.params import Interval

    params = {o.name: o for o in cli.commands["fit-head"].params}
    for name, where in HEAD_PARAM_OPTIONS.items():
        if where is None:
            continue
        kind, param = where
        want = interval_type(next(c for c in HEADS[kind]._parameter_constraints[param] if isinstance(c, Interval)))
        got = params[name].type
        assert (got.min, got.min_open, type(got)) == (want.min, want.min_open, type(want)), name
        if name != "num_leaves":  # LightGBM's own ceiling, 131072, which the head leaves to LightGBM
            assert (got.max, got.max_open) == (want.max, want.max_open), name
    optimizer = HEADS["dense"]._parameter_constraints["optimizer"][0]
    assert set(params["optimizer"].type.choices) == set(optimizer.values)


def test_help_imports_no_scikit_learn(tmp_path):
    """Choices read from the heads registry are read lazily: `featx --help` stays fast."""
    import subprocess

    code = ("import sys\nfrom featx.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'sklearn' not in sys.modules and 'lightgbm' not in sys.modules, 'imported'\nprint('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(featx.__file__))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-1000:]


OWN_MODULES = ["api.py", "fitting.py", "predicting.py", "comparing.py", "options.py", "outputs.py", "normalise.py",
               "calibration.py", "metrics.py", "fusion.py", "cli/*.py"]


def test_cli_and_api_modules_stay_small():
    """Issue #21: no module over 500 lines, no function or class over 100."""
    import ast
    from pathlib import Path

    root = Path(featx.__file__).parent
    paths = [p for pattern in OWN_MODULES for p in sorted(root.glob(pattern))]
    assert len(paths) >= 20
    for path in paths:
        text = path.read_text()
        assert text.count("\n") <= 500, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.end_lineno - node.lineno < 100, f"{path.name}: {node.name}"


@pytest.mark.parametrize("size", [0, -5, 31, 1025, 10000, 64.0, "64", True])
def test_extract_api_refuses_out_of_range_image_size(size, tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(backbones, "build_backbone", no_model)
    monkeypatch.setattr(backbones, "feature_model", no_model)
    make_image(tmp_path / "d" / "a.png")
    with pytest.raises(FeatxValueError, match=re.escape(f"Received: image_size={size!r}")) as info:
        featx.extract(tmp_path / "d", "vgg16", weights="none", image_size=size, cache_dir=tmp_path / "c",
                      progress=False)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FeatxError)


def test_check_input_size_keeps_native_default_and_family_minimum():
    vgg = backbones.get_backbone("vgg16")
    assert backbones.check_input_size(vgg, None) == 224
    assert backbones.check_input_size(vgg, 32) == 32 and backbones.check_input_size(vgg, 1024) == 1024
    with pytest.raises(FeatxError, match="at least 75 px"):
        backbones.check_input_size(backbones.get_backbone("inceptionv3"), 64)


# --------------------------------------------------------------------------- backbones


def test_backbones_word_matches_as_substring_in_table_and_json():
    table = invoke("backbones", "vgg")
    assert table.exit_code == 0, table.output
    assert [line.split()[0] for line in table.output.splitlines()[2:]] == ["vgg16", "vgg19"]
    as_json = invoke("backbones", "vgg", "--json")
    assert [b["name"] for b in json.loads(as_json.output)] == ["vgg16", "vgg19"]
    assert [b.name for b in backbones.list_backbones("Efficient-Net-V2")][:2] == ["efficientnetv2b0", "efficientnetv2b1"]
    assert [b.name for b in backbones.list_backbones("resnet?0")] == ["resnet50"]  # a pattern matches whole names
    nothing = invoke("backbones", "alexnet")
    assert nothing.exit_code == 1 and "alexnet" in nothing.output and "Traceback" not in nothing.output
    assert json.loads(invoke("backbones", "alexnet", "--json").output) == []


# --------------------------------------------------------------------------- what extract reports

BOMB_RUN = """
import sys
import PIL.Image
PIL.Image.MAX_IMAGE_PIXELS = 1000  # 40 x 40 images are "bombs": Pillow warns below twice its limit
import featx.decode
featx.decode.MAX_PIXELS = 1000
from featx.cli import main
main(sys.argv[1:])
"""


def test_extract_names_missing_files_and_stderr_has_no_warnings(tmp_path):
    """In a real process: a bomb is one skip line (no DecompressionBombWarning), missing
    files and broken links are named missing, a misspelt label column is one warning line."""
    from PIL import Image

    d = tmp_path / "d"
    d.mkdir()
    Image.new("RGB", (40, 40), (200, 0, 0)).save(d / "bomb.png")
    os.symlink(d / "gone.png", d / "link.png")
    (d / "notes.txt").write_text("x")
    (tmp_path / "labels.csv").write_text("path,lable\nd/bomb.png,a\nd/nope.png,b\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(featx.__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-c", BOMB_RUN, "--cache-dir", str(tmp_path / "c"), "extract", "-q", "-b", "vgg16",
            "--weights", "none", "--image-size", "32"]
    import subprocess

    folder = subprocess.run([*base, str(d)], capture_output=True, text=True, env=env, timeout=120)
    assert folder.returncode == 0, folder.stderr
    lines = folder.stderr.strip().splitlines()
    assert f"skipped {d / 'bomb.png'}: decompression bomb (40 x 40 pixels)" in lines
    assert f"missing: 1 file not found (broken symbolic link) (first: {d / 'link.png'})" in lines
    assert f"ignored 1 file that is not an image (first: {d / 'notes.txt'})" in lines
    assert "Warning" not in folder.stderr and len(lines) == 3, folder.stderr

    csv = subprocess.run([*base, str(tmp_path / "labels.csv")], capture_output=True, text=True, env=env, timeout=120)
    assert csv.returncode == 0, csv.stderr
    lines = csv.stderr.strip().splitlines()
    assert lines[0].startswith("warning: CSV ") and "columns found: 'path', 'lable'" in lines[0]
    assert f"missing: 1 file not found (first: {d / 'nope.png'})" in lines
    assert "not an image" not in csv.stderr and "Warning" not in csv.stderr and len(lines) == 3, csv.stderr


def test_plots_keep_matplotlib_warnings_to_themselves(tmp_path):
    import warnings

    import numpy as np

    from featx.metrics import plot_confusion, plot_curves

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(np.eye(3, dtype=int), ["猫", "dogs", "\N{HONEYBEE}"], tmp_path / "c.png", "glyphs: 猫")
        plot_curves({"loss": [1.0, 0.5]}, tmp_path / "k.png", "猫")
        warnings.warn("still shown", UserWarning)  # the filter ends with the plot
    assert [str(w.message) for w in caught] == ["still shown"]
    assert (tmp_path / "c.png").stat().st_size > 1000


# --------------------------------------------------------------------------- --head and --model


def _folder(path, kind):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"kind": kind, "classes": ["a", "b"]}))
    (path / "model.keras").write_bytes(b"")
    return path


def test_predict_model_and_head_options_refuse_the_other_kind(isolated):
    head = _folder(isolated / "heads" / "vgg16-dense-1", "dense")
    model = _folder(isolated / "models" / "vgg16-finetune-1", "end-to-end")
    make_image(isolated / "img.png")
    r = invoke("predict", "--model", head, "img.png")
    assert r.exit_code == 2 and "is a dense head (from `featx fit-head`), not a fine-tuned model" in r.output
    assert f"use --head {head}" in r.output
    r = invoke("predict", "--model", head / "model.keras", "img.png")
    assert r.exit_code == 2 and "not a fine-tuned model" in r.output
    r = invoke("predict", "--head", model, "img.png")
    assert r.exit_code == 2 and "is a fine-tuned model (from `featx finetune`), not a head" in r.output
    assert f"use --model {model}" in r.output
    r = invoke("finetune", "--head", model)
    assert r.exit_code == 2 and "not a head" in r.output


def test_predict_images_api_refuses_a_head_folder(tmp_path):
    from featx.tuning import FinetuneError, predict_images

    head = _folder(tmp_path / "h", "logreg")
    with pytest.raises(FinetuneError, match=r"is a logreg head \(from `featx fit-head`\), not a fine-tuned model"):
        predict_images(head, tmp_path)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def partial_splits(tmp_path_factory):
    """Extracted once: train holds three classes, val two of them, test one."""
    root = tmp_path_factory.mktemp("partial")
    data = make_dataset(root / "data", classes=("birds", "cats", "dogs"), per_class=6, splits=["train"])
    make_dataset(root / "data", classes=("cats", "dogs"), per_class=3, splits=["val"])
    make_dataset(root / "data", classes=("cats",), per_class=3, splits=["test"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("FEATX_HOME")  # results go under the folder it changed into
        r = invoke("extract", "-q", "-b", "vgg16", "--weights", "none", "--image-size", "32", data,
                   "--cache-dir", root / "cache")
    return root, data, r


def test_splits_with_some_classes_extract_and_fit(partial_splits, monkeypatch):
    root, data, r = partial_splits
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output.lower() and "27 images" in r.output
    monkeypatch.chdir(root)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    r = invoke("fit-head", "--head", "logreg", "--cache-dir", root / "cache")
    assert r.exit_code == 0, r.output
    assert "3 classes" in r.output and "test: accuracy" in r.output
    latest = featx.latest_head(root)
    assert json.loads((latest / "manifest.json").read_text())["classes"] == ["birds", "cats", "dogs"]


def test_predict_model_with_a_real_head_says_what_model_expects(partial_splits, monkeypatch):
    root, data, _ = partial_splits
    monkeypatch.chdir(root)
    monkeypatch.delenv("FEATX_HOME")  # results go under the folder it changed into
    out = root / "h-logreg"
    if not out.exists():
        assert invoke("fit-head", "--head", "logreg", "--out", out, "--cache-dir", root / "cache").exit_code == 0
    r = invoke("predict", "--model", out, data / "test", "--cache-dir", root / "cache")
    assert r.exit_code == 2 and "is a logreg head" in r.output and "Traceback" not in r.output, r.output
    r = invoke("predict", "--head", out, data / "test", "--cache-dir", root / "cache")
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "path,label_1,prob_1", r.output


def test_extract_choices_come_from_extract_options():
    """`featx extract`'s choices and defaults are ExtractOptions', not copies."""
    from featx.cli import cli
    from featx.extraction import ExtractOptions

    params = {p.name: p for p in cli.commands["extract"].params}
    for name, choices in ExtractOptions.CHOICES.items():
        assert tuple(params[name].type.choices) == choices, name
        assert params[name].default == getattr(ExtractOptions, name), name
