"""train: fit one model of a flow experiment, for every seed of the scale or for one (``--seed``).

Output: a safetensors file (named ``.pt`` for the workflow) with, per seed, the state dict, the loss
history and the wall time, and JSON metadata (see :func:`flowrepro.io.save_model_file`). At tiny
scale one job trains every seed (process start-up costs more than a tiny run); at small and paper
each seed is its own job (``seed_jobs``), so a cluster runs them side by side. Each seed
checkpoints to ``<out>.seed<k>.ckpt`` so a killed or preempted job resumes where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

from flowrepro import io
from flowrepro.config import bind_roles, ema_decay, load_experiment, load_scale, pick_device


def build_model(shape: tuple[int, ...], settings: dict, spec: dict | None = None):
    """The module a model spec trains: its objective's ``network`` hook where it has one (CAF's two
    networks, an encoder beside the flow), else one flow network (:func:`build_network`)."""
    from flowrepro.generative.objectives import objective_piece

    spec = spec or {}
    hook = getattr(objective_piece(spec), "network", None)
    if "condition" in spec:  # one network, told each sample's class (label dropout makes it unconditional too)
        from flowrepro.generative.conditioning import ClassConditional
        from flowrepro.models.unet import build_unet

        classes = spec["condition"]["classes"]
        if len(shape) != 3:
            raise ValueError(f"condition: needs an image model (a UNet); this one's data has shape {shape}")
        if hook:
            raise ValueError(f"condition: needs one flow network; objective {spec.get('objective')!r} builds its own")
        return ClassConditional(build_unet(tuple(shape), settings["network"], class_embeddings=classes + 1), classes)
    return hook(shape, settings, spec, build_network) if hook else build_network(shape, settings)


def build_network(shape: tuple[int, ...], settings: dict):
    """An MLP for vectors (2-D toys, mixtures), a UNet for (C, H, W) images (``settings["network"]``)."""
    if len(shape) == 1:
        from flowrepro.models.mlp import build_mlp

        return build_mlp(shape[0], width=settings["width"], depth=settings["depth"])
    from flowrepro.models.unet import build_unet

    return build_unet(tuple(shape), settings["network"])


def train_config(spec: dict, settings: dict):
    """The training loop's settings: the recipe (scale, experiment, overrides), then the model's spec."""
    from flowrepro.generative.training import TrainConfig

    return TrainConfig(steps=max(1, round(settings["steps"] * spec.get("steps_fraction", 1.0))),
                       batch_size=settings["batch_size"], lr=settings["lr"],
                       checkpoint_every=settings["checkpoint_every"],
                       optimizer=spec.get("optimizer", settings.get("optimizer", "adamw")),
                       time_density=spec.get("time_density", "uniform"), loss=spec.get("loss", "mse"),
                       ema_decay=ema_decay(spec, settings), bf16=settings.get("bf16", True),
                       compile=settings.get("compile", False), betas=settings.get("betas"), eps=settings.get("eps"),
                       weight_decay=settings.get("weight_decay"), warmup=settings.get("warmup", 0),
                       grad_clip=settings.get("grad_clip", 0.0))


def _pairs_index(pairs_file: str, n_seeds_in_file: int, seed: int, scale: dict) -> int:
    """Row of ``seed`` in a pairs file: one file per seed (one row) or one for all the scale's seeds."""
    if n_seeds_in_file == len(scale["seeds"]):
        return scale["seeds"].index(seed)
    if n_seeds_in_file == 1:
        return 0
    raise ValueError(f"{pairs_file}: pairs of {n_seeds_in_file} seeds; expected 1 or the scale's {len(scale['seeds'])}")


def describe(experiment_file: str, model_name: str, dataset: str, scale: dict) -> dict:
    """The description of model ``model_name`` of an experiment file (:func:`flowrepro.config.model_identity`
    plus its plugin files): what the workflow passes as ``--model-spec``, for a run by hand."""
    from flowrepro.config import model_identity, model_plugins

    experiment = bind_roles(load_experiment(experiment_file), scale, experiment_file)
    if model_name not in experiment["models"]:
        raise KeyError(f"{experiment_file}: no model {model_name!r} under models; known: {sorted(experiment['models'])}")
    return model_identity(experiment, model_name, dataset, scale) | {"plugin_files": model_plugins(experiment, model_name)}


def run_from_experiment(experiment_file: str, scale_file: str, dataset: str, model_name: str, data_file: str, out: str,
                        pairs_file: str | None = None, init_files: list[str] | str | None = None, progress: bool = True,
                        seed: int | None = None) -> None:
    """Train model ``model_name`` of an experiment file (by hand; the workflow passes :func:`describe`'s JSON)."""
    description = describe(experiment_file, model_name, dataset, load_scale(scale_file))
    run(description, scale_file, data_file, out, pairs_file, init_files, progress=progress, seed=seed, name=model_name)


def load_model_plugins(plugins: list[dict], source: str) -> None:
    """Import the plugin files a model's pieces come from, each checked against the sha256 it was keyed
    (or trained) with: an edited plugin is a different model, never silently the same one."""
    from flowrepro.config import file_sha256
    from flowrepro.registry import load_plugins

    for plugin in plugins:
        if not Path(plugin["file"]).is_file():
            raise FileNotFoundError(f"{source}: plugin file {plugin['file']} is missing")
        actual = file_sha256(plugin["file"])
        if actual != plugin["sha256"]:
            raise ValueError(f"{source}: plugin {plugin['file']} has sha256 {actual}, the model was defined with "
                             f"{plugin['sha256']}; the plugin changed since (rerun the workflow: its key changed too)")
        load_plugins([plugin["file"]], listed_by=source)


def run(description: dict, scale_file: str, data_file: str, out: str, pairs_file: str | None = None,
        init_files: list[str] | str | None = None, progress: bool = True, seed: int | None = None,
        name: str | None = None, teacher_files: list[str] | str | None = None) -> None:
    """Train the model ``description`` names (:func:`describe`; the workflow passes it as JSON, so
    the job is the same whichever experiment lists the model) on ``data_file``; ``teacher_files``:
    the spec's ``teacher:`` model, whose seed k the objective of seed k calls (frozen)."""
    import copy
    import hashlib
    import json

    import numpy as np
    import torch

    from flowrepro import pieces
    from flowrepro.config import flow_settings
    from flowrepro.generative import couplings, paths  # noqa: F401  (register the pieces)
    from flowrepro.generative.data_views import PairsOnDisk, RandomHorizontalFlip
    from flowrepro.generative.distributed import from_environment
    from flowrepro.generative.objectives import build_objective
    from flowrepro.generative.paths import build_path
    from flowrepro.generative.training import train_flow

    scale = load_scale(scale_file)
    plugins = description.get("plugin_files", [])
    identity = {k: v for k, v in description.items() if k != "plugin_files"}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    if sorted(p["sha256"] for p in plugins) != sorted(identity.get("plugins", [])):
        raise ValueError(f"--model-spec: plugin_files {plugins} do not match the plugins of the model ({identity.get('plugins')})")
    load_model_plugins(plugins, f"model {key}")
    name = name or key
    dataset, spec = identity["dataset"], identity["spec"]
    seeds = list(scale["seeds"]) if seed is None else [int(seed)]
    if not set(seeds) <= set(scale["seeds"]):
        raise ValueError(f"--seed {seed} is not one of the scale's seeds {scale['seeds']} ({scale_file})")
    settings = flow_settings(scale, dataset) | identity.get("recipe", {})  # = training_settings of the experiment
    device = pick_device(scale.get("device", "auto"))
    group = from_environment(device)  # under torchrun (a recipe's gpus: N > 1): this rank's GPU; else None
    device, writer = (group.device, group.rank == 0) if group else (device, True)  # only rank 0 prints and writes
    config = train_config(spec, settings)
    path = build_path(spec)
    loss_fn = pieces.build("loss", config.loss)
    if ("teacher" in spec) != bool(teacher_files):
        raise ValueError(f"model {name!r}: " + ("its spec names a teacher; give --teacher" if teacher_files is None
                                                 else "--teacher given, but its spec names no teacher"))
    teachers = load_models(teacher_files, device)[1] if teacher_files else {}
    arrays = io.load_data(data_file)
    data = torch.as_tensor(arrays["train"], device=device)
    data = data if data.dim() == 4 else data.flatten(1)  # images keep (C, H, W) for the UNet
    shape = tuple(data.shape[1:])
    reflow = pieces.name_of(spec.get("coupling", "independent")) == "reflow"
    if reflow and pairs_file is None:
        raise ValueError(f"model {name!r} uses reflow pairs but no --pairs file was given")
    init = _load_seeds(init_files, device) if init_files else None

    result = {"key": key, "dataset": dataset, "model": name, "shape": shape, "spec": spec, "settings": settings,
              "plugins": plugins, "steps": config.steps, "seeds": {},
              "data_var": float(data.flatten(1).var(dim=0).mean())}  # tr Cov / d: what time-shift samplers match
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(shape, settings, spec).to(device)
        if teacher_files and seed not in teachers:
            raise KeyError(f"--teacher {teacher_files}: no model for seed {seed} (has {sorted(teachers)})")
        objective = build_objective(spec, path, loss_fn, teachers.get(seed))
        if seed == seeds[0] and writer:
            size = sum(p.numel() for p in model.parameters())
            print(f"train: {name} on {dataset}: network {settings.get('network', 'mlp')}, {size / 1e6:.3f} M parameters, "
                  f"{config.steps} steps of batch {config.batch_size}, {config.optimizer} lr {config.lr}")
        if init is not None:
            if seed not in init:
                raise KeyError(f"--init {init_files}: no weights for seed {seed} (has {sorted(init)})")
            model.load_state_dict(init[seed]["state_dict"])
        ema_model = copy.deepcopy(model).requires_grad_(False) if config.ema_decay > 0 else None
        if reflow:
            rows = np.load(pairs_file, mmap_mode="r").shape[0]
            seed_pairs = PairsOnDisk(pairs_file, _pairs_index(pairs_file, rows, seed, scale), device)
            coupling = lambda n, g, p=seed_pairs: couplings.reflow(p, n, g)  # noqa: E731
        elif "condition" in spec:  # (x0, x1, the label of x1 or the null class)
            coupling = _labelled_coupling(spec, data, arrays.get("train_labels"), data_file, settings, seed)
        else:
            pair_up = pieces.build("coupling", spec.get("coupling", "independent"))
            options = {"reg": spec["coupling_reg"]} if "coupling_reg" in spec else {}  # e.g. minibatch_sinkhorn's
            source = RandomHorizontalFlip(data, seed) if settings.get("hflip") and data.dim() == 4 else data
            coupling = lambda n, g, f=pair_up, o=options, d=source: f(d, n, g, **o)  # noqa: E731
        checkpoint = Path(f"{out}.seed{seed}.ckpt")
        start = time.perf_counter()
        history = train_flow(model, coupling, path, config, seed=seed, run_name=f"{dataset}/{name}/seed{seed}",
                             checkpoint=checkpoint, device=device, progress=progress, objective=objective,
                             ema_model=ema_model, distributed=group)
        result["seeds"][seed] = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                 "losses": history, "wall_s": time.perf_counter() - start}
        if ema_model is not None:
            result["seeds"][seed]["ema_state_dict"] = {k: v.cpu() for k, v in ema_model.state_dict().items()}
    if group:
        group.close()
    if not writer:
        return
    io.save_model_file(out, result)  # safetensors + JSON (the .pt name is the workflow's)
    for seed in seeds:
        Path(f"{out}.seed{seed}.ckpt").unlink(missing_ok=True)
    print(f"train: wrote {out}")


def _labelled_coupling(spec: dict, data, train_labels, data_file: str, settings: dict, seed: int):
    """Independent pairs with the data's labels, dropped to the null class at ``condition.label_dropout``."""
    import torch

    from flowrepro.generative.conditioning import labelled_independent
    from flowrepro.generative.data_views import RandomHorizontalFlip

    condition = spec["condition"]
    if train_labels is None:
        raise KeyError(f"{data_file}: no train_labels, which a model with condition: needs")
    labels = torch.as_tensor(train_labels, dtype=torch.long, device=data.device)
    if len(labels) != len(data) or labels.min() < 0 or labels.max() >= condition["classes"]:
        raise ValueError(f"{data_file}: train_labels must be {len(data)} classes in [0, {condition['classes']}) "
                         f"(condition.classes); got {len(labels)} in [{int(labels.min())}, {int(labels.max())}]")
    source = RandomHorizontalFlip(data, seed) if settings.get("hflip") else data
    return lambda n, g: labelled_independent(source, labels, n, g, condition["classes"], condition["label_dropout"])


def _load_seeds(model_files: list[str] | str, device: str) -> dict:
    """seed -> entry, over one train output or several (one per seed)."""
    entries: dict = {}
    for info in _load_infos(model_files, device):
        entries.update(info["seeds"])
    return entries


def _load_infos(model_files: list[str] | str, device: str) -> list[dict]:
    """The train outputs (safetensors + JSON, never a pickle: see :func:`flowrepro.io.load_model_file`)."""
    files = [model_files] if isinstance(model_files, (str, Path)) else list(model_files)
    infos = [io.load_model_file(f, device) for f in files]
    for name, info in zip(files[1:], infos[1:]):
        if (info["dataset"], info["spec"]) != (infos[0]["dataset"], infos[0]["spec"]):
            raise ValueError(f"{name}: a different model from {files[0]}; per-seed files must be one model's")
    return infos


def load_models(model_files: list[str] | str, device: str = "cpu"):
    """Return ``(info, {seed: velocity field})`` from a train output, or from one per seed.

    Each field is callable as v(x, t) and has ``epsilon(x, t)`` (noise prediction, by conversion
    where the network predicts velocity); the EMA weights are used when training kept them.
    """
    from flowrepro.generative.objectives import objective_piece
    from flowrepro.generative.parameterization import AsVelocity, VelocityModel
    from flowrepro.generative.paths import build_path

    infos = _load_infos(model_files, device)
    info = dict(infos[0], seeds={seed: entry for i in infos for seed, entry in i["seeds"].items()})
    load_model_plugins(info.get("plugins", []), str(model_files))  # its path (or other piece) may be a plugin's
    spec = info.get("spec", {})
    path = build_path(spec)
    field = getattr(objective_piece(spec), "field", None)  # e.g. CAF: initial velocity + acceleration
    wrapper = AsVelocity if spec.get("prediction") == "epsilon" else VelocityModel
    settings = dict(info["settings"])
    if len(info["shape"]) == 3 and "network" not in settings:  # files trained before network presets
        settings["network"] = {"channels": settings["channels"], "layers_per_block": settings.get("layers_per_block", 1)}
    models = {}
    for seed, entry in sorted(info["seeds"].items()):
        network = build_model(info["shape"], settings, spec).to(device)
        network.load_state_dict(entry.get("ema_state_dict", entry["state_dict"]))
        models[seed] = field(network.eval(), path, spec) if field else wrapper(network.eval(), path)
    return info, models
