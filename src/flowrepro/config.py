"""Load and validate experiment and scale YAML files; errors name the file and the key."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"


class ConfigError(ValueError):
    """A config file is missing, unparsable or does not match its schema."""


def load_yaml(path: str | Path) -> Any:
    try:
        with open(path) as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    return load_yaml(SCHEMA_DIR / f"{name}.schema.yaml")


def validate(data: Any, schema_name: str, source: str | Path) -> Any:
    """Validate ``data`` against a packaged schema; raise :class:`ConfigError` naming the key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"  at {where}: {error.message}")
        raise ConfigError(f"{source}: does not match the {schema_name} schema:\n" + "\n".join(lines))
    return data


def load_experiment(path: str | Path) -> dict:
    experiment = validate(load_yaml(path), "experiment", path)
    if Path(path).stem != experiment["id"]:
        raise ConfigError(f"{path}: id {experiment['id']!r} must match the file name {Path(path).stem!r}")
    if experiment.get("models"):
        _check_piece_names(experiment, path)
    for name, spec in experiment.get("models", {}).items():
        for key in ("pairs_from", "init"):
            if key in spec and spec[key] not in experiment["models"]:
                raise ConfigError(f"{path}: models/{name}/{key} names unknown model {spec[key]!r}")
        if spec.get("coupling") == "reflow" and "pairs_from" not in spec:
            raise ConfigError(f"{path}: models/{name}: coupling reflow needs pairs_from")
    return experiment


def _check_piece_names(experiment: dict, path: str | Path) -> None:
    """Every piece a model names must be registered (built-ins, or a module under plugins:)."""
    from flowrepro import registry
    from flowrepro.generative import couplings, losses, paths  # noqa: F401  (register built-ins)

    registry.load_plugins(experiment.get("plugins", []))
    tables = {"path": registry.PATHS, "coupling": registry.COUPLINGS, "loss": registry.LOSSES,
              "time_density": registry.TIME_DENSITIES}
    for name, spec in experiment["models"].items():
        for key, table in tables.items():
            if key in spec and spec[key] not in table:
                raise ConfigError(f"{path}: models/{name}/{key}: unknown {table.kind} {spec[key]!r}; known: {table.names()}")


def load_scale(path: str | Path) -> dict:
    return validate(load_yaml(path), "scale", path)


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
