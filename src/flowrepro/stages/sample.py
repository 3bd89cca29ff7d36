"""sample: run every sampler of a flow experiment on one trained model, counting NFE.

Also writes ``reflow pairs`` (``flowrepro reflow-pairs``): (x0, ODE(x0)) from a trained model.
Output of sample: an npz with one array per run (``<sampler>/<schedule>/<setting>/seed<k>``), the
Euler trajectory of the first ``trajectory_samples`` noises used for straightness, the experiment's
``reference:`` solve where it has one (``reference/seed<k>``), and a JSON index of the runs with
their counted NFE.

Memory does not grow with the number of samples beyond the outputs: the network sees at most
``sample_batch`` samples at a time (NFE is counted per batch and averaged: an adaptive solver may
take a different number of steps on each), each run is written to the output file as soon as it
is done, and reflow pairs are streamed into a memory-mapped ``.npy``.
"""
from __future__ import annotations

import json
import time

import numpy as np

from flowrepro import io
from flowrepro.config import bind_roles, entry_runs_on, load_experiment, load_scale, pick_device


def _noise(n: int, shape: tuple[int, ...], seed: int, device: str):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(10_000 + seed)  # disjoint from training seeds
    return torch.randn(n, *shape, generator=generator).to(device)


#: Sampling-entry keys that go to the sampler itself (besides its time grid / steps).
SAMPLER_OPTIONS = ("epsilon", "snr", "window", "cutoff")
#: BOSS calibration sizes (sampling-entry keys) and their defaults.
BOSS_OPTIONS = {"n_fine": 100, "substeps": 4, "n_calibration": 256}


def sampler_runs(label: str, options: dict):
    """``(sampler name, [(schedule label, keyword arguments)])`` for one entry of ``sampling:``.

    The entry's key is a label; ``sampler:`` names the registry entry when the two differ
    (e.g. ``euler_perturbed: {sampler: euler, velocity_error: 0.5, nfe: [...]}``). A ``boss``
    schedule gets ``steps`` here; its grid is estimated on the model in :func:`run`.
    """
    from flowrepro import pieces
    from flowrepro.registry import SAMPLERS
    from flowrepro.samplers import diffusion, ode, trained_diffusion

    name, sampler_options = pieces.split(options.get("sampler", label))  # sampler: {name: ab3, <option>: ...}
    schedule = pieces.name_of(options.get("schedule", "uniform"))
    extra = {key: options[key] for key in SAMPLER_OPTIONS if key in options} | sampler_options
    if name in diffusion.SCHEDULERS:  # a diffusers scheduler on the trained model (trained_diffusion)
        return name, [(schedule, {"scheduler": name, "steps": trained_diffusion.steps_for_budget(name, nfe, schedule),
                                  "schedule": schedule}) for nfe in options["nfe"]]
    if trained_diffusion.is_eps_sampler(name):  # our own eps-model samplers, on the network through EpsilonAtLevel
        if name == "dpm_solver_v3":  # its EMS sizes are the ems stage's, not the solver's (stages/ems.py)
            from flowrepro.stages.ems import ems_settings

            sampler_options = ems_settings(options)[1]
        calls = SAMPLERS.get(name).calls_per_step
        return name, [(schedule, {"steps": max(1, nfe // calls), "schedule": schedule, **sampler_options})
                      for nfe in options["nfe"]]
    if name == "ddim_ts":  # one model call per step
        return name, [(schedule, {"steps": nfe, **extra}) for nfe in options["nfe"]]
    if "rtol" in options:
        return name, [(f"adaptive_rtol{rtol:g}", {"rtol": rtol, "atol": rtol, **sampler_options}) for rtol in options["rtol"]]
    calls = getattr(SAMPLERS.get(name), "calls_per_step", ode.CALLS_PER_STEP.get(name, 1))
    once = getattr(SAMPLERS.get(name), "extra_calls", 0)  # calls outside the steps (CAF's v0): N = (nfe - once) / calls
    if schedule == "boss":
        return name, [(schedule, {"steps": max(1, (nfe - once) // calls), **extra}) for nfe in options["nfe"]]
    grid = pieces.build("schedule", options.get("schedule", "uniform"))  # schedule: {name: ..., <option>: ...}
    return name, [(schedule, {"times": grid(max(1, (nfe - once) // calls)), **extra}) for nfe in options["nfe"]]


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


def batched(sampler_call, x0, batch: int, counter, device: str):
    """``sampler_call(x0_batch, index)`` over batches of ``x0`` (kept on the CPU); returns the samples
    (numpy), the model calls per batch (their mean, an int when every batch took the same) and the wall time."""
    samples, calls = None, []
    start = time.perf_counter()
    for index, first in enumerate(range(0, len(x0), batch)):
        counter.reset()
        part = sampler_call(x0[first:first + batch].to(device), index).cpu().numpy()
        calls.append(counter.reset())
        if samples is None:  # filled in place: no second copy of the whole run
            samples = np.empty((len(x0), *part.shape[1:]), dtype=part.dtype)
        samples[first:first + len(part)] = part
    wall = time.perf_counter() - start
    nfe = calls[0] if len(set(calls)) == 1 else float(np.mean(calls))
    return samples, nfe, wall


def run(experiment_file: str, scale_file: str, model_files: list[str] | str | None, out: str, method: str | None = None,
        pretrained: str | None = None, data_file: str | None = None, ems_file: str | None = None) -> None:
    """Every sampling entry on one model: trained (``model_files``), or an acquired pretrained folder
    (``pretrained``, the experiment's ``pretrained:`` entry ``method``, generating ``data_file``'s images).
    ``ems_file``: the model's DPM-Solver-v3 statistics (``flowrepro ems``), read, never recomputed here."""
    from flowrepro.config import flow_settings
    from flowrepro.registry import load_plugins
    from flowrepro.samplers import (bdia, diffusion, dpm_solver_v3, momentum, ode, schedules, schedules_extra, sde,  # noqa: F401
                                    time_shift, trained_diffusion)  # (register every built-in sampler)
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages.train import load_models

    scale = load_scale(scale_file)
    experiment = bind_roles(load_experiment(experiment_file), scale, experiment_file)
    load_plugins(experiment.get("plugins", []))
    device = pick_device(scale.get("device", "auto"))
    if pretrained is not None:
        if method is None or data_file is None:
            raise ValueError(f"sample --pretrained {pretrained}: give --method (its name under pretrained:) and --data")
        from flowrepro.models.pretrained import load_pretrained_models

        info, models = load_pretrained_models(pretrained, method, data_file, scale["seeds"], device)
        model_files = pretrained
    else:
        info, models = load_models(model_files, device)
    settings = flow_settings(scale, info["dataset"])
    batch = settings.get("sample_batch", settings["n_eval"])
    times = np.linspace(0.0, 1.0, settings["trajectory_steps"] + 1)  # the straightness grid
    runs = []
    method = method or info["model"]  # this experiment's name for the (possibly shared) model
    if ems_file is not None:  # checksum and model identity checked on reading
        from flowrepro.stages import ems as ems_stage

        settings = {**settings, "ems_cache": ems_stage.load(ems_file, model_files)[0] | {"file": ems_file}}  # a copy: the scale stays as read
    with io.NpzWriter(out) as writer:
        writer.add("trajectory_times", times)
        for seed, model in models.items():
            x0 = _noise(settings["n_eval"], info["shape"], seed, "cpu")
            for label, options in experiment["sampling"].items():
                if not entry_runs_on(options, info["dataset"], method):
                    continue
                runs += _sampler_runs(writer, label, options, model, x0, seed, info, settings, batch, device, model_files)
            if not getattr(model, "is_velocity_field", True):  # no v(x, t) to integrate (CAF): no reference or trajectory
                continue
            counter = NFECounter(model)
            reference = experiment.get("reference")
            if reference and info["dataset"] in reference.get("datasets", [info["dataset"]]):  # solver error's ground truth
                fine = np.linspace(0.0, 1.0, reference["steps"] + 1)
                solve = lambda x, _i: ode.integrate_fixed(counter, x, fine, reference["sampler"])  # noqa: E731
                solve = guided_batches(solve, model, reference.get("guidance"), batch)  # the guided ODE, where given
                writer.add(f"reference/seed{seed}", batched(solve, x0, batch, counter, device)[0])
            n_paths = min(settings.get("trajectory_samples", len(x0)), len(x0))
            _, trajectory = ode.integrate_fixed(model, x0[:n_paths].to(device), times, "euler", return_trajectory=True)
            writer.add(f"trajectory/seed{seed}", trajectory.cpu().numpy())
        index = {"model": method, "dataset": info["dataset"], "runs": runs}
        if "guidance" in experiment.get("reference", {}):  # solver_error only for runs of the same guidance
            index["reference_guidance"] = experiment["reference"]["guidance"]
        writer.add("runs", np.array(json.dumps(index)))
    print(f"sample: wrote {out} ({len(runs)} runs)")


def _sampler_runs(writer, label: str, options: dict, model, x0, seed: int, info: dict, settings: dict, batch: int,
                  device: str, model_files) -> list[dict]:
    """Every run of one ``sampling:`` entry on one seed's model; each run's samples go to ``writer``."""
    from flowrepro import pieces
    from flowrepro.registry import SAMPLERS
    from flowrepro.generative.conditioning import conditional_network, guided
    from flowrepro.samplers import bdia, caf, diffusion, ode, sde, trained_diffusion
    from flowrepro.samplers.nfe import NFECounter

    if "search" in options:  # a schedule searched on this seed's model first, then sampled
        if "guidance" in options:
            raise ValueError(f"sampling/{label}: search with guidance is not supported")
        return _searched_runs(writer, label, options, model, x0, seed, info, batch, device)
    if options.get("pair_steps"):  # the scale's pair_steps steps (with rk4: the reflow pairs' own solve)
        options = {**options, "nfe": [ode.CALLS_PER_STEP[pieces.name_of(options.get("sampler", label))] * settings["pair_steps"]]}
    name, settings_list = sampler_runs(label, options)
    sampler = SAMPLERS.get(name)
    field = sde.PerturbedVelocity(model, options["velocity_error"]) if "velocity_error" in options else model
    counter = NFECounter(field)
    grids, calibration_nfe = {}, 0
    guidance = options.get("guidance")  # classifier-free guidance of a class-conditional model: every call of the entry
    if pieces.name_of(options.get("schedule", "uniform")) == "boss":
        max_steps = max(kwargs["steps"] for _, kwargs in settings_list)
        with guided(model, guidance):
            grids, calibration_nfe = _boss_grids(field, options, settings, name in diffusion.SCHEDULERS,
                                                 max_steps, info["shape"], seed, device)
        print(f"sample: {label} seed {seed}: BOSS grids from {calibration_nfe} calibration calls")
    runs, model64, eps64 = [], None, None  # the float64 copy of the network for round trips (and its eps view), once per entry
    for schedule, kwargs in settings_list:
        if name.endswith("_ts"):
            kwargs = {**kwargs, "data_var": _data_var(info, model_files)}
        if "scheduler" in kwargs:
            timesteps = grids[kwargs["steps"]] if schedule == "boss" else None
            call = lambda x, _i, k=kwargs, ts=timesteps: trained_diffusion.sample(counter, x, **k, timesteps=ts)  # noqa: E731
            setting = f"steps={kwargs['steps']}"
        elif name == "ddim_ts":
            call = lambda x, _i, k=kwargs: trained_diffusion.sample_time_shift(counter, x, **k)  # noqa: E731
            setting = f"steps={kwargs['steps']}"
        elif trained_diffusion.is_eps_sampler(name):
            if name == "dpm_solver_v3":  # with the model's cached EMS, never recomputed here
                ems = _cached_ems(settings, label, seed)
                calibration_nfe = ems.calls  # network evaluations of the calibration set (ems_calls), not in the NFE
                kwargs = {**kwargs, "ems": ems}
            call = lambda x, _i, k=kwargs: trained_diffusion.sample_eps(sampler, counter, x, **k)  # noqa: E731
            setting = f"steps={kwargs['steps']}"
        else:
            if schedule == "boss":
                kwargs = {**{k: v for k, v in kwargs.items() if k != "steps"}, "times": grids[kwargs["steps"]]}
            if getattr(sampler, "stochastic", False):  # the SDE's own noise, fixed per seed, fresh per batch
                call = lambda x, i, k=kwargs: sampler(counter, x, **k, seed=20_000 + seed + 100_000 * i)  # noqa: E731
            else:
                call = lambda x, _i, k=kwargs: sampler(counter, x, **k)  # noqa: E731
            setting = f"rtol={kwargs['rtol']:g}" if "rtol" in kwargs else f"steps={len(kwargs['times']) - 1}"
        samples, nfe, wall = batched(guided_batches(call, model, guidance, batch), x0, batch, counter, device)
        key = f"{label}/{schedule}/{setting}/seed{seed}"
        writer.add(key, samples)
        runs.append({"key": key, "sampler": label, "schedule": schedule, "setting": setting,
                     "seed": seed, "nfe": nfe, "wall_s": wall, "calibration_nfe": calibration_nfe})
        if guidance is not None:  # sample i asks for class i mod classes (conditioning.class_labels)
            runs[-1].update(guidance=guidance, classes=conditional_network(model).classes)
        if name in bdia.ROUND_TRIPS and schedule == "uniform" and "steps" in kwargs and options.get("round_trip", True):  # data -> noise -> data, same steps
            runs[-1]["roundtrip_key"] = f"roundtrip/{key}"
            model64 = model64 or trained_diffusion.float64_copy(model)
            eps64 = eps64 or trained_diffusion.EpsilonAtLevel(model64)
            with guided(model64, guidance):
                writer.add(runs[-1]["roundtrip_key"], _round_trip(name, eps64, samples, kwargs, device))
        elif options.get("round_trip") and name in caf.FLOW_ROUND_TRIPS and "times" in kwargs:  # a flow's data -> noise -> data, same grid
            runs[-1]["roundtrip_key"] = f"roundtrip/{key}"
            model64 = model64 or trained_diffusion.float64_copy(model)
            with guided(model64, guidance):
                writer.add(runs[-1]["roundtrip_key"], caf.flow_round_trip(name, model64, samples, kwargs["times"], ROUND_TRIP_POINTS, device))
    return runs


def _searched_runs(writer, label: str, options: dict, model, x0, seed: int, info: dict, batch: int, device: str) -> list[dict]:
    """A ``search:`` entry: for each NFE budget, :func:`flowrepro.samplers.step_search.search_with` on this
    seed's model and its calibration draws (never the evaluation noise ``x0``), then the found schedule
    from ``x0``. The search's model calls are the run's ``calibration_nfe``; the schedule is in its index entry."""
    from flowrepro import pieces
    from flowrepro.samplers import step_search, trained_diffusion
    from flowrepro.samplers.nfe import NFECounter

    search, sampler = options["search"], pieces.name_of(options.get("sampler", label))
    counter = NFECounter(model)
    eps = trained_diffusion.EpsilonAtLevel(counter)
    runs = []
    for budget in options["nfe"]:
        fit = step_search.network_fitness(trained_diffusion.EpsilonAtLevel(model), tuple(info["shape"]), seed,
                                          int(search.get("n_calibration", 64)), device)
        found = step_search.search_with(fit, seed, search["variant"], int(budget), {**search, "sampler": sampler})
        print(f"sample: {label} seed {seed}: searched {[round(float(t), 1) for t in found['timesteps']]} "
              f"from {found['search_calls']} calls (fitness {found['fitness_history'][0]:.4g} -> {found['fitness']:.4g})")
        call = lambda x, _i, e=found, m=fit.mean: step_search.run_entry(eps, x, e, m)[0]  # noqa: E731
        samples, nfe, wall = batched(call, x0, batch, counter, device)
        key = f"{label}/searched/nfe={budget}/seed{seed}"
        writer.add(key, samples)
        runs.append({"key": key, "sampler": label, "schedule": "searched", "setting": f"nfe={budget}", "seed": seed,
                     "nfe": nfe, "wall_s": wall, "calibration_nfe": found["search_calls"],
                     "searched": {k: found[k] for k in SEARCH_RECORD if k in found}})
    return runs


#: What a searched run's index entry keeps of its search (step_search.search_with's result).
SEARCH_RECORD = ("variant", "timesteps", "orders", "afs", "fitness", "fitness_history", "evaluations", "n_calibration",
                 "calibration_seed", "wall_s")


def guided_batches(call, model, guidance: float | None, batch: int):
    """``call(x, index)`` for :func:`batched` with ``model`` guided at scale ``guidance`` (None: ``call``
    itself), batch ``index`` holding the run's rows from ``index * batch`` (their classes)."""
    if guidance is None:
        return call
    from flowrepro.generative.conditioning import guided

    def guided_call(x, index):
        with guided(model, guidance, index * batch):
            return call(x, index)

    return guided_call


#: Points of a run's samples taken through its round trip (inversion_error): the error is a mean over
#: points, exact or not whatever their number, and the float64 network costs 2N calls on each.
ROUND_TRIP_POINTS = 64


def _round_trip(name: str, eps64, samples, kwargs: dict, device: str):
    """The first ROUND_TRIP_POINTS of a run's own samples z0 (data of the model) inverted to noise and
    regenerated (:data:`flowrepro.samplers.bdia.ROUND_TRIPS`) with the run's steps and options, through
    ``eps64``, the network's float64 copy as an eps-model."""
    import torch

    from flowrepro.samplers import bdia

    trip = bdia.ROUND_TRIPS[name]
    options = {k: v for k, v in kwargs.items() if k not in ("steps", "schedule", "scheduler", "timesteps")}
    z0 = torch.as_tensor(samples[:ROUND_TRIP_POINTS], dtype=torch.float64, device=device)
    return trip(eps64, z0, kwargs["steps"], **options).cpu().numpy()


def _cached_ems(settings: dict, label: str, seed: int):
    cache = settings.get("ems_cache")  # (settings["ems"] is the scale's EMS sizes)
    if cache is None or (label, seed) not in cache:
        where = cache["file"] if cache else "no --ems file given"
        raise KeyError(f"{label}: no EMS for seed {seed} ({where}); run `flowrepro ems` for this model first")
    return cache[(label, seed)]


def _data_var(info: dict, model_files) -> float:
    if "data_var" not in info:
        raise KeyError(f"{model_files}: no data_var (trained before time-shift support); retrain it to use a time-shift sampler")
    return float(info["data_var"])


def reflow_pairs(scale_file: str, model_files: list[str] | str, out: str) -> None:
    """Pairs (x0, x1 = RK4 solve of the model's ODE from x0), one set per seed of the model files, as
    one ``.npy`` of shape (seeds, 2, n, ...) written batch by batch (``sample_batch``) to disk."""
    from flowrepro.config import flow_settings
    from flowrepro.samplers import ode
    from flowrepro.samplers.nfe import NFECounter
    from flowrepro.stages.train import load_models

    scale = load_scale(scale_file)
    device = pick_device(scale.get("device", "auto"))
    info, models = load_models(model_files, device)
    settings = flow_settings(scale, info["dataset"])
    times = np.linspace(0.0, 1.0, settings["pair_steps"] + 1)
    n, batch = settings["reflow_pairs"], settings.get("sample_batch", settings["reflow_pairs"])
    with io.npy_memmap(out, (len(models), 2, n, *info["shape"])) as pairs:
        for row, (seed, model) in enumerate(models.items()):
            x0 = _noise(n, info["shape"], seed + 500, "cpu")
            counter = NFECounter(model)
            for first in range(0, n, batch):
                chunk = x0[first:first + batch]
                pairs[row, 0, first:first + len(chunk)] = chunk.numpy()
                pairs[row, 1, first:first + len(chunk)] = ode.integrate_fixed(counter, chunk.to(device), times, "rk4").cpu().numpy()
    print(f"reflow-pairs: wrote {out} ({len(models)} seed(s) x {n} pairs)")
