"""One entry point for every optimizer experiment: :func:`run_optimizer_experiment`.

Experiment keys (``config/experiments/<id>.yaml``, ``kind: optimizer``)::

    id, title, source, kind           # bookkeeping; id fills the ``experiment`` column
    problems:                         # list of names or dicts:
      - name: digits_mlp              #   a PROBLEMS entry
        steps: 300                    #   training steps at scale 1 (times settings.step_scale)
        scale_steps: true             #   false: ``steps`` as given at every scale (an epoch budget)
        scales: [paper]               #   run only at these scales (default: all)
        log_every: 25                 #   curve / time-to-target resolution (default steps/20)
        kwargs: {batch_size: 64}      #   passed to the problem factory
        deterministic: false          #   true: the problem ignores the seed -> run seeds[0] only
        select: {metric: val_accuracy, mode: max}      # lr selection (default: the problem's)
        target: {metric: val_accuracy, value: 0.9, mode: max}  # time-to-target (optional), or
        target: {metric: loss, mode: min, reference: [adam, adamw]}
                                      #   the value the best reference reaches in the budget, in
                                      #   every seed (AlgoPerf-style; see runner.reference_target)
    optimizers:                       # list of names or {name, lr_grid, kwargs, label (default: name)}
      - adam
      - {name: lion, lr_grid: [1.0e-4, 3.0e-4, 1.0e-3]}
    lr_grid: [1.0e-3, 3.0e-3, 1.0e-2] # default grid for optimizers without their own
    optimizer_kwargs: {adam: {betas: [0.9, 0.99]}}   # per-optimizer constructor kwargs
    performance_profile: {metric: seconds_to_target, tau: [1, 2, 4, 8]}   # optional
    lr_batch_scaling:                 # optional, instead of / besides problems
      {problem: digits_mlp, optimizers: [sgd, adam], batch_sizes: [16, 64, 256],
       lr_grid: [...], steps: 40, min_decrease: 0.1}   # stable: loss at most (1 - min_decrease) of its initial value
    claims: [{id, text, source, expr}]   # read by the claim checker, not here

Settings keys (the scale file's ``optimizers:`` section): ``seeds`` (list), ``step_scale``
(float, default 1), ``steps`` (default steps of a problem entry without ``steps``), ``name`` or
``scale`` (the ``scale`` column), ``torch_threads`` (default 1 during the run, restored after),
``problem_kwargs`` ({problem: kwargs} merged over the experiment's: data paths, device).

Metrics written (tidy, see :mod:`flowrepro.optim.runner`): each problem's summary metrics
for the lr chosen on validation (``final_x``, ``test_accuracy``, ``sliced_w``, ...),
``best_lr``, ``best_lr_at_grid_edge``, ``sweep_<select metric>`` per lr,
``steps_to_target``/``seconds_to_target`` (and ``target_<metric>`` for a reference target),
``curve_*`` rows (step in ``nfe``), ``perf_profile_tau=<tau>`` (dataset ``all``),
``max_stable_lr`` and ``lr_exponent``.

Besides the table: ``trajectories.npz`` next to it holds every iterate of the chosen lr's runs
on the 2-D problems (rosenbrock, rastrigin) for the trajectory figures; ``index`` (JSON) lists
the runs. ``python -m flowrepro.optim.experiment --experiment E --scale S --dry-run`` checks a
configuration (any scale, e.g. paper) without training: see :func:`dry_run`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from flowrepro.io import write_table

TRAJECTORY_FILE = "trajectories.npz"


def _scale_name(settings: dict[str, Any]) -> str:
    return str(settings.get("name", settings.get("scale", "")))


def _problem_entries(experiment: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The problem entries that run at this scale, with scaled steps and the scale's kwargs merged in."""
    scale = _scale_name(settings)
    overrides = settings.get("problem_kwargs", {}) or {}
    entries = []
    for item in experiment.get("problems", []):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        if entry.get("scales") and scale not in entry["scales"]:
            continue
        steps = float(entry.get("steps", settings.get("steps", 200)))
        if entry.get("scale_steps", True):
            steps *= float(settings.get("step_scale", 1.0))
        entry["steps"] = max(1, int(round(steps)))
        entry["kwargs"] = {**(entry.get("kwargs") or {}), **overrides.get(entry["name"], {})}
        entries.append(entry)
    return entries


def _optimizer_entries(experiment: dict[str, Any]) -> list[dict[str, Any]]:
    shared_kwargs = experiment.get("optimizer_kwargs", {}) or {}
    entries = []
    for item in experiment.get("optimizers", []):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        entry.setdefault("lr_grid", experiment.get("lr_grid"))
        if not entry["lr_grid"]:
            raise ValueError(f"optimizer {entry['name']!r}: no lr_grid (give one per optimizer or at top level)")
        entry["kwargs"] = {**shared_kwargs.get(entry["name"], {}), **entry.get("kwargs", {})}
        entry.setdefault("label", entry["name"])  # one optimizer under several labels (lion_k at two lambdas)
        entries.append(entry)
    labels = [e["label"] for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"optimizers: a name appears twice ({labels}); give the second a label:")
    return entries


def _check_targets(problems: list[dict[str, Any]], optimizers: list[dict[str, Any]]) -> None:
    names = {o["label"] for o in optimizers}
    for prob in problems:
        target = prob.get("target") or {}
        if "reference" in target:
            missing = set(target["reference"]) - names
            if missing or not target["reference"]:
                raise ValueError(f"problem {prob['name']!r}: target reference {sorted(missing) or '[]'} "
                                 f"is not among the experiment's optimizers {sorted(names)}")
        elif target and "value" not in target:
            raise ValueError(f"problem {prob['name']!r}: a target needs a value or a reference list")


def _profile_rows(rows: list[dict[str, Any]], spec: dict[str, Any], label: dict[str, Any]) -> list[dict[str, Any]]:
    import pandas as pd

    from flowrepro.optim.runner import performance_profile

    metric = spec.get("metric", "seconds_to_target")
    table = pd.DataFrame([r for r in rows if r["metric"] == metric and r["nfe"] == ""])
    if table.empty:
        return []
    profile = performance_profile(table, spec.get("tau", [1, 1.5, 2, 4, 8]))
    return [{**label, "dataset": "all", "method": p.method, "optimizer": p.method, "nfe": "", "seed": "",
             "metric": f"perf_profile_tau={p.tau:g}", "value": p.fraction, "wall_s": ""}
            for p in profile.itertuples()]


def _reference_target_rows(rows: list[dict[str, Any]], problem: str, target: dict[str, Any],
                           label: dict[str, Any]) -> list[dict[str, Any]]:
    """``target_<metric>`` (the value) and every run's ``steps_to_target``/``seconds_to_target``."""
    from flowrepro.optim.runner import reference_target, time_to_target

    metric, mode = target["metric"], target.get("mode", "min")
    value = reference_target(rows, metric, mode, target["reference"])
    out = [{**label, "dataset": problem, "method": "", "optimizer": "", "nfe": "", "seed": "",
            "metric": f"target_{metric}", "value": value, "wall_s": ""}]
    summaries = {(r["method"], r["seed"]): r for r in rows if r["nfe"] == "" and r["metric"] == "diverged"}
    for (_, method, seed), (steps, seconds) in time_to_target(rows, metric, value, mode).items():
        template = summaries[(method, seed)]
        out.append({**template, "metric": "steps_to_target", "value": steps})
        out.append({**template, "metric": "seconds_to_target", "value": seconds})
    return out


def run_optimizer_experiment(experiment: dict[str, Any], settings: dict[str, Any], out_csv: str) -> None:
    """Run every (problem, optimizer, lr, seed) of ``experiment`` and write one tidy CSV."""
    import torch

    threads = torch.get_num_threads()
    # tiny models are overhead-bound: extra intra-op threads only contend (15x slower under load)
    torch.set_num_threads(int(settings.get("torch_threads", 1)))
    try:
        _run(experiment, settings, out_csv)
    finally:
        torch.set_num_threads(threads)


def _run(experiment: dict[str, Any], settings: dict[str, Any], out_csv: str) -> None:
    from flowrepro.optim.runner import lr_batch_scaling, lr_sweep

    exp_id = experiment["id"]
    scale = _scale_name(settings)
    seeds = [int(s) for s in settings.get("seeds", [0])]
    problems, optimizers = _problem_entries(experiment, settings), _optimizer_entries(experiment)
    _check_targets(problems, optimizers)
    label = {"experiment": exp_id, "scale": scale, "sampler": "", "schedule": ""}
    rows: list[dict[str, Any]] = []
    trajectories: list[dict[str, Any]] = []
    for prob in problems:
        prob_seeds = seeds[:1] if prob.get("deterministic") else seeds
        select = prob.get("select", {})
        target = prob.get("target")
        problem_rows: list[dict[str, Any]] = []
        for opt in optimizers:
            paths: dict[int, Any] = {}
            sweep = lr_sweep(
                prob["name"], opt["name"], opt["lr_grid"], prob_seeds, prob["steps"],
                select_metric=select.get("metric"), select_mode=select.get("mode"),
                log_every=prob.get("log_every"), target=None if target and "reference" in target else target,
                optimizer_kwargs=opt["kwargs"], problem_kwargs=prob["kwargs"],
                experiment=exp_id, scale=scale, trajectories=paths)
            if opt["label"] != opt["name"]:  # the rows name the entry, not the registry name it shares
                for row in sweep:
                    row["method"] = opt["label"]
                    row["optimizer"] = str(row["optimizer"]).replace(opt["name"], opt["label"], 1)
            problem_rows.extend(sweep)
            best_lr = next((r["value"] for r in sweep if r["metric"] == "best_lr"), math.nan)
            trajectories.extend({"problem": prob["name"], "optimizer": opt["label"], "seed": seed, "lr": best_lr,
                                 "path": path} for seed, path in paths.items())
        if target and "reference" in target:
            problem_rows.extend(_reference_target_rows(problem_rows, prob["name"], target, label))
        rows.extend(problem_rows)
    if experiment.get("performance_profile"):
        rows.extend(_profile_rows(rows, experiment["performance_profile"], label))
    scaling = experiment.get("lr_batch_scaling")
    if scaling:
        start = time.perf_counter()
        rows.extend(lr_batch_scaling(
            scaling.get("optimizers", ["sgd", "adam"]), [int(b) for b in scaling["batch_sizes"]],
            [float(lr) for lr in scaling["lr_grid"]], seeds,
            max(1, int(round(scaling.get("steps", 40) * float(settings.get("step_scale", 1.0))))),
            problem=scaling.get("problem", "digits_mlp"), experiment=exp_id, scale=scale,
            min_decrease=float(scaling.get("min_decrease", 0.1))))
        rows.append({**label, "dataset": scaling.get("problem", "digits_mlp"), "method": "", "optimizer": "",
                     "nfe": "", "seed": "", "metric": "scaling_wall_s",
                     "value": time.perf_counter() - start, "wall_s": time.perf_counter() - start})
    write_trajectories(str(Path(out_csv).with_name(TRAJECTORY_FILE)), exp_id, trajectories)
    write_table(out_csv, rows)  # last: a complete metrics.csv means the trajectories are there too


def write_trajectories(path: str, experiment_id: str, runs: list[dict[str, Any]]) -> None:
    """One (steps + 1, 2) array per run under ``<problem>/<optimizer>/seed<k>``, plus a JSON ``index``.

    No runs: a trajectory file left from an earlier configuration is removed.
    """
    import numpy as np

    from flowrepro import io

    if not runs:
        Path(path).unlink(missing_ok=True)
        return
    arrays, index = {}, []
    for run in runs:
        key = f"{run['problem']}/{run['optimizer']}/seed{run['seed']}"
        arrays[key] = np.asarray(run["path"], dtype=np.float64)
        index.append({"problem": run["problem"], "optimizer": run["optimizer"], "seed": int(run["seed"]),
                      "lr": float(run["lr"]), "key": key})
    io.save_npz(path, index=np.array(json.dumps({"experiment": experiment_id, "runs": index})), **arrays)


def data_files(experiment: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Data files the experiment's problems read at this scale (their ``data`` kwarg): workflow inputs."""
    return sorted({str(p["kwargs"]["data"]) for p in _problem_entries(experiment, settings) if p["kwargs"].get("data")})


def dry_run(experiment: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Check a configuration at any scale without training; return one plan row per problem.

    Every optimizer must be registered and every problem must build (seed ``seeds[0]``),
    take one loss + backward with a finite loss, and report its lr-selection metric and its
    target metric. A problem whose data file is absent is built on ``synthetic`` tensors of the
    same shapes (so a paper-scale CIFAR problem checks here without the dataset; nothing is
    ever downloaded). Rows: problem, steps, seeds, optimizers, runs (= optimizers x lrs x
    seeds), total_steps, n_params, data ("as configured" or "synthetic: <why>"), loss.
    """
    import torch

    from flowrepro.optim.registry import get_optimizer
    from flowrepro.optim.runner import _make_problem

    problems, optimizers = _problem_entries(experiment, settings), _optimizer_entries(experiment)
    _check_targets(problems, optimizers)
    for opt in optimizers:
        get_optimizer(opt["name"])
    seeds = [int(s) for s in settings.get("seeds", [0])]
    plan = []
    for prob in problems:
        kwargs, data = dict(prob["kwargs"]), "as configured"
        try:
            problem = _make_problem(prob["name"], seeds[0], kwargs)
        except FileNotFoundError as missing:
            kwargs["synthetic"] = 2 * int(kwargs.get("batch_size", 256))
            problem, data = _make_problem(prob["name"], seeds[0], kwargs), f"synthetic: {missing}"
        loss = problem.loss(1)
        loss.backward()
        if not math.isfinite(loss.item()):
            raise ValueError(f"problem {prob['name']!r}: first loss is {loss.item()}")
        logged, final = problem.evaluate(), problem.summary()
        metric = (prob.get("select") or {}).get("metric", problem.select_metric)
        if metric not in final:
            raise ValueError(f"problem {prob['name']!r}: lr-selection metric {metric!r} not in its summary {sorted(final)}")
        target = prob.get("target") or {}
        if target and target["metric"] not in logged:
            raise ValueError(f"problem {prob['name']!r}: target metric {target['metric']!r} is not logged "
                             f"(evaluate() gives {sorted(logged)})")
        n_seeds = 1 if prob.get("deterministic") else len(seeds)
        runs = sum(len(o["lr_grid"]) for o in optimizers) * n_seeds
        plan.append({"problem": prob["name"], "steps": prob["steps"], "seeds": n_seeds,
                     "optimizers": [o["name"] for o in optimizers], "runs": runs, "total_steps": runs * prob["steps"],
                     "n_params": sum(p.numel() for p in problem.params), "data": data, "loss": loss.item(),
                     "kwargs": kwargs})
        del problem, loss
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    scaling = experiment.get("lr_batch_scaling")
    if scaling:
        for name in scaling.get("optimizers", ["sgd", "adam"]):
            get_optimizer(name)
        _make_problem(scaling.get("problem", "digits_mlp"), seeds[0], {"batch_size": int(scaling["batch_sizes"][0])})
    return plan


def main(argv: list[str] | None = None) -> int:
    """``python -m flowrepro.optim.experiment --experiment E --scale S --dry-run``."""
    import argparse

    from flowrepro.config import load_experiment, load_scale
    from flowrepro.registry import load_plugins

    parser = argparse.ArgumentParser(prog="python -m flowrepro.optim.experiment",
                                     description="Check (--dry-run) or run an optimizer experiment at a scale.")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--scale", required=True)
    parser.add_argument("--dry-run", action="store_true", help="build every problem and list the runs; train nothing")
    parser.add_argument("--out", help="metrics.csv to write (without --dry-run)")
    args = parser.parse_args(argv)
    experiment, scale = load_experiment(args.experiment), load_scale(args.scale)
    load_plugins(experiment.get("plugins", []))
    from flowrepro.config import benchmark_seeds

    settings = {"scale": scale["scale"], "seeds": benchmark_seeds(experiment, scale), **scale.get("optimizers", {})}
    if not args.dry_run:
        if not args.out:
            parser.error("--out is needed without --dry-run")
        run_optimizer_experiment(experiment, settings, args.out)
        return 0
    plan = dry_run(experiment, settings)
    for row in plan:
        print(f"{row['problem']:>18}: {row['steps']} steps x {row['runs']} runs ({row['seeds']} seeds) = "
              f"{row['total_steps']:,} steps; {row['n_params']:,} params; first loss {row['loss']:.4g}; data {row['data']}")
    files = data_files(experiment, settings)
    print(f"{experiment['id']} at scale {scale['scale']}: {len(plan)} problems, "
          f"{sum(r['total_steps'] for r in plan):,} optimizer steps; data files: {files or 'none'}")
    return 0


def plot_optimizer_experiment(metrics_csv: str, out_dir: str) -> list[str]:
    """Figures for the report; see :mod:`flowrepro.plots.optim`."""
    from flowrepro.plots.optim import plot_optimizer_experiment as plot

    return plot(metrics_csv, out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
