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
