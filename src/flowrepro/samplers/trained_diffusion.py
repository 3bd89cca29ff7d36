"""diffusers schedulers on a trained flow model: any affine-path network seen as a VP eps-model.

For an affine path x = a(t) x0 + b(t) x1 with Gaussian noise x0, the noise level of time t is the
VE sigma s(t) = a(t) / b(t), the variable of :func:`flowrepro.samplers.diffusion.run_scheduler`. Its
VP point x_vp = alpha x1 + sigma x0 (alpha = 1 / sqrt(1 + s^2), sigma = s alpha) is the path point
rescaled: x_path = (b / alpha) x_vp. So a scheduler asking for eps at (x_vp, s) gets

    t = s^{-1}(s),   eps = model.epsilon((b(t) / alpha) x_vp, t)

(the model's own noise prediction, by conversion from its velocity where it predicts velocity).
One network call per eps; the NFE counter sees each. The level s(t) is inverted exactly where the path
can (``time_of_level``: the discrete DDPM path of a pretrained model, so each scheduler's level is
its training step), else on a fine grid.
"""
from __future__ import annotations

import math

import numpy as np

from flowrepro.samplers import diffusion


class EpsilonAtLevel:
    """``(x_vp, s) -> eps`` for diffusers schedulers, from a model with ``epsilon(x, t)`` and ``path``."""

    def __init__(self, model, grid: int = 20001) -> None:
        import torch

        self.model = model
        self.path = getattr(model, "path", None) or model.model.path
        if hasattr(self.path, "time_of_level"):  # inverted exactly: no grid to build
            return
        t = torch.linspace(1e-4, 1 - 1e-4, grid, dtype=torch.float64)
        a, b, _, _ = self.path.coefficients(t)
        log_s = (a / b).log().numpy()
        order = np.argsort(log_s)  # s(t) falls with t; np.interp wants increasing abscissae
        self.log_s, self.t = log_s[order], t.numpy()[order]

    def time_of_level(self, s: float) -> float:
        exact = getattr(self.path, "time_of_level", None)
        if exact is not None:
            return exact(s)
        return float(np.interp(math.log(max(s, 1e-12)), self.log_s, self.t))

    def __call__(self, x_vp, s: float):
        import torch

        t_value = self.time_of_level(s)
        t = torch.full((x_vp.shape[0],), t_value, dtype=x_vp.dtype, device=x_vp.device)
        _, b, _, _ = self.path.coefficients(t[:1].double())
        alpha = 1.0 / math.sqrt(1.0 + s * s)
        return self.model.epsilon(x_vp * (float(b) / alpha), t)


def steps_for_budget(name: str, nfe: int, schedule: str = "uniform") -> int:
    """The most steps whose planned model calls fit in ``nfe``."""
    best = None
    for steps in range(1, nfe + 1):
        try:
            calls = diffusion.calls_for_steps(name, steps, schedule)
        except ValueError:  # e.g. PNDM cannot set fewer steps than its Runge-Kutta warm-up needs
            continue
        if calls <= nfe:
            best = steps
    if best is None:
        raise ValueError(f"{name}: no number of steps fits a budget of {nfe} model calls")
    return best


def sample(model, x0, scheduler: str, steps: int, schedule: str = "uniform", timesteps: list[int] | None = None):
    """Samples from noise ``x0`` with diffusers ``scheduler``; returns data-space samples.

    ``timesteps``: custom descending training steps (a BOSS grid from :func:`boss_grids`).
    """
    x, _ = diffusion.run_scheduler(EpsilonAtLevel(model), x0, scheduler, steps, schedule, timesteps)
    return x


def boss_grids(model, batch, max_steps: int, n_fine: int = 100, substeps: int = 4) -> dict[int, list[int]]:
    """BOSS training steps for every K <= ``max_steps``, the squared local errors measured on the trained model."""
    from flowrepro.samplers.boss_diffusion import boss_timesteps

    return boss_timesteps(EpsilonAtLevel(model), batch, max_steps, n_fine, substeps)


def sample_time_shift(model, x0, steps: int, data_var: float, window: int = 30, cutoff: int = 300):
    """Time-shifted DDIM (:func:`flowrepro.samplers.time_shift.ddim_time_shift`) on a trained model."""
    from flowrepro.samplers.time_shift import ddim_time_shift

    x, _ = ddim_time_shift(EpsilonAtLevel(model), x0, steps, data_var, window, cutoff)
    return x
