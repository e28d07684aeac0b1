"""benchmarks/gpu_check.sh must run end to end before a GPU is lent: its dry mode, on this CPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_records(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--batch-sizes", "8",
                           "--workers", "default"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads((tmp_path / "out" / "gpu.json").read_text())
    # with nvImageCodec installed, the decode="gpu" row runs on its CPU backend in the dry mode
    assert [r["decode"] for r in runs] == (["cpu", "gpu"] if _has_nvimgcodec() else ["cpu"]), done.stdout[-3000:]
    assert all(r["images"] == 30 and r["images_per_s"] > 0 for r in runs)
    r = runs[0]
    for key in ("device", "date", "backend", "backbone", "image_size", "precision", "batch_size", "workers",
                "images_per_s", "model_ceiling", "host_ceiling", "warm_fraction", "plus10_fraction"):
        assert r[key] is not None, key
    assert r["images"] == 30 and r["batch_size"] == 8 and r["backend"] in ("tensorflow", "jax")
    assert 0 < r["warm_fraction"] < 1 and r["model_ceiling"] > 0 and r["host_ceiling"] > 0
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert "model-alone ceiling" in table and "| decode |" in table and "Bound by the" in table
    assert ("decode gpu: run on nvImageCodec's CPU backend" if _has_nvimgcodec() else "decode gpu: not run") in table


def _has_nvimgcodec() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except (ImportError, ValueError):
        return False
