"""evaluate: turn a flow experiment's samples into the tidy metrics table.

Rows: w2 (exact, POT) and nfe for every sampler run; straightness and transport_cost from
each seed's Euler trajectory; and ``method=data`` w2 rows, the distance between two finite
samples of the target itself, the floor no model can go below at this sample size.
"""
from __future__ import annotations

import json

import numpy as np

from flowrepro import io
from flowrepro.config import load_experiment, load_scale


def run(experiment_file: str, scale_file: str, data_files: list[str], sample_files: list[str], out: str) -> None:
    from flowrepro.metrics.flow import straightness, transport_cost
    from flowrepro.metrics.wasserstein import exact_w2

    experiment, scale = load_experiment(experiment_file), load_scale(scale_file)
    n_eval = scale["flow2d"]["n_eval"]
    references = {}
    for path in data_files:
        arrays = io.load_npz(path)
        references[path] = arrays
    base = {"experiment": experiment["id"], "optimizer": "", "scale": scale["scale"]}
    rows = []
    for data_path, arrays in references.items():
        dataset = _dataset_name(data_path)
        test = arrays["test"].reshape(len(arrays["test"]), -1)[:n_eval]
        for seed in scale["seeds"]:
            other = np.random.default_rng(seed).choice(len(arrays["train"]), n_eval, replace=False)
            rows.append({**base, "dataset": dataset, "method": "data", "sampler": "", "schedule": "", "nfe": 0,
                         "seed": seed, "metric": "w2", "value": exact_w2(arrays["train"][other].reshape(n_eval, -1), test),
                         "wall_s": 0.0})
    for path in sample_files:
        samples = io.load_npz(path)
        index = json.loads(str(samples["runs"]))
        dataset, method = index["dataset"], index["model"]
        matching = [p for p in references if _dataset_name(p) == dataset]
        if not matching:
            raise KeyError(f"{path}: samples of dataset {dataset!r} but no data file for it among {list(references)}")
        test = references[matching[0]]["test"]
        test = test.reshape(len(test), -1)[:n_eval]
        for run_info in index["runs"]:
            row = {**base, "dataset": dataset, "method": method, "sampler": run_info["sampler"],
                   "schedule": run_info["schedule"], "nfe": run_info["nfe"], "seed": run_info["seed"],
                   "wall_s": run_info["wall_s"]}
            rows.append({**row, "metric": "w2", "value": exact_w2(samples[run_info["key"]], test)})
            rows.append({**row, "metric": "nfe", "value": float(run_info["nfe"])})
        times = samples["trajectory_times"]
        for seed in scale["seeds"]:
            trajectory = samples[f"trajectory/seed{seed}"]
            row = {**base, "dataset": dataset, "method": method, "sampler": "euler", "schedule": "uniform",
                   "nfe": len(times) - 1, "seed": seed, "wall_s": 0.0}
            rows.append({**row, "metric": "straightness", "value": straightness(trajectory, times)})
            rows.append({**row, "metric": "transport_cost", "value": transport_cost(trajectory)})
    io.write_table(out, rows)
    print(f"evaluate: wrote {out} ({len(rows)} rows)")


def _dataset_name(data_path: str) -> str:
    from pathlib import Path

    return Path(data_path).name.removesuffix(".npz")
