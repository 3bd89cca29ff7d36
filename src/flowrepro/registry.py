"""Name -> object registries, so an experiment YAML can name every piece it uses.

A module that defines a piece registers it where it is defined::

    @SAMPLERS.register("euler")
    def euler(...): ...

and ``SAMPLERS.get("euler")`` finds it. Unknown names raise a KeyError that lists
the names that do exist.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

#: Modules whose functions register on another module's behalf (``optim.registry._register``).
_REGISTERING_HELPERS = ("flowrepro.registry", "flowrepro.optim.registry")


class Registry:
    """A named table of objects of one kind (samplers, paths, optimizers, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._sources: dict[str, str | None] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        source = _registering_file()

        def decorate(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                earlier = self._sources.get(name)
                if source and earlier and _same_content(source, earlier):  # one plugin copied beside two experiments
                    return obj
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {earlier or 'flowrepro'} and by {source or 'flowrepro'}")
            self._items[name] = obj
            self._sources[name] = source
            return obj

        return decorate

    def source(self, name: str) -> str | None:
        """The file of the plugin that registered ``name``; None for flowrepro's own pieces."""
        self.get(name)
        return self._sources.get(name)

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
OBJECTIVES = Registry("training objective")


def _registering_file() -> str | None:
    """The file of the module calling ``register`` (past registering helpers); None inside flowrepro."""
    frame = sys._getframe(2)
    while frame.f_code.co_name != "<module>" and frame.f_globals.get("__name__") in _REGISTERING_HELPERS:
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "")
    if module == "flowrepro" or module.startswith("flowrepro."):
        return None
    return frame.f_globals.get("__file__")


def _same_content(a: str, b: str) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def is_plugin_file(entry: str) -> bool:
    """A ``plugins:`` entry is a Python file (``ab3.py``, ``plugins/ab3.py``) or a module name."""
    return entry.endswith(".py")


def load_plugins(modules: Iterable[str], listed_by: str | Path | None = None) -> None:
    """Import the entries of an experiment's ``plugins:`` so their pieces register.

    An entry is a module name (``mypackage.ab3``, imported as usual) or a path to a ``.py`` file
    (``load_experiment`` makes a relative one relative to the experiment file). A file is imported
    once per process under a name derived from its absolute path, so loading the same plugins
    again (every stage does) does not register its pieces twice. An entry that cannot be imported,
    or whose code raises, is a :class:`PluginError` naming the entry and ``listed_by`` (the experiment).
    """
    where = f"{listed_by}: " if listed_by else ""
    for module in modules:
        try:
            if is_plugin_file(module):
                _import_file(Path(module))
            else:
                importlib.import_module(module)
        except ModuleNotFoundError as error:
            hint = "" if is_plugin_file(module) else f" (a plugin file is listed with its .py suffix: {module}.py)"
            raise PluginError(f"{where}plugin {module!r} could not be imported: {error}{hint}") from error
        except Exception as error:  # the plugin's own code raised: say which plugin and which experiment
            raise PluginError(f"{where}plugin {module!r} raised {type(error).__name__} while importing: {error}") from error


class PluginError(ImportError):
    """A ``plugins:`` entry is missing or raised while it was imported."""


def _import_file(path: Path) -> None:
    import hashlib
    import importlib.util
    import sys

    path = path.resolve()
    if not path.is_file():
        raise ModuleNotFoundError(f"no such file {path}")
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
