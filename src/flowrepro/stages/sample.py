"""sample: run every sampler of a flow experiment on one trained model, counting NFE.

Also writes ``reflow pairs`` (``flowrepro reflow-pairs``): (x0, ODE(x0)) from a trained model.
Output of sample: an npz with one array per run (``<sampler>/<schedule>/<setting>/seed<k>``), the
Euler trajectory used for straightness, the experiment's ``reference:`` solve where it has one
(``reference/seed<k>``), and a JSON index of the runs with their counted NFE.
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


#: Sampling-entry keys that go to the sampler itself (besides its time grid / steps).
SAMPLER_OPTIONS = ("epsilon", "snr", "window")
#: BOSS calibration sizes (sampling-entry keys) and their defaults.
BOSS_OPTIONS = {"n_fine": 100, "substeps": 4, "n_calibration": 256}


def sampler_runs(label: str, options: dict):
    """``(sampler name, [(schedule label, keyword arguments)])`` for one entry of ``sampling:``.

    The entry's key is a label; ``sampler:`` names the registry entry when the two differ
    (e.g. ``euler_perturbed: {sampler: euler, velocity_error: 0.5, nfe: [...]}``). A ``boss``
    schedule gets ``steps`` here; its grid is estimated on the model in :func:`run`.
    """
    from flowrepro.registry import SAMPLERS, SCHEDULES
    from flowrepro.samplers import diffusion, ode, trained_diffusion

    name = options.get("sampler", label)
    schedule = options.get("schedule", "uniform")
    extra = {key: options[key] for key in SAMPLER_OPTIONS if key in options}
    if name in diffusion.SCHEDULERS:  # a diffusers scheduler on the trained model (trained_diffusion)
        return name, [(schedule, {"scheduler": name, "steps": trained_diffusion.steps_for_budget(name, nfe, schedule),
                                  "schedule": schedule}) for nfe in options["nfe"]]
    if name == "ddim_ts":  # one model call per step
        return name, [(schedule, {"steps": nfe, **extra}) for nfe in options["nfe"]]
    if "rtol" in options:
        return name, [(f"adaptive_rtol{rtol:g}", {"rtol": rtol, "atol": rtol}) for rtol in options["rtol"]]
    calls = getattr(SAMPLERS.get(name), "calls_per_step", ode.CALLS_PER_STEP.get(name, 1))
    if schedule == "boss":
        return name, [(schedule, {"steps": max(1, nfe // calls), **extra}) for nfe in options["nfe"]]
    return name, [(schedule, {"times": SCHEDULES.get(schedule)(max(1, nfe // calls)), **extra}) for nfe in options["nfe"]]


def _boss_grids(model, options: dict, settings: dict, diffusers_scheduler: bool, max_steps: int, shape, seed: int,
                device: str):
    """BOSS grids for K <= max_steps, from the trained model on its own calibration noise; and its model calls.

    Calibration sizes: the sampling entry's, else the scale section's ``boss:``, else BOSS_OPTIONS.
    """
    from flowrepro.samplers import trained_diffusion
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.samplers.schedules_extra import boss_grids

    sizes = {key: int(options.get(key, settings.get("boss", {}).get(key, default))) for key, default in BOSS_OPTIONS.items()}
    batch = _noise(sizes["n_calibration"], shape, seed + 900, device)  # apart from evaluation and reflow noise
    counter = NFECounter(model)
    if diffusers_scheduler:
        grids = trained_diffusion.boss_grids(counter, batch, max_steps, sizes["n_fine"], sizes["substeps"])
    else:
        grids = boss_grids(counter, batch, max_steps, sizes["n_fine"], sizes["substeps"])
    return grids, counter.calls


def run(experiment_file: str, scale_file: str, model_file: str, out: str, method: str | None = None) -> None:
    from flowrepro.config import flow_settings
    from flowrepro.registry import SAMPLERS, load_plugins
    from flowrepro.samplers import diffusion, ode, schedules, schedules_extra, sde, time_shift, trained_diffusion  # noqa: F401  (register built-ins)
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
    method = method or info["model"]  # this experiment's name for the (possibly shared) model
    for seed, model in models.items():
        x0 = _noise(settings["n_eval"], info["shape"], seed, device)
        for label, options in experiment["sampling"].items():
            if info["dataset"] not in options.get("datasets", [info["dataset"]]) or method not in options.get("models", [method]):
                continue
            name, settings_list = sampler_runs(label, options)
            sampler = SAMPLERS.get(name)
            field = sde.PerturbedVelocity(model, options["velocity_error"]) if "velocity_error" in options else model
            counter = NFECounter(field)
            grids, calibration_nfe = {}, 0
            if options.get("schedule") == "boss":
                max_steps = max(kwargs["steps"] for _, kwargs in settings_list)
                grids, calibration_nfe = _boss_grids(field, options, settings, name in diffusion.SCHEDULERS,
                                                     max_steps, info["shape"], seed, device)
                print(f"sample: {label} seed {seed}: BOSS grids from {calibration_nfe} calibration calls")
            for schedule, kwargs in settings_list:
                if getattr(sampler, "stochastic", False):
                    kwargs = {**kwargs, "seed": 20_000 + seed}  # the SDE's own noise, fixed per seed
                if name.endswith("_ts"):
                    kwargs = {**kwargs, "data_var": _data_var(info, model_file)}
                counter.reset()
                start = time.perf_counter()
                if "scheduler" in kwargs:
                    timesteps = grids[kwargs["steps"]] if schedule == "boss" else None
                    x = trained_diffusion.sample(counter, x0, **kwargs, timesteps=timesteps)
                    setting = f"steps={kwargs['steps']}"
                elif name == "ddim_ts":
                    x = trained_diffusion.sample_time_shift(counter, x0, **kwargs)
                    setting = f"steps={kwargs['steps']}"
                else:
                    if schedule == "boss":
                        kwargs = {**{k: v for k, v in kwargs.items() if k != "steps"}, "times": grids[kwargs["steps"]]}
                    x = sampler(counter, x0, **kwargs)
                    setting = f"rtol={kwargs['rtol']:g}" if "rtol" in kwargs else f"steps={len(kwargs['times']) - 1}"
                wall = time.perf_counter() - start
                nfe = counter.reset()
                key = f"{label}/{schedule}/{setting}/seed{seed}"
                arrays[key] = x.cpu().numpy()
                runs.append({"key": key, "sampler": label, "schedule": schedule, "setting": setting,
                             "seed": seed, "nfe": nfe, "wall_s": wall, "calibration_nfe": calibration_nfe})
        reference = experiment.get("reference")
        if reference and info["dataset"] in reference.get("datasets", [info["dataset"]]):  # solver error's ground truth
            fine = np.linspace(0.0, 1.0, reference["steps"] + 1)
            arrays[f"reference/seed{seed}"] = ode.integrate_fixed(model, x0, fine, reference["sampler"]).cpu().numpy()
        _, trajectory = ode.integrate_fixed(model, x0, times, "euler", return_trajectory=True)
        arrays[f"trajectory/seed{seed}"] = trajectory.cpu().numpy()
    arrays["runs"] = np.array(json.dumps({"model": method, "dataset": info["dataset"], "runs": runs}))
    io.save_npz(out, **arrays)
    print(f"sample: wrote {out} ({len(runs)} runs)")


def _data_var(info: dict, model_file: str) -> float:
    if "data_var" not in info:
        raise KeyError(f"{model_file}: no data_var (trained before time-shift support); retrain it to use a time-shift sampler")
    return float(info["data_var"])


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
