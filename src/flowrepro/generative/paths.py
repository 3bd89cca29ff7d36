"""Probability paths x_t = a(t) x0 + b(t) x1 between noise x0 (t=0) and data x1 (t=1).

The conditional target velocity is u_t = a'(t) x0 + b'(t) x1 (Lipman et al., Flow Matching).
- ``linear`` (rectified flow; the OT path with sigma_min): a = 1 - (1 - s) t, b = t.
- ``vp`` (the variance-preserving diffusion path of Flow Matching, Sec. 4.1): b(t) = alpha_{1-t},
  a(t) = sqrt(1 - alpha_{1-t}^2), alpha_s = exp(-T(s)/2), T(s) = int_0^s beta, beta(s) linear
  from beta_min = 0.1 to beta_max = 20.
- ``trig`` (the trigonometric interpolant of Albergo et al.): a = cos(pi t / 2), b = sin(pi t / 2).
- ``vp_discrete`` (DDPM's own schedule, Ho et al. 2020: N = 1000 training steps, beta linear from
  1e-4 to 0.02): training step k = (N - 1)(1 - t), b^2 = alphabar_k with log alphabar piecewise
  linear in k between the steps (DPM-Solver's continuous view of a discrete model, Lu et al. 2022,
  App. A), a = sqrt(1 - b^2). Every diffusers scheduler's noise levels are training steps, so a model
  of this path is evaluated exactly where it was trained (the pretrained CIFAR-10 DDPM).
- any path with ``gamma: g`` (stochastic interpolants): x_t = a x0 + b x1 + gamma(t) z with
  gamma(t)^2 = g t (1 - t) and z ~ N(0, I) independent of x0. With Gaussian x0 the pair
  a x0 + gamma z is itself Gaussian, so the interpolant is the affine path with
  a~(t) = sqrt(a^2 + gamma^2) and the same marginal velocity (E[a' x0 + gamma' z | x_t] =
  a~'/a~ E[a x0 + gamma z | x_t]); it is built that way, and a~' = (a a' + g (1 - 2t) / 2) / a~.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from flowrepro.registry import PATHS


def per_sample(value, like):
    """A per-sample (n,) tensor reshaped to broadcast over a batch shaped like ``like`` (n, ...)."""
    return value.reshape(-1, *([1] * (like.dim() - 1)))


class AffinePath:
    """x_t = a(t) x0 + b(t) x1; subclasses give the scalar coefficients and their derivatives."""

    def coefficients(self, t):
        """Return a(t), b(t), a'(t), b'(t) for a tensor t."""
        raise NotImplementedError

    def sample(self, x0, x1, t):
        a, b, _, _ = self.coefficients(t)
        return per_sample(a, x0) * x0 + per_sample(b, x0) * x1

    def velocity(self, x0, x1, t):
        _, _, da, db = self.coefficients(t)
        return per_sample(da, x0) * x0 + per_sample(db, x0) * x1


@PATHS.register("linear")
@dataclass(frozen=True)
class LinearPath(AffinePath):
    """Rectified flow / OT path: a = 1 - (1 - sigma_min) t, b = t."""

    sigma_min: float = 0.0

    def coefficients(self, t):
        one = t.new_ones(())
        return 1 - (1 - self.sigma_min) * t, t, -(1 - self.sigma_min) * one.expand_as(t), one.expand_as(t)


@PATHS.register("vp")
@dataclass(frozen=True)
class VPPath(AffinePath):
    """Variance-preserving diffusion path: b = alpha_{1-t}, a = sqrt(1 - b^2), beta linear in time."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    #: a(t) -> 0 at t=1 makes a'(t) blow up; training times are clipped to [0, 1 - t_eps].
    t_eps: float = 1e-3

    def coefficients(self, t):
        s = 1 - t.clamp(max=1 - self.t_eps)
        integral = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        alpha = (-0.5 * integral).exp()
        beta = self.beta_min + (self.beta_max - self.beta_min) * s
        b, db = alpha, 0.5 * beta * alpha  # d/dt alpha_{1-t} = +beta/2 alpha
        a = (1 - alpha**2).clamp(min=1e-12).sqrt()
        return a, b, -b * db / a, db


@lru_cache(maxsize=8)
def _log_alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float):
    """One table per schedule: every network call converts through it (cached, read-only by convention)."""
    import torch

    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0).double().log()


@PATHS.register("vp_discrete")
@dataclass(frozen=True)
class DiscreteVPPath(AffinePath):
    """DDPM's discrete schedule as a path: alphabar_k = prod_{i<=k} (1 - beta_i), beta linear in k."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def log_alphas_cumprod(self):
        """log alphabar_k, k = 0..N-1, computed as diffusers' DDPMScheduler does (float32 cumprod)."""
        return _log_alphas_cumprod(self.num_train_timesteps, self.beta_start, self.beta_end)

    def timestep(self, t):
        """The (fractional) training step of time t: 0 at the data end t = 1, N - 1 at the noise end t = 0."""
        return (1 - t) * (self.num_train_timesteps - 1)

    def coefficients(self, t):
        table = self.log_alphas_cumprod().to(t.device)
        k = self.timestep(t.double()).clamp(0, self.num_train_timesteps - 1)
        low = k.floor().long().clamp(max=self.num_train_timesteps - 2)
        slope = table[low + 1] - table[low]  # d log alphabar / dk on this segment
        log_alphabar = table[low] + slope * (k - low)
        b = (0.5 * log_alphabar).exp()
        a = (1 - b**2).clamp(min=1e-12).sqrt()
        db = b * 0.5 * slope * -(self.num_train_timesteps - 1)  # dk/dt = -(N - 1)
        return tuple(c.to(t.dtype) for c in (a, b, -b * db / a, db))

    def time_of_level(self, s: float) -> float:
        """The t whose VE level a / b is ``s``, exactly (log alphabar = -log(1 + s^2) is linear in k on a segment)."""
        import numpy as np

        log_alphabar = -np.log1p(float(s) ** 2)
        table = self.log_alphas_cumprod().numpy()[::-1]  # increasing: step N-1 .. 0
        k = np.interp(log_alphabar, table, np.arange(self.num_train_timesteps - 1, -1, -1, dtype=np.float64))
        return float(1 - k / (self.num_train_timesteps - 1))


@PATHS.register("trig")
@dataclass(frozen=True)
class TrigPath(AffinePath):
    """Trigonometric interpolant: a = cos(pi t / 2), b = sin(pi t / 2)."""

    def coefficients(self, t):
        half_pi = 0.5 * math.pi
        return (half_pi * t).cos(), (half_pi * t).sin(), -half_pi * (half_pi * t).sin(), half_pi * (half_pi * t).cos()


@dataclass(frozen=True)
class GammaInterpolant(AffinePath):
    """``base`` plus the latent noise gamma(t) z, gamma(t)^2 = g t (1 - t), as an affine path."""

    base: AffinePath
    g: float

    def coefficients(self, t):
        a, b, da, db = self.base.coefficients(t)
        a_tilde = (a**2 + self.g * t * (1 - t)).sqrt()
        return a_tilde, b, (a * da + 0.5 * self.g * (1 - 2 * t)) / a_tilde, db


def build_path(spec: dict):
    """The path a model spec names with its options: ``path: {name: linear, sigma_min: 0.01}``
    (:mod:`flowrepro.pieces`); the spec's own ``sigma_min`` and ``gamma`` keys also apply."""
    from flowrepro import pieces

    name, options = pieces.split(spec.get("path", "linear"))
    if "sigma_min" in spec:
        options = {**options, "sigma_min": spec["sigma_min"]}
    path = pieces.build("path", {"name": name, **options})
    return GammaInterpolant(path, float(spec["gamma"])) if spec.get("gamma") else path


