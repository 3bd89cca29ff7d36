"""Sampler experiments on the exact harness (kind: sampler): error vs counted NFE -> tidy CSV.

Experiment keys (config/experiments/<id>.yaml, besides id/title/source/kind/claims/paper_numbers):

    harness: vp | flow      vp: diffusers schedulers (and ddim_ts, dopri5) on the VP diffusion of the
                            mixture, model = exact eps; flow: ODE solvers (euler, midpoint, heun, rk4,
                            euler_ts, dopri5) on the linear path, model = exact velocity.
    datasets: [gmm2d, gmm16d]
    nfe: [1, 2, ...]        NFE budgets; each sampler runs the most steps whose planned calls fit,
                            records the COUNTED calls, and skips a budget that repeats a count.
    schedules: [uniform]    default schedules (vp: uniform | karras | logsnr, as scheduler flags, or
                            boss as custom timesteps; flow: any SCHEDULES name; boss is estimated
                            per seed on its own batch)
    samplers:               name -> options, all optional:
        nfe: [...]          overrides the NFE grid;  schedules: [...] overrides the schedules
        rtol: [...]         dopri5 tolerances (schedule column reads "rtol=<value>")
        window: number      time-shift window (ddim_ts: window size in training steps, official TS-DPM
                            rule; euler_ts: fraction of a step);  cutoff: ddim_ts, no shift at or below
        sampler: name       the registered sampler (default: the label), so one sampler runs under several
                            labels with different options
        order, gamma, ...   any option the sampler function names (hb/ghvb: fractional order; bdia: gamma)
        ems_samples, ems_lambdas   a sampler that names ``ems`` (dpm_solver_v3) gets the empirical model
                            statistics of the case's exact model (flowrepro.samplers.model_statistics.ems_exact),
                            computed once per (dataset, seed) from ems_samples (1024) calibration draws apart
                            from the evaluation noise, on ems_lambdas (400) uniform lambdas; they cost closed-form
                            eps evaluations, not model calls: an ``ems_calls`` row (sampler ems) records them
        search: name        with schedule ``searched``: run the entry ``name`` of the experiment's ``search:``
                            section (flowrepro.samplers.step_search) found for this (dataset, seed, NFE budget),
                            read from settings["schedules_file"] (else searched in-process); ``search_calls``
                            rows (sampler = search name) record the search's own model calls, apart from NFE
        chains, rounds, skp, eta, n_levels, integrator, ...   dlg (flowrepro.samplers.dlg): a distribution sampler,
                            no solver_error; extra rows nfe_total (burn-in included), sigma_posterior_evals, start_sigma
    metrics: [solver_error, w2, mmd]
    distribution_nfe: [...] NFE values at which w2/mmd are computed (exact W2 costs; default all)
    boss: {n_fine: 100, n_batch: 256}   BOSS estimation sizes
    guidance: {scale: [7.5, 10], classes: 2, unguided: true}   classifier-free guidance on a class-conditional
                            mixture (flowrepro.samplers.guidance): each dataset also runs at each w as dataset "<name>_w<w>"
                            (gmm2d_w10), with the guided ODE's reference; metric divergence_rate (flowrepro.metrics.divergence)

Settings (the scale file's ``samplers:`` section, plus scale and seeds): n_samples (1000), n_eval
(500 samples for w2/mmd), threads (1: the harness is many tiny ops; a second thread only contends).

Metrics, per (dataset, sampler, schedule, counted nfe, seed): solver_error = mean_n ||x_n - x*_n|| with
x* the probability-flow ODE endpoint of the same noise (dopri5, rtol 1e-8 in float64); w2 = exact W2
(POT) to a fresh target sample; mmd = unbiased squared MMD, Gaussian kernel at the target's median
distance. Rows with sampler=target are the floor: the same metric between two target samples.
inversion_error (samplers with a round trip, flowrepro.samplers.bdia.ROUND_TRIPS: bdia, ddim) = mean_n
||z_n - z'_n|| for n_eval target samples z inverted to noise and regenerated with the same steps; its
row carries the sampler's forward nfe (the round trip costs about twice that).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from flowrepro.metrics.mmd import mmd_rbf

DEFAULT_NFE = [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50]
TARGETS = (0.1, 0.03, 0.01)


def _data_var(gmm) -> float:
    """tr Cov(x1) / d of the mixture, exactly."""
    mean = gmm.weights @ gmm.means
    second = sum(w * (np.trace(c) + m @ m) for w, c, m in zip(gmm.weights, gmm.covs, gmm.means))
    return float((second - mean @ mean) / gmm.dim)


class _Case:
    """One (dataset, seed): noise, exact model, target sample and cached ODE references."""

    def __init__(self, name: str, seed: int, harness: str, n: int, n_eval: int) -> None:
        import torch

        from flowrepro.data.gmm import mixture
        from flowrepro.samplers.diffusion import ExactMixture

        self.gmm = mixture(name)
        self.exact = ExactMixture(self.gmm)
        gen = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(n, self.gmm.dim, dtype=torch.float64, generator=gen)
        self.boss_batch = torch.randn(256, self.gmm.dim, dtype=torch.float64, generator=gen)  # apart from eval noise
        rng = np.random.default_rng(10_000 + seed)
        self.target, self.target2 = self.gmm.sample(n_eval, rng), self.gmm.sample(n_eval, rng)
        self.harness, self.data_var = harness, _data_var(self.gmm)
        self._refs: dict[Any, Any] = {}
        self.boss_grids: dict[int, np.ndarray] = {}
        self.seed, self.ems_runs = seed, {}  # (samples, lambdas) -> (EMS, seconds)

    def ems(self, options: dict):
        """DPM-Solver-v3's EMS of the exact model, from calibration draws apart from the evaluation noise."""
        from flowrepro.samplers.model_statistics import ems_exact, ems_grid

        key = (int(options.get("ems_samples", 1024)), int(options.get("ems_lambdas", 400)))
        if key not in self.ems_runs:
            start = time.perf_counter()
            ems = ems_exact(self.exact, ems_grid(key[1]), key[0], seed=20_000 + self.seed)
            self.ems_runs[key] = (ems, time.perf_counter() - start)
        return self.ems_runs[key][0]

    def reference(self, levels: tuple[float, float] | None):
        from flowrepro.samplers.diffusion import reference_endpoint
        from flowrepro.samplers.ode import integrate_dopri5

        key = None if levels is None else (round(levels[0], 6), round(levels[1], 8))
        if key not in self._refs:
            if levels is None:  # flow: t = 0 -> 1
                self._refs[key] = integrate_dopri5(self.exact.velocity, self.noise, rtol=1e-8, atol=1e-8)
            else:
                self._refs[key] = reference_endpoint(self.exact, self.noise, levels[0], [levels[1]])[levels[1]]
        return self._refs[key]


def _plan(harness: str, sampler: str, schedule: str, budget: int) -> tuple[int, int] | None:
    """(steps, planned calls): the most steps whose planned model calls fit in ``budget`` (None: cannot)."""
    from flowrepro.registry import SAMPLERS
    from flowrepro.samplers import diffusion, ode

    if schedule == "searched":  # step_search entries are keyed by their NFE budget (the counter has the truth)
        return budget, budget
    if harness == "flow":
        declared = getattr(SAMPLERS.get(sampler), "calls_per_step", None) if sampler in SAMPLERS else None
        per_step = declared or ode.CALLS_PER_STEP.get(sampler, 1)  # a plugin solver declares its own cost
        return (budget // per_step, budget // per_step * per_step) if budget >= per_step else None
    if sampler == "ddim_ts":
        return budget, budget
    own = getattr(SAMPLERS.get(sampler), "calls_per_step", None) if sampler in SAMPLERS and sampler not in diffusion.SCHEDULERS else None
    if own:  # our own eps-model samplers (momentum, bdia) declare their cost per step
        return (budget // own, budget // own * own) if budget >= own else None
    best = None
    for steps in range(1, budget + 1):
        try:
            calls = diffusion.calls_for_steps(sampler, steps, schedule)
        except Exception:  # noqa: BLE001  (e.g. PNDM's warm-up cannot do 1-2 steps)
            continue
        if calls <= budget:
            best = (steps, calls)
        elif best is not None:
            break
    return best


def _run_once(case: _Case, harness: str, sampler: str, schedule: str, steps: int | None, options: dict):
    """Returns (samples, counted nfe, reference endpoint)."""
    import inspect

    import torch

    from flowrepro.registry import SAMPLERS, SCHEDULES
    from flowrepro.samplers.nfe import NFECounter

    model = NFECounter(case.exact.velocity if harness == "flow" else case.exact.eps)
    if schedule == "searched":  # a schedule found by flowrepro.samplers.step_search on calibration noise
        from flowrepro.samplers.step_search import run_searched
        x, levels = run_searched(model, case, sampler, steps, options)
        return x, model.calls, case.reference(levels)
    if sampler == "dopri5":
        rtol = float(options["rtol"])
        if harness == "flow":
            x = SAMPLERS.get("dopri5")(model, case.noise, rtol=rtol, atol=rtol)
            return x, model.calls, case.reference(None)
        from torchdiffeq import odeint

        from flowrepro.samplers.diffusion import training_alphas_cumprod, vp_alpha_sigma
        model = NFECounter(case.exact.velocity)  # the PF-ODE in flow form needs the velocity, not eps
        acp = float(training_alphas_cumprod()[-1])
        s0 = ((1 - acp) / acp) ** 0.5
        scale0 = sum(vp_alpha_sigma(s0))
        grid = torch.tensor([1 / (1 + s0), 1.0], dtype=torch.float64)
        with torch.no_grad():  # the VP PF-ODE in its flow form (see reference_endpoint)
            x = odeint(lambda u, z: model(z, u), case.noise / scale0, grid, method="dopri5", rtol=rtol, atol=rtol)[-1]
        return x, model.calls, case.reference((s0, 0.0))
    if harness == "flow":
        if schedule == "boss":
            if steps not in case.boss_grids:
                case.boss_grids.update(_boss(case, options))
            times = case.boss_grids[steps]
        else:
            times = SCHEDULES.get(schedule)(steps)
        extra = {"data_var": case.data_var, **{k: v for k, v in options.items() if k in ("window", "cutoff")}}
        x = SAMPLERS.get(sampler)(model, case.noise, times, **(extra if sampler.endswith("_ts") else {}))
        return x, model.calls, case.reference(None)
    if sampler == "ddim_ts":
        x, levels = SAMPLERS.get(sampler)(model, case.noise, steps, case.data_var,
                                          **{k: v for k, v in options.items() if k in ("window", "cutoff")})
    elif schedule == "boss":  # Bellman-optimal training steps, handed to the scheduler as custom timesteps
        if not case.boss_grids:
            case.boss_grids.update(_boss(case, options))
        x, levels = SAMPLERS.get(sampler)(model, case.noise, steps, schedule, timesteps=case.boss_grids[steps])
    else:
        fn = SAMPLERS.get(sampler)
        named = _named_options(fn, options)
        if "ems" in inspect.signature(fn).parameters and "ems" not in named:
            named["ems"] = case.ems(options)
        x, levels = fn(model, case.noise, steps, schedule, **named)
    return x, model.calls, case.reference(levels)


def _named_options(fn, options: dict) -> dict:
    """The experiment options ``fn`` names as parameters (e.g. hb's order, bdia's gamma); a diffusers
    adapter names none, so its scheduler never sees them."""
    import inspect

    params = inspect.signature(fn).parameters
    skip = {"model", "x_t", "steps", "schedule", "timesteps"}
    return {k: v for k, v in options.items() if k in params and k not in skip
            and params[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def _boss(case: _Case, options: dict) -> dict[int, Any]:
    """BOSS grids for K <= 50, estimated on the case's own batch (flow times, or VP training steps)."""
    from flowrepro.samplers.boss_diffusion import boss_timesteps
    from flowrepro.samplers.schedules_extra import boss_grids

    n_fine = int(options.get("n_fine", 100))
    if case.harness == "vp":
        return boss_timesteps(case.exact.eps, case.boss_batch, 50, n_fine)
    return boss_grids(case.exact.velocity, case.boss_batch, 50, n_fine)


def run_sampler_experiment(experiment: dict, settings: dict, out_csv: str) -> None:
    """Run every (dataset, seed, sampler, schedule, NFE) of ``experiment``; write the tidy table."""
    import warnings

    import torch

    from flowrepro.io import write_table
    from flowrepro.metrics.divergence import divergence_rate, mixture_radius
    from flowrepro.metrics.wasserstein import exact_w2
    from flowrepro.samplers import bdia, diffusion, dpm_solver_v3, momentum, ode, schedules, schedules_extra, time_shift  # noqa: F401  (register)
    from flowrepro.samplers import dlg, step_search
    from flowrepro.samplers.guidance import guide, guided_cases

    warnings.filterwarnings("ignore", category=FutureWarning)
    harness = experiment.get("harness", "vp")
    if harness == "vp":
        import diffusers.utils.logging as dlog
        dlog.set_verbosity_error()  # scheduler config notices, once per scheduler build
    threads = torch.get_num_threads()
    torch.set_num_threads(int(settings.get("threads", 1)))
    metrics = experiment.get("metrics", ["solver_error", "w2", "mmd"])
    dist_nfe = set(experiment.get("distribution_nfe", [])) or None
    n, n_eval = int(settings.get("n_samples", 1000)), int(settings.get("n_eval", 500))
    base = {"experiment": experiment["id"], "method": "exact", "optimizer": "", "scale": settings.get("scale", "")}
    searched = step_search.load_or_search(experiment, settings)  # [] without a search: section
    rows: list[dict[str, Any]] = []
    try:
        for dataset, case_name, cfg_w in guided_cases(experiment):  # case_name: the rows' dataset (<dataset>_w<w> when guided)
            for seed in settings.get("seeds", [0]):
                case = _Case(dataset, seed, harness, n, n_eval)
                case.searched = step_search.entries_for(searched, dataset, seed)  # (search, nfe) -> entry
                guide(case, cfg_w, experiment)  # the guided model (and so its references) at scale w
                for metric, fn in (("w2", exact_w2), ("mmd", mmd_rbf)):
                    if metric in metrics:
                        rows.append({**base, "dataset": case_name, "sampler": "target", "schedule": "", "nfe": 0,
                                     "seed": seed, "metric": metric, "value": fn(case.target2, case.target), "wall_s": 0.0})
                for label, options in experiment["samplers"].items():
                    options = {**experiment.get("boss", {}), **(options or {})}  # BOSS sizes reach _boss
                    sampler = options.get("sampler", label)  # one registered sampler under several labels (hb 3.8, hb 3.5)
                    settings_list = ([("rtol=%g" % r, None, {**options, "rtol": r}) for r in options.get("rtol", [1e-3])]
                                     if sampler == "dopri5" else [("dlg", None, options)] if sampler == "dlg" else
                                     [(sch, b, options) for sch in options.get("schedules", experiment.get("schedules", ["uniform"]))
                                      for b in options.get("nfe", experiment.get("nfe", DEFAULT_NFE))])
                    done: set[tuple[str, int]] = set()
                    for schedule, budget, opts in settings_list:
                        plan = None if budget is None else _plan(harness, sampler, schedule, budget)
                        if budget is not None and (plan is None or (schedule, plan[1]) in done):
                            continue  # cannot fit, or repeats a count already measured
                        steps = None if plan is None else plan[0]
                        start = time.perf_counter()
                        try:
                            extra: dict[str, float] = {}  # metric rows a sampler reports itself (dlg: nfe_total, ...)
                            if sampler == "dlg":  # a distribution sampler (persistent chains): no PF-ODE reference
                                x, nfe, extra = dlg.dlg_for_case(case, opts, n_eval)
                                ref = None
                            else:
                                x, nfe, ref = _run_once(case, harness, sampler, schedule, steps, opts)
                        except Exception as error:  # noqa: BLE001  (a scheduler that cannot take this setting)
                            print(f"skip {dataset} {sampler} {schedule} nfe<={budget}: {type(error).__name__}: {error}")
                            continue
                        wall = time.perf_counter() - start
                        if (schedule, nfe) in done:
                            continue
                        done.add((schedule, nfe))
                        row = {**base, "dataset": case_name, "sampler": label, "schedule": schedule, "nfe": nfe,
                               "seed": seed, "wall_s": round(wall, 5)}
                        x64 = x.to(torch.float64)
                        if "solver_error" in metrics and ref is not None:  # dlg has no reference endpoint
                            rows.append({**row, "metric": "solver_error", "value": float((x64 - ref.to(torch.float64)).norm(dim=-1).mean())})
                        if "divergence_rate" in metrics:  # fraction of samples beyond 3x the data radius
                            rows.append({**row, "metric": "divergence_rate", "value": divergence_rate(x64.numpy(), mixture_radius(dataset))})
                        if "inversion_error" in metrics and sampler in bdia.ROUND_TRIPS:  # data -> noise -> data, same steps
                            data = torch.as_tensor(case.target, dtype=torch.float64)
                            trip = bdia.ROUND_TRIPS[sampler]
                            back = trip(case.exact.eps, data, steps, **_named_options(trip, opts))
                            rows.append({**row, "metric": "inversion_error", "value": bdia.inversion_error(data, back)})
                        if dist_nfe is None or nfe in dist_nfe or sampler in ("dopri5", "dlg"):
                            sample = x64[:n_eval].numpy()
                            if "w2" in metrics:
                                rows.append({**row, "metric": "w2", "value": exact_w2(sample, case.target)})
                            if "mmd" in metrics:
                                rows.append({**row, "metric": "mmd", "value": mmd_rbf(sample, case.target)})
                        for metric, value in extra.items():
                            rows.append({**row, "metric": metric, "value": value})
                rows.extend(step_search.search_rows(base, case_name, seed, case.searched))  # the search's own calls, apart from NFE
                for (ems_n, ems_k), (ems, ems_wall) in case.ems_runs.items():  # DPM-Solver-v3's statistics, apart from NFE
                    rows.append({**base, "dataset": case_name, "sampler": "ems", "schedule": f"n={ems_n},lambdas={ems_k}", "nfe": 0,
                                 "seed": seed, "metric": "ems_calls", "value": ems.calls, "wall_s": round(ems_wall, 5)})
    finally:
        torch.set_num_threads(threads)
    write_table(out_csv, rows)


def plot_sampler_experiment(metrics_csv: str, out_dir: str) -> list[str]:
    """solver_error (and w2) vs NFE, log-log: colour = sampler, line style = time grid; NFE-to-target table.

    The table gives, per dataset and sampler(/schedule), the least counted NFE whose seed-mean
    solver_error is at or below each target in TARGETS (blank: never reached on the grid).
    """
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from flowrepro.io import atomic_path, read_table, write_text

    frame = read_table(metrics_csv)
    frame = frame[frame["sampler"] != "target"].copy()
    frame["schedule"] = frame["schedule"].fillna("").astype(str)
    frame["line"] = np.where(frame["schedule"].isin(["uniform", ""]) | frame["schedule"].str.startswith("rtol"),
                             frame["sampler"], frame["sampler"] + "/" + frame["schedule"])
    frame["grid"] = np.where(frame["schedule"].str.startswith("rtol"), "adaptive", frame["schedule"])
    out, written = Path(out_dir), []
    out.mkdir(parents=True, exist_ok=True)
    for metric in ("solver_error", "w2"):
        part = frame[frame["metric"] == metric]
        if part.empty:
            continue
        grid = sns.relplot(data=part, x="nfe", y="value", hue="sampler", style="grid", col="dataset", kind="line",
                           markers=True, dashes=True, errorbar=None, facet_kws={"sharey": False}, height=3.6)
        grid.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=metric)
        for ext in ("png", "pdf"):
            path = out / f"{metric}_vs_nfe.{ext}"
            with atomic_path(path) as tmp:
                grid.savefig(tmp, format=ext, dpi=120)
            written.append(str(path))
        plt.close(grid.figure)
    errors = frame[frame["metric"] == "solver_error"]
    mean = errors.groupby(["dataset", "line", "nfe"], as_index=False)["value"].mean()
    table = []
    for (dataset, line), group in mean.groupby(["dataset", "line"]):
        entry = {"dataset": dataset, "sampler": line}
        for target in TARGETS:
            hit = group[group["value"] <= target]["nfe"]
            entry[f"nfe_to_{target:g}"] = int(hit.min()) if len(hit) else ""
        table.append(entry)
    import pandas as pd

    path = out / "nfe_to_target.csv"
    write_text(path, pd.DataFrame(table).to_csv(index=False))
    written.append(str(path))
    return written
