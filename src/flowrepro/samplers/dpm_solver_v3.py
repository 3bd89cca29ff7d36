"""DPM-Solver-v3 on the exact harness (Zheng, Lu, Chen, Zhu, "DPM-Solver-v3: Improved Diffusion ODE
Solver with Empirical Model Statistics", NeurIPS 2023, arXiv:2310.13268; official solver
thu-ml/DPM-Solver-v3, ``dpm_solver_v3.py``, class ``DPM_Solver_v3``). Our own code, written from the
paper (Sec. 3-4, App. C.1.1) with the official file as a reading reference.

In lambda = log(alpha / sigma) the VP probability-flow ODE is dx/dlambda = sigma^2 x - sigma eps (VP:
d log alpha / dlambda = sigma^2). v3 rewrites it with three per-lambda, per-dimension *empirical model
statistics* (EMS) l, s, b:

    f = (sigma eps - l x) / alpha,         f' = df/dlambda (total, along the ODE) ~ s f + b,
    l = E[sigma diag(d eps / d x)],        (s, b) = per-dimension least squares of f' on f,

the expectations over x_lambda = alpha x0 + sigma z, x0 from the data, z ~ N(0, I) (App. C.1.1).
With the cumulative integrals on the EMS grid (trapezoid rule, :func:`cumulative_trapezoid_exp`)

    L = int l,  S = int s,  I = int e^{L+S},  B = int e^{-S} b,  C = int e^{L+S} B,

and g the EMS-transformed f, g_j = e^{S_s - S_j} f_j - e^{S_s} (B_j - B_s), one step s -> t is

    x_t = (alpha_t / alpha_s) e^{L_s - L_t} x_s - alpha_t e^{-L_t - S_s} (I_t - I_s) g_s
          - alpha_t e^{-L_t} (C_t - C_s - B_s (I_t - I_s))
          - sum_{k>=1} alpha_t e^{L_s - L_t} [int_s^t e^{L+S-L_s-S_s} (lam - lam_s)^k / k!] g^(k)_s,

with g^(k) estimated from past points (a Vandermonde solve, or the divided differences of the
"pseudo-order"). The multistep predictor-corrector loop is the official ``sample``: the order grows
one step at a time, lower-order final steps, a corrector of the previous predictor order (plus one
with ``corrector_pseudo``) that reuses the model output at the corrected point through
N = sigma eps - l x, optionally only where t > 0.5 (``half``).

``degenerated=True`` (l = 1, s = b = 0) gives f = -x0_pred and the update is DPM-Solver++
multistep with the Taylor ("heun") second-order term, i.e. diffusers' DPMSolverMultistepScheduler
(algorithm_type dpmsolver++, solver_type heun): a correctness test (tests/test_dpm_solver_v3.py).

The statistics themselves (on the exact mixture and on a network): :mod:`flowrepro.samplers.model_statistics`.

Harness choices (deviations, see the experiment notes):

* The EMS grid is uniform in lambda from t = 999 to t = 0 of the DDPM training schedule (official:
  uniform from t_T to t_end, 1200 points); the time grid is DDIM's trailing grid (the grid of every
  harness scheduler), each level snapped to the nearest grid point as the official
  ``convert_to_indexes`` does (a shift of at most half a grid spacing; t = 999 is the grid's first
  point). :func:`ems_grid` can add given trailing levels to the grid, so that v3 runs on exactly the
  baselines' levels (the DPM-Solver++ equality test).
* Every harness baseline ends at s = 0 with a first-order data-prediction (denoising) last step, and
  the EMS do not exist at lambda = infinity, so by default the last step of v3 is that same denoising
  step, x0 = (x - sigma eps) / alpha from the last (corrected) point; ``denoise_to_zero=False`` ends
  at the grid's end (t = 0, s ~ 0.01) with a v3 step instead, as the official code does (t_end > 0).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from flowrepro.registry import SAMPLERS
from flowrepro.samplers.model_statistics import EMS, alpha_sigma, ems_grid


def cumulative_trapezoid_exp(a, x, b=None):
    """y_n = int_{x_0}^{x_n} b e^a dx by the trapezoid rule on the grid x (axis 0), y_0 = 0.

    ``a`` and ``b`` have shape (K, ...), ``x`` (K,) or broadcastable; e^a is scaled by its maximum
    over the grid (the official ``weighted_cumsumexp_trapezoid``), float64 numpy.
    """
    a = np.asarray(a, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).reshape((-1,) + (1,) * (a.ndim - 1))
    top = a.max(axis=0, keepdims=True)
    values = np.exp(a - top) * (1.0 if b is None else np.asarray(b, dtype=np.float64))
    pieces = 0.5 * (x[1:] - x[:-1]) * (values[1:] + values[:-1])
    return np.concatenate([np.zeros_like(values[:1]), np.cumsum(pieces, axis=0)], axis=0) * np.exp(top)


class _Integrals:
    """L, S, I, B, C of an EMS on its grid, and the per-step coefficients."""

    def __init__(self, ems: EMS) -> None:
        lam = np.asarray(ems.lambdas, dtype=np.float64)
        if np.any(np.diff(lam) <= 0):
            raise ValueError("EMS lambdas must be strictly ascending")
        zero = np.zeros_like(ems.l)
        self.lam = lam
        self.l = ems.l
        self.L = cumulative_trapezoid_exp(zero, lam, ems.l)
        self.S = cumulative_trapezoid_exp(zero, lam, ems.s)
        self.I = cumulative_trapezoid_exp(self.L + self.S, lam)
        self.B = cumulative_trapezoid_exp(-self.S, lam, ems.b)
        self.C = cumulative_trapezoid_exp(self.L + self.S, lam, self.B)

    def index(self, level: float) -> int:
        """Grid index nearest to VE sigma ``level`` (lambda = -log s); s = 0 is the grid's end."""
        lam = math.inf if level <= 0 else -math.log(level)
        return int(np.argmin(np.abs(self.lam - lam))) if math.isfinite(lam) else len(self.lam) - 1

    def high_order(self, i_s: int, i_t: int, k: int) -> np.ndarray:
        """int_{lam_s}^{lam_t} e^{L+S-L_s-S_s} (lam - lam_s)^k / k! by the trapezoid rule, shape (d,)."""
        a = self.L[i_s:i_t + 1] + self.S[i_s:i_t + 1] - self.L[i_s] - self.S[i_s]
        x = self.lam[i_s:i_t + 1]
        weight = ((x - x[0]) ** k / math.factorial(k)).reshape((-1,) + (1,) * (a.ndim - 1))  # any data shape
        return cumulative_trapezoid_exp(a, x, np.broadcast_to(weight, a.shape))[-1]


def _derivatives(lams: list[float], gs: list, pseudo: bool) -> list:
    """g^(1..n) at the newest point lams[0] from n + 1 points (Vandermonde solve, or divided differences)."""
    import torch

    n = len(gs) - 1
    if pseudo:
        table = [list(gs)]
        for i in range(1, n + 1):
            prev = table[-1]
            table.append([(prev[j] - prev[j + 1]) / (lams[j] - lams[i + j]) for j in range(n - i + 1)])
        return [table[i][0] * math.factorial(i) for i in range(1, n + 1)]
    vander = torch.tensor([[(lams[j] - lams[0]) ** i for i in range(1, n + 1)] for j in range(1, n + 1)],
                          dtype=torch.float64)
    rhs = torch.stack([g - gs[0] for g in gs[1:]]).reshape(n, -1)
    coeffs = torch.linalg.solve(vander, rhs).reshape((n,) + tuple(gs[0].shape))
    return [coeffs[i - 1] * math.factorial(i) for i in range(1, n + 1)]


def _update(ints: _Integrals, points: list[tuple], i_t: int, order: int, pseudo: bool):
    """One v3 step from points[0] = (x_s, eps_s, i_s) to grid index i_t, with derivatives from points[1:order]."""
    import torch

    def t(a):
        return torch.as_tensor(a, dtype=torch.float64)

    i_s = points[0][2]
    lam_s, lam_t = ints.lam[i_s], ints.lam[i_t]
    alpha_s, _ = alpha_sigma(float(lam_s))
    alpha_t, _ = alpha_sigma(float(lam_t))
    gs, lams = [], []
    for x_j, eps_j, i_j in points[:order]:
        a_j, s_j = alpha_sigma(float(ints.lam[i_j]))
        f_j = (s_j * eps_j - t(ints.l[i_j]) * x_j) / a_j
        gs.append(t(np.exp(ints.S[i_s] - ints.S[i_j])) * f_j - t(np.exp(ints.S[i_s]) * (ints.B[i_j] - ints.B[i_s])))
        lams.append(float(ints.lam[i_j]))
    L, S, I, B, C = ints.L, ints.S, ints.I, ints.B, ints.C
    x_s = points[0][0]
    x_t = (t(alpha_t / alpha_s * np.exp(L[i_s] - L[i_t])) * x_s
           - t(alpha_t * np.exp(-L[i_t] - S[i_s]) * (I[i_t] - I[i_s])) * gs[0]
           - t(alpha_t * np.exp(-L[i_t]) * (C[i_t] - C[i_s] - B[i_s] * (I[i_t] - I[i_s]))))
    if order > 1:
        for k, g_k in enumerate(_derivatives(lams, gs, pseudo), start=1):
            x_t = x_t - t(alpha_t * np.exp(L[i_s] - L[i_t]) * ints.high_order(i_s, i_t, k)) * g_k
    return x_t


@SAMPLERS.register("dpm_solver_v3")
def dpm_solver_v3(model: Callable, x_t, steps: int, schedule: str = "uniform", ems: EMS | None = None, order: int = 2,
                  use_corrector: bool = True, predictor_pseudo: bool = False, corrector_pseudo: bool = False,
                  lower_order_final: bool = True, half: bool = False, degenerated: bool = False,
                  denoise_to_zero: bool = True, n_calibration: int | None = None, ems_lambdas: int | None = None,
                  ems_batch: int | None = None):
    """DPM-Solver-v3 multistep predictor(-corrector), one model call per step.

    ``model(x_vp, s)`` is eps at VE sigma s; ``x_t`` VP noise at t = 999. The time grid is DDIM's
    trailing grid (:func:`~flowrepro.samplers.momentum.ddim_levels`, the grid of every harness
    scheduler), snapped to the EMS grid. ``ems`` comes from :func:`~flowrepro.samplers.model_statistics.ems_exact` (the experiment runner
    computes it once per dataset case from calibration draws); ``degenerated=True`` uses l = 1,
    s = b = 0 (DPM-Solver++). Options as the official ``DPM_Solver_v3.sample``: ``order`` (1-3),
    ``predictor_pseudo`` / ``corrector_pseudo`` (pseudo-order), ``use_corrector``, ``lower_order_final``,
    ``half`` (correct only where the continuous time t = (step + 1) / 1000 > 0.5). Returns (x at the
    final level, VP space; (first, final) VE sigma), like :func:`~flowrepro.samplers.diffusion.run_scheduler`.
    ``n_calibration``, ``ems_lambdas``, ``ems_batch``: the sizes of a trained model's EMS, read by
    ``flowrepro ems`` (:mod:`flowrepro.stages.ems`) from a sampling entry; unused here.
    """
    import torch

    from flowrepro.samplers.momentum import ddim_levels

    if schedule != "uniform":
        raise ValueError(f"schedule {schedule!r}: dpm_solver_v3 runs DDIM's trailing (uniform) grid only")
    if order not in (1, 2, 3):
        raise ValueError(f"order {order}: 1 to 3 supported")
    if ems is None:
        if not degenerated:
            raise ValueError("dpm_solver_v3 needs its EMS (ems_exact), or degenerated=True")
        ems = EMS.degenerate(ems_grid(4000, steps=(steps,)), x_t.shape[-1])
    elif degenerated:
        ems = EMS.degenerate(ems.lambdas, ems.l.shape[1])
    ints = _Integrals(ems)
    levels = ddim_levels(steps)[:-1]
    indexes = [ints.index(s) for s in levels] + [len(ints.lam) - 1]
    lam_of = [float(ints.lam[i]) for i in indexes]
    times = None
    if half:
        from flowrepro.samplers.diffusion import timestep_for_level
        times = [(timestep_for_level(math.exp(-lam)) + 1) / 1000 for lam in lam_of]
    x = x_t.to(torch.float64)
    history: list[tuple] = []  # (x, eps, grid index), oldest first
    p_order = 0
    with torch.no_grad():
        for step in range(1, steps + 1):
            i_s = indexes[step - 1]
            eps = model(x.to(x_t.dtype), math.exp(-lam_of[step - 1])).to(torch.float64)  # the one call of this step
            history.append((x, eps, i_s))
            del history[:-(order + 1)]
            if use_corrector and (not half or times[step - 1] > 0.5):
                c_order = p_order + int(corrector_pseudo)
                if c_order > 1:
                    points = [history[-2], history[-1]] + history[-3::-1]
                    x_new = _update(ints, points, i_s, c_order, corrector_pseudo)
                    _, sigma_s = alpha_sigma(lam_of[step - 1])
                    l_s = torch.as_tensor(ints.l[i_s])
                    kept = sigma_s * eps - l_s * x  # N = sigma eps - l x is kept at the corrected point
                    history[-1] = (x_new, (kept + l_s * x_new) / sigma_s, i_s)
            p_order = min(step, order)
            if lower_order_final:
                p_order = min(p_order, steps + 1 - step)
            if step == steps and denoise_to_zero:  # to s = 0: the data prediction of the last point
                x_last, eps_last, _ = history[-1]
                alpha_s, sigma_s = alpha_sigma(lam_of[step - 1])
                x = (x_last - sigma_s * eps_last) / alpha_s
            else:
                x = _update(ints, history[::-1], indexes[step], p_order, predictor_pseudo)
    final = 0.0 if denoise_to_zero else math.exp(-lam_of[-1])
    return x.to(x_t.dtype), (levels[0], final)


dpm_solver_v3.calls_per_step = 1
dpm_solver_v3.eps_sampler = True  # f(eps, x_t, steps, ...) at VE levels: runs on trained models too (trained_diffusion.is_eps_sampler)

__all__ = ["cumulative_trapezoid_exp", "dpm_solver_v3"]
