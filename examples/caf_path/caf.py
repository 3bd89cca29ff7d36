"""A constant-acceleration probability path, added from outside the package (a path plugin).

Constant Acceleration Flow (Park et al., NeurIPS 2024, arXiv:2411.00322) moves each sample with an
initial velocity v0 = h (x1 - x0) and a constant acceleration a that lands it on x1 at t = 1:

    x_t = x0 + v0 t + a t^2 / 2,   x_1 = x1  =>  a = 2 (x1 - x0 - v0) = 2 (1 - h) (x1 - x0)

so x_t = x0 + (x1 - x0) s(t) with s(t) = h t + (1 - h) t^2. Every conditional path is the straight
segment from x0 to x1, traversed at the varying speed s'(t) = h + 2 (1 - h) t (h = 1: rectified
flow's constant speed; h > 1: fast start, slowing down). As an affine path (the contract every
path plugin follows: ``flowrepro.generative.paths.AffinePath``, whose ``coefficients(t)`` returns
a(t), b(t), a'(t), b'(t) with x_t = a x0 + b x1 and target velocity a' x0 + b' x1):

    a = 1 - s(t),  b = s(t),  a' = -s'(t),  b' = s'(t).

This is the path only: one velocity network regresses on it, as any path in the suite. The paper's
method also trains an acceleration network conditioned on v0 and samples with both (tier-2 issue
`caf`); this example shows how a path enters the suite, options (h) included, reflow included.
The experiment file beside it lists it under ``plugins: [caf.py]`` and sets ``path: {name: caf, h: 1.5}``.
"""
from __future__ import annotations

from dataclasses import dataclass

from flowrepro.generative.paths import AffinePath
from flowrepro.registry import PATHS


@PATHS.register("caf")
@dataclass(frozen=True)
class ConstantAccelerationPath(AffinePath):
    """x_t = x0 + (x1 - x0)(h t + (1 - h) t^2): straight, initial speed h, constant acceleration."""

    h: float = 1.5  # initial velocity v0 = h (x1 - x0); the paper's default for its experiments

    def __post_init__(self) -> None:
        if not 0.0 <= self.h <= 2.0:  # outside [0, 2] s(t) leaves [0, 1]: the path overshoots x1 or x0
            raise ValueError(f"caf path: h must lie in [0, 2], got {self.h}")

    def coefficients(self, t):
        s = self.h * t + (1 - self.h) * t**2
        speed = self.h + 2 * (1 - self.h) * t
        return 1 - s, s, -speed, speed
