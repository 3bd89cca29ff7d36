"""PFGM++ (Xu et al., ICML 2023) on EDM's preconditioned denoiser (Karras et al., NeurIPS 2022).

**Perturbation kernel.** Data y in R^N is embedded in N + D dimensions; the kernel is
p_r(x | y) ∝ (||x - y||^2 + r^2)^{-(N+D)/2}. Its official sampler (Newbeeer/pfgmpp
training/loss.py, EDMLoss with pfgmpp) draws the radius R = r sqrt(B / (1 - B)), B ~ Beta(N/2, D/2),
and a direction u uniform on S^{N-1}: x = y + R u. With the alignment r = sigma sqrt(D) EDM's sigma
schedule, preconditioning and weights carry over, and D -> inf gives EDM's Gaussian kernel N(y, sigma^2 I).

**Identity used here** (no D-dimensional vector): with n ~ N(0, I_N) and ||w||^2 ~ chi2_D independent,

    R u = r n / ||w||.

Proof: ||n||^2 ~ chi2_N = 2 Gamma(N/2) and ||w||^2 ~ 2 Gamma(D/2) are independent, so
B := ||n||^2 / (||n||^2 + ||w||^2) ~ Beta(N/2, D/2) and B / (1 - B) = ||n||^2 / ||w||^2, i.e.
r sqrt(B / (1 - B)) = r ||n|| / ||w||; the direction n / ||n|| is uniform on the sphere and
independent of ||n|| (and of w), so r ||n|| / ||w|| * n / ||n|| = r n / ||w|| has the official law.
At D = inf, r / ||w|| = sigma / sqrt(||w||^2 / D) -> sigma: the Gaussian kernel sigma n.
(tests/test_pfgmpp.py checks the radii against the Beta form and the exact CDF.)

**Objective** (EDM's, with the kernel above): ln sigma ~ N(P_mean, P_std^2), weight
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, loss = E lambda ||D_theta(y + R u; sigma) - y||^2
(summed over dimensions, averaged over the batch: EDM's ``loss.sum() / batch``).

**Preconditioning** (EDM Table 1): D_theta(x; sigma) = c_skip x + c_out F_theta(c_in x, c_noise) with
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
c_noise = ln(sigma) / 4, fed to our plain network as its time input t.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from flowrepro.registry import OBJECTIVES

#: EDM's training constants (Karras et al. 2022, Table 1; training/loss.py EDMLoss defaults).
P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5


def parse_dimension(D) -> float:
    """The augmented dimension D as a float: a positive number, or ``inf`` (also the strings 'inf', 'infinity')."""
    value = float("inf") if isinstance(D, str) and D.strip().lower() in ("inf", "infinity") else float(D)
    if not value > 0:
        raise ValueError(f"PFGM++ needs an augmented dimension D > 0 (or inf), not {D!r}")
    return value


def chi_norm(n: int, D: float, rng: np.random.Generator) -> np.ndarray:
    """||w|| / sqrt(D) for ||w||^2 ~ chi2_D, n draws (float64); exactly 1 at D = inf."""
    if math.isinf(D):
        return np.ones(n)
    return np.sqrt(rng.chisquare(D, size=n) / D)


def perturbation(noise, sigma, D: float, rng: np.random.Generator):
    """R u for each row of ``noise`` (n ~ N(0, I_N), any shape (batch, ...)) at level ``sigma`` (batch,):
    r n / ||w|| = sigma n / (||w|| / sqrt(D)), the chi2_D draw from ``rng``."""
    import torch

    scale = torch.as_tensor(chi_norm(noise.shape[0], D, rng), dtype=torch.float64, device=noise.device)
    factor = (sigma.double() / scale).to(noise.dtype)
    return noise * factor.view(-1, *[1] * (noise.dim() - 1))


def radii_official(n: int, N: int, D: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """The official radius law r sqrt(B / (1 - B)), B ~ Beta(N/2, D/2), without its clip (tests)."""
    B = rng.beta(N / 2.0, D / 2.0, size=n)
    return r * np.sqrt(B / (1.0 - B))


def coefficients(sigma, sigma_data: float = SIGMA_DATA):
    """EDM's (c_skip, c_out, c_in, c_noise) at ``sigma`` (tensor)."""
    import torch

    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), torch.log(sigma) / 4


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


@functools.cache  # one class, built on first use (torch imported lazily)
def _precond_class():
    from torch import nn

    class EDMPrecond(nn.Module):
        """D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4) around a plain network F(x, t)."""

        def __init__(self, net, sigma_data: float = SIGMA_DATA) -> None:
            super().__init__()
            self.net, self.sigma_data = net, float(sigma_data)

        def forward(self, x, sigma):
            sigma = sigma.to(x.dtype).reshape(-1) * x.new_ones(x.shape[0])  # scalar or (batch,)
            c_skip, c_out, c_in, c_noise = (c.view(-1, *[1] * (x.dim() - 1)) if i < 3 else c
                                            for i, c in enumerate(coefficients(sigma, self.sigma_data)))
            return c_skip * x + c_out * self.net(c_in * x, c_noise)

    return EDMPrecond


def EDMPrecond(net, sigma_data: float = SIGMA_DATA):
    """The preconditioned denoiser module around ``net`` (built lazily: torch is imported on use)."""
    return _precond_class()(net, sigma_data)


def _step_rng(t) -> np.random.Generator:
    """A generator for one step's sigma and chi2 draws, seeded by the step's times ``t`` (drawn from the
    training loop's checkpointed generator), so a resumed run draws what an uninterrupted one would."""
    bits = (t.detach().double().cpu() * 2.0 ** 40).long()
    return np.random.default_rng([int(v) & (2 ** 63 - 1) for v in bits.tolist()[:8]] + [len(bits)])


@OBJECTIVES.register("pfgmpp")
def pfgmpp(spec: dict, path, loss_fn, teacher, D="inf", sigma_data: float = SIGMA_DATA,
           P_mean: float = P_MEAN, P_std: float = P_STD):
    """PFGM++'s denoising loss with augmented dimension ``D`` (``inf``: EDM's); x0 is the direction noise n,
    x1 the data y, t only seeds the step's sigma and chi2 draws (the path is unused)."""
    import torch

    D = parse_dimension(D)

    def objective(model, x0, x1, t, target_model=None):
        rng = _step_rng(t)
        sigma = torch.as_tensor(np.exp(P_mean + P_std * rng.standard_normal(x1.shape[0])), dtype=x1.dtype,
                                device=x1.device)
        noisy = x1 + perturbation(x0, sigma, D, rng)
        weight = loss_weight(sigma, sigma_data).view(-1, *[1] * (x1.dim() - 1))
        return (weight * (model(noisy, sigma) - x1) ** 2).flatten(1).sum(1).mean()

    return objective


def _options(spec: dict) -> dict:
    from flowrepro import pieces

    return pieces.split(spec.get("objective", "pfgmpp"))[1]


def network(shape, settings: dict, spec: dict, build_network):
    """The trained module: EDM's preconditioning around our plain MLP / UNet."""
    return EDMPrecond(build_network(shape, settings), float(_options(spec).get("sigma_data", SIGMA_DATA)))


class Denoiser:
    """What samplers get: ``denoise(x, sigma)`` and the kernel's D (no velocity field: the prior is not
    the sample stage's Gaussian for finite D, so no Euler trajectory or reference solve)."""

    is_velocity_field = False

    def __init__(self, precond, D: float) -> None:
        self.precond, self.D = precond, D

    def denoise(self, x, sigma):
        import torch

        with torch.no_grad():
            return self.precond(x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device))

    def __call__(self, x, t):
        raise TypeError("a PFGM++ model has no velocity v(x, t): sample it with edm_heun (denoise(x, sigma))")


def field(net, path, spec: dict) -> Denoiser:
    return Denoiser(net, parse_dimension(_options(spec).get("D", "inf")))


pfgmpp.network = network
pfgmpp.field = field
