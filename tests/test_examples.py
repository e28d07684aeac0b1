"""The examples in examples/ must run.

Each example's own code runs in this process: the quickstart script through
runpy, the shell workflow's featx command lines (read from the script)
through click's CliRunner, which spares a TensorFlow import per command. The
shell script itself runs with a stand-in `featx` on PATH that records its
arguments: bash runs exactly the command lines the in-process test ran.
"""

import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from featx.cli import cli

from conftest import make_dataset

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "cli_workflow.sh"
HEADER = "path,label_1,prob_1,label_2,prob_2"


def _short_dense_search(monkeypatch):
    """The default dense search stops at a 3 s budget instead of 20: the same path, on 24 tiny images."""
    import featx.selection.grid

    monkeypatch.setattr(featx.selection.grid, "DENSE_BUDGET_S", 3.0)


@pytest.mark.slow
def test_quickstart_example_runs(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "data", per_class=6, splits=["train", "val"])
    _short_dense_search(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--data", str(data), "--weights", "none", "--image-size", "32",
                                      "--cache-dir", str(tmp_path / "cache")])
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "24 images, 24 computed" in out
    for kind in ("logreg", "lightgbm", "dense"):
        assert f"{kind}: val accuracy" in out
    last = out.strip().splitlines()[-1]  # a prediction: "cats_0.png: cats (0.97)"
    assert last.split(": ")[1].split(" ")[0] in ("cats", "dogs")
    # the example's heads live in its own temporary folder: the user's `latest` pointers are left alone
    for home in (Path(os.environ["FEATX_HOME"]), Path.cwd()):
        assert not (home / "heads").exists(), sorted(p.name for p in home.iterdir())


def workflow_commands(data: Path, size: int) -> list[list[str]]:
    """The featx command lines of examples/cli_workflow.sh, its variables filled in (no weights file)."""
    values = {"$weights": "none", "$size": str(size), "$data": str(data)}
    commands = []
    for line in WORKFLOW.read_text().splitlines():
        if not line.startswith("featx "):
            continue
        words = shlex.split(line, comments=True)[1:]
        commands.append([values.get(w, w) for w in words])
    return commands


STAND_IN = """#!/usr/bin/env bash
printf '%s\\0' "$@" >> "$FEATX_ARGS"; printf '\\n' >> "$FEATX_ARGS"
while [ $# -gt 0 ]; do [ "$1" = --out ] && echo "$HEADER" > "$2"; shift; done
"""


def test_cli_workflow_script_runs_those_command_lines(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "featx").write_text(STAND_IN)
    (bin_dir / "featx").chmod(0o755)
    args = tmp_path / "args"
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FEATX_ARGS": str(args), "HEADER": HEADER}
    out = subprocess.run(["bash", str(WORKFLOW), str(data), "32"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    ran = [line.split("\0")[:-1] for line in args.read_text().splitlines()]
    assert ran == workflow_commands(data.resolve(), 32)
    assert out.stdout.count(HEADER) == 2  # `head` shows both CSVs


@pytest.mark.slow
def test_cli_workflow_commands_run_in_order(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", per_class=6, splits=["train", "val"])
    commands = workflow_commands(data, 32)
    assert [c[0] for c in commands] == ["extract", "extract", "fit-head", "fit-head", "compare", "finetune", "predict",
                                        "predict", "extract", "fit-head", "inspect", "cache"]
    assert all("$" not in word for c in commands for word in c), commands
    monkeypatch.chdir(tmp_path)  # the script runs in a scratch folder; predictions land here
    _short_dense_search(monkeypatch)
    outputs = []
    for args in commands:
        if "--time-budget" in args:  # 24 tiny images: 5 s of search proves the same path as the script's 30
            args[args.index("--time-budget") + 1] = "5"
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 0, (args, out.output[-3000:])
        outputs.append(out.output)
    said = "".join(outputs)
    assert "0 computed, 24 reused" in outputs[1]
    assert "backbone  size  pooling" in said and "trainable params:" in said
    for csv in ("head_preds.csv", "model_preds.csv"):
        assert (tmp_path / csv).read_text().splitlines()[0] == HEADER
    assert "vgg16" in outputs[-1]  # cache list
