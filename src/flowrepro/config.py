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
    _check_paper_number_metrics(experiment, path)
    if experiment["kind"] != "flow":  # models, sampling and recipes are flow keys; the runners check their own
        return experiment
    if "recipes_from" in experiment:
        if "recipes" in experiment:
            raise ConfigError(f"{path}: give recipes or recipes_from, not both")
        experiment["recipes"] = _donor_recipes(experiment["recipes_from"], path, "recipes_from")
    for name, spec in experiment.get("models", {}).items():  # a model's own recipes_from: kept apart from its spec (and key)
        if "recipes_from" in spec:
            experiment.setdefault("model_recipes", {})[name] = _donor_recipes(spec.pop("recipes_from"), path, f"models/{name}/recipes_from")
    if experiment.get("models"):
        _check_piece_names(experiment, path)
    _check_pretrained(experiment, path)
    for name, spec in experiment.get("models", {}).items():
        for key in MODEL_REFERENCES:
            if key in spec and spec[key] not in experiment["models"]:
                raise ConfigError(f"{path}: models/{name}/{key} names unknown model {spec[key]!r}")
        if spec.get("coupling") == "reflow" and "pairs_from" not in spec:  # reflow takes no options
            raise ConfigError(f"{path}: models/{name}: coupling reflow needs pairs_from")
        if "condition" in spec and spec.get("coupling", "independent") != "independent":  # labels travel with x1
            raise ConfigError(f"{path}: models/{name}/condition: trains on independent pairs only, not coupling {spec['coupling']!r}")
    reference = experiment.get("coupling_reference")
    if reference and reference["model"] not in experiment["models"]:
        raise ConfigError(f"{path}: coupling_reference/model names unknown model {reference['model']!r}")
    if reference and reference["sampler"] not in experiment["sampling"]:
        raise ConfigError(f"{path}: coupling_reference/sampler names no sampling entry {reference['sampler']!r}; "
                          f"known: {sorted(experiment['sampling'])}")
    _check_guidance(experiment, path)
    return experiment


def _donor_recipes(donor: str, path: str | Path, key: str) -> dict:
    """The ``recipes:`` of the experiment ``donor`` (a file beside ``path``, else in the workflow's
    config/experiments); the donor's own recipes_from is not followed."""
    name = f"{donor}.yaml"
    candidates = [Path(path).parent / name, Path("config/experiments") / name]
    donor_path = next((c for c in candidates if c.exists()), None)
    if donor_path is None:
        raise ConfigError(f"{path}: {key} {donor!r}: none of {[str(c) for c in candidates]} exists")
    return validate(load_yaml(donor_path), "experiment", donor_path).get("recipes", {})


def _check_guidance(experiment: dict, path: str | Path) -> None:
    """Guidance (a sampling entry's or the reference's) only on class-conditional models (``condition:``)."""
    conditional = {name for name, spec in experiment.get("models", {}).items() if "condition" in spec}
    every = [*experiment.get("models", {}), *experiment.get("pretrained", {})]
    guided = {f"sampling/{label}": entry.get("models", every)
              for label, entry in experiment.get("sampling", {}).items() if "guidance" in entry}
    if "guidance" in experiment.get("reference", {}):
        guided["reference"] = list(experiment.get("models", {}))
    for where, models in guided.items():
        plain = sorted(set(models) - conditional)
        if plain:
            raise ConfigError(f"{path}: {where}/guidance on models without condition: {plain} "
                              f"(restrict the entry with models: [...], or give them condition:)")


def _check_paper_number_metrics(experiment: dict, path: str | Path) -> None:
    """Each ``paper_numbers`` entry's ``metric`` parses in the claims grammar (checked before any job runs)."""
    from flowrepro.claims import ClaimSyntaxError, parse_expression

    for name, entry in experiment.get("paper_numbers", {}).items():
        if entry.get("metric") is not None:
            try:
                parse_expression(entry["metric"])
            except ClaimSyntaxError as error:
                raise ConfigError(f"{path}: paper_numbers/{name}/metric: {error}") from None


def _check_piece_names(experiment: dict, path: str | Path) -> None:
    """Every piece a model or sampling entry names is registered (built-ins, or a module under
    plugins:) and takes the options given to it (:func:`flowrepro.pieces.check`)."""
    import inspect

    from flowrepro import pieces, registry
    from flowrepro.generative import couplings, losses, paths  # noqa: F401  (register built-ins)
    from flowrepro.samplers import diffusion, ode, schedules, schedules_extra, sde, time_shift  # noqa: F401  (register built-ins)

    registry.load_plugins(experiment.get("plugins", []), listed_by=path)
    for name, spec in experiment["models"].items():
        for kind in MODEL_PIECES:
            if kind in spec:
                pieces.check(kind, spec[kind], f"{path}: models/{name}/{kind}")
        coupling = pieces.build("coupling", spec.get("coupling", "independent"))
        if "coupling_reg" in spec and "reg" not in inspect.signature(coupling).parameters:
            raise ConfigError(f"{path}: models/{name}/coupling_reg: coupling {pieces.name_of(spec.get('coupling', 'independent'))!r} "
                              "takes no reg (minibatch_sinkhorn does)")
    for label, options in experiment.get("sampling", {}).items():
        variant = options.get("search", {}).get("variant")
        if variant == "autodiffusion" and pieces.name_of(options.get("sampler", label)) not in diffusion.SCHEDULERS:
            raise ConfigError(f"{path}: sampling/{label}/search: autodiffusion searches the timesteps of a diffusers "
                              f"scheduler (sampler: one of {sorted(diffusion.SCHEDULERS)}), not {options.get('sampler', label)!r}")
        if not runs_own_sampler(options):
            pieces.check("sampler", options.get("sampler", label), f"{path}: sampling/{label}/sampler")
        known = sorted(set(experiment["models"]) | set(experiment.get("pretrained", {})))
        unknown = sorted(set(options.get("models", [])) - set(known))
        if unknown:
            raise ConfigError(f"{path}: sampling/{label}/models: unknown model(s) {unknown}; known: {known}")
        schedule = options.get("schedule", "uniform")
        if pieces.name_of(schedule) != "boss":  # boss is estimated on the model (stages.sample), not a grid function
            pieces.check("schedule", schedule, f"{path}: sampling/{label}/schedule")


def _check_pretrained(experiment: dict, path: str | Path) -> None:
    """``pretrained:`` entries name a known weights set and a dataset (not a role), and no trained model."""
    from flowrepro.data.weights import WEIGHTS

    for name, entry in experiment.get("pretrained", {}).items():
        where = f"{path}: pretrained/{name}"
        if name in experiment.get("models", {}):
            raise ConfigError(f"{where}: {name!r} is also under models; a pretrained network needs its own name")
        if entry["weights"] not in WEIGHTS:
            raise ConfigError(f"{where}/weights: unknown weights set {entry['weights']!r}; known: {sorted(WEIGHTS)}")
        if entry["dataset"] in ROLE_NAMES:
            raise ConfigError(f"{where}/dataset: give the dataset the network generates (cifar10), not the role {entry['dataset']!r}")


def pretrained_models(experiment: dict, scale: dict) -> dict[str, dict]:
    """name -> entry of the experiment's ``pretrained:`` networks that run at this scale: those whose
    weights the scale acquires (``downloads: {weights: [...]}``) with every sha256 known (pinned, or
    given under ``downloads: {digests: ...}``); :func:`pretrained_skipped` says why the others do not."""
    return {name: entry for name, entry in experiment.get("pretrained", {}).items()
            if name not in pretrained_skipped(experiment, scale)}


def pretrained_skipped(experiment: dict, scale: dict) -> dict[str, str]:
    """name -> why the pretrained network does not run at this scale."""
    from flowrepro.data.weights import DigestError, digests_for, scale_digests, scale_weights

    reasons = {}
    for name, entry in experiment.get("pretrained", {}).items():
        weights = entry["weights"]
        if weights not in scale_weights(scale):
            reasons[name] = f"scale {scale['scale']!r} does not acquire {weights} (downloads/weights)"
            continue
        try:
            digests_for(weights, scale_digests(scale, weights))
        except DigestError as error:  # an unpinned file is never fetched: trust on first use is refused
            reasons[name] = str(error)
    return reasons


def entry_runs_on(entry: dict, dataset: str, model: str) -> bool:
    """Whether a ``sampling:`` entry runs on ``model`` over ``dataset``: its ``datasets:`` and ``models:``
    lists, each absent meaning all."""
    return dataset in entry.get("datasets", [dataset]) and model in entry.get("models", [model])


def flow_runs(experiment: dict, scale: dict) -> list[tuple[str, str]]:
    """``(dataset, model)`` of every sample job of a flow experiment at this scale: each trained model on
    each of its datasets where a sampling entry runs it (a model that is only another's parent, as a
    reflow's 1-RF can be, gets no job), each pretrained network on its own dataset."""
    entries = experiment.get("sampling", {}).values()
    runs = [(dataset, model) for dataset in experiment["datasets"] for model in experiment["models"]
            if any(entry_runs_on(entry, dataset, model) for entry in entries)]
    return runs + [(entry["dataset"], name) for name, entry in pretrained_models(experiment, scale).items()]


def flow_datasets(experiment: dict, scale: dict) -> list[str]:
    """The datasets a flow experiment's jobs read at this scale: its own and its pretrained networks'."""
    return list(dict.fromkeys([*experiment["datasets"], *(e["dataset"] for e in pretrained_models(experiment, scale).values())]))


#: Spec keys that name another model of the experiment (its reflow pairs, initial weights, frozen teacher).
MODEL_REFERENCES = ("pairs_from", "init", "teacher")
#: Keys of a model spec that name a registered piece (``name`` or ``{name: ..., <option>: ...}``).
MODEL_PIECES = ("path", "coupling", "loss", "time_density", "objective")


def load_scale(path: str | Path) -> dict:
    scale = validate(load_yaml(path), "scale", path)
    for section in ("flow2d", "flow_images"):
        if section in scale:
            _check_sample_sizes(scale, section, path)
    return scale


def workflow_scale(workflow_config: dict, write_dir: str | Path = "results/scales") -> tuple[str, dict]:
    """``(scale file every job reads, the scale)`` of the workflow config.

    ``scale:`` names a shipped scale (``tiny``: config/scales/tiny.yaml) or any scale file by path.
    Every other key of the config but ``experiments`` overrides that file, section by section (a
    ``--configfile`` with ``flow2d: {steps: 100}`` and ``seeds: [0, 1]`` shortens a trial run): the
    merged scale is validated, so a key the scale does not have is an error naming it, never ignored;
    where it differs from the file it is written to ``<write_dir>/<name>.<hash>.yaml`` for the jobs.
    """
    import hashlib
    import json

    entry = workflow_config["scale"]
    path = entry if str(entry).endswith((".yaml", ".yml")) else f"config/scales/{entry}.yaml"
    base = load_yaml(path)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: a scale file is a mapping (scale: ..., seeds: ..., flow2d: ...)")
    overrides = {k: v for k, v in workflow_config.items() if k not in ("scale", "experiments")}
    merged = _merge(base, overrides)
    if merged == base:
        return path, load_scale(path)
    source = f"{path} with the workflow config's overrides {sorted(overrides)}"
    validate(merged, "scale", source)
    text = yaml.safe_dump(merged, sort_keys=True)
    digest = hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:10]
    written = Path(write_dir) / f"{Path(path).stem}.{digest}.yaml"
    if not written.exists():
        from flowrepro.io import write_text

        write_text(written, f"# {source}\n" + text)
    try:
        return str(written), load_scale(written)
    except ConfigError as error:
        raise ConfigError(str(error).replace(str(written), source)) from None


def _merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


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


def benchmark_seeds(experiment: dict, scale: dict) -> list[int]:
    """The seeds a sampler or optimizer experiment runs: the scale's, extended with the next integers
    up to the experiment's ``min_seeds`` (cheap experiments run more seeds to decide their claims)."""
    seeds = list(scale["seeds"])
    following = max(seeds) + 1 if seeds else 0
    while len(seeds) < int(experiment.get("min_seeds", 0)):
        seeds.append(following)
        following += 1
    return seeds


def roles(scale: dict) -> dict[str, str]:
    """role -> dataset at this scale (e.g. images -> cifar10); 2-D harness names map to themselves."""
    return dict(scale.get("roles", {}))


def bind_roles(experiment: dict, scale: dict, source: str | Path = "") -> dict:
    """The experiment with every dataset role (``datasets:``, sampling and reference filters) replaced
    by the scale's dataset, and without the models whose ``scales:`` leave this scale out (nor their
    sampling entries); claims keep the role and are resolved by :func:`flowrepro.claims.check_claim`."""
    import copy

    mapping = roles(scale)
    declared = experiment.get("datasets", [])
    unknown = [d for d in declared if d not in mapping and d in ROLE_NAMES]
    if unknown:
        raise ConfigError(f"{source or experiment['id']}: dataset role(s) {unknown} have no dataset at scale "
                          f"{scale['scale']!r} (its roles: {mapping})")
    bound = _models_at_scale(copy.deepcopy(experiment), scale["scale"], source)
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


def _models_at_scale(experiment: dict, scale_name: str, source: str | Path = "") -> dict:
    """Drop (in place) the models whose ``scales:`` do not list ``scale_name``, the sampling entries left
    with no model and a coupling reference on a dropped model; ``scales`` leaves the kept specs, so a
    model's key is the same with or without it. Claims on a dropped model find no rows: not-run."""
    models = experiment.get("models", {})
    dropped = {name for name, spec in models.items() if scale_name not in spec.get("scales", [scale_name])}
    for name, spec in models.items():
        spec.pop("scales", None)
        needed = [key for key in MODEL_REFERENCES if spec.get(key) in dropped and name not in dropped]
        if needed:
            raise ConfigError(f"{source or experiment['id']}: models/{name}/{needed[0]} names {spec[needed[0]]!r}, "
                              f"which its scales: leave out at scale {scale_name!r}")
    if not dropped:
        return experiment
    experiment["models"] = {name: spec for name, spec in models.items() if name not in dropped}
    sampling = {}
    for label, options in experiment.get("sampling", {}).items():
        if "models" in options:
            options["models"] = [m for m in options["models"] if m not in dropped]
            if not options["models"]:
                continue
        sampling[label] = options
    experiment["sampling"] = sampling
    if experiment.get("coupling_reference", {}).get("model") in dropped:
        del experiment["coupling_reference"]
    return experiment


#: Role names an experiment may list under ``datasets:`` (the scale maps each to a dataset).
ROLE_NAMES = ("images",)


def flow_settings(scale: dict, dataset: str) -> dict:
    """The scale section that sizes a flow job on ``dataset``: ``flow_images`` or ``flow2d``."""
    if dataset in IMAGE_DATASETS:
        if "flow_images" not in scale:
            raise ConfigError(f"scale {scale['scale']!r}: dataset {dataset!r} is an image dataset but the scale has no flow_images section")
        return {k: v for k, v in scale["flow_images"].items() if k != "overrides"}
    return scale["flow2d"]


def training_settings(scale: dict, experiment: dict, dataset: str, model: str | None = None) -> dict:
    """What trains a model of ``experiment`` (the model ``model``, where given) on ``dataset``: the scale's
    section, then (images only) the recipe for this scale (``recipes: {paper: ...}``, the model's own
    ``recipes_from`` first; a scale may borrow another's with ``recipes_of``), then the scale's
    ``flow_images/overrides`` (the smoke scale's two steps)."""
    settings = dict(flow_settings(scale, dataset))
    if dataset in IMAGE_DATASETS:
        recipes = experiment.get("model_recipes", {}).get(model, experiment.get("recipes", {}))
        recipe = recipes.get(scale.get("recipes_of", scale["scale"]), {})
        settings |= {k: v for k, v in recipe.items() if k not in RECIPE_NOTES}
        settings |= scale["flow_images"].get("overrides", {})
    return settings


def recipe_changes(scale: dict, experiment: dict, dataset: str, model: str | None = None) -> dict:
    """The training settings in which this experiment's (or its model's) recipe differs from the scale's section."""
    base, settings = flow_settings(scale, dataset), training_settings(scale, experiment, dataset, model)
    return {k: v for k, v in settings.items() if base.get(k) != v and k not in RUN_SETTINGS}


#: Recipe keys that say how a training job runs, not what it trains (the global batch is the recipe's
#: whatever the GPU count): never part of a model's key, and no reason to rerun a finished job.
RUN_SETTINGS = ("gpus",)


#: What a model spec means when it leaves a key out (the experiment schema's defaults).
MODEL_DEFAULTS = {"path": "linear", "coupling": "independent", "optimizer": "adamw", "time_density": "uniform",
                  "loss": "mse", "prediction": "velocity", "objective": "regression"}


def ema_decay(spec: dict, settings: dict) -> float:
    """EMA decay of a model: its spec's, else the scale's; consistency FM needs one (its target)."""
    from flowrepro import pieces

    default = 0.99 if pieces.name_of(spec.get("objective", "regression")) == "velocity_consistency" else 0.0
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

    identity = model_identity(experiment, name, dataset, scale)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def model_identity(experiment: dict, name: str, dataset: str, scale: dict | None = None) -> dict:
    """What :func:`model_key` hashes: the dataset, the spec (defaults filled in, pieces canonical,
    ``pairs_from``/``init``/``teacher`` as their models' keys), the sha256 of each plugin file that supplies one
    of its pieces, and the experiment's recipe where it differs from the scale's. Nothing in it
    names the experiment, so every experiment that defines this model shares its file and job."""
    from flowrepro import pieces

    spec = MODEL_DEFAULTS | {k: v for k, v in experiment["models"][name].items() if k != "scales"}  # {path: linear} = {path: linear, coupling: independent}
    spec = {k: pieces.canonical(v) if k in MODEL_PIECES else v for k, v in spec.items()}
    identity = {"dataset": dataset, "spec": spec, "plugins": sorted(f["sha256"] for f in model_plugins(experiment, name))}
    if scale is not None:
        # the optimizer that will train it: the spec's, else the recipe's (adam at small/paper), else adamw
        spec["optimizer"] = experiment["models"][name].get("optimizer", training_settings(scale, experiment, dataset, name).get("optimizer", "adamw"))
        if "ema_decay" in spec:
            settings = training_settings(scale, experiment, dataset, name)
            if float(spec["ema_decay"]) == ema_decay({k: v for k, v in spec.items() if k != "ema_decay"}, settings):
                del spec["ema_decay"]
        changes = recipe_changes(scale, experiment, dataset, name)
        if changes:  # two experiments' recipes train the same spec differently: two models
            identity["recipe"] = changes
    for key in MODEL_REFERENCES:
        if key in spec:
            spec[key] = model_key(experiment, spec[key], dataset, scale)
    return identity


def model_plugins(experiment: dict, name: str) -> list[dict]:
    """``[{file, sha256}]`` of the plugin files that supply a piece of the model ``name`` (loaded
    first): the files its training job reads, whose edits change its key."""
    from flowrepro import pieces, registry
    from flowrepro.generative import couplings, losses, paths  # noqa: F401  (register built-ins)

    registry.load_plugins(experiment.get("plugins", []), listed_by=experiment.get("id"))
    spec = experiment["models"][name]
    files = {pieces.table(kind).source(pieces.name_of(spec[kind])) for kind in MODEL_PIECES if kind in spec}
    if "optimizer" in spec:
        from flowrepro.optim import registry as optimizers  # noqa: F401  (register built-ins)

        files.add(registry.OPTIMIZERS.source(spec["optimizer"]))
    files.discard(None)
    return [{"file": _relative(f), "sha256": file_sha256(f)} for f in sorted(files)]


def runs_own_sampler(options: dict) -> bool:
    """A sampling entry whose sampler is no registered piece: S3's search runs its own per-step-order
    DPM-Solver++ (flowrepro.samplers.step_search)."""
    return options.get("search", {}).get("variant") == "s3"


def sampling_plugin_files(experiment: dict, model: str) -> list[str]:
    """The plugin files that supply a sampler or schedule the experiment runs on ``model``: with the
    model file, what its sample job reads (an edit to a plugin no sampling entry uses reruns nothing)."""
    from flowrepro import pieces, registry
    from flowrepro.samplers import diffusion, ode, schedules, schedules_extra, sde, time_shift  # noqa: F401  (register built-ins)

    registry.load_plugins(experiment.get("plugins", []), listed_by=experiment.get("id"))
    files = set()
    for label, options in experiment.get("sampling", {}).items():
        if model not in options.get("models", [model]):
            continue
        if not runs_own_sampler(options):
            files.add(registry.SAMPLERS.source(pieces.name_of(options.get("sampler", label))))
        schedule = pieces.name_of(options.get("schedule", "uniform"))
        if schedule in registry.SCHEDULES:
            files.add(registry.SCHEDULES.source(schedule))
    files.discard(None)
    return sorted(_relative(f) for f in files)


def experiment_plugin_files(experiment: dict) -> list[str]:
    """Every file among an experiment's ``plugins:`` (module entries by their module's file)."""
    import importlib.util

    from flowrepro.registry import is_plugin_file, load_plugins

    load_plugins(experiment.get("plugins", []), listed_by=experiment.get("id"))
    files = []
    for entry in experiment.get("plugins", []):
        origin = entry if is_plugin_file(entry) else importlib.util.find_spec(entry).origin
        files.append(_relative(origin))
    return files


def file_sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _relative(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (workflow paths), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


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
