"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) with the PFGM++ prior.

The probability-flow ODE in noise level is dx/dsigma = (x - D(x; sigma)) / sigma for every D
(PFGM++ Sec. 4, with r = sigma sqrt(D)). Noise levels (Karras schedule, rho = 7):

    sigma_i = (sigma_max^{1/rho} + i / (N - 1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho,  i < N;  sigma_N = 0,

and N steps: Euler, then a trapezoidal (Heun) correction on every step but the last (to sigma = 0),
so NFE = 2N - 1 (``extra_calls = -1``: the sample stage maps an NFE budget to N = (NFE + 1) // 2).

Prior: the PFGM++ kernel at r_max = sigma_max sqrt(D): x_N = r_max n / ||w|| = sigma_max n / (||w|| / sqrt(D)),
n the sample stage's Gaussian x0 and ||w||^2 ~ chi2_D drawn from ``seed`` (:mod:`flowrepro.generative.edm`).
As the official generate.py (``rand_beta_prime``), the prior's radii are neither clipped nor
restricted (sigma_max = 80 for N < 256^2 3): heavy tails at small D are sampled as they are.

Robustness option ``inject_noise`` (alpha): as the official generate_alpha.py, before each step
x_i <- x_i + alpha sigma_i eps, eps ~ N(0, I) from its own generator seeded by ``seed`` (the same
draws for every model sampled with that seed, so shared across D). It perturbs the sampling state,
not the weights: the saved model is untouched.
"""
from __future__ import annotations

import numpy as np

from flowrepro.registry import SAMPLERS

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """The N + 1 noise levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min > sigma_N = 0 (float64)."""
    import torch

    i = torch.arange(steps, dtype=torch.float64)
    denominator = max(steps - 1, 1)  # one step: sigma_max, then 0
    sigmas = (sigma_max ** (1 / rho) + i / denominator * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def kernel_dimension(model) -> float:
    """The D of the model under any wrappers (NFECounter keeps it as ``.model``)."""
    while not hasattr(model, "D"):
        if not hasattr(model, "model"):
            raise TypeError(f"{type(model).__name__} is not a PFGM++ / EDM denoiser (no D)")
        model = model.model
    return float(model.D)


def prior(x0, D: float, sigma_max: float, rng: np.random.Generator):
    """The PFGM++ prior from Gaussian ``x0`` (float64): sigma_max n / (||w|| / sqrt(D)); sigma_max n at D = inf."""
    import torch

    from flowrepro.generative.edm import perturbation

    sigma = torch.full((x0.shape[0],), float(sigma_max), dtype=torch.float64, device=x0.device)
    return perturbation(x0.double(), sigma, D, rng)


@SAMPLERS.register("edm_heun")
def edm_heun(model, x0, times, seed: int = 0, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
             rho: float = RHO, inject_noise: float = 0.0):
    """EDM Heun on ``model.denoise(x, sigma)`` for N = len(times) - 1 Karras steps (only the number of
    ``times`` is used), from the PFGM++ prior of the model's D; 2N - 1 denoiser calls."""
    import torch

    steps = len(times) - 1
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho).to(x0.device)
    x = prior(x0, kernel_dimension(model), sigma_max, np.random.default_rng(seed))
    noise = torch.Generator(device="cpu").manual_seed(seed + 7_777_777)  # apart from the prior's chi2 stream
    dtype = x0.dtype

    def derivative(x, sigma):
        return (x - model.denoise(x.to(dtype), sigma.to(dtype)).double()) / sigma

    with torch.no_grad():
        for i in range(steps):
            s_cur, s_next = sigmas[i], sigmas[i + 1]
            if inject_noise:
                x = x + inject_noise * s_cur * torch.randn(x.shape, generator=noise, dtype=torch.float64).to(x.device)
            d_cur = derivative(x, s_cur)
            x_next = x + (s_next - s_cur) * d_cur
            if i < steps - 1:  # no correction on the step to sigma = 0
                x_next = x + (s_next - s_cur) * 0.5 * (d_cur + derivative(x_next, s_next))
            x = x_next
    return x.to(dtype)


edm_heun.stochastic = True  # takes seed=: the prior's chi2 draws and the injected noise
edm_heun.calls_per_step = 2
edm_heun.extra_calls = -1  # the last step saves its correction: the sample stage's N = (nfe + 1) // 2
