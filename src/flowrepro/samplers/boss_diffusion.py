"""BOSS time steps for diffusers schedulers: the Bellman-optimal grid of a VP eps-model.

BOSS (Nguyen et al., ICLR 2024) is stated for a flow ODE. A VP eps-model has one: with
s = sigma / alpha its VE noise level, u = 1 / (1 + s) and z = x_vp / (alpha + sigma), the
probability-flow ODE is the linear-path flow ODE dz/du = v(z, u) with

    v(z, u) = (z - eps(x_vp, s)) / u,        x_vp = (alpha + sigma) z,

since z = u x1 + (1 - u) x0 and eps predicts x0 (so x1_hat = (z - (1 - u) eps) / u, v = x1_hat - eps).
One Euler step of this ODE in u is exactly one DDIM step. So the BOSS dynamic programme of
:mod:`flowrepro.samplers.schedules_extra` runs unchanged on the fine grid of the scheduler's own
training steps (t = 999 ... 0, mapped to u), with the batch-mean squared DDIM/Euler one-step local
error in z as its cost (the official code's squared L2, sum over dimensions, mean over samples),
and the chosen K training steps are handed to any scheduler that accepts custom ``timesteps``
(DPM-Solver multistep and singlestep, Euler and Heun discrete). Higher-order schedulers get the
grid that is optimal for the first-order step: the paper's own choice of cost (Euler).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def flow_velocity_of_eps(eps_model: Callable) -> Callable:
    """``v(z, u)`` of the linear-path form of the PF-ODE of ``eps_model(x_vp, s)``."""
    from flowrepro.samplers.diffusion import vp_alpha_sigma

    def velocity(z, u):
        u = float(u.reshape(-1)[0]) if hasattr(u, "reshape") else float(u)
        s = (1.0 - u) / u
        alpha, sigma = vp_alpha_sigma(s)
        return (z - eps_model(z * (alpha + sigma), s)) / u

    return velocity


def boss_timesteps(eps_model: Callable, batch, max_steps: int, n_fine: int = 100,
                   substeps: int = 4) -> dict[int, list[int]]:
    """Bellman-optimal descending training steps for every K <= ``max_steps``.

    ``batch`` is VP noise at the first training step (keep it apart from the evaluation noise).
    The fine grid is ``n_fine + 1`` training steps evenly spaced from 999 to 0; the K chosen
    starting steps of the K jumps are returned (the scheduler's final jump goes to its last level).
    """
    from flowrepro.samplers.diffusion import training_alphas_cumprod, vp_alpha_sigma
    from flowrepro.samplers.schedules_extra import boss_grids

    table = training_alphas_cumprod()
    steps = np.unique(np.round(np.linspace(len(table) - 1, 0, n_fine + 1)).astype(int))[::-1]  # descending
    levels = np.sqrt((1.0 - table[steps]) / table[steps])
    fine = 1.0 / (1.0 + levels)  # increasing flow time u
    z0 = batch / sum(vp_alpha_sigma(float(levels[0])))  # x_vp / (alpha + sigma) at the first level
    grids = boss_grids(flow_velocity_of_eps(eps_model), z0, max_steps, substeps=substeps, fine=fine)
    return {k: [int(steps[np.searchsorted(fine, u)]) for u in grid[:-1]] for k, grid in grids.items()}
