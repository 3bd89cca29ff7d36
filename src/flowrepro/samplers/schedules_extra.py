"""More time grids 0 = t_0 < ... < t_K = 1 for flow solvers: Karras/EDM, uniform logSNR, BOSS.

On the linear path x_t = (1 - t) x0 + t x1 the noise-to-signal ratio is s = (1 - t) / t (the
"VE sigma" of EDM) and the log signal-to-noise ratio is lambda = 2 log(t / (1 - t)), so grids
designed in sigma or logSNR map to flow time by t = 1 / (1 + s) = sigmoid(lambda / 2). The end
points are pinned to t = 0 (pure noise, where the flow starts) and t = 1 (data).

The diffusers harness (:mod:`flowrepro.samplers.diffusion`) gets the same families through the
schedulers' own flags (``use_karras_sigmas``, ``use_lu_lambdas``).

BOSS (Nguyen et al., "Bellman Optimal Step-size Straightening of Flow-Matching Models", ICLR 2024):
on a fine uniform grid tau_0 < ... < tau_N, a reference trajectory x(tau_i) of a small batch is solved
finely once; the cost of a jump i -> j is the batch-mean squared local error of one solver step,
c(i, j) = E_n || x_n(tau_j) - step(x_n(tau_i), tau_i, tau_j) ||^2 (squared L2 summed over every
dimension of a sample, averaged over the n calibration samples), and dynamic programming
V_k(j) = min_{i<j} V_{k-1}(i) + c(i, j) picks the K-step path 0 -> N of least summed local error.
This is the official code's cost (nguyenngocbaocmt02/BOSS, ImageGeneration/sampling.py,
``get_bellman_disc``: ``cost_fn = torch.sum(torch.square(sp1 - sp2))`` over the batch, accumulated and
divided by the sample count, with K_max = 100). There the reference x(tau_i) is the model's own
100-step Euler trajectory, and the jump i -> j is x(tau_i) + (tau_j - tau_i) v(x(tau_i), tau_i) with
the velocity that trajectory already computed: ``reference="euler"``, the default, reproduces exactly
that (N model calls in all). ``reference="rk4"`` (``substeps`` RK4 steps per fine interval) measures
the local errors against a finer solve instead; on the exact mixtures it did no better (the official
Euler reference beat uniform at K=4 on gmm2d in 3 of 3 seeds, RK4 in 2 of 3).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from flowrepro.registry import SCHEDULES

#: EDM's range of sigma (Karras et al. 2022), used by both the Karras and the logSNR grids.
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _pin(times: np.ndarray) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64).copy()
    times[0], times[-1] = 0.0, 1.0  # start at the exact noise distribution, end at data
    return times


@SCHEDULES.register("karras")
def karras(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> np.ndarray:
    """EDM grid s_i = (s_max^(1/rho) + i/(K-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i < K, then s_K = 0.

    In flow time t_i = 1 / (1 + s_i) with t_0 pinned to 0 (s = inf) and t_K = 1 (s = 0).
    """
    if steps == 1:
        return np.array([0.0, 1.0])
    ramp = np.linspace(0.0, 1.0, steps)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return _pin(np.concatenate([1.0 / (1.0 + sigmas), [1.0]]))


@SCHEDULES.register("logsnr")
def logsnr(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """Uniform in lambda = -2 log s from -2 log s_max to -2 log s_min; t = sigmoid(lambda / 2)."""
    lam = np.linspace(-2 * np.log(sigma_max), -2 * np.log(sigma_min), steps + 1)
    return _pin(1.0 / (1.0 + np.exp(-lam / 2)))


def _reference_trajectory(velocity: Callable, x0, fine: np.ndarray, substeps: int):
    """x(tau_i) on the fine grid by RK4 with ``substeps`` steps per fine interval."""
    from flowrepro.samplers.ode import integrate_fixed

    points, x = [x0], x0
    for a, b in zip(fine[:-1], fine[1:]):
        x = integrate_fixed(velocity, x, np.linspace(a, b, substeps + 1), "rk4")
        points.append(x)
    return points


def _squared_error(a, b) -> float:
    """E_n ||a_n - b_n||^2: squared error summed over each sample's dimensions, mean over samples (BOSS's cost)."""
    return float((a - b).pow(2).flatten(1).sum(1).mean())


def bellman_costs(velocity: Callable, x0, n_fine: int = 100, substeps: int = 4, method: str = "euler",
                  fine: np.ndarray | None = None, reference: str = "euler"):
    """Fine grid and the (N+1, N+1) matrix of mean squared one-step local errors c(i, j), i < j (inf elsewhere).

    ``fine`` overrides the uniform grid on [0, 1] (e.g. the flow times of a diffusion's training steps).
    ``reference``: "euler" (the official code's: one Euler step per fine interval, ``substeps`` ignored,
    its velocities reused for the jumps, so N model calls in all) or "rk4" (``substeps`` RK4 steps per
    fine interval).
    """
    import torch

    from flowrepro.samplers.ode import integrate_fixed

    if reference not in ("rk4", "euler"):
        raise ValueError(f"BOSS reference must be 'rk4' or 'euler', not {reference!r}")
    fine = np.linspace(0.0, 1.0, n_fine + 1) if fine is None else np.asarray(fine, dtype=np.float64)
    n_fine = len(fine) - 1

    def v_at(i: int):
        return velocity(ref[i], torch.full((len(x0),), fine[i], dtype=x0.dtype, device=x0.device))

    cost = np.full((n_fine + 1, n_fine + 1), np.inf)
    with torch.no_grad():
        if reference == "euler":  # x(tau_{i+1}) = x(tau_i) + (tau_{i+1} - tau_i) v_i, as sde.euler_solver
            ref, vs = [x0], []
            for i in range(n_fine):
                vs.append(v_at(i))
                ref.append(ref[i] + (fine[i + 1] - fine[i]) * vs[i])
        else:
            ref, vs = _reference_trajectory(velocity, x0, fine, substeps), None
        for i in range(n_fine):
            if method == "euler":  # one velocity call serves every jump from i
                v = vs[i] if vs is not None else v_at(i)
                for j in range(i + 1, n_fine + 1):
                    cost[i, j] = _squared_error(ref[j], ref[i] + (fine[j] - fine[i]) * v)
            else:
                for j in range(i + 1, n_fine + 1):
                    x = integrate_fixed(velocity, ref[i], np.array([fine[i], fine[j]]), method)
                    cost[i, j] = _squared_error(ref[j], x)
    return fine, cost


def bellman_schedules(fine: np.ndarray, cost: np.ndarray, max_steps: int) -> dict[int, np.ndarray]:
    """Optimal K-step grids for every K <= max_steps by one dynamic programme over the cost matrix."""
    n = len(fine) - 1
    value = np.full((max_steps + 1, n + 1), np.inf)
    parent = np.zeros((max_steps + 1, n + 1), dtype=int)
    value[0, 0] = 0.0
    for k in range(1, max_steps + 1):
        totals = value[k - 1][:, None] + cost  # (from i, to j)
        parent[k] = np.argmin(totals, axis=0)
        value[k] = totals[parent[k], np.arange(n + 1)]
    grids = {}
    for k in range(1, min(max_steps, n) + 1):
        path, j = [n], n
        for level in range(k, 0, -1):
            j = parent[level, j]
            path.append(j)
        grids[k] = fine[np.array(path[::-1])]
    return grids


def boss_grids(velocity: Callable, x0, max_steps: int, n_fine: int = 100, substeps: int = 4, method: str = "euler",
               fine: np.ndarray | None = None, reference: str = "euler") -> dict[int, np.ndarray]:
    """Bellman-optimal grids for every K <= ``max_steps``, estimated once on the batch ``x0``."""
    fine, cost = bellman_costs(velocity, x0, n_fine, substeps, method, fine, reference)
    return bellman_schedules(fine, cost, max_steps)


@SCHEDULES.register("boss")
def boss(steps: int, velocity: Callable, x0, n_fine: int = 100, substeps: int = 4, method: str = "euler") -> np.ndarray:
    """Bellman-optimal K-step grid for ``velocity`` estimated on the batch ``x0`` (keep it apart from eval noise)."""
    return boss_grids(velocity, x0, steps, n_fine, substeps, method)[steps]
