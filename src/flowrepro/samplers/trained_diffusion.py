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

import contextlib
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


class EpsilonOfLambda:
    """``(x_vp, lam) -> eps`` differentiable in x and in lambda = -log s (forward mode), for the EMS.

    The level's time t(lambda) is found numerically (``time_of_level``), so its derivative is put in
    by hand: t = t0 + (lam - lam0) / (dlambda/dt)(t0), value t0 and the exact slope, with
    dlambda/dt = b'/b - a'/a from the path's own coefficients (lambda = log b - log a). Then, as
    :class:`EpsilonAtLevel`, eps = model.epsilon((b(t) / alpha(lam)) x_vp, t).
    """

    def __init__(self, model, grid: int = 20001) -> None:
        self.at_level = EpsilonAtLevel(model, grid)
        self.model, self.path = model, self.at_level.path

    def __call__(self, x_vp, lam):
        import torch

        lam0 = float(lam.detach()) if hasattr(lam, "detach") else float(lam)
        t0 = torch.tensor([self.at_level.time_of_level(math.exp(-lam0))], dtype=torch.float64)
        a0, b0, da0, db0 = self.path.coefficients(t0)
        t = t0 + (lam - lam0) / float(db0 / b0 - da0 / a0)  # value t0, derivative dt/dlambda
        _, b, _, _ = self.path.coefficients(t)
        alpha = torch.sqrt(torch.sigmoid(2 * torch.as_tensor(lam, dtype=torch.float64)))
        scale = (b / alpha).to(x_vp.dtype).reshape(-1, *([1] * (x_vp.dim() - 1)))
        return self.model.epsilon(x_vp * scale, t.to(x_vp.dtype).expand(x_vp.shape[0]))


def network_ems(model, data, lambdas, seed: int = 0, batch: int | None = None):
    """DPM-Solver-v3's EMS of a trained model (:func:`~flowrepro.samplers.model_statistics.ems_network`,
    Hutchinson l) from calibration data points ``data``; diffusers attention runs on the math SDPA
    kernel (the fused kernels have no forward-mode derivative)."""
    from flowrepro.samplers.model_statistics import ems_network

    with forward_ad_safe():
        return ems_network(EpsilonOfLambda(model), lambdas, data, seed=seed, batch=batch)


def _group_norm(self, x):
    """torch.nn.GroupNorm's forward written out (same values): torch's group_norm forward-mode rule
    views a tangent that convolutions leave non-contiguous and fails; reshape does not."""
    import torch

    y = x.reshape(x.shape[0], self.num_groups, -1)
    y = ((y - y.mean(-1, keepdim=True)) * torch.rsqrt(y.var(-1, unbiased=False, keepdim=True) + self.eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return y * self.weight.reshape(shape) + self.bias.reshape(shape) if self.affine else y


@contextlib.contextmanager
def forward_ad_safe():
    """Forward-mode AD through diffusers' UNet: the math SDPA kernel (the fused ones have no forward
    derivative) and the written-out GroupNorm, for the duration of the block."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    original = torch.nn.GroupNorm.forward
    torch.nn.GroupNorm.forward = _group_norm
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.nn.GroupNorm.forward = original


def is_eps_sampler(name: str) -> bool:
    """Whether the registered sampler ``name`` is an eps-model sampler ``f(eps, x_t, steps, schedule, **options)
    -> (x, levels)`` with ``eps(x_vp, s)`` at VE level s: it then runs on any trained model through
    :class:`EpsilonAtLevel` (:func:`sample_eps`)."""
    from flowrepro import pieces

    samplers = pieces.table("sampler")  # the built-in samplers registered (pieces.BUILTINS)
    return name in samplers and getattr(samplers.get(name), "eps_sampler", False)


def sample_eps(sampler, model, x0, steps: int, **options):
    """An eps-model ``sampler`` (:func:`is_eps_sampler`) on a trained model: VP noise x0 at t = 999 to data,
    ``steps`` steps of ``sampler.calls_per_step`` network calls each (the counter around ``model`` sees each)."""
    x, _ = sampler(EpsilonAtLevel(model), x0, steps, **options)
    return x


def float64_copy(model):
    """A float64 copy of a loaded model (trained: ``model.network``; pretrained: its ``network.unet``), for
    round trips whose exactness float32 rounding would hide (BDIA's inverse amplifies it by ~1/gamma a step)."""
    import copy

    import torch

    twin = copy.deepcopy(model)
    inner = getattr(twin, "network", None)
    module = inner if isinstance(inner, torch.nn.Module) else getattr(inner, "unet", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{type(model).__name__}: no network module to convert to float64")
    module.double()
    return twin


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
