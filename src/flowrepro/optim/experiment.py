"""One entry point for every optimizer experiment: :func:`run_optimizer_experiment`.

Experiment keys (``config/experiments/<id>.yaml``, ``kind: optimizer``)::

    id, title, source, kind           # bookkeeping; id fills the ``experiment`` column
    problems:                         # list of names or dicts:
      - name: digits_mlp              #   a PROBLEMS entry
        steps: 300                    #   training steps at scale 1 (times settings.step_scale)
        log_every: 25                 #   curve / time-to-target resolution (default steps/20)
        kwargs: {batch_size: 64}      #   passed to the problem factory
        deterministic: false          #   true: the problem ignores the seed -> run seeds[0] only
        select: {metric: val_accuracy, mode: max}      # lr selection (default: the problem's)
        target: {metric: val_accuracy, value: 0.9, mode: max}  # time-to-target (optional)
    optimizers:                       # list of names or {name, lr_grid, kwargs}
      - adam
      - {name: lion, lr_grid: [1.0e-4, 3.0e-4, 1.0e-3]}
    lr_grid: [1.0e-3, 3.0e-3, 1.0e-2] # default grid for optimizers without their own
    optimizer_kwargs: {adam: {betas: [0.9, 0.99]}}   # per-optimizer constructor kwargs
    performance_profile: {metric: seconds_to_target, tau: [1, 2, 4, 8]}   # optional
    lr_batch_scaling:                 # optional, instead of / besides problems
      {problem: digits_mlp, optimizers: [sgd, adam], batch_sizes: [16, 64, 256],
       lr_grid: [...], steps: 40}
    claims: [{id, text, source, expr}]   # read by the claim checker, not here

Settings keys: ``seeds`` (list), ``step_scale`` (float, default 1), ``steps`` (default steps
of a problem entry without ``steps``), ``name`` (the ``scale`` column), ``torch_threads``
(default 1 during the run, restored after).

Metrics written (tidy, see :mod:`flowrepro.optim.runner`): each problem's summary metrics
for the lr chosen on validation (``final_x``, ``test_accuracy``, ``sliced_w``, ...),
``best_lr``, ``sweep_<select metric>`` per lr, ``steps_to_target``/``seconds_to_target``,
``curve_*`` rows (step in ``nfe``), ``perf_profile_tau=<tau>`` (dataset ``all``),
``max_stable_lr`` and ``lr_exponent``.
"""
from __future__ import annotations

import time
from typing import Any

from flowrepro.io import write_table


def _problem_entries(experiment: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    entries = []
    for item in experiment.get("problems", []):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        steps = entry.get("steps", settings.get("steps", 200))
        entry["steps"] = max(1, int(round(steps * float(settings.get("step_scale", 1.0)))))
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
        entries.append(entry)
    return entries


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
    scale = str(settings.get("name", settings.get("scale", "")))
    seeds = [int(s) for s in settings.get("seeds", [0])]
    rows: list[dict[str, Any]] = []
    for prob in _problem_entries(experiment, settings):
        prob_seeds = seeds[:1] if prob.get("deterministic") else seeds
        select = prob.get("select", {})
        for opt in _optimizer_entries(experiment):
            rows.extend(lr_sweep(
                prob["name"], opt["name"], opt["lr_grid"], prob_seeds, prob["steps"],
                select_metric=select.get("metric"), select_mode=select.get("mode"),
                log_every=prob.get("log_every"), target=prob.get("target"),
                optimizer_kwargs=opt["kwargs"], problem_kwargs=prob.get("kwargs"),
                experiment=exp_id, scale=scale))
    label = {"experiment": exp_id, "scale": scale, "sampler": "", "schedule": ""}
    if experiment.get("performance_profile"):
        rows.extend(_profile_rows(rows, experiment["performance_profile"], label))
    scaling = experiment.get("lr_batch_scaling")
    if scaling:
        start = time.perf_counter()
        rows.extend(lr_batch_scaling(
            scaling.get("optimizers", ["sgd", "adam"]), [int(b) for b in scaling["batch_sizes"]],
            [float(lr) for lr in scaling["lr_grid"]], seeds,
            max(1, int(round(scaling.get("steps", 40) * float(settings.get("step_scale", 1.0))))),
            problem=scaling.get("problem", "digits_mlp"), experiment=exp_id, scale=scale))
        rows.append({**label, "dataset": scaling.get("problem", "digits_mlp"), "method": "", "optimizer": "",
                     "nfe": "", "seed": "", "metric": "scaling_wall_s",
                     "value": time.perf_counter() - start, "wall_s": time.perf_counter() - start})
    write_table(out_csv, rows)


def plot_optimizer_experiment(metrics_csv: str, out_dir: str) -> list[str]:
    """Figures for the report; see :mod:`flowrepro.plots.optim`."""
    from flowrepro.plots.optim import plot_optimizer_experiment as plot

    return plot(metrics_csv, out_dir)
