"""Time-shift sampling against exposure bias (Li et al., "Alleviating Exposure Bias in Diffusion
Models through Sampling with Shifted Time Steps", ICLR 2024).

A sampler's intermediate x_{t_i} need not have the statistics of the forward marginal at t_i
(training error, solver error). The forward variance is known: per coordinate, for data variance
v_data = tr Cov(x1) / d,

    VP diffusion:  V(t) = alpha_t^2 v_data + sigma_t^2,      linear flow:  V(t) = t^2 v_data + (1 - t)^2.

So at each step after the first we measure the batch variance v_hat of the current x (mean over
coordinates) and evaluate the model at the time t_s within a window around the nominal t_i whose
V(t_s) is closest to v_hat; the update uses t_s as the current time and still lands on the nominal
next time t_{i+1}. This is a wrapper around any one-step sampler ``step(model, x, t_now, t_next)``.
Deviation: the paper measures the variance per image over pixels; a 2-d or 16-d sample is too small
for that, so we use the batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from flowrepro.registry import SAMPLERS


def shifted_times(x, nominal: float, candidates: np.ndarray, expected_var: Callable[[np.ndarray], np.ndarray]) -> float:
    """The candidate time whose forward variance is closest to the batch variance of ``x``."""
    v_hat = float(x.var(dim=0).mean())
    gap = np.abs(expected_var(candidates) - v_hat)
    return float(candidates[int(np.argmin(gap))]) if len(candidates) else nominal


def time_shift(step: Callable, model: Callable, x, times: Sequence[float], window: Callable[[int], np.ndarray],
               expected_var: Callable[[np.ndarray], np.ndarray]):
    """Run ``step`` over the nominal ``times`` with time-shifted model evaluations (first step unshifted)."""
    import torch

    with torch.no_grad():
        for i, (t_now, t_next) in enumerate(zip(times[:-1], times[1:])):
            t_eval = float(t_now) if i == 0 else shifted_times(x, float(t_now), window(i), expected_var)
            x = step(model, x, t_eval, float(t_next))
    return x


# --- the VP-diffusion instance: DDIM with integer training timesteps --------------------------------

@SAMPLERS.register("ddim_ts")
def ddim_time_shift(model: Callable, x_t, steps: int, data_var: float, window: int = 20, **_):
    """DDIM (trailing timesteps, final alpha = 1) with time shift within +-``window`` training steps.

    ``model(x, s)`` returns eps at VE sigma s, as in :func:`flowrepro.samplers.diffusion.run_scheduler`.
    Returns (x, (first level, final level)) like the diffusers samplers. window = 0 is plain DDIM.
    """
    import math

    from flowrepro.samplers.diffusion import training_alphas_cumprod

    acp = training_alphas_cumprod()
    ratio = 1000 / steps
    nominal = [int(v) for v in np.round(np.arange(1000, 0, -ratio)).astype(np.int64) - 1] + [-1]
    alpha_bar = lambda t: 1.0 if t < 0 else float(acp[int(t)])  # noqa: E731  (t = -1: data, alpha = 1)

    def step(eps_model, x, t_now, t_next):
        a_now, a_next = alpha_bar(t_now), alpha_bar(t_next)
        eps = eps_model(x, math.sqrt((1 - a_now) / a_now))
        x0 = (x - math.sqrt(1 - a_now) * eps) / math.sqrt(a_now)
        return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps

    def candidates(i):
        lo, hi = max(nominal[i] - window, 0), min(nominal[i] + window, 999)
        return np.arange(lo, hi + 1)

    expected = lambda ts: acp[ts] * data_var + (1 - acp[ts])  # noqa: E731
    x = time_shift(step, model, x_t, nominal, candidates, expected)
    first = math.sqrt((1 - acp[999]) / acp[999])
    return x, (first, 0.0)


@SAMPLERS.register("euler_ts")
def euler_time_shift(velocity: Callable, x0, times, data_var: float, window: float = 0.5, n_candidates: int = 41, **_):
    """Euler on the flow ODE with time shift within +-``window`` of the local step size."""
    import torch

    times = np.asarray(times, dtype=np.float64)

    def step(v, x, t_now, t_next):
        t = torch.full((x.shape[0],), t_now, dtype=x.dtype)
        return x + (t_next - t_now) * v(x, t)

    def candidates(i):
        half = window * (times[i + 1] - times[i])
        return np.clip(np.linspace(times[i] - half, times[i] + half, n_candidates), 0.0, 1.0)

    expected = lambda ts: ts**2 * data_var + (1 - ts) ** 2  # noqa: E731
    return time_shift(step, velocity, x0, times, candidates, expected)
