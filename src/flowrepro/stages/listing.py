"""list: every piece an experiment YAML can name, with its options and one line on what it is.

``flowrepro list [kind]`` prints one line per registered piece: its name, the options a YAML can
set on it (``name=default``, just ``name`` when it has no default; for the kinds whose options
:mod:`flowrepro.pieces` checks), the first line of its docstring, and ``[plugin: file]`` for a
piece a plugin registered. ``--experiment FILE`` and ``--plugins ENTRY`` load plugins first, so
their pieces are listed beside the built-ins.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any

#: Modules whose import registers flowrepro's own pieces (``grep -rn "\\.register(" src/flowrepro``).
BUILTIN_MODULES = (
    "flowrepro.generative.paths",
    "flowrepro.generative.couplings",
    "flowrepro.generative.losses",
    "flowrepro.samplers.ode",
    "flowrepro.samplers.schedules",
    "flowrepro.samplers.schedules_extra",
    "flowrepro.samplers.sde",
    "flowrepro.samplers.diffusion",
    "flowrepro.samplers.time_shift",
    "flowrepro.samplers.trained_diffusion",
    "flowrepro.samplers.boss_diffusion",
    "flowrepro.samplers.momentum",
    "flowrepro.samplers.bdia",
    "flowrepro.optim.registry",
    "flowrepro.optim.problems",
    "flowrepro.optim.problems_cifar",
    "flowrepro.optim.problems_learning",
    "flowrepro.optim.problems_node",
    "flowrepro.data.toy2d",
    "flowrepro.data.gmm",
    "flowrepro.metrics.wasserstein",
    "flowrepro.metrics.sliced",
    "flowrepro.metrics.mmd",
    "flowrepro.models.mlp",
    "flowrepro.models.unet",
)

#: The YAML word of each kind -> the name of its table in :mod:`flowrepro.registry`, in listing order.
KIND_TABLES = {
    "path": "PATHS",
    "coupling": "COUPLINGS",
    "loss": "LOSSES",
    "time_density": "TIME_DENSITIES",
    "objective": "OBJECTIVES",
    "sampler": "SAMPLERS",
    "schedule": "SCHEDULES",
    "optimizer": "OPTIMIZERS",
    "problem": "PROBLEMS",
    "metric": "METRICS",
    "dataset": "DATASETS",
    "model": "MODELS",
}

DESCRIPTION = ("list every registered piece of one kind (all kinds without one): name, options "
               "(name=default), first docstring line, and the plugin file of a plugin's piece")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``list`` subcommand to ``sub`` (the subparsers of the flowrepro command line)."""
    parser = sub.add_parser("list", help="list registered pieces (paths, samplers, optimizers, ...) with their options",
                            description=DESCRIPTION)
    parser.add_argument("kind", nargs="?", default=None, help=f"one of: {', '.join(KIND_TABLES)} (default: all)")
    # extend + nargs="+": `--experiment a.yaml b.yaml` and `--experiment a.yaml --experiment b.yaml` both work
    parser.add_argument("--experiment", action="extend", nargs="+", default=[], metavar="FILE",
                        help="experiment YAML whose plugins: are loaded first (repeatable)")
    parser.add_argument("--plugins", action="extend", nargs="+", default=[], metavar="ENTRY",
                        help="plugin module names or .py files to load first")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the plugins ``args`` names, print the listing of ``args.kind`` (all kinds if None), return 0."""
    from flowrepro.config import ConfigError, load_experiment
    from flowrepro.registry import load_plugins

    try:
        for experiment_file in args.experiment or []:
            experiment = load_experiment(experiment_file)  # imports its plugin files too
            load_plugins(experiment.get("plugins", []))  # a non-flow experiment's plugins are not imported there
        load_plugins(args.plugins or [])
    except (ConfigError, ImportError) as error:  # a bad file or plugin is a usage error: a message, not a traceback
        raise SystemExit(f"list: {error}") from error
    print(format_rows(rows(args.kind), grouped=args.kind is None))
    return 0


def rows(kind: str | None) -> list[dict]:
    """One dict per registered piece of ``kind`` (every kind if None), in kind then name order.

    Keys: ``kind`` (the YAML word), ``name``, ``options`` (option -> default, with
    ``inspect.Parameter.empty`` where there is none; ``{}`` for kinds without options),
    ``summary`` (first docstring line) and ``source`` (the plugin file, relative to the working
    directory when it lies below it; None for a built-in). Raises SystemExit for an unknown kind.
    """
    from flowrepro import registry

    if kind is not None and kind not in KIND_TABLES:
        raise SystemExit(f"list: unknown kind {kind!r}; valid kinds: {', '.join(KIND_TABLES)}")
    from flowrepro import pieces

    # with the modules pieces.BUILTINS imports before a lookup (the objectives, the newer samplers)
    for module in BUILTIN_MODULES + tuple(m for modules in pieces.BUILTINS.values() for m in modules):
        importlib.import_module(module)
    listing = []
    for word in [kind] if kind else KIND_TABLES:
        table = getattr(registry, KIND_TABLES[word])
        for name in table.names():
            piece = table.get(name)
            listing.append({"kind": word, "name": name, "options": _options(word, piece),
                            "summary": _summary(piece), "source": _shown_source(table.source(name))})
    return listing


def format_rows(listing: list[dict], grouped: bool) -> str:
    """Aligned plain-text lines of ``listing``; with ``grouped``, a block under a heading per kind."""
    if not grouped:
        return "\n".join(_aligned(listing)) or "  (none)"
    blocks = [[f"{word}:", *_aligned([row for row in listing if row["kind"] == word])]
              for word in dict.fromkeys(row["kind"] for row in listing)]
    return "\n\n".join("\n".join(block) for block in blocks)


def _aligned(group: list[dict]) -> list[str]:
    from flowrepro import pieces

    has_options = bool(group) and group[0]["kind"] in pieces.KINDS
    names = [row["name"] for row in group]
    options = [_options_text(row["options"]) for row in group]
    name_width = max(map(len, names), default=0)
    options_width = max(map(len, options), default=0)
    lines = []
    for row, name, option_text in zip(group, names, options):
        cells = [name.ljust(name_width)]
        if has_options:
            cells.append(option_text.ljust(options_width))
        cells.append(row["summary"])
        if row["source"] is not None:
            cells.append(f"[plugin: {row['source']}]")
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _options_text(options: dict[str, Any]) -> str:
    return " ".join(name if default is inspect.Parameter.empty else f"{name}={default!r}"
                    for name, default in options.items())


def _options(kind: str, piece: Any) -> dict[str, Any]:
    """The YAML-settable options of ``piece``; ``_name`` parameters are binding tricks, not options."""
    from flowrepro import pieces

    if kind not in pieces.KINDS:
        return {}
    # e.g. ode's `lambda velocity, x0, times, _m=name, **kw`: _m fixes the method at registration
    return {name: default for name, default in pieces.option_defaults(kind, piece).items() if not name.startswith("_")}


def _summary(piece: Any) -> str:
    """The first line of the piece's own docstring.

    An instance (an ``OptimizerSpec``) only carries its class's docstring, so its ``source`` field
    says what it is instead; a dataclass without a docstring gets a generated signature as its
    ``__doc__``, so its base class's docstring stands in, as ``inspect.getdoc`` would give.
    """
    from flowrepro import pieces

    if not (inspect.isclass(piece) or inspect.isroutine(piece)) and isinstance(getattr(piece, "source", None), str):
        return piece.source or pieces.summary(piece)
    if inspect.isclass(piece) and dataclasses.is_dataclass(piece) and (piece.__doc__ or "").startswith(f"{piece.__name__}("):
        inherited = next((base for base in piece.__mro__[1:] if base is not object and base.__doc__), None)
        return pieces.summary(inherited) if inherited is not None else ""
    return pieces.summary(piece)


def _shown_source(source: str | None) -> str | None:
    """A plugin file relative to the working directory when it lies below it, else absolute."""
    if source is None:
        return None
    path = Path(source).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
