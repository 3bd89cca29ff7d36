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


@lru_cache(maxsize=None)
def _schema_registry():
    """The packaged schemas by their $id, so one can $ref another (an experiment's recipe is a scale's)."""
    from referencing import Registry, Resource

    schemas = [_schema(p.name.removesuffix(".schema.yaml")) for p in sorted(SCHEMA_DIR.glob("*.schema.yaml"))]
    return Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas if "$id" in s)


def validate(data: Any, schema_name: str, source: str | Path) -> Any:
    """Validate ``data`` against a packaged schema; raise :class:`ConfigError` naming the key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(schema_name), registry=_schema_registry())
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
    if experiment["kind"] != "flow":  # models, sampling and recipes are flow keys; the runners check their own
        return experiment
    if "recipes_from" in experiment:
        if "recipes" in experiment:
            raise ConfigError(f"{path}: give recipes or recipes_from, not both")
        name = f"{experiment['recipes_from']}.yaml"  # beside this file, else in the workflow's config/experiments
        candidates = [Path(path).parent / name, Path("config/experiments") / name]
        donor_path = next((c for c in candidates if c.exists()), None)
        if donor_path is None:
            raise ConfigError(f"{path}: recipes_from {experiment['recipes_from']!r}: none of {[str(c) for c in candidates]} exists")
        donor = validate(load_yaml(donor_path), "experiment", donor_path)
        experiment["recipes"] = donor.get("recipes", {})  # the donor's own recipes_from is not followed
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
    scale = validate(load_yaml(path), "scale", path)
    for section in ("flow2d", "flow_images"):
        if section in scale:
            _check_sample_sizes(scale, section, path)
    return scale


#: Scale names (config/scales/<name>.yaml).
SCALES = ("tiny", "small", "paper", "smoke")
#: Datasets of images (n, channels, height, width): trained with a UNet, sized by ``flow_images``.
IMAGE_DATASETS = ("digits", "mnist5k", "mnist", "cifar10")
#: (train, test) images of each image dataset as ``acquire`` writes it; checked before any job runs.
IMAGE_SIZES = {"digits": (1438, 359), "mnist5k": (4000, 1000), "mnist": (60000, 10000), "cifar10": (50000, 10000)}
#: Keys of an experiment's ``recipes: {<scale>: ...}`` that are not training settings.
RECIPE_NOTES = ("sources", "deviation")


def _check_sample_sizes(scale: dict, section: str, path) -> None:
    """Sizes a data set cannot supply fail here, naming the key (2-D sets have the scale's sizes)."""
    settings = scale[section]
    w2_points = settings.get("w2_points", settings["n_eval"])
    if w2_points > settings["n_eval"]:
        raise ConfigError(f"{path}: {section}/w2_points = {w2_points} exceeds {section}/n_eval = {settings['n_eval']}")
    if section == "flow2d":
        for key, limit in (("n_eval", "n_train"), ("n_eval", "n_test")):
            if settings[key] > settings[limit]:
                raise ConfigError(f"{path}: flow2d/{key} = {settings[key]} exceeds flow2d/{limit} = {settings[limit]}")


def check_dataset_sizes(scale: dict, datasets, source: str | Path) -> None:
    """Every image dataset in use can supply the scale's sample sizes (n_eval training images to compare
    with, w2_points test images); raise :class:`ConfigError` naming the key, the dataset and its size."""
    for dataset in sorted(set(datasets) & set(IMAGE_SIZES)):
        settings = flow_settings(scale, dataset)
        n_train, n_test = IMAGE_SIZES[dataset]
        if settings["n_eval"] > n_train:
            raise ConfigError(f"{source}: flow_images/n_eval = {settings['n_eval']} exceeds the {n_train} training "
                              f"images of {dataset} (the method=data rows draw that many without replacement)")
        w2_points = settings.get("w2_points", settings["n_eval"])
        if w2_points > n_test:
            raise ConfigError(f"{source}: flow_images/w2_points = {w2_points} (default n_eval) exceeds the {n_test} "
                              f"test images of {dataset}; set w2_points")


def roles(scale: dict) -> dict[str, str]:
    """role -> dataset at this scale (e.g. images -> cifar10); 2-D harness names map to themselves."""
    return dict(scale.get("roles", {}))


def bind_roles(experiment: dict, scale: dict, source: str | Path = "") -> dict:
    """The experiment with every dataset role (``datasets:``, sampling and reference filters) replaced
    by the scale's dataset; claims keep the role and are resolved by :func:`flowrepro.claims.check_claim`."""
    import copy

    mapping = roles(scale)
    declared = experiment.get("datasets", [])
    unknown = [d for d in declared if d not in mapping and d in ROLE_NAMES]
    if unknown:
        raise ConfigError(f"{source or experiment['id']}: dataset role(s) {unknown} have no dataset at scale "
                          f"{scale['scale']!r} (its roles: {mapping})")
    bound = copy.deepcopy(experiment)
    resolve = lambda names: [mapping.get(n, n) for n in names]  # noqa: E731
    if "datasets" in bound:
        bound["datasets"] = resolve(bound["datasets"])
    for options in bound.get("sampling", {}).values():
        if "datasets" in options:
            options["datasets"] = resolve(options["datasets"])
    if "datasets" in bound.get("reference", {}):
        bound["reference"]["datasets"] = resolve(bound["reference"]["datasets"])
    bound["roles"] = mapping
    return bound


#: Role names an experiment may list under ``datasets:`` (the scale maps each to a dataset).
ROLE_NAMES = ("images",)


def flow_settings(scale: dict, dataset: str) -> dict:
    """The scale section that sizes a flow job on ``dataset``: ``flow_images`` or ``flow2d``."""
    if dataset in IMAGE_DATASETS:
        if "flow_images" not in scale:
            raise ConfigError(f"scale {scale['scale']!r}: dataset {dataset!r} is an image dataset but the scale has no flow_images section")
        return {k: v for k, v in scale["flow_images"].items() if k != "overrides"}
    return scale["flow2d"]


def training_settings(scale: dict, experiment: dict, dataset: str) -> dict:
    """What trains a model of ``experiment`` on ``dataset``: the scale's section, then (images only) the
    experiment's recipe for this scale (``recipes: {paper: ...}``; a scale may borrow another's with
    ``recipes_of``), then the scale's ``flow_images/overrides`` (the smoke scale's two steps)."""
    settings = dict(flow_settings(scale, dataset))
    if dataset in IMAGE_DATASETS:
        recipe = experiment.get("recipes", {}).get(scale.get("recipes_of", scale["scale"]), {})
        settings |= {k: v for k, v in recipe.items() if k not in RECIPE_NOTES}
        settings |= scale["flow_images"].get("overrides", {})
    return settings


def recipe_changes(scale: dict, experiment: dict, dataset: str) -> dict:
    """The training settings in which this experiment's recipe differs from the scale's section."""
    base, settings = flow_settings(scale, dataset), training_settings(scale, experiment, dataset)
    return {k: v for k, v in settings.items() if base.get(k) != v}


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
    The scale's settings are not in the key (the workflow reruns the job when they change), but an
    experiment's recipe that differs from them is (:func:`recipe_changes`). Given
    the ``scale``, an ``ema_decay`` equal to the one the scale gives anyway is dropped, so
    ``{path: linear, ema_decay: 0.99}`` and ``{path: linear}`` share a job where the scale's EMA is 0.99.
    """
    import hashlib
    import json

    spec = MODEL_DEFAULTS | experiment["models"][name]  # {path: linear} and {path: linear, coupling: independent} are one model
    identity = {"dataset": dataset, "spec": spec, "plugins": experiment.get("plugins", [])}
    if scale is not None:
        if "ema_decay" in spec:
            settings = training_settings(scale, experiment, dataset)
            if float(spec["ema_decay"]) == ema_decay({k: v for k, v in spec.items() if k != "ema_decay"}, settings):
                del spec["ema_decay"]
        changes = recipe_changes(scale, experiment, dataset)
        if changes:  # two experiments' recipes train the same spec differently: two models
            identity["recipe"] = changes
    for key in ("pairs_from", "init"):
        if key in spec:
            spec[key] = model_key(experiment, spec[key], dataset, scale)
    text = json.dumps(identity, sort_keys=True)
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
