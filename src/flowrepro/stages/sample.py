"""sample: run every sampler of a flow experiment on one trained model, counting NFE.

Also writes ``reflow pairs`` (``flowrepro reflow-pairs``): (x0, ODE(x0)) from a trained model.
Output of sample: an npz with one array per run (``<sampler>/<schedule>/<setting>/seed<k>``), the
Euler trajectory used for straightness, and a JSON index of the runs with their counted NFE.
"""
from __future__ import annotations

import json
import time

import numpy as np

from flowrepro import io
from flowrepro.config import load_experiment, load_scale, pick_device


def _noise(n: int, shape: tuple[int, ...], seed: int, device: str):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(10_000 + seed)  # disjoint from training seeds
    return torch.randn(n, *shape, generator=generator).to(device)


def sampler_runs(label: str, options: dict):
    """``(sampler name, [(schedule label, keyword arguments)])`` for one entry of ``sampling:``.

    The entry's key is a label; ``sampler:`` names the registry entry when the two differ
    (e.g. ``euler_perturbed: {sampler: euler, velocity_error: 0.5, nfe: [...]}``).
    """
    from flowrepro.registry import SAMPLERS, SCHEDULES
    from flowrepro.samplers import diffusion, ode, trained_diffusion

    name = options.get("sampler", label)
    schedule = options.get("schedule", "uniform")
    if name in diffusion.SCHEDULERS:  # a diffusers scheduler on the trained model (trained_diffusion)
        return name, [(schedule, {"scheduler": name, "steps": trained_diffusion.steps_for_budget(name, nfe, schedule),
                                  "schedule": schedule}) for nfe in options["nfe"]]
    if "rtol" in options:
        return name, [(f"adaptive_rtol{rtol:g}", {"rtol": rtol, "atol": rtol}) for rtol in options["rtol"]]
    calls = getattr(SAMPLERS.get(name), "calls_per_step", ode.CALLS_PER_STEP.get(name, 1))
    extra = {key: options[key] for key in ("epsilon", "snr") if key in options}
    return name, [(schedule, {"times": SCHEDULES.get(schedule)(max(1, nfe // calls)), **extra}) for nfe in options["nfe"]]


def run(experiment_file: str, scale_file: str, model_file: str, out: str, method: str | None = None) -> None:
    import inspect

    from flowrepro.config import flow_settings
    from flowrepro.registry import SAMPLERS, load_plugins
    from flowrepro.samplers import ode, schedules, schedules_extra, sde, trained_diffusion  # noqa: F401  (register built-ins)
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages.train import load_models

    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    load_plugins(experiment.get("plugins", []))
    device = pick_device(scale.get("device", "auto"))
    info, models = load_models(model_file, device)
    settings = flow_settings(scale, info["dataset"])
    times = np.linspace(0.0, 1.0, settings["trajectory_steps"] + 1)  # the straightness grid
    arrays: dict[str, np.ndarray] = {"trajectory_times": times}
    runs = []
    for seed, model in models.items():
        x0 = _noise(settings["n_eval"], info["shape"], seed, device)
        for label, options in experiment["sampling"].items():
            if info["dataset"] not in options.get("datasets", [info["dataset"]]):
                continue
            name, settings_list = sampler_runs(label, options)
            sampler = SAMPLERS.get(name)
            field = sde.PerturbedVelocity(model, options["velocity_error"]) if "velocity_error" in options else model
            counter = NFECounter(field)
            for schedule, kwargs in settings_list:
                if "seed" in inspect.signature(sampler).parameters:
                    kwargs = {**kwargs, "seed": 20_000 + seed}  # the SDE's own noise, fixed per seed
                counter.reset()
                start = time.perf_counter()
                if "scheduler" in kwargs:
                    x = trained_diffusion.sample(counter, x0, **kwargs)
                    setting = f"steps={kwargs['steps']}"
                else:
                    x = sampler(counter, x0, **kwargs)
                    setting = f"rtol={kwargs['rtol']:g}" if "rtol" in kwargs else f"steps={len(kwargs['times']) - 1}"
                wall = time.perf_counter() - start
                nfe = counter.reset()
                key = f"{label}/{schedule}/{setting}/seed{seed}"
                arrays[key] = x.cpu().numpy()
                runs.append({"key": key, "sampler": label, "schedule": schedule, "setting": setting,
                             "seed": seed, "nfe": nfe, "wall_s": wall})
        _, trajectory = ode.integrate_fixed(model, x0, times, "euler", return_trajectory=True)
        arrays[f"trajectory/seed{seed}"] = trajectory.cpu().numpy()
    arrays["runs"] = np.array(json.dumps({"model": method or info["model"], "dataset": info["dataset"], "runs": runs}))
    io.save_npz(out, **arrays)
    print(f"sample: wrote {out} ({len(runs)} runs)")


def reflow_pairs(scale_file: str, model_file: str, out: str) -> None:
    """Pairs (x0, x1 = RK4 solve of the model's ODE from x0), one set per seed."""
    from flowrepro.samplers import ode
    from flowrepro.stages.train import load_models

    from flowrepro.config import flow_settings

    scale = load_scale(scale_file)
    device = pick_device(scale.get("device", "auto"))
    info, models = load_models(model_file, device)
    settings = flow_settings(scale, info["dataset"])
    times = np.linspace(0.0, 1.0, settings["pair_steps"] + 1)
    pairs = []
    for seed in scale["seeds"]:
        x0 = _noise(settings["reflow_pairs"], info["shape"], seed + 500, device)
        x1 = ode.integrate_fixed(models[seed], x0, times, "rk4")
        pairs.append(np.stack([x0.cpu().numpy(), x1.cpu().numpy()]))
    io.save_npz(out, pairs=np.stack(pairs).astype(np.float32))
    print(f"reflow-pairs: wrote {out}")
