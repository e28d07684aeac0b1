"""featx uses what its libraries publish: no private scikit-learn module, nothing of keras.src."""

import ast
from pathlib import Path

import pytest

FEATX = Path(__file__).resolve().parents[1] / "featx"


def _imports(path: Path):
    """(line, module) of every import in a file, the modules an import-from names included."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _private(module: str) -> bool:
    parts = module.split(".")
    if parts[0] == "keras":
        return len(parts) > 1 and parts[1] == "src"
    if parts[0] in ("sklearn", "lightgbm", "h5py", "PIL", "simplejpeg", "click", "ray", "tensorflow", "jax"):
        return any(p.startswith("_") for p in parts[1:])
    return False


@pytest.mark.parametrize("path", sorted(FEATX.rglob("*.py")), ids=lambda p: str(p.relative_to(FEATX)))
def test_featx_imports_no_private_module(path):
    found = [f"{path.name}:{line} imports {mod}" for line, mod in _imports(path) if _private(mod)]
    assert not found, found
    # a patch needs no import statement: keras.src named anywhere in the code is the same dependency
    text = path.read_text()
    assert "keras.src" not in "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def test_the_scan_sees_private_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sklearn.utils._param_validation import Interval\n"
                   "    from keras.src.utils import file_utils\n    import sklearn._config\n")
    assert [mod for _, mod in _imports(bad) if _private(mod)] == [
        "sklearn.utils._param_validation", "sklearn.utils._param_validation.Interval",
        "keras.src.utils", "keras.src.utils.file_utils", "sklearn._config"]
