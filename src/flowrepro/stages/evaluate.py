"""evaluate: turn a flow experiment's samples into the tidy metrics table.

Rows: w2 (exact, POT, on flattened samples) and nfe for every sampler run; fid_classifier for
image datasets (Fréchet distance in the features of the dataset's own classifier, see
:mod:`flowrepro.metrics.fid`); fid_inception for image datasets where the scale has a
``fid_inception`` section (the papers' FID: Inception features against the training set's
statistics, on the first ``fid_inception/samples`` of each run, see
:mod:`flowrepro.stages.fid_reference`); sliced_w2 and mmd for vector datasets only (sliced W2 over 128
directions of fixed seed 0; unbiased squared MMD, Gaussian kernel at the test set's median
distance, on fixed random subsets of at most ``MMD_MAX_POINTS`` points; see
:mod:`flowrepro.metrics`; on images one median bandwidth in pixel space means little and
fid_classifier covers them); inversion_error, mean_n ||z0_n - z0'_n|| between
the first samples z0 of a run whose sampler has a round trip (bdia, ddim) and their data -> noise
-> data round trip through the network in float64 (written by the sample stage); solver_error, the mean distance of each run's samples to a fine solve
of the model's own ODE from the same noise, where the experiment asks for that ``reference:``;
class_accuracy and divergence_rate for guided runs of a class-conditional model (a sampling entry's
``guidance:``; :mod:`flowrepro.metrics.conditional`, :mod:`flowrepro.metrics.divergence` with R the
99th percentile of ||x1|| over the training data), whose solver_error is against a ``reference:`` of
the same guidance only; coupling_error, mean_n ||x1_hat(x0_n) - x1_n|| of each run's samples against held-out coupled pairs, where
the experiment names a ``coupling_reference: {model, sampler, setting}`` run: every model of a seed samples
the same evaluation noise x0 (disjoint from the reflow pairs' noise), so that run (e.g. 1-RF's RK4 at
``pair_steps``, the reflow pairs' solver) gives x1 for each x0 (:mod:`flowrepro.metrics.coupling`);
straightness (S(Z) of rectified flow, 0 only for straight paths at constant speed), arc_chord_gap
(E[1 - chord / arc length], 0 for any straight path whatever its speed) and transport_cost from
each seed's Euler trajectory (:mod:`flowrepro.metrics.flow`);
``method=data`` rows, the distance between two finite samples of the target itself (the floor no
model can go below at this sample size); and ``method=noise`` rows, the source N(0, I) itself
(where every model starts: the ceiling).

Sizes: each run has ``n_eval`` samples; exact W2 (O(n^3)) uses the first ``w2_points`` of them
(default all) against as many test points; sample files are read one run at a time.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flowrepro import io
from flowrepro.config import IMAGE_DATASETS, bind_roles, load_experiment, load_scale
from flowrepro.metrics.coupling import coupling_error, coupling_references


def run(experiment_file: str, scale_file: str, data_files: list[str], sample_files: list[str], out: str,
        classifier_files: list[str] = (), fid_references: list[str] = (), inception_weights: str | None = None) -> None:
    from flowrepro import provenance
    from flowrepro.config import flow_settings, pick_device
    from flowrepro.stages import fid_reference

    scale = load_scale(scale_file)
    experiment = bind_roles(load_experiment(experiment_file), scale, experiment_file)
    references = {path: io.load_data(path) for path in data_files}  # each checked against its .sha256
    classifiers = {Path(path).stem: path for path in classifier_files}
    accuracies = {dataset: _classifier_accuracy(path) for dataset, path in classifiers.items()}  # read once
    fid = fid_reference.settings(scale, scale_file)
    has_images = any(_dataset_name(path) in IMAGE_DATASETS for path in data_files)
    inception = (fid_reference.InceptionFID(fid, list(fid_references), inception_weights, pick_device(scale.get("device", "auto")))
                 if fid and has_images else None)
    base = {"experiment": experiment["id"], "optimizer": "", "scale": scale["scale"]}
    rows = []

    def quality(samples: np.ndarray, dataset: str, test: np.ndarray) -> dict[str, float]:
        if dataset in IMAGE_DATASETS and dataset not in classifiers:
            raise KeyError(f"{experiment_file}: image dataset {dataset!r} needs --classifiers results/classifiers/{dataset}.pt")
        settings = flow_settings(scale, dataset)
        values = quality_metrics(samples, dataset, test, classifiers.get(dataset), settings.get("w2_points"),
                                 settings.get("sample_batch", 1000))
        if inception is not None and dataset in IMAGE_DATASETS:  # the papers' FID, beside fid_classifier
            values["fid_inception"] = inception(samples, dataset)
        return values

    def w2_reference(data_path: str) -> np.ndarray:  # the test points the samples are compared with
        return references[data_path]["test"][:flow_settings(scale, _dataset_name(data_path))["n_eval"]]

    for data_path, arrays in references.items():
        dataset = _dataset_name(data_path)
        n_eval = flow_settings(scale, dataset)["n_eval"]
        _check_size(data_path, arrays, n_eval, flow_settings(scale, dataset), scale_file)
        for seed in scale["seeds"]:
            rng = np.random.default_rng(seed)
            draws = {"data": lambda: arrays["train"][rng.choice(len(arrays["train"]), n_eval, replace=False)],
                     "noise": lambda: rng.standard_normal((n_eval, *arrays["train"].shape[1:])).astype(np.float32)}
            for method, draw in draws.items():  # one at a time: memory for one set of n_eval points
                for metric, value in quality(draw(), dataset, w2_reference(data_path)).items():
                    rows.append({**base, "dataset": dataset, "method": method, "sampler": "", "schedule": "", "nfe": 0,
                                 "seed": seed, "metric": metric, "value": value, "wall_s": 0.0})
        if dataset in classifiers:  # how good the FID features are: the classifier's own test accuracy
            rows.append({**base, "dataset": dataset, "method": "classifier", "sampler": "", "schedule": "", "nfe": 0,
                         "seed": 0, "metric": "test_accuracy", "value": accuracies[dataset],
                         "wall_s": 0.0})
    radii: dict[str, float] = {}  # divergence_rate's R per dataset, computed at its first guided run

    def guided_quality(samples: np.ndarray, dataset: str, classes: int) -> dict[str, float]:
        """A guided run's class accuracy (images) and divergence rate (conditioning, metrics.divergence)."""
        from flowrepro.metrics.conditional import class_accuracy
        from flowrepro.metrics.divergence import divergence_rate

        if dataset not in radii:
            radii[dataset] = _data_radius(next(a["train"] for p, a in references.items() if _dataset_name(p) == dataset))
        values = {"divergence_rate": divergence_rate(samples.reshape(len(samples), -1), radii[dataset])}
        if dataset in classifiers:
            values["class_accuracy"] = class_accuracy(samples, classifiers[dataset], classes)
        return values

    coupled = coupling_references(experiment, sample_files)  # (dataset, seed) -> held-out x1 of the evaluation noise
    for path in sample_files:
        with io.open_npz(path) as samples:
            rows += _sample_rows(path, samples, references, w2_reference, quality, base, scale, coupled, guided_quality)
    io.write_table(out, rows)
    images = sorted(set(classifiers) & {_dataset_name(p) for p in references})
    features = [f"fid_classifier: penultimate layer (128-d) of the {d} CNN classifier, test accuracy "
                f"{accuracies[d]:.4f}, reference statistics of {d}'s test set" for d in images]
    features += inception.describe(images) if inception is not None else []
    provenance.write_for(out, experiment_file, scale_file, device=scale.get("device", "auto"),
                         features="; ".join(features) or None)
    print(f"evaluate: wrote {out} ({len(rows)} rows)")


#: MMD on at most this many points per set: its O(n^2) cost (~0.2 s at 2000 points) runs once per
#: sampler run; a fixed subset keeps the estimate unbiased, only noisier.
MMD_MAX_POINTS = 1000


def _sample_rows(path: str, samples, references: dict, w2_reference, quality, base: dict, scale: dict,
                 coupled: dict | None = None, guided_quality=None) -> list[dict]:
    """The metric rows of one sample file (read lazily, one run at a time)."""
    from flowrepro.metrics.flow import arc_chord_gap, straightness, transport_cost

    index = json.loads(str(samples["runs"]))
    dataset, method = index["dataset"], index["model"]
    matching = [p for p in references if _dataset_name(p) == dataset]
    if not matching:
        raise KeyError(f"{path}: samples of dataset {dataset!r} but no data file for it among {list(references)}")
    test = w2_reference(matching[0])
    rows = []
    for run_info in index["runs"]:
        row = {**base, "dataset": dataset, "method": method, "sampler": run_info["sampler"],
               "schedule": run_info["schedule"], "nfe": run_info["nfe"], "seed": run_info["seed"],
               "wall_s": run_info["wall_s"]}
        generated = samples[run_info["key"]]
        for metric, value in quality(generated, dataset, test).items():
            rows.append({**row, "metric": metric, "value": value})
        if "guidance" in run_info and guided_quality is not None:  # a guided run: class accuracy, divergence
            for metric, value in guided_quality(generated, dataset, run_info["classes"]).items():
                rows.append({**row, "metric": metric, "value": value})
        rows.append({**row, "metric": "nfe", "value": float(run_info["nfe"])})
        if run_info.get("calibration_nfe"):  # BOSS's or DPM-Solver-v3's one-off model calls, apart from the NFE
            rows.append({**row, "metric": "calibration_calls", "value": float(run_info["calibration_nfe"])})
        if "roundtrip_key" in run_info:  # data -> noise -> data of the run's first samples (sample._round_trip)
            back = samples[run_info["roundtrip_key"]]
            rows.append({**row, "metric": "inversion_error", "value": inversion_error(generated[:len(back)], back)})
        if (dataset, run_info["seed"]) in (coupled or {}):  # against held-out coupled pairs (coupling_reference:)
            rows.append({**row, "metric": "coupling_error", "value": coupling_error(generated, coupled[(dataset, run_info["seed"])])})
        reference_key = f"reference/seed{run_info['seed']}"
        same_ode = run_info.get("guidance") == index.get("reference_guidance")  # the guided ODE differs with w
        if reference_key in samples.files and same_ode:  # mean distance to the fine solve of the same ODE from the same noise
            gap = generated - samples[reference_key]
            rows.append({**row, "metric": "solver_error", "value": float(np.linalg.norm(gap.reshape(len(gap), -1), axis=1).mean())})
    times = samples["trajectory_times"]
    for seed in scale["seeds"]:
        if f"trajectory/seed{seed}" not in samples.files:  # a model that is no ODE v(x, t) (stages.sample)
            continue
        trajectory = samples[f"trajectory/seed{seed}"]
        row = {**base, "dataset": dataset, "method": method, "sampler": "euler", "schedule": "uniform",
               "nfe": len(times) - 1, "seed": seed, "wall_s": 0.0}
        rows.append({**row, "metric": "straightness", "value": straightness(trajectory, times)})
        rows.append({**row, "metric": "arc_chord_gap", "value": arc_chord_gap(trajectory)})
        rows.append({**row, "metric": "transport_cost", "value": transport_cost(trajectory)})
    return rows


def inversion_error(z0: np.ndarray, back: np.ndarray) -> float:
    """mean_n ||z0_n - z0'_n|| over flattened points, in float64 (:func:`flowrepro.samplers.bdia.inversion_error`)."""
    gap = z0.astype(np.float64) - back.astype(np.float64)
    return float(np.linalg.norm(gap.reshape(len(gap), -1), axis=1).mean())


def _check_size(data_path: str, arrays: dict, n_eval: int, settings: dict, scale_file: str) -> None:
    """The data file can supply what the scale asks (a generated archive may be smaller than the real set)."""
    if n_eval > len(arrays["train"]):
        raise ValueError(f"{scale_file}: n_eval = {n_eval} exceeds the {len(arrays['train'])} training points of {data_path}")
    wanted = settings.get("w2_points", n_eval)
    if len(arrays["test"]) < wanted:
        raise ValueError(f"{scale_file}: w2_points (default n_eval) = {wanted} exceeds the {len(arrays['test'])} test points of {data_path}")


def quality_metrics(samples: np.ndarray, dataset: str, test: np.ndarray, classifier: str | None = None,
                    w2_points: int | None = None, batch: int = 1000) -> dict[str, float]:
    """Distances of ``samples`` to the ``test`` set: w2 always (exact, on the first ``w2_points`` of each); fid_classifier for image datasets
    (``classifier``: the dataset's classifier file, required there); sliced_w2 and mmd for vector
    datasets (deterministic: fixed projection and subset seeds)."""
    from flowrepro.metrics.mmd import mmd_rbf
    from flowrepro.metrics.sliced import sliced_wasserstein
    from flowrepro.metrics.wasserstein import exact_w2

    flat, flat_test = samples.reshape(len(samples), -1), test.reshape(len(test), -1)
    values = {"w2": exact_w2(flat[:w2_points], flat_test[:w2_points])}
    if dataset in IMAGE_DATASETS:
        if classifier is None:
            raise KeyError(f"image dataset {dataset!r} needs its classifier (results/classifiers/{dataset}.pt)")
        from flowrepro.metrics.fid import fid_classifier
        from flowrepro.stages.classifier import stats_path

        values["fid_classifier"] = fid_classifier(samples, classifier, stats_path(classifier), batch_size=batch)
    else:
        values["sliced_w2"] = sliced_wasserstein(flat, flat_test, seed=0)
        values["mmd"] = mmd_rbf(flat, flat_test, max_points=MMD_MAX_POINTS, seed=0)
    return values


def _data_radius(train: np.ndarray, quantile: float = 0.99, chunk: int = 4096) -> float:
    """R of ``divergence_rate``: the 99th percentile of ||x1|| over the training data (metrics.divergence),
    a chunk of rows at a time (CIFAR-10's training set is 600 MB in float32)."""
    norms = [np.linalg.norm(train[i:i + chunk].reshape(-1, int(np.prod(train.shape[1:]))).astype(np.float64), axis=1)
             for i in range(0, len(train), chunk)]
    return float(np.quantile(np.concatenate(norms), quantile))


def _classifier_accuracy(classifier_file: str) -> float:
    from flowrepro.stages.classifier import stats_path

    return float(io.load_npz(stats_path(classifier_file))["test_accuracy"])


def _dataset_name(data_path: str) -> str:
    return Path(data_path).name.removesuffix(".npz")
