"""Divergence rate of a sampler's output: the fraction of samples far outside the data (TIER2 §2.8,
after Wizadwongsa et al., ICLR 2024, whose image metric counts out-of-range pixels).

    divergence_rate(x) = (1 / n) #{ n : ||x_n|| > factor * R  or  x_n not finite },   factor = 3,

with the data radius R the 99th percentile of ||x1|| under the (unconditional) data distribution,
estimated once per mixture from 100,000 draws of a fixed generator (seed 0), so that it is the same
for every seed, sampler and guidance scale. gmm2d: R ≈ 3.72 (ring of radius 3, std 0.3);
gmm16d: R ≈ 9.49. A sample with a NaN or infinite coordinate has diverged too.
"""
from __future__ import annotations

import functools

import numpy as np


def data_radius(gmm, quantile: float = 0.99, n: int = 100_000, seed: int = 0) -> float:
    """R: the ``quantile`` of ||x1|| over ``n`` draws of the mixture (fixed generator)."""
    sample = gmm.sample(n, np.random.default_rng(seed)).astype(np.float64)
    return float(np.quantile(np.linalg.norm(sample, axis=1), quantile))


@functools.lru_cache(maxsize=None)
def mixture_radius(name: str) -> float:
    """:func:`data_radius` of the named analytic mixture (cached: one estimate per process)."""
    from flowrepro.data.gmm import mixture

    return data_radius(mixture(name))


def divergence_rate(x, radius: float, factor: float = 3.0) -> float:
    """Fraction of rows of x (n, d) with norm above factor * radius, or with a non-finite entry."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(x, axis=1)
    diverged = ~np.isfinite(norms) | (norms > factor * radius)
    return float(diverged.mean())


__all__ = ["data_radius", "divergence_rate", "mixture_radius"]
