"""benchmark: run a self-contained experiment (kind sampler or optimizer) -> metrics.csv.

Flow experiments chain train -> sample -> evaluate; benchmark kinds need no trained model
from another job (the sampler harness has exact models, optimizer problems train their own),
so one job runs the whole grid. Each kind's runner lives with its library code.
"""
from __future__ import annotations

import importlib

from flowrepro import provenance
from flowrepro.config import benchmark_seeds, load_experiment, load_scale
from flowrepro.registry import load_plugins

#: kind -> (module, run function, plot function, scale-file section with its sizes)
KINDS = {
    "optimizer": ("flowrepro.optim.experiment", "run_optimizer_experiment", "plot_optimizer_experiment", "optimizers"),
    "sampler": ("flowrepro.samplers.experiment", "run_sampler_experiment", "plot_sampler_experiment", "samplers"),
}


def _kind(experiment: dict, experiment_file: str):
    if experiment["kind"] not in KINDS:
        raise ValueError(f"{experiment_file}: kind {experiment['kind']!r} has no benchmark runner; known: {sorted(KINDS)}")
    module, run_name, plot_name, section = KINDS[experiment["kind"]]
    return importlib.import_module(module), run_name, plot_name, section


def run(experiment_file: str, scale_file: str, out: str, schedules: str | None = None) -> None:
    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    load_plugins(experiment.get("plugins", []))
    module, run_name, _, section = _kind(experiment, experiment_file)
    settings = {"scale": scale["scale"], "seeds": benchmark_seeds(experiment, scale), **scale.get(section, {})}
    if schedules:  # `flowrepro search`'s schedule file (sampler experiments with a search: section)
        settings["schedules_file"] = schedules
    getattr(module, run_name)(experiment, settings, out)
    provenance.write_for(out, experiment_file, scale_file, device=_devices(settings))
    print(f"benchmark: wrote {out}")


def _devices(settings: dict) -> str:
    """Where a runner computes: the CPU, and any device the scale gives a problem (paper-scale CIFAR-10)."""
    named = {problem: kwargs["device"] for problem, kwargs in settings.get("problem_kwargs", {}).items()
             if isinstance(kwargs, dict) and "device" in kwargs}
    if not named:
        return "cpu"
    from flowrepro.config import pick_device

    return "cpu; " + ", ".join(f"{problem}: {pick_device(device)}" for problem, device in sorted(named.items()))


def plot(experiment_file: str, metrics_file: str, out_dir: str) -> list[str]:
    experiment = load_experiment(experiment_file)
    module, _, plot_name, _ = _kind(experiment, experiment_file)
    return getattr(module, plot_name)(metrics_file, out_dir)
