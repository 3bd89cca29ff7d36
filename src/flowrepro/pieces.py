"""Pieces an experiment YAML names: a registered name, alone or with options.

A piece is written ``name`` or ``{name: name, <option>: value, ...}``, e.g. ``path: linear`` or
``path: {name: caf, h: 1.5}``. The options of a piece are the keyword parameters of its class or
function after the ones its caller passes (a coupling is called as ``f(data, batch_size,
generator)``, so its further parameters are options). They are checked against that signature
before any job runs (:func:`check`), bound by :func:`build`, and part of a model's key.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

from flowrepro import registry

#: kind -> (its registry, how many leading parameters the caller supplies: not options).
KINDS: dict[str, tuple[registry.Registry, int]] = {
    "path": (registry.PATHS, 0),
    "coupling": (registry.COUPLINGS, 3),
    "loss": (registry.LOSSES, 2),
    "time_density": (registry.TIME_DENSITIES, 3),
    "sampler": (registry.SAMPLERS, 3),
    "schedule": (registry.SCHEDULES, 1),
    "objective": (registry.OBJECTIVES, 4),
}


#: kind -> the modules that register its built-in pieces (imported before a lookup).
BUILTINS: dict[str, tuple[str, ...]] = {
    "path": ("flowrepro.generative.paths",),
    "coupling": ("flowrepro.generative.couplings",),
    "loss": ("flowrepro.generative.losses",),
    "time_density": ("flowrepro.generative.losses",),
    "sampler": ("flowrepro.samplers.ode", "flowrepro.samplers.sde", "flowrepro.samplers.time_shift",
                "flowrepro.samplers.diffusion", "flowrepro.samplers.dpm_solver_v3",
                "flowrepro.samplers.momentum", "flowrepro.samplers.bdia", "flowrepro.samplers.caf",
                "flowrepro.samplers.edm"),
    "schedule": ("flowrepro.samplers.schedules", "flowrepro.samplers.schedules_extra"),
    "objective": ("flowrepro.generative.objectives", "flowrepro.generative.perflow",
                  "flowrepro.generative.learned_coupling", "flowrepro.generative.caf",
                  "flowrepro.generative.edm"),
}


def table(kind: str) -> registry.Registry:
    """The registry of ``kind`` with its built-in pieces registered."""
    import importlib

    for module in BUILTINS[kind]:
        importlib.import_module(module)
    return KINDS[kind][0]


def split(value: str | dict) -> tuple[str, dict]:
    """``(name, options)`` of ``name`` or ``{name: ..., **options}``."""
    if isinstance(value, str):
        return value, {}
    return value["name"], {k: v for k, v in value.items() if k != "name"}


def name_of(value: str | dict) -> str:
    return split(value)[0]


def canonical(value: str | dict) -> str | dict:
    """``{name: x}`` with no options is ``x``: one model, one key, however it is written."""
    name, options = split(value)
    return {"name": name, **options} if options else name


def option_defaults(kind: str, obj: Any) -> dict[str, Any]:
    """The options a YAML can set on ``obj`` (a piece of ``kind``): name -> default (``inspect.Parameter.empty`` if none)."""
    skip = KINDS[kind][1]
    try:
        parameters = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature takes no options
        return {}
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")]
    # the caller's arguments: the leading positional parameters without a default (dopri5 takes
    # (velocity, x0, rtol=...), so its rtol is an option although it comes third)
    supplied = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty][:skip]
    return {p.name: p.default for p in named if p not in supplied}


def check(kind: str, value: str | dict, where: str) -> None:
    """Raise :class:`flowrepro.config.ConfigError` naming ``where`` for an unknown name or option."""
    from flowrepro.config import ConfigError

    pieces = table(kind)
    if isinstance(value, dict) and "name" not in value:
        raise ConfigError(f"{where}: a {pieces.kind} with options needs name: (e.g. {{name: linear, sigma_min: 0.01}})")
    name, options = split(value)
    if name not in pieces:
        raise ConfigError(f"{where}: unknown {pieces.kind} {name!r}; known: {pieces.names()} (`flowrepro list {kind}`)")
    allowed = option_defaults(kind, pieces.get(name))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: {pieces.kind} {name!r} has no option(s) {unknown}; its options: {sorted(allowed) or 'none'}")


def build(kind: str, value: str | dict) -> Any:
    """The registered piece with its options bound: ``cls(**options)`` for a class (a path), else the
    function with the options as keyword arguments (attributes such as ``calls_per_step`` kept)."""
    name, options = split(value)
    obj = table(kind).get(name)
    if inspect.isclass(obj):
        return obj(**options)
    if not options:
        return obj
    bound = functools.partial(obj, **options)
    bound.__dict__.update(getattr(obj, "__dict__", {}))
    return bound


def summary(obj: Any) -> str:
    """The first line of a piece's docstring (its class's for an instance), or ''."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
