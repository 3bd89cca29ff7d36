"""Probability paths x_t between source x0 (t=0, noise) and data x1 (t=1).

Each path gives the sample x_t and the conditional target velocity d/dt x_t.
Linear (rectified flow / OT path with sigma_min): x_t = (1 - (1 - s) t) x0 + t x1,
u_t = x1 - (1 - s) x0; with s = 0 it is the straight line of rectified flow.
"""
from __future__ import annotations

from dataclasses import dataclass

from flowrepro.registry import PATHS


@PATHS.register("linear")
@dataclass(frozen=True)
class LinearPath:
    sigma_min: float = 0.0

    def sample(self, x0, x1, t):
        """x_t for a batch; t has shape (n,) and broadcasts over the data axes."""
        tb = t.reshape(-1, *([1] * (x0.dim() - 1)))
        return (1 - (1 - self.sigma_min) * tb) * x0 + tb * x1

    def velocity(self, x0, x1, t):
        return x1 - (1 - self.sigma_min) * x0
