import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # tests are CPU-only and float32
# TensorFlow's own CPU kernels: the tests' tiny models at 32 px run about 9% faster on
# them than on oneDNN's, which featx turns on for real sizes (test_backbones checks that
# default in a fresh process). The two differ by float round-off only.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HYMENOPTERA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hymenoptera"
INTEL6 = HYMENOPTERA.parent / "intel6"
# The real datasets live beside the repository (../shared), not in it: a clone elsewhere skips their tests
needs_hymenoptera = pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"{HYMENOPTERA} not present")
needs_intel6 = pytest.mark.skipif(not INTEL6.is_dir(), reason=f"{INTEL6} not present")
REPO = Path(__file__).resolve().parents[1]
# Paths git may show as new after a run that are the runner's own, not a test's
_RUNNER_LEFTOVERS = ("__pycache__", ".pytest_cache", ".egg-info")


def _isolate(mp: pytest.MonkeyPatch, work: Path) -> None:
    """Point every place featx writes by default (cwd, home, cache, temp files) into ``work``."""
    for sub in ("cwd", "home", "tmp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    mp.chdir(work / "cwd")
    mp.setenv("FEATX_HOME", str(work / "home"))
    mp.setenv("FEATX_CACHE_DIR", str(work / "cache"))
    mp.setenv("TMPDIR", str(work / "tmp"))


@pytest.fixture(scope="session", autouse=True)
def _session_workspace(tmp_path_factory):
    """Module- and session-scoped fixtures run here, never in the checkout.

    The default dense search stops at a 3 s budget instead of 20 s: on the
    suite's tiny data it walks the same path (the first configuration always
    runs), and the budget rules themselves are tested with explicit budgets
    and a fake clock (test_selection.py).

    Built feature models are kept for the next extraction of the same model
    (``FEATX_KEEP_MODELS``, featx.extraction.forward.Shelf): most tests
    extract with the same tiny VGG16, and building and tracing it again
    cost a second of CPU each time. A test that replaces the builder gets
    no kept model (the builders are part of the key).
    """
    import featx.selection.grid

    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("session-work"))
        mp.setattr(featx.selection.grid, "DENSE_BUDGET_S", 3.0)
        mp.setenv("FEATX_KEEP_MODELS", "4")
        yield


@pytest.fixture(autouse=True)
def _test_workspace(tmp_path_factory):
    """Each test gets its own working directory, featx home, cache and TMPDIR.

    A test that wants the defaults (``./cache``, ``./heads``) changes into a
    folder of its own and removes the variables itself.
    """
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("work"))
        yield


def _checkout_state() -> set[str] | None:
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {line for line in out.stdout.splitlines() if not any(x in line for x in _RUNNER_LEFTOVERS)}


def pytest_sessionstart(session):
    session.config._featx_checkout = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    """The run fails if it changed the checkout it ran from (a test wrote outside its folder)."""
    before = getattr(session.config, "_featx_checkout", None)
    after = _checkout_state()
    if before is None or after is None or os.environ.get("FEATX_SKIP_CHECKOUT_CHECK"):
        return
    changed = sorted(after ^ before)
    if changed:
        print("\nfeatx: the test run changed the checkout it ran from (a test wrote outside its tmp folder):")
        for line in changed[:20]:
            print("   ", line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def make_image(path: Path, size=(40, 32), color=None, seed=0, fmt=None):
    """A small RGB image with some structure, written with Pillow."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if color is None:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.zeros((h, w, 3), np.uint8) + np.array(color, np.uint8)
        arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def make_dataset(root: Path, classes=("cats", "dogs"), per_class=6, splits=None, size=(40, 32)):
    """Class folders (optionally inside split folders) of colour-coded images.

    Each class has its own dominant colour, so even random-weight features
    separate them.
    """
    colors = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    for s_i, split in enumerate(splits or [None]):
        for c_i, cls in enumerate(classes):
            for i in range(per_class):
                folder = root / split / cls if split else root / cls
                make_image(folder / f"{cls}_{i}.png", size=size, color=colors[c_i % 4], seed=1000 * s_i + 100 * c_i + i)
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


sys.modules.setdefault("featx_test_helpers", sys.modules[__name__])
