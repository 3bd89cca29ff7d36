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


def _noise(n: int, dim: int, seed: int, device: str):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(10_000 + seed)  # disjoint from training seeds
    return torch.randn(n, dim, generator=generator).to(device)


def run(experiment_file: str, scale_file: str, model_file: str, out: str) -> None:
    import torch

    from flowrepro.registry import SAMPLERS, SCHEDULES, load_plugins
    from flowrepro.samplers import ode, schedules  # noqa: F401  (register solvers and grids)
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages.train import load_models

    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    load_plugins(experiment.get("plugins", []))
    settings, device = scale["flow2d"], pick_device(scale.get("device", "auto"))
    info, models = load_models(model_file, device)
    times = np.linspace(0.0, 1.0, settings["trajectory_steps"] + 1)  # the straightness grid
    arrays: dict[str, np.ndarray] = {"trajectory_times": times}
    runs = []
    for seed, model in models.items():
        counter = NFECounter(model)
        x0 = _noise(settings["n_eval"], info["dim"], seed, device)
        for sampler, options in experiment["sampling"].items():
            if sampler == "dopri5":
                settings_list = [(f"adaptive_rtol{rtol:g}", {"rtol": rtol, "atol": rtol}) for rtol in options["rtol"]]
            else:
                schedule = options.get("schedule", "uniform")
                calls = ode.CALLS_PER_STEP.get(sampler, 1)
                settings_list = [(schedule, {"times": SCHEDULES.get(schedule)(max(1, nfe // calls))})
                                 for nfe in options["nfe"]]
            for schedule, kwargs in settings_list:
                counter.reset()
                start = time.perf_counter()
                x = SAMPLERS.get(sampler)(counter, x0, **kwargs)
                wall = time.perf_counter() - start
                nfe = counter.reset()
                setting = f"rtol={kwargs['rtol']:g}" if "rtol" in kwargs else f"steps={len(kwargs['times']) - 1}"
                key = f"{sampler}/{schedule}/{setting}/seed{seed}"
                arrays[key] = x.cpu().numpy()
                runs.append({"key": key, "sampler": sampler, "schedule": schedule, "setting": setting,
                             "seed": seed, "nfe": nfe, "wall_s": wall})
        _, trajectory = ode.integrate_fixed(model, x0, times, "euler", return_trajectory=True)
        arrays[f"trajectory/seed{seed}"] = trajectory.cpu().numpy()
    arrays["runs"] = np.array(json.dumps({"model": info["model"], "dataset": info["dataset"], "runs": runs}))
    io.save_npz(out, **arrays)
    print(f"sample: wrote {out} ({len(runs)} runs)")


def reflow_pairs(scale_file: str, model_file: str, out: str) -> None:
    """Pairs (x0, x1 = RK4 solve of the model's ODE from x0), one set per seed."""
    from flowrepro.samplers import ode
    from flowrepro.stages.train import load_models

    scale = load_scale(scale_file)
    settings, device = scale["flow2d"], pick_device(scale.get("device", "auto"))
    info, models = load_models(model_file, device)
    times = np.linspace(0.0, 1.0, settings["pair_steps"] + 1)
    pairs = []
    for seed in scale["seeds"]:
        x0 = _noise(settings["reflow_pairs"], info["dim"], seed + 500, device)
        x1 = ode.integrate_fixed(models[seed], x0, times, "rk4")
        pairs.append(np.stack([x0.cpu().numpy(), x1.cpu().numpy()]))
    io.save_npz(out, pairs=np.stack(pairs).astype(np.float32))
    print(f"reflow-pairs: wrote {out}")
