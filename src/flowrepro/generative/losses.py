"""Regression losses and training-time densities p(t)."""
from __future__ import annotations

from flowrepro.registry import LOSSES, TIME_DENSITIES


@LOSSES.register("mse")
def mse(prediction, target):
    """Mean over the batch of the squared error summed over data dimensions."""
    return ((prediction - target) ** 2).flatten(1).sum(1).mean()


@TIME_DENSITIES.register("uniform")
def uniform_time(n: int, generator, device):
    import torch

    return torch.rand(n, generator=generator, device=device)


@TIME_DENSITIES.register("logit_normal")
def logit_normal_time(n: int, generator, device, mean: float = 0.0, std: float = 1.0):
    """t = sigmoid(m + s z): more weight on the middle of the path."""
    import torch

    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


@LOSSES.register("pseudo_huber")
def pseudo_huber(prediction, target):
    """sqrt(|d|^2 + c^2) - c with c = 0.00054 dim, as the official code (sangyun884/rfpp train.py
    ``huber_c = 0.00054 * data_dim``; the paper's text reads sqrt(dim), after iCT)."""
    diff = (prediction - target).flatten(1)
    c = 0.00054 * diff.shape[1]
    return ((diff.pow(2).sum(1) + c * c).sqrt() - c).mean()


@TIME_DENSITIES.register("u_shaped")
def u_shaped_time(n: int, generator, device, a: float = 4.0):
    """p(t) ∝ cosh(a (t - 1/2)) on [0, 1] (Lee et al.), sampled by inverting its CDF.

    CDF(t) = (sinh(a (t - 1/2)) + sinh(a/2)) / (2 sinh(a/2)), so
    t = 1/2 + asinh((2u - 1) sinh(a/2)) / a.
    """
    import math

    import torch

    u = torch.rand(n, generator=generator, device=device)
    return 0.5 + torch.asinh((2 * u - 1) * math.sinh(a / 2)) / a
