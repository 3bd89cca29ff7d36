"""Name -> object registries, so an experiment YAML can name every piece it uses.

A module that defines a piece registers it where it is defined::

    @SAMPLERS.register("euler")
    def euler(...): ...

and ``SAMPLERS.get("euler")`` finds it. Unknown names raise a KeyError that lists
the names that do exist.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterable


class Registry:
    """A named table of objects of one kind (samplers, paths, optimizers, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorate(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)


DATASETS = Registry("dataset")
PATHS = Registry("probability path")
COUPLINGS = Registry("coupling")
LOSSES = Registry("loss")
TIME_DENSITIES = Registry("timestep density")
MODELS = Registry("model")
SAMPLERS = Registry("sampler")
SCHEDULES = Registry("schedule")
OPTIMIZERS = Registry("optimizer")
PROBLEMS = Registry("problem")
METRICS = Registry("metric")


def is_plugin_file(entry: str) -> bool:
    """A ``plugins:`` entry is a Python file (``ab3.py``, ``plugins/ab3.py``) or a module name."""
    return entry.endswith(".py")


def load_plugins(modules: Iterable[str]) -> None:
    """Import the entries of an experiment's ``plugins:`` so their pieces register.

    An entry is a module name (``mypackage.ab3``, imported as usual) or a path to a ``.py`` file
    (``load_experiment`` makes a relative one relative to the experiment file). A file is imported
    once per process under a name derived from its absolute path, so loading the same plugins
    again (every stage does) does not register its pieces twice.
    """
    for module in modules:
        try:
            if is_plugin_file(module):
                _import_file(Path(module))
            else:
                importlib.import_module(module)
        except ImportError as error:
            raise ImportError(f"plugin module {module!r} could not be imported: {error}") from error


def _import_file(path: Path) -> None:
    import hashlib
    import importlib.util
    import sys

    path = path.resolve()
    if not path.is_file():
        raise ImportError(f"no such file {path}")
    name = f"flowrepro_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
