"""MLP velocity network v_theta(x, t) for low-dimensional data."""
from __future__ import annotations

import math

from flowrepro.registry import MODELS


def build_mlp(dim: int, width: int = 128, depth: int = 3, time_features: int = 0, in_dim: int | None = None):
    """An MLP on [x, t] (``time_features=0``, as torchcfm's MLP) or [x, sinusoidal features of t];
    ``depth`` hidden layers with SiLU.

    t enters as itself by default: sinusoids up to frequency 100 made the trained field rough in t,
    so higher-order solvers lost to Euler on 2-D flows (RK4's error at 32 NFE: 0.025 with them,
    0.0002 without, in an independent check). ``in_dim``: input width when it differs from the
    output ``dim`` (CAF's acceleration net reads [x, v0], 2 dim)."""
    import torch
    from torch import nn

    class VelocityMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dim, self.time_features = dim, time_features
            frequencies = torch.exp(torch.linspace(0, math.log(100.0), time_features // 2))
            self.register_buffer("frequencies", frequencies)
            layers: list[nn.Module] = []
            in_features = (in_dim or dim) + (time_features or 1)
            for _ in range(depth):
                layers += [nn.Linear(in_features, width), nn.SiLU()]
                in_features = width
            layers.append(nn.Linear(in_features, dim))
            self.net = nn.Sequential(*layers)

        def forward(self, x, t):
            t = t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)
            if not self.time_features:
                return self.net(torch.cat([x, t], dim=1))
            angles = t * self.frequencies
            return self.net(torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1))

    return VelocityMLP()


MODELS.register("mlp")(build_mlp)
