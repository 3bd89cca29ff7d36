"""Training-free schedule search on the exact VP harness: AutoDiffusion timesteps and USF/S3 solver schedules.

Both searches run an evolutionary loop whose fitness is the solver error on CALIBRATION noise only,

    fitness(schedule) = mean_n || x_n(schedule) - x*_n ||,   x* = PF-ODE endpoint of the same noise
                                                             (reference_endpoint, dopri5 rtol 1e-8),

with the noise drawn from ``torch.Generator().manual_seed(CALIBRATION_OFFSET + seed)``: the harness's
evaluation noise comes from ``manual_seed(seed)`` (then BOSS's batch from the same generator), EMS
from 20_000 + seed, the target samples from numpy's 10_000 + seed, so the calibration draws are a
separate stream. The found schedule is then scored by the harness on its held-out evaluation noise.

``autodiffusion`` (Li et al., ICCV 2023; TIER2 §2.6): a K-subset of the 1000 training steps for a
diffusers scheduler that takes custom ``timesteps=`` (DDIM runs as EulerDiscreteScheduler, the same
update, as in boss_diffusion). The first step is fixed at t = 999, where every harness sampler starts
(the reference starts there too); K - 1 steps are searched. Mutation (each step redrawn with
probability 0.3) and crossover (K - 1 steps drawn from the union of two parents). The paper's fitness
is FID of a small batch; ours is the calibration solver error. The architecture half is dropped (the
exact model has no blocks to skip).

``s3`` (USF/S3, Liu et al., ICLR 2024; TIER2 §2.5), reduced to: per-step continuous timestep and per-step
Taylor order (1-3) of DPM-Solver++ multistep (data prediction), plus the analytic first step (AFS:
x0_hat = the data mean at t = 999, no model call). Official evolutionary settings where they apply
(configs/evo_search.yml): mutation probability 0.3 per decision, sigma 0.03 on t in [0, 1], order
distribution {1: .2, 2: .4, 3: .3} (4 dropped, renormalised), crossover probability 0.5. The official
S3 fits an MLP predictor of FID on sampled schedules and searches on it; here a candidate costs
~10 ms, so candidates are evaluated directly (no predictor). Prediction type, derivative estimator,
relaxation, corrector and skip are not searched (data prediction, backward differences, no corrector).

Per-step-order DPM-Solver++ (:func:`dpmpp_schedule`), with lambda = -log s (s = sigma / alpha, the VE
level), h = lambda_next - lambda_cur, m_i the data predictions at the last levels and
r_k = (lambda_{i-k} - lambda_{i-k-1}) / h:

    order 1: x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) m_0
    order 2: ... - 0.5 alpha' (e^{-h} - 1) D1,          D1 = (m_0 - m_1) / r_0           (diffusers midpoint)
    order 3: ... + alpha' ((e^{-h} - 1)/h + 1) D1' - alpha' ((e^{-h} - 1 + h)/h^2 - 0.5) D2   (diffusers 3M)

the order capped by the available history, and the final step to s = 0 first order (x' = m_0), as
diffusers' lower_order_final / final_sigmas_type zero. NFE is counted by the caller's NFECounter.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

CALIBRATION_OFFSET = 30_000  #: calibration noise seed = CALIBRATION_OFFSET + seed (see module docstring)
T_MAX = 999
ORDER_PROBS = {1: 0.2 / 0.9, 2: 0.4 / 0.9, 3: 0.3 / 0.9}  # official {1:.2, 2:.4, 3:.3, 4:.1} without 4


def level_of_timestep(t: float) -> float:
    """VE sigma s at a continuous training timestep (log-sigma interpolation, inverse of timestep_for_level)."""
    from flowrepro.samplers.diffusion import _training_log_sigmas

    log_sigmas = _training_log_sigmas()
    return float(math.exp(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas)))


def dpmpp_schedule(model: Callable, x, levels: list[float], orders: list[int], x0_first=None):
    """DPM-Solver++ multistep with a per-step order over VE levels (descending; a final 0 means denoise).

    ``x0_first``: the analytic first step's data prediction (no model call at levels[0]); None: call.
    Returns x at levels[-1] (VP space).
    """
    import torch

    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels must decrease strictly: {levels}")
    history: list[Any] = []  # data predictions, newest first
    lambdas: list[float] = []
    with torch.no_grad():
        for i in range(len(levels) - 1):
            s, s_next = float(levels[i]), float(levels[i + 1])
            alpha, sigma = 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)
            if i == 0 and x0_first is not None:
                m = x0_first.expand_as(x).to(x.dtype)
            else:
                m = (x - sigma * model(x, s)) / alpha
            history.insert(0, m)
            lambdas.insert(0, -math.log(s))
            if s_next <= 0.0:  # final denoising step: first order to s = 0
                x = m
                break
            a_n, sig_n = 1 / math.sqrt(1 + s_next * s_next), s_next / math.sqrt(1 + s_next * s_next)
            h = -math.log(s_next) - lambdas[0]
            em1 = math.expm1(-h)
            order = min(int(orders[i]), len(history))
            x_new = (sig_n / sigma) * x - a_n * em1 * history[0]
            if order == 2:
                r0 = (lambdas[0] - lambdas[1]) / h
                x_new = x_new - 0.5 * a_n * em1 * (history[0] - history[1]) / r0
            elif order >= 3:
                r0, r1 = (lambdas[0] - lambdas[1]) / h, (lambdas[1] - lambdas[2]) / h
                d1_0, d1_1 = (history[0] - history[1]) / r0, (history[1] - history[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_new = x_new + a_n * (em1 / h + 1) * d1 - a_n * ((em1 + h) / h ** 2 - 0.5) * d2
            x = x_new
            del history[3:], lambdas[3:]
    return x


def run_entry(model: Callable, x, entry: dict, data_mean=None):
    """Sample noise ``x`` with a schedule-file entry; returns (x, (first level, final level))."""
    if entry["variant"] == "s3":
        levels = [level_of_timestep(t) for t in entry["timesteps"]] + [0.0]
        x0 = None
        if entry.get("afs"):
            import torch
            x0 = torch.as_tensor(data_mean, dtype=x.dtype, device=x.device)
        return dpmpp_schedule(model, x, levels, entry["orders"], x0), (levels[0], 0.0)
    from flowrepro.samplers.diffusion import run_scheduler

    return run_scheduler(model, x, entry["sampler"], len(entry["timesteps"]), timesteps=entry["timesteps"])


class CalibrationFitness:
    """Calibration solver error of a schedule entry, mean_n ||x_n(entry) - reference_n|| over flattened
    points, from ``noise`` (VP space at t = 999) with the counted eps-model ``model`` (``model.calls``:
    the search's own calls); ``mean`` is the data mean AFS starts from."""

    def __init__(self, model, noise, reference, mean) -> None:
        self.model, self.noise, self.ref, self.mean = model, noise, reference, mean
        self.cache: dict[str, float] = {}

    def __call__(self, entry: dict) -> float:
        key = repr(sorted(entry.items()))
        if key not in self.cache and np.any(np.diff(entry["timesteps"]) >= 0):
            self.cache[key] = float("inf")  # a repeated level is no schedule (h = 0)
        if key not in self.cache:
            x, _ = run_entry(self.model, self.noise, entry, self.mean)
            value = float((x - self.ref).flatten(1).norm(dim=1).mean())
            self.cache[key] = value if math.isfinite(value) else float("inf")
        return self.cache[key]


def calibration_noise(shape: tuple[int, ...], seed: int, n_calibration: int, dtype=None):
    """The search's draws: ``manual_seed(CALIBRATION_OFFSET + seed)``, apart from every evaluation stream."""
    import torch

    generator = torch.Generator().manual_seed(CALIBRATION_OFFSET + seed)
    return torch.randn(n_calibration, *shape, dtype=dtype or torch.float32, generator=generator)


def exact_fitness(exact, seed: int, n_calibration: int) -> CalibrationFitness:
    """The exact harness's fitness: the reference is the PF-ODE endpoint (dopri5, no model call)."""
    import torch

    from flowrepro.samplers.diffusion import reference_endpoint
    from flowrepro.samplers.nfe import NFECounter

    noise = calibration_noise((exact.dim,), seed, n_calibration, torch.float64)
    reference = reference_endpoint(exact, noise, level_of_timestep(T_MAX), [0.0])[0.0]
    return CalibrationFitness(NFECounter(exact.eps), noise, reference, exact.gmm.weights @ exact.gmm.means)


def network_fitness(eps_at_level, shape: tuple[int, ...], seed: int, n_calibration: int, device="cpu",
                    reference_steps: int = 100) -> CalibrationFitness:
    """A trained network's fitness (``eps_at_level(x_vp, s)``, e.g. :class:`~flowrepro.samplers.trained_diffusion.EpsilonAtLevel`):
    the reference is the network's own DPM-Solver++(2M) solve in ``reference_steps`` steps, and AFS's data
    mean the mean of its data prediction at t = 999 over the draws (a network has no known mean); both
    are model calls of the search, counted."""
    from flowrepro.samplers.diffusion import run_scheduler
    from flowrepro.samplers.nfe import NFECounter

    counted = NFECounter(eps_at_level)
    noise = calibration_noise(shape, seed, n_calibration).to(device)
    reference, _ = run_scheduler(counted, noise, "dpmsolver++2m", reference_steps)
    s = level_of_timestep(T_MAX)
    alpha, sigma = 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)
    mean = ((noise - sigma * counted(noise, s)) / alpha).mean(dim=0)
    return CalibrationFitness(counted, noise, reference, mean)


def _uniform_ts(k: int) -> list[float]:
    """DDIM's trailing spacing from 999 (what the baselines use)."""
    return [float(t) for t in np.round(np.arange(1000, 0, -1000 / k)).astype(int) - 1]


def _s3_random(rng, budget: int) -> dict:
    afs = bool(rng.random() < 0.7)  # official: no_afs 0.3, zero/average x0 0.7 (we use the mean)
    k = budget + int(afs)
    inner = sorted(rng.uniform(0, T_MAX, size=k - 1).tolist(), reverse=True)
    orders = rng.choice(list(ORDER_PROBS), size=k, p=list(ORDER_PROBS.values())).tolist()
    return {"variant": "s3", "timesteps": [float(T_MAX)] + inner, "orders": [int(o) for o in orders], "afs": afs}


def _s3_mutate(rng, entry: dict, budget: int) -> dict:
    afs = (not entry["afs"]) if rng.random() < 0.3 else entry["afs"]
    k = budget + int(afs)
    ts = np.asarray(entry["timesteps"][1:], dtype=float) / T_MAX
    if len(ts) < k - 1:  # AFS switched on: one step more
        ts = np.append(ts, ts[-1] / 2 if len(ts) else 0.5)
    ts = ts[:k - 1]
    moved = rng.random(len(ts)) < 0.3
    ts = np.clip(ts + moved * rng.normal(0, 0.03, len(ts)), 1e-4, 1 - 1e-4)
    orders = list(entry["orders"]) + [2] * k
    orders = [int(rng.choice(list(ORDER_PROBS), p=list(ORDER_PROBS.values()))) if rng.random() < 0.3 else int(o)
              for o in orders[:k]]
    return {"variant": "s3", "timesteps": [float(T_MAX)] + sorted((ts * T_MAX).tolist(), reverse=True),
            "orders": orders, "afs": bool(afs)}


def _s3_cross(rng, a: dict, b: dict) -> dict:
    if a["afs"] != b["afs"]:
        return dict(a)
    pick = rng.random(len(a["orders"])) < 0.5
    ts = [x if p else y for x, y, p in zip(a["timesteps"], b["timesteps"], pick)]
    return {"variant": "s3", "timesteps": [float(T_MAX)] + sorted(ts[1:], reverse=True),
            "orders": [int(x if p else y) for x, y, p in zip(a["orders"], b["orders"], pick)], "afs": a["afs"]}


def _ad_random(rng, k: int, sampler: str) -> dict:
    inner = sorted(rng.choice(T_MAX, size=k - 1, replace=False).tolist(), reverse=True)
    return {"variant": "autodiffusion", "sampler": sampler, "timesteps": [T_MAX] + [int(t) for t in inner]}


def _ad_mutate(rng, entry: dict) -> dict:
    inner = set(entry["timesteps"][1:])
    for t in list(inner):
        if rng.random() < 0.3:
            inner.discard(t)
            choices = [c for c in range(T_MAX) if c not in inner]
            inner.add(int(rng.choice(choices)))
    return {**entry, "timesteps": [T_MAX] + sorted(inner, reverse=True)}


def _ad_cross(rng, a: dict, b: dict) -> dict:
    union = sorted(set(a["timesteps"][1:]) | set(b["timesteps"][1:]))
    inner = rng.choice(union, size=len(a["timesteps"]) - 1, replace=False).tolist()
    return {**a, "timesteps": [T_MAX] + sorted((int(t) for t in inner), reverse=True)}


def evolve(fitness: Callable[[dict], float], initial: list[dict], mutate: Callable, cross: Callable, rng,
           generations: int, population: int, parents: int) -> tuple[dict, list[float]]:
    """Elitist evolution: keep the ``parents`` best, fill with crossover (prob 0.5) then mutation.

    Returns (best entry, best fitness after each generation, generation 0 = the initial population).
    """
    pool = sorted(initial, key=fitness)[:population]
    history = [fitness(pool[0])]
    for _ in range(generations):
        top = pool[:parents]
        children = []
        while len(children) < population - len(top):
            a = top[rng.integers(len(top))]
            child = cross(rng, a, top[rng.integers(len(top))]) if rng.random() < 0.5 else a
            children.append(mutate(rng, child))
        pool = sorted(top + children, key=fitness)
        history.append(fitness(pool[0]))
    return pool[0], history


def search(exact, seed: int, variant: str, budget: int, options: dict) -> dict:
    """One search for ``budget`` counted NFE on the calibration noise of ``seed``; a schedule-file entry."""
    start = time.perf_counter()
    fit = exact_fitness(exact, seed, int(options.get("n_calibration", 256)))
    return search_with(fit, seed, variant, budget, options, start)


def search_with(fit: CalibrationFitness, seed: int, variant: str, budget: int, options: dict, start: float | None = None) -> dict:
    """:func:`search` with a given fitness (the exact harness's, or a trained network's: :func:`network_fitness`)."""
    start = time.perf_counter() if start is None else start
    rng = np.random.default_rng(CALIBRATION_OFFSET + seed)
    population, generations = int(options.get("population", 20)), int(options.get("generations", 10))
    parents = int(options.get("parents", population // 2))
    if variant == "s3":
        orders = ([3] * budget + [2, 1])[-budget:] if budget >= 3 else [min(2, budget)] * budget  # DPM-Solver++(3M)'s
        base = {"variant": "s3", "timesteps": _uniform_ts(budget), "orders": orders, "afs": False}
        initial = [base] + [_s3_random(rng, budget) for _ in range(population - 1)]
        best, hist = evolve(fit, initial, lambda r, e: _s3_mutate(r, e, budget), _s3_cross, rng, generations,
                            population, parents)
    elif variant == "autodiffusion":
        sampler = options.get("sampler", "euler_discrete")
        initial = [_ad_random(rng, budget, sampler) for _ in range(population)]
        best, hist = evolve(fit, initial, _ad_mutate, _ad_cross, rng, generations, population, parents)
    else:
        raise ValueError(f"unknown search variant {variant!r} (s3 or autodiffusion)")
    calls = fit.model.calls  # every model call of the search (the harness's dopri5 reference calls no model)
    return {**best, "fitness": hist[-1], "fitness_history": hist, "search_calls": calls,
            "evaluations": len(fit.cache), "n_calibration": int(fit.noise.shape[0]),
            "calibration_seed": CALIBRATION_OFFSET + seed, "wall_s": round(time.perf_counter() - start, 3)}


def run_searches(experiment: dict, seeds: list[int]) -> list[dict]:
    """Every (dataset, seed, search name, NFE budget) of the experiment's ``search:`` section."""
    from flowrepro.data.gmm import mixture
    from flowrepro.samplers.diffusion import ExactMixture

    entries = []
    for dataset in experiment.get("datasets", ["gmm2d"]):
        exact = ExactMixture(mixture(dataset))
        for seed in seeds:
            for name, options in (experiment.get("search") or {}).items():
                for budget in options.get("nfe", [5]):
                    found = search(exact, seed, options["variant"], int(budget), options)
                    entries.append({"dataset": dataset, "seed": int(seed), "search": name, "nfe": int(budget), **found})
    return entries


def _digest(entries: list[dict]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def write_schedules(path: str, entries: list[dict]) -> None:
    """The schedule file: JSON (no pickle), written atomically, with the sha256 of its entries."""
    import json

    from flowrepro.io import write_text

    data = {"format": "flowrepro-schedules-1", "sha256": _digest(entries), "entries": entries}
    write_text(path, json.dumps(data, indent=1) + "\n")


def read_schedules(path: str) -> list[dict]:
    """The entries of a schedule file, refused (ChecksumMismatch) if they no longer match the recorded sha256."""
    import json
    from pathlib import Path

    from flowrepro.io import ChecksumMismatch

    data = json.loads(Path(path).read_text())
    if data.get("format") != "flowrepro-schedules-1":
        raise ValueError(f"{path}: not a flowrepro schedule file")
    if _digest(data["entries"]) != data.get("sha256"):
        raise ChecksumMismatch(f"{path}: entries do not match the sha256 recorded in the file")
    return data["entries"]


def entries_for(entries: list[dict], dataset: str, seed: int) -> dict[tuple[str, int], dict]:
    """(search name, nfe) -> entry for one (dataset, seed)."""
    return {(e["search"], int(e["nfe"])): e for e in entries if e["dataset"] == dataset and int(e["seed"]) == int(seed)}


def describe(entry: dict) -> str:
    """One log line with the found schedule."""
    extra = f" orders={entry['orders']} afs={entry['afs']}" if entry["variant"] == "s3" else f" sampler={entry['sampler']}"
    ts = [round(float(t), 1) for t in entry["timesteps"]]
    return (f"{entry['dataset']} seed={entry['seed']} {entry['search']} nfe={entry['nfe']}: timesteps={ts}{extra}"
            f" fitness={entry['fitness']:.4g} (from {entry['fitness_history'][0]:.4g}) search_calls={entry['search_calls']}")


def load_or_search(experiment: dict, settings: dict) -> list[dict]:
    """The harness's schedule entries: settings["schedules_file"] if given, else searched here (deterministic)."""
    if not experiment.get("search"):
        return []
    path = settings.get("schedules_file")
    entries = read_schedules(path) if path else run_searches(experiment, list(settings.get("seeds", [0])))
    for entry in entries:
        print("searched schedule:", describe(entry))
    return entries


def run_searched(model: Callable, case, sampler: str, budget: int, options: dict):
    """The harness hook (schedule ``searched``): run the entry of options["search"] at this budget."""
    entry = getattr(case, "searched", {}).get((options.get("search"), int(budget)))
    if entry is None:
        raise ValueError(f"no searched schedule {options.get('search')!r} at nfe {budget} (run `flowrepro search`)")
    if entry["variant"] == "autodiffusion" and entry["sampler"] != sampler:
        raise ValueError(f"search {entry['search']!r} was run for {entry['sampler']}, not {sampler}")
    return run_entry(model, case.noise, entry, case.gmm.weights @ case.gmm.means)


def search_rows(base: dict, dataset: str, seed: int, searched: dict) -> list[dict]:
    """``search_calls`` rows: the search's own model calls (sampler = search name, nfe = the budget)."""
    return [{**base, "dataset": dataset, "sampler": name, "schedule": entry["variant"], "nfe": nfe, "seed": seed,
             "metric": "search_calls", "value": entry["search_calls"], "wall_s": entry["wall_s"]}
            for (name, nfe), entry in sorted(searched.items())]
