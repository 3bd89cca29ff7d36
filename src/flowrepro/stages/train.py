"""train: fit one model of a flow experiment for every seed of the scale.

Output: a torch file with, per seed, the state dict, the loss history and the wall time.
Seeds run one after another in one process (process start-up costs more than a tiny run);
each seed checkpoints to ``<out>.seed<k>.ckpt`` so a killed job resumes where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

from flowrepro import io
from flowrepro.config import load_experiment, load_scale, pick_device


def build_model(dim: int, settings: dict):
    from flowrepro.models.mlp import build_mlp

    return build_mlp(dim, width=settings["width"], depth=settings["depth"])


def run(experiment_file: str, scale_file: str, dataset: str, model_name: str, data_file: str,
        out: str, pairs_file: str | None = None, init_file: str | None = None, progress: bool = True) -> None:
    import torch

    from flowrepro.generative import couplings, paths  # noqa: F401  (register the pieces)
    from flowrepro.generative.training import TrainConfig, train_flow
    from flowrepro.generative.paths import build_path
    from flowrepro.registry import COUPLINGS, load_plugins

    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    load_plugins(experiment.get("plugins", []))
    if model_name not in experiment["models"]:
        raise KeyError(f"{experiment_file}: no model {model_name!r} under models; known: {sorted(experiment['models'])}")
    spec = experiment["models"][model_name]
    settings = scale["flow2d"]
    device = pick_device(scale.get("device", "auto"))
    config = TrainConfig(steps=settings["steps"], batch_size=settings["batch_size"], lr=settings["lr"],
                         checkpoint_every=settings["checkpoint_every"], optimizer=spec.get("optimizer", "adamw"),
                         time_density=spec.get("time_density", "uniform"), loss=spec.get("loss", "mse"))
    path = build_path(spec)
    data = torch.as_tensor(io.load_npz(data_file)["train"], device=device).flatten(1)
    pairs = torch.as_tensor(io.load_npz(pairs_file)["pairs"], device=device) if pairs_file else None
    if spec.get("coupling", "independent") == "reflow" and pairs is None:
        raise ValueError(f"{experiment_file}: model {model_name!r} uses reflow pairs but no --pairs file was given")
    init = torch.load(init_file, map_location=device, weights_only=False) if init_file else None

    result = {"experiment": experiment["id"], "dataset": dataset, "model": model_name, "dim": data.shape[1],
              "settings": settings, "seeds": {}}
    for seed in scale["seeds"]:
        torch.manual_seed(seed)
        model = build_model(data.shape[1], settings).to(device)
        if init is not None:
            model.load_state_dict(init["seeds"][seed]["state_dict"])
        if pairs is not None:
            seed_pairs = pairs[scale["seeds"].index(seed)]
            coupling = lambda n, g, p=seed_pairs: couplings.reflow(p, n, g)  # noqa: E731
        else:
            pair_up = COUPLINGS.get(spec.get("coupling", "independent"))
            coupling = lambda n, g, f=pair_up: f(data, n, g)  # noqa: E731
        checkpoint = Path(f"{out}.seed{seed}.ckpt")
        start = time.perf_counter()
        history = train_flow(model, coupling, path, config, seed=seed, run_name=f"{experiment['id']}/{dataset}/{model_name}/seed{seed}",
                             checkpoint=checkpoint, device=device, progress=progress)
        result["seeds"][seed] = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                 "losses": history, "wall_s": time.perf_counter() - start}
    io.save_torch(out, result)
    for seed in scale["seeds"]:
        Path(f"{out}.seed{seed}.ckpt").unlink(missing_ok=True)
    print(f"train: wrote {out}")


def load_models(model_file: str, device: str = "cpu"):
    """Return ``(info, {seed: model in eval mode})`` from a train output."""
    import torch

    info = torch.load(model_file, map_location=device, weights_only=False)
    models = {}
    for seed, entry in info["seeds"].items():
        model = build_model(info["dim"], info["settings"]).to(device)
        model.load_state_dict(entry["state_dict"])
        models[seed] = model.eval()
    return info, models
