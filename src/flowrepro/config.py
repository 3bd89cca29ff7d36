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
    if "plugins" in experiment:  # a plugin given as a .py file is relative to the experiment file
        from flowrepro.registry import is_plugin_file

        experiment["plugins"] = [str(Path(path).parent / p) if is_plugin_file(p) and not Path(p).is_absolute() else p
                                 for p in experiment["plugins"]]
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
    import inspect

    from flowrepro import registry
    from flowrepro.generative import couplings, losses, paths  # noqa: F401  (register built-ins)

    registry.load_plugins(experiment.get("plugins", []))
    tables = {"path": registry.PATHS, "coupling": registry.COUPLINGS, "loss": registry.LOSSES,
              "time_density": registry.TIME_DENSITIES}
    for name, spec in experiment["models"].items():
        for key, table in tables.items():
            if key in spec and spec[key] not in table:
                raise ConfigError(f"{path}: models/{name}/{key}: unknown {table.kind} {spec[key]!r}; known: {table.names()}")
        coupling = spec.get("coupling", "independent")
        if "coupling_reg" in spec and "reg" not in inspect.signature(registry.COUPLINGS.get(coupling)).parameters:
            raise ConfigError(f"{path}: models/{name}/coupling_reg: coupling {coupling!r} takes no reg (minibatch_sinkhorn does)")
    from flowrepro.samplers import diffusion, ode, schedules, schedules_extra, sde, time_shift  # noqa: F401  (register built-ins)

    for label, options in experiment.get("sampling", {}).items():
        sampler = options.get("sampler", label)
        if sampler not in registry.SAMPLERS:
            raise ConfigError(f"{path}: sampling/{label}: unknown sampler {sampler!r}; known: {registry.SAMPLERS.names()}")
        unknown = sorted(set(options.get("models", [])) - set(experiment["models"]))
        if unknown:
            raise ConfigError(f"{path}: sampling/{label}/models: unknown model(s) {unknown}; known: {sorted(experiment['models'])}")
        schedule = options.get("schedule", "uniform")
        if schedule not in registry.SCHEDULES:
            raise ConfigError(f"{path}: sampling/{label}/schedule: unknown schedule {schedule!r}; known: {registry.SCHEDULES.names()}")


def load_scale(path: str | Path) -> dict:
    return validate(load_yaml(path), "scale", path)


#: Datasets of images (n, channels, height, width): trained with a UNet, sized by ``flow_images``.
IMAGE_DATASETS = ("digits", "mnist5k", "mnist", "cifar10")


def flow_settings(scale: dict, dataset: str) -> dict:
    """The scale section that sizes a flow job on ``dataset``: ``flow_images`` or ``flow2d``."""
    if dataset in IMAGE_DATASETS:
        if "flow_images" not in scale:
            raise ConfigError(f"scale {scale['scale']!r}: dataset {dataset!r} is an image dataset but the scale has no flow_images section")
        return scale["flow_images"]
    return scale["flow2d"]


#: What a model spec means when it leaves a key out (the experiment schema's defaults).
MODEL_DEFAULTS = {"path": "linear", "coupling": "independent", "optimizer": "adamw", "time_density": "uniform",
                  "loss": "mse", "prediction": "velocity", "objective": "regression"}


def ema_decay(spec: dict, settings: dict) -> float:
    """EMA decay of a model: its spec's, else the scale's; consistency FM needs one (its target)."""
    default = 0.99 if spec.get("objective") == "velocity_consistency" else 0.0
    return float(spec.get("ema_decay", settings.get("ema_decay", default)))


def model_key(experiment: dict, name: str, dataset: str, scale: dict | None = None) -> str:
    """A short hash of everything that determines a trained model: dataset and spec, with the
    models it starts from or takes reflow pairs from replaced by their own keys.

    Experiments that define the same model (rectified flow's 1-RF is also the baseline of
    improved_rf, multisample_fm and stochastic_interpolants) share one file and one training job.
    The scale's settings are not in the key: the workflow reruns the job when they change. Given
    the ``scale``, an ``ema_decay`` equal to the one the scale gives anyway is dropped, so
    ``{path: linear, ema_decay: 0.99}`` and ``{path: linear}`` share a job where the scale's EMA is 0.99.
    """
    import hashlib
    import json

    spec = MODEL_DEFAULTS | experiment["models"][name]  # {path: linear} and {path: linear, coupling: independent} are one model
    if scale is not None and "ema_decay" in spec:
        settings = flow_settings(scale, dataset)
        if float(spec["ema_decay"]) == ema_decay({k: v for k, v in spec.items() if k != "ema_decay"}, settings):
            del spec["ema_decay"]
    for key in ("pairs_from", "init"):
        if key in spec:
            spec[key] = model_key(experiment, spec[key], dataset, scale)
    text = json.dumps({"dataset": dataset, "spec": spec, "plugins": experiment.get("plugins", [])}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def shared_models(experiments: dict[str, dict], scale: dict | None = None) -> dict[str, dict]:
    """key -> {experiment, model, dataset} of the first experiment defining each distinct model."""
    owners: dict[str, dict] = {}
    for experiment_id, experiment in experiments.items():
        if experiment["kind"] != "flow":
            continue
        for dataset in experiment["datasets"]:
            for name in experiment["models"]:
                owners.setdefault(model_key(experiment, name, dataset, scale),
                                  {"experiment": experiment_id, "model": name, "dataset": dataset})
    return owners


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
