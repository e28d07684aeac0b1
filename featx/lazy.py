"""Names a package loads on first use (PEP 562), so that importing it stays cheap."""

from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, namespace: dict, names: dict[str, str], modules: tuple[str, ...] = ()):
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a name to the submodule
    that defines it (bound into ``namespace`` once loaded); ``modules`` are submodules
    reachable as attributes."""

    def __getattr__(name):
        if name in modules:
            return import_module(f".{name}", package)
        if name in names:
            value = getattr(import_module(f".{names[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(names) | set(modules))

    return __getattr__, __dir__
