"""train: fit one model of a flow experiment for every seed of the scale.

Output: a torch file with, per seed, the state dict, the loss history and the wall time.
Seeds run one after another in one process (process start-up costs more than a tiny run);
each seed checkpoints to ``<out>.seed<k>.ckpt`` so a killed job resumes where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

from flowrepro import io
from flowrepro.config import ema_decay, load_experiment, load_scale, pick_device


def build_model(shape: tuple[int, ...], settings: dict):
    """An MLP for vectors (2-D toys, mixtures), a UNet for (C, H, W) images."""
    if len(shape) == 1:
        from flowrepro.models.mlp import build_mlp

        return build_mlp(shape[0], width=settings["width"], depth=settings["depth"])
    from flowrepro.models.unet import build_unet

    return build_unet(tuple(shape), settings["channels"], settings.get("layers_per_block", 1))


def run(experiment_file: str, scale_file: str, dataset: str, model_name: str, data_file: str,
        out: str, pairs_file: str | None = None, init_file: str | None = None, progress: bool = True) -> None:
    import torch

    from flowrepro.generative import couplings, paths  # noqa: F401  (register the pieces)
    import copy

    from flowrepro.config import flow_settings
    from flowrepro.generative.objectives import build_objective
    from flowrepro.generative.paths import build_path
    from flowrepro.generative.training import TrainConfig, train_flow
    from flowrepro.registry import COUPLINGS, LOSSES, load_plugins

    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    load_plugins(experiment.get("plugins", []))
    if model_name not in experiment["models"]:
        raise KeyError(f"{experiment_file}: no model {model_name!r} under models; known: {sorted(experiment['models'])}")
    spec = experiment["models"][model_name]
    settings = flow_settings(scale, dataset)
    device = pick_device(scale.get("device", "auto"))
    decay = ema_decay(spec, settings)
    config = TrainConfig(steps=max(1, round(settings["steps"] * spec.get("steps_fraction", 1.0))),
                         batch_size=settings["batch_size"], lr=settings["lr"],
                         checkpoint_every=settings["checkpoint_every"], optimizer=spec.get("optimizer", "adamw"),
                         time_density=spec.get("time_density", "uniform"), loss=spec.get("loss", "mse"),
                         ema_decay=decay, bf16=settings.get("bf16", True), compile=settings.get("compile", False))
    path = build_path(spec)
    objective = build_objective(spec, path, LOSSES.get(config.loss))
    data = torch.as_tensor(io.load_npz(data_file)["train"], device=device)
    data = data if data.dim() == 4 else data.flatten(1)  # images keep (C, H, W) for the UNet
    shape = tuple(data.shape[1:])
    pairs = torch.as_tensor(io.load_npz(pairs_file)["pairs"], device=device) if pairs_file else None
    if spec.get("coupling", "independent") == "reflow" and pairs is None:
        raise ValueError(f"{experiment_file}: model {model_name!r} uses reflow pairs but no --pairs file was given")
    init = torch.load(init_file, map_location=device, weights_only=False) if init_file else None

    result = {"experiment": experiment["id"], "dataset": dataset, "model": model_name, "shape": shape,
              "spec": spec, "settings": settings, "steps": config.steps, "seeds": {},
              "data_var": float(data.flatten(1).var(dim=0).mean())}  # tr Cov / d: what time-shift samplers match
    for seed in scale["seeds"]:
        torch.manual_seed(seed)
        model = build_model(shape, settings).to(device)
        if init is not None:
            model.load_state_dict(init["seeds"][seed]["state_dict"])
        ema_model = copy.deepcopy(model).requires_grad_(False) if decay > 0 else None
        if pairs is not None:
            seed_pairs = pairs[scale["seeds"].index(seed)]
            coupling = lambda n, g, p=seed_pairs: couplings.reflow(p, n, g)  # noqa: E731
        else:
            pair_up = COUPLINGS.get(spec.get("coupling", "independent"))
            options = {"reg": spec["coupling_reg"]} if "coupling_reg" in spec else {}  # e.g. minibatch_sinkhorn's
            coupling = lambda n, g, f=pair_up, o=options: f(data, n, g, **o)  # noqa: E731
        checkpoint = Path(f"{out}.seed{seed}.ckpt")
        start = time.perf_counter()
        history = train_flow(model, coupling, path, config, seed=seed, run_name=f"{experiment['id']}/{dataset}/{model_name}/seed{seed}",
                             checkpoint=checkpoint, device=device, progress=progress, objective=objective,
                             ema_model=ema_model)
        result["seeds"][seed] = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                 "losses": history, "wall_s": time.perf_counter() - start}
        if ema_model is not None:
            result["seeds"][seed]["ema_state_dict"] = {k: v.cpu() for k, v in ema_model.state_dict().items()}
    io.save_torch(out, result)
    for seed in scale["seeds"]:
        Path(f"{out}.seed{seed}.ckpt").unlink(missing_ok=True)
    print(f"train: wrote {out}")


def load_models(model_file: str, device: str = "cpu"):
    """Return ``(info, {seed: velocity field})`` from a train output.

    Each field is callable as v(x, t) and has ``epsilon(x, t)`` (noise prediction, by conversion
    where the network predicts velocity); the EMA weights are used when training kept them.
    """
    import torch

    from flowrepro.generative.parameterization import AsVelocity, VelocityModel
    from flowrepro.generative.paths import build_path

    info = torch.load(model_file, map_location=device, weights_only=False)
    spec = info.get("spec", {})
    path = build_path(spec)
    wrapper = AsVelocity if spec.get("prediction") == "epsilon" else VelocityModel
    models = {}
    for seed, entry in info["seeds"].items():
        network = build_model(info["shape"], info["settings"]).to(device)
        network.load_state_dict(entry.get("ema_state_dict", entry["state_dict"]))
        models[seed] = wrapper(network.eval(), path)
    return info, models
