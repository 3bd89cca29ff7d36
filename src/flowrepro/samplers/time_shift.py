"""Time-shift sampling against exposure bias (Li et al., "Alleviating Exposure Bias in Diffusion
Models through Sampling with Shifted Time Steps", ICLR 2024).

A sampler's intermediate x_{t_i} need not have the statistics of the forward marginal at t_i
(training error, solver error). The forward variance is known: per coordinate, for data variance
v_data = tr Cov(x1) / d,

    VP diffusion:  V(t) = alpha_t^2 v_data + sigma_t^2,      linear flow:  V(t) = t^2 v_data + (1 - t)^2.

``ddim_ts`` is the official rule (Mingxiao-Li/TS-DPM): the model is evaluated at the nominal time,
and only where the step lands is shifted, per sample, to the training step near the nominal next
one whose noise variance 1 - alphabar matches the sample's own variance; no shift below a cutoff.

``euler_ts`` is our transfer of the idea to the flow ODE, for which no official code exists: at each
step after the first it measures the batch variance v_hat of the current x (mean over coordinates)
and evaluates the model at the time t_s within a window around the nominal t_i whose V(t_s) is
closest to v_hat; the update uses t_s as the current time and still lands on the nominal next time
t_{i+1} (a wrapper around any one-step sampler ``step(model, x, t_now, t_next)``).
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


# --- the VP-diffusion instance: DDIM with integer training timesteps, the official rule ----------

def shifted_landing(x, nominal_next: int, window: int, noise_var):
    """Per sample, the training step within ``window // 2`` of ``nominal_next`` whose noise variance
    1 - alphabar is closest to that sample's own variance over its coordinates (Mingxiao-Li/TS-DPM
    ``PNMSolver.apply_time_shift``: ``th.var`` per image, compared with ``1 - alphas_cump``)."""
    import torch

    half = window // 2
    candidates = torch.arange(max(nominal_next - half, 0), min(nominal_next + half, len(noise_var) - 1) + 1)
    variance = x.flatten(1).var(dim=1)  # unbiased, as the official code's th.var
    gap = (variance[:, None] - torch.as_tensor(noise_var, dtype=x.dtype)[candidates][None, :]).abs()
    return candidates[gap.argmin(dim=1)]


@SAMPLERS.register("ddim_ts")
def ddim_time_shift(model: Callable, x_t, steps: int, data_var: float | None = None, window: int = 30,
                    cutoff: int = 300, **_):
    """TS-DDIM as the official code runs it (Mingxiao-Li/TS-DPM ``sampler/pnm_solver.py``).

    DDIM (trailing timesteps from 999, final alpha = 1) where, after the first step, each step from
    nominal t_i to t_{i+1} lands instead on a per-sample step tau in [t_{i+1} - window//2,
    t_{i+1} + window//2], the one whose noise variance 1 - alphabar_tau is closest to the sample's
    own variance. The network and the x0 formula use the nominal t_i (the shifted landing time is
    not carried into the next step's model call), and no shift happens once t_{i+1} <= ``cutoff``:

        eps = model(x, t_i),  x0 = (x - sqrt(1 - ab_i) eps) / sqrt(ab_i),  x' = sqrt(ab_tau) x0 + sqrt(1 - ab_tau) eps.

    Defaults: window 30, cutoff 300, the official README's setting for few-step sampling (its
    DPM-Solver example at 5 steps). ``data_var`` is not used: the official rule compares with the
    noise variance only. ``model(x, s)`` returns eps at VE sigma s, as in
    :func:`flowrepro.samplers.diffusion.run_scheduler`. Returns (x, (first level, final level)).
    window = 0 is plain DDIM.
    """
    import math

    import torch

    from flowrepro.samplers.diffusion import training_alphas_cumprod

    acp = training_alphas_cumprod()
    ratio = 1000 / steps
    nominal = [int(v) for v in np.round(np.arange(1000, 0, -ratio)).astype(np.int64) - 1] + [-1]
    alpha_bar = np.concatenate([acp, [1.0]])  # index -1: data, alpha = 1
    noise_var = 1.0 - acp
    x = x_t
    with torch.no_grad():
        for i, (t_now, t_next) in enumerate(zip(nominal[:-1], nominal[1:])):
            a_now = float(alpha_bar[t_now])
            eps = model(x, math.sqrt((1 - a_now) / a_now))
            x0 = (x - math.sqrt(1 - a_now) * eps) / math.sqrt(a_now)
            if i > 0 and window > 0 and t_next > cutoff:
                landing = shifted_landing(x, t_next, window, noise_var)
                a_next = torch.as_tensor(alpha_bar[landing.numpy()], dtype=x.dtype, device=x.device)
                a_next = a_next.reshape(-1, *([1] * (x.dim() - 1)))
                x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
            else:
                a_next = float(alpha_bar[t_next])
                x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
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
