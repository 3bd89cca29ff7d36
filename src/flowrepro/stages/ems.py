"""ems: DPM-Solver-v3's empirical model statistics (EMS) of one trained model, computed once and cached.

For every ``sampling:`` entry of the experiment that runs ``dpm_solver_v3`` on this model and dataset,
and every seed of the model, the EMS (l, s, b on the entry's lambda grid, App. C.1.1 of Zheng et al.
2023) come from :func:`flowrepro.samplers.trained_diffusion.network_ems`: ``n_calibration`` training
points x0 (a subset drawn by generator ``CALIBRATION_SEED + seed``) with their own noise z and
Hutchinson probes (same seed), apart from the evaluation noise (generator 10_000 + seed). The grid is
``ems_lambdas`` uniform lambdas from t = 999 to t = 0 united with the levels of each NFE of the entry
(:func:`~flowrepro.samplers.model_statistics.ems_grid`), so v3 steps on exactly the baselines' levels.

The file is safetensors (``<label>/seed<k>/{lambdas,l,s,b}``) with JSON metadata and a sha256 of its
contents (:mod:`flowrepro.tensor_files`): written atomically, verified on every read. The metadata
holds the sha256 of the model file(s), so an EMS is never applied to another model, and each EMS's
cost: ``calls`` (network evaluations of the whole calibration set, a JVP counting one) and
``sample_calls`` (calls x n_calibration), kept apart from the sampler's NFE.
"""
from __future__ import annotations

import time

import numpy as np

from flowrepro import io

CALIBRATION_SEED = 40_000
#: Settings of a dpm_solver_v3 entry that size its EMS (sampler options), and their defaults.
EMS_OPTIONS = {"n_calibration": 512, "ems_lambdas": 200, "ems_batch": 0}


def v3_entries(experiment: dict, dataset: str, method: str) -> dict[str, dict]:
    """label -> sampling entry, for the entries running dpm_solver_v3 on (dataset, method)."""
    from flowrepro import pieces
    from flowrepro.config import entry_runs_on

    found = {}
    for label, options in experiment.get("sampling", {}).items():
        if pieces.split(options.get("sampler", label))[0] != "dpm_solver_v3":
            continue
        if entry_runs_on(options, dataset, method):
            found[label] = options
    return found


def ems_settings(options: dict, settings: dict | None = None) -> tuple[dict, dict]:
    """The entry's EMS sizes (its sampler options, else the scale section's ``ems:``, else EMS_OPTIONS)
    and the remaining solver options."""
    from flowrepro import pieces

    _, sampler_options = pieces.split(options.get("sampler", "dpm_solver_v3"))
    scale_sizes = (settings or {}).get("ems", {})
    sizes = {key: int(sampler_options.get(key, scale_sizes.get(key, default))) for key, default in EMS_OPTIONS.items()}
    return sizes, {k: v for k, v in sampler_options.items() if k not in EMS_OPTIONS}


def files_digest(model_files) -> str:
    """sha256 over the model file(s), in order: the identity of the model an EMS belongs to."""
    return io.sha256_files([model_files] if isinstance(model_files, str) else model_files)


def run(experiment_file: str, scale_file: str, model_files: list[str] | str, data_file: str, out: str,
        method: str | None = None) -> None:
    """Computes and writes the EMS of every dpm_solver_v3 entry and seed of one trained model."""
    import torch

    from flowrepro.config import bind_roles, flow_settings, load_experiment, load_scale, pick_device
    from flowrepro.samplers.model_statistics import ems_grid
    from flowrepro.samplers.trained_diffusion import network_ems
    from flowrepro.stages.train import load_models

    scale = load_scale(scale_file)
    experiment = bind_roles(load_experiment(experiment_file), scale, experiment_file)
    device = pick_device(scale.get("device", "auto"))
    info, models = load_models(model_files, device)
    method = method or info["model"]
    train = np.load(data_file)["train"]
    entries = v3_entries(experiment, info["dataset"], method)
    if not entries:
        raise ValueError(f"{experiment_file}: no dpm_solver_v3 entry runs on {method} / {info['dataset']}")
    found = {}
    settings = flow_settings(scale, info["dataset"])  # the scale's ems: sizes for this dataset's section
    for label, options in entries.items():
        sizes, _ = ems_settings(options, settings)
        lambdas = ems_grid(sizes["ems_lambdas"], steps=options["nfe"])
        for seed, model in models.items():
            pick = np.random.default_rng(CALIBRATION_SEED + seed).choice(len(train), sizes["n_calibration"], replace=False)
            x0 = torch.as_tensor(train[np.sort(pick)], dtype=torch.float32).to(device)
            start = time.perf_counter()
            ems = network_ems(model, x0, lambdas, seed=CALIBRATION_SEED + seed, batch=sizes["ems_batch"] or None)
            found[(label, seed)] = (ems, sizes, time.perf_counter() - start)
            print(f"ems: {label} seed {seed}: {len(lambdas)} lambdas x {sizes['n_calibration']} draws, "
                  f"{ems.calls} calls, {found[(label, seed)][2]:.1f} s")
    save(out, found, {"experiment": experiment["id"], "model": method, "dataset": info["dataset"],
                      "model_sha256": files_digest(model_files)})
    print(f"ems: wrote {out} ({len(found)} EMS)")


def save(out: str, found: dict, metadata: dict) -> None:
    """Writes ``{(label, seed): (EMS, sizes, wall seconds)}`` atomically, with each EMS's cost in the metadata."""
    import torch

    tensors, costs = {}, {}
    for (label, seed), (ems, sizes, wall) in found.items():
        for name in ("lambdas", "l", "s", "b"):
            tensors[f"{label}/seed{seed}/{name}"] = torch.as_tensor(np.asarray(getattr(ems, name), dtype=np.float64))
        costs[f"{label}/seed{seed}"] = {"calls": ems.calls, "sample_calls": ems.calls * sizes["n_calibration"],
                                        "wall_s": round(wall, 3), **sizes}
    io.save_tensors(out, tensors, metadata | {"costs": costs})


def load(path: str, model_files=None) -> tuple[dict, dict]:
    """``({(label, seed): EMS}, metadata)`` of an ems file, its checksum verified on reading (a corrupted
    file raises naming it); with ``model_files``, refuses an EMS computed for another model."""
    from flowrepro.samplers.model_statistics import EMS

    tensors, metadata = io.load_tensors(path)
    if model_files is not None and metadata.get("model_sha256") != files_digest(model_files):
        raise ValueError(f"{path}: EMS of another model (sha256 {metadata.get('model_sha256')}), not of {model_files}")
    found = {}
    for key, cost in metadata["costs"].items():
        label, seed = key.rsplit("/seed", 1)
        arrays = {name: tensors[f"{key}/{name}"].numpy() for name in ("lambdas", "l", "s", "b")}
        found[(label, int(seed))] = EMS(**arrays, calls=int(cost["calls"]))
    return found, metadata
