"""The examples in examples/ must run."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import make_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_runs(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6, splits=["train", "val"])
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--data", str(data), "--weights", "none",
         "--image-size", "32", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "24 images, 24 computed" in out.stdout
    for kind in ("logreg", "lightgbm", "dense"):
        assert f"{kind}: val accuracy" in out.stdout
    last = out.stdout.strip().splitlines()[-1]  # a prediction: "cats_0.png: cats (0.97)"
    assert last.split(": ")[1].split(" ")[0] in ("cats", "dogs")


def test_cli_workflow_example_runs(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6, splits=["train", "val"])
    env = {**os.environ, "HOME": str(tmp_path)}  # no cached bench weights: the script falls back to 'none'
    out = subprocess.run(["bash", str(ROOT / "examples" / "cli_workflow.sh"), str(data), "32"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "0 computed, 24 reused" in out.stdout
    assert "backbone  size  pooling" in out.stdout and "trainable params:" in out.stdout
    assert out.stdout.count("path,label_1,prob_1,label_2,prob_2") == 2  # both CSVs
