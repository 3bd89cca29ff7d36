"""coupling_error: how far a model's map x0 -> x1_hat(x0) is from held-out coupled pairs (x0, x1).

CAF (Park et al., NeurIPS 2024, Sec. 5.3 "coupling preservation") measures whether a model trained
on deterministic pairs (x0, x1) still maps each x0 to its own x1. The held-out pairs need no job of
their own: every model of a seed samples from the same evaluation noise x0 (``stages.sample._noise``,
disjoint from the reflow pairs' noise), so the experiment's ``coupling_reference:`` run (e.g. 1-RF's
RK4 at the scale's ``pair_steps``, the solver that made the training pairs) gives x1 for those x0,
and every run's samples are its x1_hat(x0), row for row:

    coupling_error = mean_n || x1_hat(x0_n) - x1_n ||   (flattened points).
"""
from __future__ import annotations

import json

import numpy as np


def coupling_references(experiment: dict, sample_files: list[str]) -> dict[tuple[str, int], np.ndarray]:
    """(dataset, seed) -> the reference run's samples, from the sample files of the experiment's
    ``coupling_reference: {model, sampler, setting}`` model; empty without that key."""
    from flowrepro import io

    spec = experiment.get("coupling_reference")
    if not spec:
        return {}
    references: dict[tuple[str, int], np.ndarray] = {}
    for path in sample_files:
        with io.open_npz(path) as samples:
            index = json.loads(str(samples["runs"]))
            if index["model"] != spec["model"]:
                continue
            for run in index["runs"]:
                if run["sampler"] == spec["sampler"] and spec.get("setting", run["setting"]) == run["setting"]:
                    key = (index["dataset"], run["seed"])
                    if key in references:
                        raise ValueError(f"coupling_reference {spec}: several runs for {key} in {path}; give setting:")
                    references[key] = samples[run["key"]]
    return references


def coupling_error(generated: np.ndarray, reference: np.ndarray) -> float:
    """mean_n ||generated_n - reference_n|| over flattened points, in float64 (same noise, same order)."""
    if len(generated) != len(reference):
        raise ValueError(f"coupling_error: {len(generated)} samples against {len(reference)} reference points")
    gap = generated.astype(np.float64) - reference.astype(np.float64)
    return float(np.linalg.norm(gap.reshape(len(gap), -1), axis=1).mean())
