"""The suite's own promise: a test never writes outside its temporary folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featx.outputs import home_dir
from featx.cache import default_cache_dir

HERE = Path(__file__).resolve().parent


def test_each_test_runs_in_a_workspace_of_its_own(tmp_path_factory):
    base = tmp_path_factory.getbasetemp().resolve()
    for place in (Path.cwd(), home_dir(), default_cache_dir(), Path(os.environ["TMPDIR"])):
        assert base in place.resolve().parents, place
    assert Path.cwd().resolve() != HERE.parent


def _fake_checkout(root: Path, test_body: str) -> Path:
    repo = root / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(HERE / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "test_it.py").write_text(test_body)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    return repo


def _pytest(repo: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FEATX_SKIP_CHECKOUT_CHECK", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=repo,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_a_run_that_writes_into_the_checkout_fails(tmp_path):
    repo = _fake_checkout(tmp_path, (
        "from pathlib import Path\n"
        "def test_writes_a_pointer():\n"
        "    (Path(__file__).resolve().parents[1] / 'heads').mkdir()\n"
        "    (Path(__file__).resolve().parents[1] / 'heads' / 'latest').write_text('x')\n"
    ))
    out = _pytest(repo)
    assert out.returncode != 0, out.stdout
    assert "1 passed" in out.stdout  # the test itself passed: the check is what failed the run
    assert "changed the checkout" in out.stdout and "heads/" in out.stdout
    # (the opposite case, a run that writes only to its workspace, is this very suite passing)

