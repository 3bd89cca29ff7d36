"""Run optimizers on problems and turn the runs into tidy rows.

Row conventions (columns of :data:`flowrepro.io.TIDY_COLUMNS`):

* ``dataset`` = problem name, ``method`` = optimizer name,
  ``optimizer`` = ``"<name> lr=<lr>"`` (the exact configuration that produced the row),
* ``curve_<metric>`` rows are the logged curves: ``nfe`` holds the step (= number of
  gradient evaluations) and ``wall_s`` the training seconds so far (evaluation excluded),
* every other row is a summary of one run (``nfe`` empty, ``wall_s`` = its training time).

The runner owns everything optimizer-specific: lr schedule (``lr * problem.lr_factor(t)``),
``backward(create_graph=spec.needs_create_graph)``, projection after the step.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

from flowrepro.registry import PROBLEMS

BASE = {"sampler": "", "schedule": ""}


def _make_problem(problem: str | Callable[..., Any], seed: int, problem_kwargs: dict | None) -> Any:
    import flowrepro.optim.problems  # noqa: F401  (registers the synthetic problems)
    import flowrepro.optim.problems_cifar  # noqa: F401  (registers ResNet-20 / CIFAR-10)
    import flowrepro.optim.problems_learning  # noqa: F401  (registers the learning problems)
    import flowrepro.optim.problems_node  # noqa: F401  (registers the neural-ODE problems)

    factory = PROBLEMS.get(problem) if isinstance(problem, str) else problem
    return factory(seed, **(problem_kwargs or {}))


def _reached(value: float, target: dict[str, Any]) -> bool:
    """``target = {metric, value, mode}``: mode "max" means value >= target, "min" <=."""
    if not math.isfinite(value):
        return False
    return value >= target["value"] if target.get("mode", "min") == "max" else value <= target["value"]


def run_optimizer(problem: str | Callable[..., Any], optimizer_name: str, lr: float, seed: int,
                  steps: int, *, log_every: int | None = None, target: dict[str, Any] | None = None,
                  optimizer_kwargs: dict[str, Any] | None = None,
                  problem_kwargs: dict[str, Any] | None = None,
                  experiment: str = "", scale: str = "", curves: bool = True,
                  extras: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train ``steps`` steps of ``optimizer_name`` at base ``lr`` and return tidy rows.

    Summary rows: every metric of ``problem.summary()``, ``diverged`` (1 if the loss went
    non-finite; training stops there), ``final_train_loss`` (last minibatch loss) and, with
    ``target``, ``steps_to_target`` / ``seconds_to_target`` (inf when never reached,
    checked every ``log_every`` steps on ``problem.evaluate()``). ``extras``, if given,
    receives the problem's ``info`` after the run (the 2-D problems' ``trajectory``).
    """
    import torch

    from flowrepro.optim.registry import get_optimizer

    spec = get_optimizer(optimizer_name)
    torch.manual_seed(seed)
    prob = _make_problem(problem, seed, problem_kwargs)
    opt = spec.build(prob.params, lr, **(optimizer_kwargs or {}))
    log_every = log_every or max(1, steps // 20)
    label = {**BASE, "experiment": experiment, "dataset": prob.name, "method": optimizer_name,
             "optimizer": f"{optimizer_name} lr={lr:g}", "seed": seed, "scale": scale}
    rows: list[dict[str, Any]] = []
    wall, hit_step, hit_wall, diverged, last_loss = 0.0, math.inf, math.inf, 0, math.nan

    def log(step: int) -> None:
        nonlocal hit_step, hit_wall
        metrics = prob.evaluate()
        if curves:
            rows.extend({**label, "nfe": step, "metric": f"curve_{k}", "value": v, "wall_s": wall}
                        for k, v in metrics.items())
        if target and hit_step == math.inf and _reached(metrics.get(target["metric"], math.nan), target):
            hit_step, hit_wall = step, wall

    log(0)
    for t in range(1, steps + 1):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr * prob.lr_factor(t)
        opt.zero_grad(set_to_none=True)
        if hasattr(opt, "pre_forward"):  # XGrad: the gradient is taken at predicted weights
            opt.pre_forward()
        loss = prob.loss(t)
        loss.backward(create_graph=spec.needs_create_graph)  # AdaHessian differentiates grads again
        getattr(opt, "observe_loss", lambda _: None)(loss.detach())  # f(x_{t-1}), for Lion-K's Lyapunov record
        opt.step()
        prob.project()
        prob.after_step(t)
        last_loss = loss.item()
        wall += time.perf_counter() - start
        if not math.isfinite(last_loss):
            diverged = 1
            break
        if t % log_every == 0 or t == steps:
            log(t)
    opt.zero_grad(set_to_none=True)  # drops the create_graph graph held by .grad

    summary = {k: (v if not diverged else math.nan) for k, v in prob.summary().items()}
    summary.update(diverged=diverged, final_train_loss=last_loss)
    summary.update(getattr(opt, "run_metrics", dict)())  # optimizer-side metrics (Lion-K's box)
    if target:
        summary.update(steps_to_target=hit_step, seconds_to_target=hit_wall)
    rows.extend({**label, "nfe": "", "metric": k, "value": float(v), "wall_s": wall}
                for k, v in summary.items())
    if extras is not None:
        extras.update(prob.info)
    return rows


def _score(rows: list[dict[str, Any]], metric: str, mode: str) -> float:
    """Mean over seeds of a summary metric, with NaN (diverged) counted as worst."""
    values = [r["value"] for r in rows if r["metric"] == metric and r["nfe"] == ""]
    if not values or any(not math.isfinite(v) for v in values):
        return -math.inf if mode == "max" else math.inf
    mean = sum(values) / len(values)
    return mean


def lr_sweep(problem: str, optimizer_name: str, lr_grid: Iterable[float], seeds: Iterable[int],
             steps: int, *, select_metric: str | None = None, select_mode: str | None = None,
             trajectories: dict[int, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    """Run every (lr, seed); pick the lr with the best seed-mean validation metric.

    Returns: ``sweep_<select_metric>`` rows for every (lr, seed) (``optimizer`` names the lr),
    all rows of the best lr's runs under their own metric names, a ``best_lr`` row per seed
    and one ``best_lr_at_grid_edge`` row (1 when the chosen lr is the smallest or largest of
    a grid of two or more: the sweep did not bracket the optimum, so the grid is suspect).
    Selection uses the problem's ``select_metric`` (a validation metric) unless overridden,
    so test metrics never choose the lr. ``trajectories``, if given, receives
    ``{seed: array (steps + 1, 2)}`` of the best lr's runs (problems that record one).
    """
    import numpy as np

    seeds = list(seeds)
    grid = list(lr_grid)
    runs: dict[float, list[dict[str, Any]]] = {}
    paths: dict[tuple[float, int], Any] = {}
    probe = _make_problem(problem, seeds[0], kw.get("problem_kwargs"))
    metric = select_metric or probe.select_metric
    mode = select_mode or probe.select_mode
    del probe  # a paper-scale problem holds its data on the device
    for lr in grid:
        runs[lr] = []
        for seed in seeds:
            extras: dict[str, Any] = {}
            runs[lr].extend(run_optimizer(problem, optimizer_name, lr, seed, steps, extras=extras, **kw))
            if "trajectory" in extras:
                paths[(lr, seed)] = np.asarray(extras["trajectory"], dtype=np.float64)
    best = (max if mode == "max" else min)(runs, key=lambda lr: _score(runs[lr], metric, mode))
    out: list[dict[str, Any]] = []
    for lr, rows in runs.items():
        out.extend({**r, "metric": f"sweep_{metric}"} for r in rows
                   if r["metric"] == metric and r["nfe"] == "")
    out.extend(runs[best])
    template = [r for r in runs[best] if r["metric"] == metric and r["nfe"] == ""]
    out.extend({**r, "metric": "best_lr", "value": float(best)} for r in template)
    if template:
        edge = len(grid) > 1 and best in (min(grid), max(grid))
        out.append({**template[0], "seed": "", "metric": "best_lr_at_grid_edge", "value": float(edge), "wall_s": ""})
    if trajectories is not None:
        trajectories.update({seed: paths[(best, seed)] for seed in seeds if (best, seed) in paths})
    return out


def time_to_target(rows: list[dict[str, Any]], metric: str, value: float, mode: str) -> dict[tuple, tuple[float, float]]:
    """First logged step and training seconds at which ``curve_<metric>`` reaches ``value``.

    Returns ``{(dataset, method, seed): (steps, seconds)}`` over the runs whose curves are in
    ``rows`` (inf, inf when never reached): the same check :func:`run_optimizer` makes during
    the run for a fixed target, made afterwards for a target known only after all runs.
    """
    target = {"value": value, "mode": mode}
    out: dict[tuple, tuple[float, float]] = {}
    curve = sorted((r for r in rows if r["metric"] == f"curve_{metric}"), key=lambda r: r["nfe"])
    for r in curve:
        key = (r["dataset"], r["method"], r["seed"])
        out.setdefault(key, (math.inf, math.inf))
        if out[key][0] == math.inf and _reached(r["value"], target):
            out[key] = (float(r["nfe"]), float(r["wall_s"]))
    return out


def reference_target(rows: list[dict[str, Any]], metric: str, mode: str, reference: Iterable[str]) -> float:
    """The value the best reference optimizer reaches within the budget in every seed.

    As in AlgoPerf (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"), whose
    validation targets are what tuned baseline algorithms reach within the workload's budget.
    Per problem: for each reference optimizer (at its chosen lr) and seed, the best value
    of ``curve_<metric>`` along the run; the worst of those over seeds; the best over the
    references. So every seed of the best reference reaches the target, and the target needs
    no hand-set threshold. NaN when no reference has a finite curve.
    """
    better = max if mode == "max" else min
    worse = min if mode == "max" else max
    per_run: dict[tuple[str, Any], list[float]] = {}
    reference = set(reference)
    for r in rows:
        if r["metric"] == f"curve_{metric}" and r["method"] in reference and math.isfinite(r["value"]):
            per_run.setdefault((r["method"], r["seed"]), []).append(r["value"])
    per_method: dict[str, list[float]] = {}
    for (method, _), values in per_run.items():
        per_method.setdefault(method, []).append(better(values))
    if not per_method:
        return math.nan
    return better(worse(values) for values in per_method.values())


def performance_profile(table: Any, tau_grid: Iterable[float]) -> Any:
    """AlgoPerf-style performance profile.

    ``table`` has columns ``dataset`` (problem), ``method`` and ``value`` (time to target,
    inf/NaN when not reached; several rows per pair are averaged, e.g. over seeds).
    With r_{p,m} = t_{p,m} / min_m' t_{p,m'}, rho_m(tau) = |{p : r_{p,m} <= tau}| / |P|.
    Returns a DataFrame with columns method, tau, fraction.
    """
    import numpy as np
    import pandas as pd

    times = table.groupby(["dataset", "method"])["value"].mean().unstack("method")
    times = times.replace([np.nan], np.inf)
    best = times.min(axis=1)
    ratios = times.div(best.where(np.isfinite(best), np.nan), axis=0).fillna(np.inf)
    rows = [{"method": m, "tau": float(tau), "fraction": float((ratios[m] <= tau).mean())}
            for m in times.columns for tau in tau_grid]
    return pd.DataFrame(rows, columns=["method", "tau", "fraction"])


def largest_stable_lr(problem: str, optimizer_name: str, lr_grid: Iterable[float], seed: int,
                      steps: int, problem_kwargs: dict[str, Any] | None = None, min_decrease: float = 0.1) -> float:
    """Largest lr of an ascending grid before the first unstable one (nan if the first fails).

    Stable: after ``steps`` steps the full-train-set loss is finite and at most (1 - ``min_decrease``)
    times its value at initialisation. "Not above the initial loss" alone counted collapsed networks
    as stable: a classifier that predicts the uniform distribution has loss ln 10 = 2.303, just under
    its initial 2.31, at test accuracy 0.17.
    """
    best = math.nan
    for lr in sorted(lr_grid):
        info: dict[str, Any] = {}
        rows = run_optimizer(problem, optimizer_name, lr, seed, steps, log_every=steps,
                             problem_kwargs=problem_kwargs, curves=False, extras=info)
        final = {r["metric"]: r["value"] for r in rows}
        initial = info["initial_train_loss"]  # full-train-set loss at initialisation, same seed
        if not (math.isfinite(final["train_loss"]) and final["train_loss"] <= (1 - min_decrease) * initial):
            break
        best = lr
    return best


def fit_exponent(batch_sizes: list[int], lrs: list[float]) -> float:
    """Slope of log lr* against log B by least squares (lr* ~ B^slope)."""
    import numpy as np

    pairs = [(math.log(b), math.log(lr)) for b, lr in zip(batch_sizes, lrs) if math.isfinite(lr) and lr > 0]
    if len(pairs) < 2:
        return math.nan
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


def lr_batch_scaling(optimizers: list[str], batch_sizes: list[int], lr_grid: list[float],
                     seeds: list[int], steps: int, problem: str = "digits_mlp",
                     experiment: str = "", scale: str = "", min_decrease: float = 0.1) -> list[dict[str, Any]]:
    """Largest stable lr per (optimizer, batch size, seed) and the fitted exponent per optimizer.

    Rows: ``max_stable_lr`` (``optimizer`` = "<name> batch=<B>"), ``lr_exponent`` per
    optimizer and seed (slope of log lr* on log B). Granziol et al. predict ~1 for SGD
    and ~0.5 for Adam.
    """
    rows: list[dict[str, Any]] = []
    for name in optimizers:
        for seed in seeds:
            start, found = time.perf_counter(), []
            for b in batch_sizes:
                t0 = time.perf_counter()
                lr = largest_stable_lr(problem, name, lr_grid, seed, steps, {"batch_size": b}, min_decrease)
                found.append(lr)
                rows.append({**BASE, "experiment": experiment, "dataset": problem, "method": name,
                             "optimizer": f"{name} batch={b}", "nfe": "", "seed": seed, "scale": scale,
                             "metric": "max_stable_lr", "value": lr,
                             "wall_s": time.perf_counter() - t0})
            rows.append({**BASE, "experiment": experiment, "dataset": problem, "method": name,
                         "optimizer": name, "nfe": "", "seed": seed, "scale": scale,
                         "metric": "lr_exponent", "value": fit_exponent(batch_sizes, found),
                         "wall_s": time.perf_counter() - start})
    return rows
